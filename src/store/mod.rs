//! All SQL. Functions are named verb_noun, take `&mut PgConnection` (a transaction derefs to
//! one) and every tenant-owned query filters by `tenant_id`.

pub mod audit;
pub mod bench;
pub mod customers;
pub mod idempotency;
pub mod pool;
pub mod tenants;

use sqlx::migrate::Migrator;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or is shutting down; the caller may retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
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
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
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
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")
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

fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}
