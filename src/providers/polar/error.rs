//! Polar's refusals as [`ProviderError`]s. The outbound stack has already dealt with 429 and
//! 5xx (retried, then `Retryable` or `Unknown`); what reaches here is an answer to read:
//!
//! | answer | error | why |
//! |---|---|---|
//! | 422 (`{"detail": [{loc, msg, type}, ...]}`) | `Definitive` `validation_error` | the same request fails the same way: never retried |
//! | 401, and a 403 from the token layer (`insufficient_scope`, `invalid_token`, `NotPermitted`, `Unauthorized`) | `Retryable`, logged as an error naming the account | Coffer's configuration (the organization access token or its scopes) is wrong; once fixed, the same call succeeds, so nothing is failed for good and events wait |
//! | other 403 (`RefundedAlready`, `AlreadyCanceledSubscription`, ...) | `Definitive`, Polar's error name as the code | a business refusal |
//! | 402 (`PaymentFailed`) | `Definitive` `payment_failed` | |
//! | 404 naming an error (`ResourceNotFound`) | `None` from a fetch; `Definitive` `not_found` from a write | |
//! | 404 naming none (`{"detail": "Not Found"}`: a path, or a pinned API version, Polar does not serve) | `Retryable`, logged as an error naming the account | never read as a missing object, which would make the journal call again |
//! | 409 (`SubscriptionLocked`) | `Retryable` | a pending update; the same call succeeds later |
//! | 3xx | `Definitive` `unexpected_redirect`, logged as an error | `api_base` is wrong (redirects are not followed, so the token does not travel) |
//! | other 4xx | `Definitive`, Polar's error name or `http_<status>` | |
//!
//! Messages carry Polar's `detail` text and a validation error's location and message, never
//! its `input` (which may echo personal data), never a header.

use http::StatusCode;

use super::wire::{ErrorBody, ValidationError};
use crate::domain::account::AccountName;
use crate::providers::ProviderError;
use crate::providers::outbound::OutboundResponse;

/// The longest message kept from an answer.
const MAX_MESSAGE: usize = 300;

/// Polar's error names that mean the access token is missing, wrong, or lacks a scope.
const TOKEN_ERRORS: &[&str] = &[
    "invalid_token",
    "insufficient_scope",
    "NotPermitted",
    "Unauthorized",
];

/// Whether `response` is Polar saying it has no such object: a 404 that names its error
/// (`{"error": "ResourceNotFound", ...}`), unlike the router's bare `{"detail": "Not Found"}`.
pub fn missing_object(response: &OutboundResponse) -> bool {
    response.status == StatusCode::NOT_FOUND
        && serde_json::from_slice::<ErrorBody>(&response.body)
            .is_ok_and(|b| b.error.is_some_and(|e| !e.is_empty()))
}

/// The error for a non-2xx answer `response` to `operation` on `account`'s Polar.
pub fn refusal(
    account: &AccountName,
    operation: &'static str,
    response: &OutboundResponse,
) -> ProviderError {
    let status = response.status;
    let body: ErrorBody = serde_json::from_slice(&response.body).unwrap_or_default();
    let name = body.error.clone().unwrap_or_default();
    let token = status == StatusCode::UNAUTHORIZED
        || (status == StatusCode::FORBIDDEN
            && (name.is_empty() || TOKEN_ERRORS.contains(&name.as_str())));
    if token {
        tracing::error!(
            account = %account,
            operation,
            status = status.as_u16(),
            error = %name,
            "Polar refused the account's organization access token: check the token in the \
             account's api_key_env and its scopes (docs/providers/polar.md)"
        );
        return ProviderError::Retryable {
            message: format!(
                "Polar refused account {account}'s access token ({status}{}): a configuration \
                 error",
                if name.is_empty() {
                    String::new()
                } else {
                    format!(", {name}")
                }
            ),
            retry_after: None,
        };
    }
    if status == StatusCode::NOT_FOUND && name.is_empty() {
        tracing::error!(
            account = %account,
            operation,
            "Polar does not serve this path or API version: check the account's api_base"
        );
        return ProviderError::Retryable {
            message: format!(
                "Polar does not serve this path or API version for account {account}: a \
                 configuration error"
            ),
            retry_after: None,
        };
    }
    if status.is_redirection() {
        tracing::error!(
            account = %account,
            operation,
            status = status.as_u16(),
            "Polar answered with a redirect: check the account's api_base"
        );
        return ProviderError::definitive(
            "unexpected_redirect",
            format!("Polar answered {status}: the account's api_base is wrong"),
        );
    }
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => {
            ProviderError::definitive("validation_error", validation_message(&body))
        }
        StatusCode::PAYMENT_REQUIRED => {
            ProviderError::definitive("payment_failed", detail_text(&body, status))
        }
        StatusCode::NOT_FOUND => ProviderError::definitive("not_found", detail_text(&body, status)),
        StatusCode::CONFLICT => ProviderError::Retryable {
            message: format!("Polar: {}", detail_text(&body, status)),
            retry_after: None,
        },
        _ => {
            let code = if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                format!("http_{}", status.as_u16())
            } else {
                name
            };
            ProviderError::definitive(code, detail_text(&body, status))
        }
    }
}

