//! Use cases: one module per service, plus authentication, tenant administration and the
//! background workers. This layer opens transactions, applies idempotency, and calls `store`
//! (and, later, `providers`); it never sees protobuf.

pub mod auth;
pub mod combine;
pub mod customers;
pub mod error;
pub mod idempotency;
pub mod sweeper;
pub mod tenants;

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::task::TaskTracker;

pub use error::{AppError, Rejection, RejectionKind};

use crate::domain::ids::{KeyId, TenantId};
use crate::store::customers::CustomerInsert;

/// Shared state of the use cases. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub pool: PgPool,
    pub auth: auth::Authenticator,
    /// Owns every task the use cases spawn, so shutdown can wait for them.
    pub tasks: TaskTracker,
    customer_writes: Arc<combine::Combiner<CustomerInsert>>,
}

impl App {
    pub fn new(pool: PgPool) -> Self {
        let writers = batch_writers(&pool);
        let tasks = TaskTracker::new();
        Self {
            auth: auth::Authenticator::new(pool.clone()),
            customer_writes: Arc::new(combine::Combiner::new(
                pool.clone(),
                tasks.clone(),
                writers,
                "customers",
                |conn, rows| Box::pin(crate::store::customers::insert_customers(conn, rows)),
            )),
            tasks,
            pool,
        }
    }
}

/// How many batches of one kind may be written at once. A quarter of the pool leaves the rest
/// to reads and to the general mutation path; fewer writers make larger batches.
fn batch_writers(pool: &PgPool) -> usize {
    (pool.options().get_max_connections() as usize / 4).max(1)
}

/// The tenant a call acts for, and the key that made it (for the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantCtx {
    pub tenant: TenantId,
    pub key: KeyId,
}
