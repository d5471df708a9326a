//! All SQL. Functions are named verb_noun, take `&mut PgConnection` (a transaction derefs to
//! one) and every tenant-owned query filters by `tenant_id`.

pub mod access;
pub mod audit;
pub mod bench;
pub mod checkout;
pub mod customers;
pub mod events;
pub mod idempotency;
pub mod inbox;
pub mod journal;
pub mod meters;
pub mod payments;
pub mod plans;
pub mod pool;
pub mod portal;
pub mod replica;
pub mod stats;
pub mod subscription_events;
pub mod subscriptions;
pub mod tenants;
pub mod usage;
pub mod usage_push;

use sqlx::migrate::Migrator;

/// The client span of one statement, with OpenTelemetry's database attributes: a child of the
/// use case's span, so a trace shows where a call spent its time in the database. Operation
/// and table are literals; no value of the statement ever becomes an attribute.
macro_rules! statement_span {
    ($operation:literal, $table:literal) => {
        tracing::info_span!(
            "db statement",
            otel.name = concat!($operation, " ", $table),
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = $operation,
            db.collection.name = $table,
        )
    };
}
pub(crate) use statement_span;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, broke the connection or is shutting down; the caller
    /// may retry (see [`StoreError::may_have_committed`] for a write whose answer was lost).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The statement ran past `statement_timeout` (57014) and was cancelled: nothing it did
    /// was committed, and a retry may well succeed.
    #[error("database statement timed out")]
    Timeout(#[source] sqlx::Error),
    /// The transaction lost a deadlock (40P01) or a serialization check (40001) and was rolled
    /// back; retrying it is the documented remedy.
    #[error("database transaction conflict")]
    Conflict(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A row holds a value the domain refuses; only a bug or a manual edit gets here.
    #[error("stored {what} is invalid: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl StoreError {
    /// The constraint name, when this is a unique violation.
    pub fn unique_violation(&self) -> Option<&str> {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                db.constraint()
            }
            _ => None,
        }
    }

    /// Whether nothing was committed and the same call may simply be tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::Conflict(_)
        )
    }

    /// Whether a statement that commits (a `COMMIT`, or a write outside a transaction) may
    /// have been applied although it failed: the connection broke after the statement was
    /// sent, so the answer was lost, not necessarily the change. Failures to get a connection
    /// at all (pool timeout, pool closed) sent nothing.
    pub fn may_have_committed(&self) -> bool {
        match self {
            StoreError::Unavailable(e) => {
                !matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
            }
            _ => false,
        }
    }
}

impl StoreError {
    /// The same kind of error, for each caller of a batch that failed as a whole: the same
    /// variant, and the same answer to [`StoreError::may_have_committed`].
    pub fn replicate(&self) -> StoreError {
        let lost = |e: &sqlx::Error| sqlx::Error::Io(std::io::Error::other(e.to_string()));
        match self {
            StoreError::Unavailable(sqlx::Error::PoolTimedOut) => {
                StoreError::Unavailable(sqlx::Error::PoolTimedOut)
            }
            StoreError::Unavailable(sqlx::Error::PoolClosed) => {
                StoreError::Unavailable(sqlx::Error::PoolClosed)
            }
            StoreError::Unavailable(e) => StoreError::Unavailable(lost(e)),
            StoreError::Timeout(e) => StoreError::Timeout(lost(e)),
            StoreError::Conflict(e) => StoreError::Conflict(lost(e)),
            StoreError::Database(e) => StoreError::Database(sqlx::Error::Protocol(e.to_string())),
            StoreError::Corrupt { what, detail } => StoreError::Corrupt {
                what,
                detail: detail.clone(),
            },
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        match code.as_deref() {
            Some("57014") => return StoreError::Timeout(e),
            Some("40001" | "40P01") => return StoreError::Conflict(e),
            _ => {}
        }
        let unavailable = match &e {
            // A connection that breaks mid-conversation (a proxy or load balancer in front of a
            // dead server accepts, then closes) surfaces as a protocol error.
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // Class 08 is "connection exception"; 57P01-03 are shutdowns and "cannot connect now";
            // 53300 is "too many connections".
            sqlx::Error::Database(_) => code.as_deref().is_some_and(|c| {
                c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}