/// An answer that came back 2xx but could not be read as `what`. A write that got it was
/// applied and only fetching finds what it made; a read may simply be asked again later.
pub fn unreadable(read: bool, what: &str, e: &serde_json::Error) -> ProviderError {
    let message = format!("Polar's answer is not a readable {what}: {e}");
    if read {
        ProviderError::definitive("unreadable_answer", message)
    } else {
        ProviderError::Unknown { message }
    }
}

/// A 422's entries as `loc: msg` (at most three), or its detail text.
fn validation_message(body: &ErrorBody) -> String {
    let entries: Vec<ValidationError> = body
        .detail
        .clone()
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default();
    if entries.is_empty() {
        return clip(
            body.detail
                .as_ref()
                .and_then(|d| d.as_str())
                .unwrap_or("the request is not valid")
                .to_owned(),
        );
    }
    let described: Vec<String> = entries
        .iter()
        .take(3)
        .map(|e| {
            let loc: Vec<String> = e
                .loc
                .iter()
                .map(|p| match p {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let kind = if e.kind.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.kind)
            };
            format!("{}: {}{kind}", loc.join("."), e.msg)
        })
        .collect();
    let more = entries.len().saturating_sub(3);
    let mut message = described.join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    clip(message)
}

/// Polar's `detail` text, or the status.
fn detail_text(body: &ErrorBody, status: StatusCode) -> String {
    match body.detail.as_ref().and_then(|d| d.as_str()) {
        Some(text) if !text.is_empty() => clip(text.to_owned()),
        _ => format!("Polar answered {status}"),
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;

    fn answer(status: u16, body: &str) -> ProviderError {
        let response = OutboundResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            request_id: None,
        };
        refusal(
            &AccountName::parse("polar-main").unwrap(),
            "test",
            &response,
        )
    }

    #[test]
    fn validation_errors_are_definitive_and_name_the_field_not_the_input() {
        let e = answer(
            422,
            r#"{"error":"RequestValidationError","detail":[{"loc":["body","products",0],"msg":"Product does not exist.","type":"value_error","input":"secret@example.com"}]}"#,
        );
        let ProviderError::Definitive { code, message, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(code, "validation_error");
        assert_eq!(
            message,
            "body.products.0: Product does not exist. (value_error)"
        );
        assert!(!message.contains("secret@example.com"));
    }

    #[test]
    fn token_problems_are_retryable_configuration_errors() {
        for (status, body) in [
            (
                401,
                r#"{"error":"invalid_token","error_description":"expired"}"#,
            ),
            (403, r#"{"error":"insufficient_scope"}"#),
            (403, r#"{"error":"NotPermitted","detail":"no"}"#),
            (403, ""),
        ] {
            let e = answer(status, body);
            assert!(
                matches!(&e, ProviderError::Retryable { message, .. } if message.contains("polar-main")),
                "{status} {body}: {e:?}"
            );
        }
    }

    #[test]
    fn business_refusals_keep_polar_s_name() {
        let e = answer(
            403,
            r#"{"error":"RefundedAlready","detail":"Order is already fully refunded."}"#,
        );
        assert_eq!(
            e,
            ProviderError::definitive("RefundedAlready", "Order is already fully refunded.")
        );
        assert!(matches!(
            answer(409, r#"{"error":"SubscriptionLocked","detail":"pending"}"#),
            ProviderError::Retryable { .. }
        ));
        assert_eq!(
            answer(400, "<html>"),
            ProviderError::definitive("http_400", "Polar answered 400 Bad Request")
        );
        assert_eq!(
            answer(404, r#"{"error":"ResourceNotFound","detail":"Not found"}"#),
            ProviderError::definitive("not_found", "Not found")
        );
        assert!(matches!(
            answer(404, r#"{"detail":"Not Found"}"#),
            ProviderError::Retryable { message, .. } if message.contains("polar-main")
        ));
        assert!(matches!(
            answer(307, ""),
            ProviderError::Definitive { code, .. } if code == "unexpected_redirect"
        ));
    }
}
