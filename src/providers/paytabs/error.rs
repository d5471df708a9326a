//! PayTabs' answers as [`ProviderError`]s. The outbound stack has already classified what it
//! could (429, 5xx, timeouts: `Retryable` or `Unknown`); what reaches here is an answer to read.
//!
//! | answer | error |
//! |---|---|
//! | 2xx | none (the caller reads the body), unless it is PayTabs' error body |
//! | 401, or error `code` 1 ("Authentication failed") | `Retryable`, and a loud `error!` naming the account: a wrong server key, or one used outside its profile's region, needs an operator, but it is not the request's fault |
//! | 409, or error `code` 4 ("Duplicate Request") | a write: `Unknown` (a request with this `cart_id` was made already; the journal settles it by querying the `cart_id`); a query: `Retryable` |
//! | other 4xx | `Definitive`: a validation error, refused again if sent again; `code` is PayTabs' (`206`), or `http_<status>` when the body has none |
//! | anything else (3xx, 1xx) | `Definitive` (`unexpected_status`): a misconfigured `api_base` |
//!
//! PayTabs has no idempotency keys, so a write is never sent twice by the stack: the adapter
//! sends none (see `super::client`), and a write that may have been applied ends `Unknown`.
//! A query is a POST but changes nothing, so its `Unknown` (a 5xx or a timeout) is `Retryable`.
//! Messages carry PayTabs' code, message and trace id, never the server key or card data.

use bytes::Bytes;
use http::StatusCode;

use super::wire::ErrorBody;
use crate::domain::account::AccountName;
use crate::providers::ProviderError;
use crate::providers::outbound::OutboundResponse;

/// PayTabs' code for a request whose server key it refused.
const AUTHENTICATION_FAILED: &str = "1";
/// PayTabs' code for a second request of a `cart_id` it is still processing or has made.
const DUPLICATE_REQUEST: &str = "4";

/// Whether a call changes anything on PayTabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A hosted page or a refund: never repeated blindly.
    Write,
    /// A transaction query.
    Read,
}

/// The outbound stack's error for a call of `kind`: a query that may or may not have been
/// answered changed nothing, so it may simply be asked again.
pub fn sent(kind: Call, error: ProviderError) -> ProviderError {
    match (kind, error) {
        (Call::Read, ProviderError::Unknown { message }) => ProviderError::Retryable {
            message,
            retry_after: None,
        },
        (_, error) => error,
    }
}

/// The body of a successful answer of `account`'s call of `kind`, or the error it is.
pub fn answer(
    account: &AccountName,
    kind: Call,
    response: OutboundResponse,
) -> Result<Bytes, ProviderError> {
    let status = response.status;
    if status.is_success() {
        // PayTabs' error body in a 2xx: an object with a `code` and no transaction.
        return match error_in_success(&response.body) {
            Some(body) => Err(refusal(account, kind, StatusCode::BAD_REQUEST, body)),
            None => Ok(response.body),
        };
    }
    let body: Option<ErrorBody> = serde_json::from_slice(&response.body).ok();
    if status.is_client_error() {
        return Err(refusal(
            account,
            kind,
            status,
            body.unwrap_or(ErrorBody {
                code: None,
                message: None,
                trace: None,
            }),
        ));
    }
    Err(ProviderError::definitive(
        "unexpected_status",
        format!("PayTabs answered {status}; is the account's api_base right?"),
    ))
}

