//! Stripe's refusals as [`ProviderError`]s.
//!
//! The outbound stack has already retried what may be retried (429, 5xx, Stripe's 409, a
//! timeout) and hands back the answers it does not retry. Those are read here from Stripe's
//! error body, `{"error":{"type","code","decline_code","message","param"}}`:
//!
//! | status | `error.type` | answer |
//! |---|---|---|
//! | 402 | `card_error` | `Definitive` with `code` and `decline_code` (FAILED_PRECONDITION, the decline code in ErrorInfo) |
//! | 400, 404 | `invalid_request_error` | `Definitive`, never retried |
//! | 400 | `idempotency_error` | `Definitive` (the key was used with other parameters) |
//! | 401 | `authentication_error` | logged loudly as the account's configuration error, `Retryable` (UNAVAILABLE) |
//! | 403 | `permission_error` | likewise |
//! | other 4xx | any | `Definitive` |
//!
//! A bad API key is an operator's problem, not the caller's: the call is answered UNAVAILABLE
//! (it may work once the key is fixed) and the log names the account, never the key.

use http::StatusCode;

use super::wire::{ApiError, ErrorBody};
use crate::domain::account::AccountName;
use crate::providers::ProviderError;
use crate::providers::outbound::OutboundResponse;

/// The error of a non-2xx `response` to `operation` on `account`.
pub fn from_response(
    account: &AccountName,
    operation: &'static str,
    response: &OutboundResponse,
) -> ProviderError {
    let error = serde_json::from_slice::<ErrorBody>(&response.body)
        .map(|b| b.error)
        .unwrap_or_default();
    let request = response.request_id.as_deref().unwrap_or("-");
    let kind = error.kind.as_deref().unwrap_or("");
    let status = response.status;
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        || matches!(kind, "authentication_error" | "permission_error")
    {
        tracing::error!(
            account = account.as_str(),
            operation,
            status = status.as_u16(),
            stripe_request = request,
            error_type = kind,
            "Stripe refused the account's API key: a configuration error (check the account's \
             api_key_env: a secret or restricted key of this account, with the permissions \
             Coffer's calls need)"
        );
        return ProviderError::Retryable {
            message: format!(
                "the Stripe account {account} is misconfigured: its API key was refused ({status})"
            ),
            retry_after: None,
        };
    }
    definitive(status, &error, request)
}

fn definitive(status: StatusCode, error: &ApiError, request: &str) -> ProviderError {
    let kind = error.kind.as_deref().unwrap_or("");
    let code = error
        .code
        .clone()
        .or_else(|| (!kind.is_empty()).then(|| kind.to_owned()))
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    let mut message = error
        .message
        .clone()
        .unwrap_or_else(|| format!("Stripe answered {status}"));
    if let Some(param) = &error.param {
        message = format!("{message} (parameter {param})");
    }
    message = format!("{message} (request {request})");
    let card = status == StatusCode::PAYMENT_REQUIRED || kind == "card_error";
    ProviderError::Definitive {
        code,
        message,
        decline_code: if card {
            error.decline_code.clone()
        } else {
            None
        },
    }
}

/// A 2xx whose body is not the object asked for. A write's effect is then unknown (it was
/// answered, so it happened, but its object cannot be read): settled by fetching.
pub fn unreadable(operation: &'static str, write: bool, e: serde_json::Error) -> ProviderError {
    let message = format!("Stripe's answer to {operation} could not be read: {e}");
    if write {
        ProviderError::Unknown { message }
    } else {
        ProviderError::definitive("unreadable_answer", message)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::HeaderMap;

    use super::*;

    fn response(status: u16, body: &str) -> OutboundResponse {
        OutboundResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            request_id: Some("req_1".into()),
        }
    }

    fn map(status: u16, body: &str) -> ProviderError {
        from_response(
            &AccountName::parse("main").unwrap(),
            "refund",
            &response(status, body),
        )
    }

    #[test]
    fn a_card_error_carries_its_decline_code() {
        let e = map(
            402,
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#,
        );
        assert_eq!(
            e,
            ProviderError::Definitive {
                code: "card_declined".into(),
                message: "Your card has insufficient funds. (request req_1)".into(),
                decline_code: Some("insufficient_funds".into()),
            }
        );
    }

    #[test]
    fn invalid_requests_are_definitive() {
        let e = map(
            400,
            r#"{"error":{"type":"invalid_request_error","code":"parameter_missing","param":"amount","message":"Missing required param: amount.","decline_code":"x"}}"#,
        );
        let ProviderError::Definitive {
            code,
            message,
            decline_code,
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(code, "parameter_missing");
        assert!(message.contains("(parameter amount)"), "{message}");
        assert_eq!(decline_code, None, "only card errors decline");

        let e = map(
            404,
            r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such refund"}}"#,
        );
        assert!(matches!(e, ProviderError::Definitive { code, .. } if code == "resource_missing"));
        let e = map(
            400,
            r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#,
        );
        assert!(matches!(e, ProviderError::Definitive { code, .. } if code == "idempotency_error"));
        let e = map(418, "not json");
        assert!(matches!(e, ProviderError::Definitive { code, .. } if code == "http_418"));
    }

    #[test]
    fn a_refused_key_is_unavailable_not_the_callers_fault() {
        for (status, kind) in [(401, "authentication_error"), (403, "permission_error")] {
            let e = map(
                status,
                &format!(
                    r#"{{"error":{{"type":"{kind}","message":"Invalid API Key provided: sk_test_****1234"}}}}"#
                ),
            );
            let ProviderError::Retryable { message, .. } = e else {
                panic!("{e:?}")
            };
            assert!(message.contains("account main"), "{message}");
            assert!(
                !message.contains("sk_test"),
                "the key never travels: {message}"
            );
        }
    }
}
