//! Use cases: one module per service, plus authentication, tenant administration and the
//! background workers. This layer opens transactions, applies idempotency, and calls `store`
//! (and, later, `providers`); it never sees protobuf.

pub mod auth;
pub mod customers;
pub mod error;
pub mod idempotency;
pub mod sweeper;
pub mod tenants;

use sqlx::PgPool;

pub use error::{AppError, Rejection, RejectionKind};

use crate::domain::ids::{KeyId, TenantId};

/// Shared state of the use cases. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub pool: PgPool,
    pub auth: auth::Authenticator,
}

impl App {
    pub fn new(pool: PgPool) -> Self {
        Self {
            auth: auth::Authenticator::new(pool.clone()),
            pool,
        }
    }
}

/// The tenant a call acts for, and the key that made it (for the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantCtx {
    pub tenant: TenantId,
    pub key: KeyId,
}
