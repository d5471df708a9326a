//! The app layer's error: what went wrong, in terms a transport can map.

use crate::domain::Violations;
use crate::providers::ProviderError;
use crate::providers::signature::Rejection as SignatureRejection;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The caller's request is malformed; nothing was changed.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// The request is well-formed but refused (not found, conflict, wrong state, ...).
    #[error("{}", .0.message)]
    Rejected(Rejection),
    /// A dependency is down, timed out or lost a conflict, and nothing was committed: the
    /// caller should retry later. Which of the three the cause says picks the code.
    #[error("service unavailable")]
    Unavailable(#[source] StoreError),
    /// A commit was sent and its answer lost: the change may or may not have been applied.
    /// Only a retry under the same idempotency key is safe.
    #[error("outcome unknown")]
    OutcomeUnknown(#[source] StoreError),
    /// A webhook delivery failed verification (or its livemode disagrees); nothing was
    /// stored. The transport says only "invalid signature", with the reason as detail.
    #[error("invalid signature: {0}")]
    Webhook(SignatureRejection),
    /// The server is at a bound (here, a full write queue) and refused the call without
    /// running it; the caller should retry after a pause.
    #[error("overloaded: {0} queue full")]
    Overloaded(&'static str),
    /// A refusal stored under an idempotency key, replayed exactly as first sent: the
    /// transport's own encoding of it (for gRPC, a `google.rpc.Status`).
    #[error("replayed refusal")]
    Replayed(StoredStatus),
    /// A provider call failed without a definitive answer: nothing happened and the call may be
    /// retried ([`ProviderError::Retryable`]), or it may have happened and the operations
    /// journal will settle it ([`ProviderError::Unknown`]; retry under the same
    /// idempotency key). A definitive refusal is a [`AppError::Rejected`] instead.
    #[error("provider call failed")]
    Provider(#[source] ProviderError),
    /// A bug or an unexpected failure; logged with its cause, returned without detail.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The stored encoding of a refusal, opaque to this layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStatus(pub Vec<u8>);

/// A refusal with a stable, upper-case reason (listed in docs/api.md, "Error reasons").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub reason: String,
    pub message: String,
    /// Answered in the error's `ErrorInfo.metadata` (a card's `decline_code`, ...): machine
    /// readable facts a caller may act on; never a secret or card data.
    pub metadata: Vec<(&'static str, String)>,
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

    /// Whether a refusal of this kind is the same on every try, and so is stored against an
    /// idempotency key. ABORTED says "try again", so it never is.
    pub fn is_deterministic(self) -> bool {
        !matches!(self, RejectionKind::Aborted)
    }
}

impl AppError {
    pub fn rejected(kind: RejectionKind, reason: &str, message: impl Into<String>) -> Self {
        AppError::Rejected(Rejection {
            kind,
            reason: reason.to_owned(),
            message: message.into(),
            metadata: Vec::new(),
        })
    }

    pub fn not_found(reason: &str, message: impl Into<String>) -> Self {
        Self::rejected(RejectionKind::NotFound, reason, message)
    }

    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        AppError::Internal(e.into())
    }
}

impl AppError {
    /// The error of a statement that commits: a `COMMIT`, or a write outside a transaction.
    /// A connection lost after sending it leaves the outcome unknown, which must not read as
    /// "retry": a caller without an idempotency key would apply the change twice.
    pub fn from_commit(e: StoreError) -> Self {
        if e.may_have_committed() {
            AppError::OutcomeUnknown(e)
        } else {
            e.into()
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        if e.is_retryable() {
            AppError::Unavailable(e)
        } else {
            AppError::Internal(Box::new(e))
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
