//! `AppError` → `tonic::Status`, with the rich error model: every error carries an `ErrorInfo`
//! (domain "coffer", a stable reason), INVALID_ARGUMENT a `BadRequest` with one violation per
//! field, UNAVAILABLE and RESOURCE_EXHAUSTED a `RetryInfo`. Internal errors are logged with their cause chain and
//! returned with no detail.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::{AppError, RejectionKind};
use crate::domain::Violations;

pub const DOMAIN: &str = "coffer";
pub const REASON_INVALID: &str = "INVALID_REQUEST";
pub const REASON_UNAVAILABLE: &str = "UNAVAILABLE";
pub const REASON_INTERNAL: &str = "INTERNAL";
pub const REASON_UNAUTHENTICATED: &str = "UNAUTHENTICATED";
pub const REASON_SCOPE_MISSING: &str = "SCOPE_MISSING";
pub const REASON_OVERLOADED: &str = "OVERLOADED";
pub const REASON_OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";

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
            AppError::Rejected(r) => {
                let code = match r.kind {
                    RejectionKind::NotFound => Code::NotFound,
                    RejectionKind::AlreadyExists => Code::AlreadyExists,
                    RejectionKind::FailedPrecondition => Code::FailedPrecondition,
                    RejectionKind::Aborted => Code::Aborted,
                    RejectionKind::Unauthenticated => Code::Unauthenticated,
                    RejectionKind::PermissionDenied => Code::PermissionDenied,
                };
                with_info(code, &r.reason, r.message, ErrorDetails::new())
            }
            AppError::Unavailable(cause) => {
                tracing::warn!(error = %chain(&cause), "dependency unavailable");
                unavailable("service temporarily unavailable, retry shortly")
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
