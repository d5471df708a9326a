//! Use cases: one struct per service, plus authentication, tenant administration and the
//! background workers. This layer opens transactions, applies idempotency, and calls `store`
//! (and, later, `providers`); it never sees protobuf.

pub mod access;
pub mod accounts;
pub mod auth;
pub mod changes;
pub mod checkout;
pub mod customers;
pub mod error;
pub mod events;
pub mod group_commit;
pub mod idempotency;
pub mod inbox;
pub mod journal;
pub mod mirror;
pub mod page;
pub mod payments;
pub mod portal;
pub mod providers;
pub mod sandbox;
pub mod subscriptions;
pub mod sweeper;
pub mod tenants;
pub mod triggers;
pub mod usage;
pub mod usage_push;

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::task::TaskTracker;

pub use error::{AppError, Rejection, RejectionKind, StoredStatus};
pub use idempotency::IdempotencyConfig;

use crate::domain::ids::{KeyId, TenantId};
use crate::settings::Settings;
use crate::store::replica::ReadPool;

/// The use cases, wired to one pool. Cheap to clone: each service holds only handles.
#[derive(Clone)]
pub struct App {
    pub pool: PgPool,
    /// Where reads that tolerate a bounded lag go (List*, GetUsage, GetBalance, and caches
    /// filled from the database): the read replica while it is within its bound, else `pool`.
    /// A read that must see the caller's own writes uses `pool`.
    reads: ReadPool,
    pub auth: auth::Authenticator,
    /// Every task the use cases spawn (mutations that outlive their call, for one), so
    /// shutdown can wait for them.
    pub tasks: TaskTracker,
    pub customers: customers::Customers,
    pub tenants: tenants::Tenants,
    pub usage: usage::Usage,
    pub subscriptions: subscriptions::Subscriptions,
    /// coffer.toml, read at start: provider accounts and per-tenant settings.
    pub settings: Arc<Settings>,
    pub events: events::Events,
    /// Checkout sessions, through the provider registry and the operations journal.
    pub checkout: checkout::Checkout,
    /// Payments, refunds and subscriptions, through the same registry and journal.
    pub payments: payments::Payments,
    /// CheckAccess and its cache, kept fresh by `changes`.
    pub access: access::Access,
    /// The change feed of subscriptions and WatchSubscriptionEvents.
    pub changes: changes::Changes,
    /// CreatePortalSession, and the sandbox portal's port into the lifecycle use cases.
    pub portal: portal::Portal,
}

impl App {
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, IdempotencyConfig::default())
    }

    pub fn with_config(pool: PgPool, idempotency: IdempotencyConfig) -> Self {
        Self::with_settings(pool, idempotency, Arc::default())
    }

    pub fn with_settings(
        pool: PgPool,
        idempotency: IdempotencyConfig,
        settings: Arc<Settings>,
    ) -> Self {
        let tasks = TaskTracker::new();
        let mutations = idempotency::Mutations::new(pool.clone(), idempotency, tasks.clone());
        let checkout = checkout::Checkout::new(
            pool.clone(),
            mutations.clone(),
            providers::Providers::new(settings.clone(), None),
        );
        let subscriptions = subscriptions::Subscriptions::new(
            pool.clone(),
            mutations.clone(),
            checkout.providers().clone(),
            checkout.journal().clone(),
        );
        Self {
            auth: auth::Authenticator::new(pool.clone()),
            customers: customers::Customers::new(pool.clone(), mutations.clone(), tasks.clone()),
            usage: usage::Usage::new(pool.clone(), mutations.clone(), tasks.clone()),
            portal: portal::Portal::new(
                pool.clone(),
                mutations.clone(),
                checkout.providers().clone(),
                checkout.journal().clone(),
                subscriptions.clone(),
            ),
            subscriptions,
            payments: payments::Payments::new(
                pool.clone(),
                mutations.clone(),
                checkout.providers().clone(),
                checkout.journal().clone(),
            ),
            checkout,
            settings: settings.clone(),
            events: events::Events::new(
                pool.clone(),
                mutations,
                tasks.clone(),
                accounts::Accounts::default(),
                events::WebhookConfig::default(),
            ),
            tenants: tenants::Tenants::new(pool.clone()),
            access: access::Access::new(pool.clone(), settings.clone()),
            changes: changes::Changes::new(
                pool.clone(),
                changes::ChangesConfig::default(),
                tasks.clone(),
            ),
            tasks,
            reads: ReadPool::primary_only(pool.clone()),
            pool,
        }
    }
}

impl App {
    /// The same app, ingesting webhooks for `accounts`, checked as `config` says. Without it
    /// no account exists and every delivery is NOT_FOUND.
    pub fn with_webhooks(
        mut self,
        accounts: accounts::Accounts,
        config: events::WebhookConfig,
    ) -> Self {
        self.events = events::Events::new(
            self.pool.clone(),
            self.events.mutations().clone(),
            self.tasks.clone(),
            accounts,
            config,
        );
        self.route_reads();
        self
    }
}

impl App {
    /// With the change stream configured (retention, polling, stream bound).
    pub fn with_changes(mut self, config: changes::ChangesConfig) -> Self {
        self.changes = changes::Changes::new(self.pool.clone(), config, self.tasks.clone());
        self
    }
}

impl App {
    /// The same app calling providers through `providers`: the configured accounts' adapters,
    /// and the sandbox when it runs (`serve --dev` / `--sandbox`: every tenant gets its own
    /// sandbox account).
    pub fn with_providers(mut self, providers: providers::Providers) -> Self {
        self.checkout = checkout::Checkout::new(
            self.pool.clone(),
            self.events.mutations().clone(),
            providers,
        );
        self.payments = payments::Payments::new(
            self.pool.clone(),
            self.events.mutations().clone(),
            self.checkout.providers().clone(),
            self.checkout.journal().clone(),
        );
        self.subscriptions = subscriptions::Subscriptions::new(
            self.pool.clone(),
            self.events.mutations().clone(),
            self.checkout.providers().clone(),
            self.checkout.journal().clone(),
        );
        self.route_reads();
        self.portal = portal::Portal::new(
            self.pool.clone(),
            self.events.mutations().clone(),
            self.checkout.providers().clone(),
            self.checkout.journal().clone(),
            self.subscriptions.clone(),
        );
        self
    }

    /// The same app sending lag-tolerant reads to `reads` (`--database-read-url`).
    pub fn with_read_pool(mut self, reads: ReadPool) -> Self {
        self.reads = reads;
        self.route_reads();
        self
    }

    /// The pool for reads that tolerate a bounded lag (see [`ReadPool`] for the bound): the
    /// read replica while it is within it, else the primary. Never for a read that must see
    /// the caller's own writes, nor inside a mutation.
    pub fn read_pool(&self) -> &PgPool {
        self.reads.get()
    }

    /// The read routing itself, for its checks and metrics.
    pub fn reads(&self) -> &ReadPool {
        &self.reads
    }

    fn route_reads(&mut self) {
        let reads = self.reads.clone();
        self.customers.set_reads(reads.clone());
        self.usage.set_reads(reads.clone());
        self.subscriptions.set_reads(reads.clone());
        self.events.set_reads(reads.clone());
        self.checkout.set_reads(reads.clone());
        self.payments.set_reads(reads);
    }
}

/// The tenant a call acts for, and the key that made it (for the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantCtx {
    pub tenant: TenantId,
    pub key: KeyId,
}