fn error_in_success(body: &[u8]) -> Option<ErrorBody> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if object.contains_key("tran_ref") || !object.contains_key("code") {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// A 4xx (or an error body) as the table of the module docs says.
fn refusal(
    account: &AccountName,
    kind: Call,
    status: StatusCode,
    body: ErrorBody,
) -> ProviderError {
    let code = body.code.as_deref();
    let message = body.message.as_deref().unwrap_or("no message");
    let trace = body.trace.as_deref().unwrap_or("none");
    if status == StatusCode::UNAUTHORIZED || code == Some(AUTHENTICATION_FAILED) {
        tracing::error!(
            provider = "paytabs",
            account = %account,
            status = status.as_u16(),
            trace,
            "PayTabs refused the account's server key: check its api_key_env, profile_id and \
             region (a server key works only against its profile's region)"
        );
        return ProviderError::Retryable {
            message: format!(
                "PayTabs refused the server key of account {account} ({message}; trace {trace})"
            ),
            retry_after: None,
        };
    }
    if status == StatusCode::CONFLICT || code == Some(DUPLICATE_REQUEST) {
        let message = format!("PayTabs saw this request before ({message}; trace {trace})");
        return match kind {
            Call::Write => ProviderError::Unknown { message },
            Call::Read => ProviderError::Retryable {
                message,
                retry_after: None,
            },
        };
    }
    ProviderError::definitive(
        code.map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned),
        format!("{message} (trace {trace})"),
    )
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn response(status: u16, body: &str) -> OutboundResponse {
        OutboundResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            request_id: None,
        }
    }

    fn main() -> AccountName {
        AccountName::parse("paytabs-main").unwrap()
    }

    #[test]
    fn answers_are_classified_as_the_table_says() {
        let a = main();
        assert!(answer(&a, Call::Write, response(200, r#"{"tran_ref":"T1"}"#)).is_ok());
        assert!(answer(&a, Call::Read, response(200, "[]")).is_ok());
        assert_eq!(
            answer(
                &a,
                Call::Write,
                response(
                    400,
                    r#"{"code":206,"message":"Invalid currency code","trace":"PMNT0401"}"#
                )
            ),
            Err(ProviderError::definitive(
                "206",
                "Invalid currency code (trace PMNT0401)"
            ))
        );
        assert_eq!(
            answer(&a, Call::Read, response(404, "not json")),
            Err(ProviderError::definitive(
                "http_404",
                "no message (trace none)"
            ))
        );
        // An error body in a 200 is still an error.
        assert!(matches!(
            answer(&a, Call::Write, response(200, r#"{"code":113,"message":"bad"}"#)),
            Err(ProviderError::Definitive { code, .. }) if code == "113"
        ));
        for (status, body) in [
            (
                401,
                r#"{"code":1,"message":"Authentication failed. Check authentication header."}"#,
            ),
            (400, r#"{"code":1,"message":"Authentication failed"}"#),
            (401, ""),
        ] {
            assert!(
                matches!(
                    answer(&a, Call::Write, response(status, body)),
                    Err(ProviderError::Retryable {
                        retry_after: None,
                        ..
                    })
                ),
                "{status} {body}"
            );
        }
        let duplicate = r#"{"code":4,"message":"Duplicate Request","trace":"PMNT0101"}"#;
        assert!(matches!(
            answer(&a, Call::Write, response(409, duplicate)),
            Err(ProviderError::Unknown { .. })
        ));
        assert!(matches!(
            answer(&a, Call::Read, response(409, duplicate)),
            Err(ProviderError::Retryable { .. })
        ));
        assert!(matches!(
            answer(&a, Call::Read, response(302, "")),
            Err(ProviderError::Definitive { code, .. }) if code == "unexpected_status"
        ));
    }

    #[test]
    fn a_query_unanswered_changed_nothing() {
        let unknown = ProviderError::Unknown {
            message: "no answer in time".into(),
        };
        assert!(matches!(
            sent(Call::Read, unknown.clone()),
            ProviderError::Retryable { .. }
        ));
        assert_eq!(sent(Call::Write, unknown.clone()), unknown);
    }

    #[test]
    fn the_server_key_never_reaches_an_error() {
        // PayTabs does not echo the key, but nothing of the request is put in a message
        // either: only the answer's code, message and trace.
        let e = answer(
            &main(),
            Call::Write,
            response(401, r#"{"code":1,"message":"m"}"#),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("paytabs-main") && !e.contains("SJNL"), "{e}");
    }
}
