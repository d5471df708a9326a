//! `AppError` → `tonic::Status`, with the rich error model: every error carries an `ErrorInfo`
//! (domain "coffer", a stable reason), INVALID_ARGUMENT a `BadRequest` with one violation per
//! field, UNAVAILABLE, RESOURCE_EXHAUSTED (and ABORTED for a transaction conflict) a
//! `RetryInfo`. UNKNOWN with `OUTCOME_UNKNOWN` means a commit was sent and its answer lost: not
//! safe to retry blindly. Internal errors are logged with their cause chain and
//! returned with no detail.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::{AppError, Rejection, RejectionKind, StoredStatus};
use crate::domain::Violations;
use crate::providers::ProviderError;
use crate::providers::signature::Rejection as SignatureRejection;
use crate::store::StoreError;

pub const DOMAIN: &str = "coffer";
pub const REASON_INVALID: &str = "INVALID_REQUEST";
pub const REASON_UNAVAILABLE: &str = "UNAVAILABLE";
pub const REASON_INTERNAL: &str = "INTERNAL";
pub const REASON_UNAUTHENTICATED: &str = "UNAUTHENTICATED";
pub const REASON_SCOPE_MISSING: &str = "SCOPE_MISSING";
pub const REASON_DATABASE_TIMEOUT: &str = "DATABASE_TIMEOUT";
pub const REASON_TRANSACTION_CONFLICT: &str = "TRANSACTION_CONFLICT";
pub const REASON_OVERLOADED: &str = "OVERLOADED";
pub const REASON_OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";
pub const REASON_PROVIDER_UNAVAILABLE: &str = "PROVIDER_UNAVAILABLE";
pub const REASON_PROVIDER_OUTCOME_UNKNOWN: &str = "PROVIDER_OUTCOME_UNKNOWN";

// Reasons the webhook sidecar reads from IngestEvent's answers: part of the gRPC contract, so
// the sidecar takes them from here and never from the use cases behind it.
pub use crate::app::accounts::REASON_ACCOUNT_NOT_FOUND;
pub use crate::app::events::{REASON_WEBHOOK_SIGNATURE_INVALID, REASON_WEBHOOK_SOURCE_NOT_ALLOWED};

fn with_info(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(reason, DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

pub fn invalid(violations: &Violations) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations.list() {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    with_info(
        Code::InvalidArgument,
        REASON_INVALID,
        format!("invalid request: {violations}"),
        details,
    )
}

pub fn unauthenticated(message: &str) -> Status {
    with_info(
        Code::Unauthenticated,
        REASON_UNAUTHENTICATED,
        message,
        ErrorDetails::new(),
    )
}

pub fn permission_denied(message: String) -> Status {
    with_info(
        Code::PermissionDenied,
        REASON_SCOPE_MISSING,
        message,
        ErrorDetails::new(),
    )
}

pub fn unavailable(message: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(Duration::from_secs(1)));
    with_info(Code::Unavailable, REASON_UNAVAILABLE, message, details)
}

fn retry_in(code: Code, reason: &str, message: &str, after: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(after));
    with_info(code, reason, message, details)
}

/// The status of a caller's refusal. Stored whole under an idempotency key (see
/// [`encode_refusal`]), so this function decides the bytes of the first answer and of every
/// replay alike.
fn refusal(r: &Rejection) -> Status {
    let code = match r.kind {
        RejectionKind::NotFound => Code::NotFound,
        RejectionKind::AlreadyExists => Code::AlreadyExists,
        RejectionKind::FailedPrecondition => Code::FailedPrecondition,
        RejectionKind::Aborted => Code::Aborted,
        RejectionKind::Unauthenticated => Code::Unauthenticated,
        RejectionKind::PermissionDenied => Code::PermissionDenied,
    };
    let metadata: HashMap<String, String> = r
        .metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let mut details = ErrorDetails::new();
    details.set_error_info(&r.reason, DOMAIN, metadata);
    Status::with_error_details(code, r.message.clone(), details)
}

/// A refusal as stored under an idempotency key: the encoded `google.rpc.Status` (code,
/// message and details) that tonic sends as `grpc-status-details-bin`.
pub fn encode_refusal(r: &Rejection) -> Vec<u8> {
    refusal(r).details().to_vec()
}

/// A stored refusal, answered again exactly as it was first sent.
fn replayed(stored: &StoredStatus) -> Status {
    use prost::Message;
    match tonic_types::Status::decode(stored.0.as_slice()) {
        Ok(s) => Status::with_details(Code::from_i32(s.code), s.message, stored.0.clone().into()),
        Err(e) => {
            AppError::internal(format!("a stored idempotent status does not decode: {e}")).into()
        }
    }
}

