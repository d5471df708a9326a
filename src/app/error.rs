//! The app layer's error: what went wrong, in terms a transport can map.

use crate::domain::Violations;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The caller's request is malformed; nothing was changed.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// The request is well-formed but refused (not found, conflict, wrong state, ...).
    #[error("{}", .0.message)]
    Rejected(Rejection),
    /// A dependency is down; the caller should retry later.
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    /// A bug or an unexpected failure; logged with its cause, returned without detail.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A refusal with a stable, upper-case reason (listed in ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Aborted,
    Unauthenticated,
    PermissionDenied,
}

impl RejectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::NotFound => "not_found",
            RejectionKind::AlreadyExists => "already_exists",
            RejectionKind::FailedPrecondition => "failed_precondition",
            RejectionKind::Aborted => "aborted",
            RejectionKind::Unauthenticated => "unauthenticated",
            RejectionKind::PermissionDenied => "permission_denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RejectionKind::NotFound,
            RejectionKind::AlreadyExists,
            RejectionKind::FailedPrecondition,
            RejectionKind::Aborted,
            RejectionKind::Unauthenticated,
            RejectionKind::PermissionDenied,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl AppError {
    pub fn rejected(kind: RejectionKind, reason: &str, message: impl Into<String>) -> Self {
        AppError::Rejected(Rejection {
            kind,
            reason: reason.to_owned(),
            message: message.into(),
        })
    }

    pub fn not_found(reason: &str, message: impl Into<String>) -> Self {
        Self::rejected(RejectionKind::NotFound, reason, message)
    }

    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        AppError::Internal(e.into())
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => AppError::Unavailable(e),
            other => AppError::Internal(Box::new(other)),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<Violations> for AppError {
    fn from(v: Violations) -> Self {
        AppError::Invalid(v)
    }
}