/// A webhook delivery that failed verification: UNAUTHENTICATED when the signature header is
/// absent, INVALID_ARGUMENT otherwise (the sidecar answers 401 and 400), both with reason
/// `WEBHOOK_SIGNATURE_INVALID` and the rejection's own reason in the ErrorInfo's metadata.
/// The message says no more than "invalid signature".
fn webhook_rejected(reason: SignatureRejection) -> Status {
    let mut details = ErrorDetails::new();
    let code = if reason == SignatureRejection::Missing {
        Code::Unauthenticated
    } else {
        details.add_bad_request_violation("headers", format!("invalid signature ({reason})"));
        Code::InvalidArgument
    };
    details.set_error_info(
        REASON_WEBHOOK_SIGNATURE_INVALID,
        DOMAIN,
        HashMap::from([("reason".to_owned(), reason.as_str().to_owned())]),
    );
    Status::with_error_details(code, "invalid signature", details)
}

/// The server is at its limit of calls or streams and refused this one without running it.
pub fn overloaded(message: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(Duration::from_secs(1)));
    with_info(Code::ResourceExhausted, REASON_OVERLOADED, message, details)
}

/// The call may or may not have taken effect, so it must not be retried blindly (UNAVAILABLE
/// would say it is safe to), only with the same idempotency key.
pub fn outcome_unknown(message: &str) -> Status {
    with_info(
        Code::Unknown,
        REASON_OUTCOME_UNKNOWN,
        message,
        ErrorDetails::new(),
    )
}

impl From<AppError> for Status {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(v) => invalid(&v),
            AppError::Rejected(r) => refusal(&r),
            AppError::Replayed(stored) => replayed(&stored),
            AppError::Webhook(reason) => webhook_rejected(reason),
            AppError::Overloaded(what) => overloaded(&format!(
                "server overloaded: too many {what} writes waiting"
            )),
            AppError::Unavailable(cause) => {
                tracing::warn!(error = %chain(&cause), "retryable failure");
                match cause {
                    StoreError::Conflict(_) => retry_in(
                        Code::Aborted,
                        REASON_TRANSACTION_CONFLICT,
                        "the transaction conflicted with another and was rolled back; retry",
                        Duration::from_millis(100),
                    ),
                    StoreError::Timeout(_) => retry_in(
                        Code::Unavailable,
                        REASON_DATABASE_TIMEOUT,
                        "the database did not finish in time and nothing was changed; retry shortly",
                        Duration::from_secs(1),
                    ),
                    _ => unavailable("service temporarily unavailable, retry shortly"),
                }
            }
            AppError::OutcomeUnknown(cause) => {
                tracing::warn!(error = %chain(&cause), "outcome unknown: the answer to a commit was lost");
                outcome_unknown(
                    "the change was sent to the database but its answer was lost, so it may or \
                     may not have been applied; retry with the same idempotency-key to learn which",
                )
            }
            AppError::Provider(cause) => {
                tracing::warn!(error = %cause, "provider call failed");
                match cause {
                    ProviderError::Retryable { retry_after, .. } => retry_in(
                        Code::Unavailable,
                        REASON_PROVIDER_UNAVAILABLE,
                        "the payment provider is unavailable and nothing was changed; retry shortly",
                        retry_after.unwrap_or(Duration::from_secs(1)),
                    ),
                    // Definitive refusals are Rejected; this arm is the unknown outcome.
                    _ => retry_in(
                        Code::Unavailable,
                        REASON_PROVIDER_OUTCOME_UNKNOWN,
                        "the payment provider's answer was lost; Coffer is settling what happened. \
                         Retry with the same idempotency-key to get the outcome",
                        Duration::from_secs(1),
                    ),
                }
            }
            AppError::Internal(cause) => {
                tracing::error!(error = %chain(cause.as_ref()), "internal error");
                with_info(
                    Code::Internal,
                    REASON_INTERNAL,
                    "internal error",
                    ErrorDetails::new(),
                )
            }
        }
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderError;

    /// A card decline reaches the caller as FAILED_PRECONDITION with the provider's code and
    /// the issuer's decline code in ErrorInfo's metadata.
    #[test]
    fn a_card_decline_names_its_decline_code() {
        let e = crate::app::journal::provider_error(ProviderError::Definitive {
            code: "card_declined".into(),
            message: "Your card has insufficient funds.".into(),
            decline_code: Some("insufficient_funds".into()),
        });
        let status: Status = e.into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "PROVIDER_REJECTED");
        assert_eq!(info.metadata["decline_code"], "insufficient_funds");
        assert_eq!(info.metadata["provider_code"], "card_declined");
        assert!(status.message().contains("insufficient funds"));

        let plain: Status =
            crate::app::journal::provider_error(ProviderError::definitive("bad", "no")).into();
        let info = plain.get_details_error_info().expect("error info");
        assert!(!info.metadata.contains_key("decline_code"));
    }
}
