//! The ProviderEvents use cases: ingesting a webhook delivery into the inbox, and a tenant's
//! operators listing and replaying their events.
//!
//! Ingest is, in order: find the account (unknown → NOT_FOUND); if the account lists the
//! addresses its deliveries may come from, check the delivery's source address against the
//! list, before a header or a byte of the body is looked at (outside it, or unknown →
//! PERMISSION_DENIED); verify the signature on the raw bytes with every active secret and read
//! the event id, type and livemode (`providers::webhook`); store it with one statement that
//! commits on its own, de-duplicated per (account, provider event id); answer. A rejected
//! delivery writes nothing, is logged (account, provider and reason, and for `source` the
//! source address: never a header, a secret or the body) and counted by provider and reason
//! in `coffer_webhooks_rejected`: [`REJECTED_SOURCE`], the signature's reasons
//! ([`signature::Rejection::ALL`]), and `unknown_account` (provider `unknown`) for a name no
//! account has. The sidecar counts what only it sees (`too_large`, …) in the same family
//! ([`WebhookMetrics::refused_before_an_account`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::store::replica::ReadPool;
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;

use super::accounts::{Accounts, REASON_ACCOUNT_NOT_FOUND};
use super::group_commit::GroupCommit;
use super::idempotency::{Done, IdempotentCall, Mutations};
use super::page::{self, Page};
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::event::{EventStatus, WebhookEvent};
use crate::domain::ids::EventId;
use crate::domain::page::{FilterDigest, PageSize};
use crate::providers::signature::{self, Check, Header};
use crate::providers::webhook;
use crate::store::{audit, events as store};

pub const REASON_WEBHOOK_SIGNATURE_INVALID: &str = "WEBHOOK_SIGNATURE_INVALID";
pub const REASON_WEBHOOK_SOURCE_NOT_ALLOWED: &str = "WEBHOOK_SOURCE_NOT_ALLOWED";
pub const REASON_EVENT_NOT_FOUND: &str = "EVENT_NOT_FOUND";
pub const REASON_EVENT_NOT_REPLAYABLE: &str = "EVENT_NOT_REPLAYABLE";
pub const REASON_EVENT_PAYLOAD_PURGED: &str = "EVENT_PAYLOAD_PURGED";

/// The list a page token of ListEvents belongs to.
const LIST: &str = "coffer.v1.ProviderEvents/ListEvents";

/// The payload bytes that weigh as one row in a batch: a batch carries at most
/// [`MAX_BATCH_WEIGHT`] of them (4 MiB of bodies, or 256 small deliveries), and a 1 MiB body
/// is written in a batch of its own.
const BYTES_PER_WEIGHT: usize = 16 << 10;
const MAX_BATCH_WEIGHT: usize = 256;
/// The most weight waiting for a writer (16 MiB of bodies); past it a delivery is refused
/// with RESOURCE_EXHAUSTED, and the provider retries.
const MAX_QUEUED_WEIGHT: usize = 1024;

/// Where "now" comes from: the system clock, or a fixed instant in tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(OffsetDateTime::now_utc))
    }

    pub fn fixed(at: OffsetDateTime) -> Self {
        Self(Arc::new(move || at))
    }

    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// How deliveries are checked.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The largest accepted distance between a signed timestamp and now, in the direction(s)
    /// each scheme's SDKs check (`providers::signature`).
    pub tolerance: Duration,
    /// How long a settled event keeps its payload (DESIGN §5.4); the sweeper removes it after.
    pub payload_retention: Duration,
    pub clock: Clock,
}

/// Payloads one purge statement removes: small enough to hold its row locks briefly.
const PURGE_BATCH: i64 = 1_000;

/// DESIGN §5.4's default: 90 days.
pub const DEFAULT_PAYLOAD_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            tolerance: Duration::from_secs(signature::DEFAULT_TOLERANCE_SECS),
            payload_retention: DEFAULT_PAYLOAD_RETENTION,
            clock: Clock::system(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    provider: &'static str,
    reason: &'static str,
}

/// The `provider` label of a rejection that names no known account.
pub const UNKNOWN_PROVIDER: &str = "unknown";
/// The `reason` of a delivery to a name no account has.
pub const REASON_UNKNOWN_ACCOUNT: &str = "unknown_account";
/// The `reason` of a delivery from outside its account's source allow-list (or from an
/// unknown source, to an account with a list).
pub const REJECTED_SOURCE: &str = "source";

/// The webhook counters. Labels are the provider (or `unknown`) and a fixed outcome or reason,
/// so their series are few and fixed, whatever callers send.
#[derive(Clone, Default)]
pub struct WebhookMetrics {
    received: Family<OutcomeLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
}

impl WebhookMetrics {
    /// Adds the counters to the registry `/metrics` serves.
    pub fn register(&self, registry: &mut Registry) {
        // prometheus-client appends `_total` to counters.
        registry.register(
            "coffer_webhooks_received",
            "Webhook deliveries by provider and outcome (stored, duplicate, rejected)",
            self.received.clone(),
        );
        registry.register(
            "coffer_webhooks_rejected",
            "Webhook deliveries rejected, by provider and reason (source, missing, malformed, mismatch, stale, livemode, unparseable; with provider unknown: unknown_account, and the sidecar's too_large, headers_too_large, unreadable, timeout)",
            self.rejected.clone(),
        );
    }

    fn outcome(&self, provider: ProviderKind, outcome: &'static str) {
        self.received
            .get_or_create(&OutcomeLabels {
                provider: provider.as_str(),
                outcome,
            })
            .inc();
    }

    /// A delivery to a known account, refused for `reason`.
    fn rejection(&self, provider: ProviderKind, reason: &'static str) {
        self.outcome(provider, "rejected");
        self.rejected(provider.as_str(), reason);
    }

    fn rejected(&self, provider: &'static str, reason: &'static str) {
        self.rejected
            .get_or_create(&ReasonLabels { provider, reason })
            .inc();
    }

    /// Counts a delivery refused before any account was found for it, under provider
    /// `unknown`: one to a name no account has, or one the sidecar refused on its own (it
    /// holds no account table), which is how `coffer serve` puts the sidecar's refusals in
    /// this family. `reason` is one of a fixed few, never a caller's text.
    pub fn refused_before_an_account(&self, reason: &'static str) {
        self.rejected(UNKNOWN_PROVIDER, reason);
    }
}

/// What IngestEvent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub event_id: EventId,
    /// The account already had this provider event; nothing was written.
    pub duplicate: bool,
}

/// The ProviderEvents use cases. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    pool: PgPool,
    /// Lag-tolerant reads (List*, GetUsage, GetBalance): the read replica while it is within
    /// its bound, else `pool`.
    reads: ReadPool,
    mutations: Mutations,
    /// Concurrent deliveries share a statement and a commit.
    inserts: GroupCommit<store::NewEvent, Option<store::Stored>>,
    accounts: Accounts,
    config: WebhookConfig,
    metrics: WebhookMetrics,
}

impl Events {
    /// Sends lag-tolerant reads to `reads` (the app's [`ReadPool`]).
    pub(crate) fn set_reads(&mut self, reads: ReadPool) {
        self.reads = reads;
    }

    pub fn new(
        pool: PgPool,
        mutations: Mutations,
        tasks: TaskTracker,
        accounts: Accounts,
        config: WebhookConfig,
    ) -> Self {
        let inserts = GroupCommit::new(
            "inbox inserts",
            pool.clone(),
            tasks,
            |conn, rows| Box::pin(store::insert_events(conn, rows)),
            store::order_events,
        )
        .weighed(
            |row| row.payload.len().div_ceil(BYTES_PER_WEIGHT).max(1),
            MAX_BATCH_WEIGHT,
            MAX_QUEUED_WEIGHT,
        );
        Self {
            inserts,
            reads: ReadPool::primary_only(pool.clone()),
            pool,
            mutations,
            accounts,
            config,
            metrics: WebhookMetrics::default(),
        }
    }

    pub fn mutations(&self) -> &Mutations {
        &self.mutations
    }

    pub fn metrics(&self) -> &WebhookMetrics {
        &self.metrics
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Verifies a delivery for `account` from `source` (the address it came from, when known)
    /// and stores it in the inbox; answers once it is committed, or found already there. The
    /// insert is shared with concurrent deliveries (group commit): one statement and one
    /// commit for a batch.
    pub async fn ingest(
        &self,
        account: &str,
        source: Option<IpAddr>,
        headers: &[Header],
        body: Vec<u8>,
    ) -> Result<Ingested, AppError> {
        let account = match self.accounts.find(account).await {
            Ok(account) => account,
            Err(AppError::Rejected(r)) if r.reason == REASON_ACCOUNT_NOT_FOUND => {
                // The name is the caller's text: logged only when it could be an account's.
                let name = AccountName::parse(account).ok();
                tracing::warn!(
                    account = name.as_ref().map(AccountName::as_str),
                    provider = UNKNOWN_PROVIDER,
                    reason = REASON_UNKNOWN_ACCOUNT,
                    "webhook delivery rejected"
                );
                self.metrics
                    .refused_before_an_account(REASON_UNKNOWN_ACCOUNT);
                return Err(AppError::Rejected(r));
            }
            Err(e) => return Err(e),
        };
        // First, before a header or a byte of the body is read. An unknown source is refused
        // too (fail closed): a sidecar too old to send one cannot get past a list.
        if let Some(allowed) = &account.webhook_sources
            && !source.is_some_and(|ip| allowed.contains(ip))
        {
            let source = source.map(|ip| ip.to_canonical().to_string());
            tracing::warn!(
                account = %account.name,
                provider = account.provider.as_str(),
                reason = REJECTED_SOURCE,
                source = source.as_deref().unwrap_or("unknown"),
                "webhook delivery rejected"
            );
            self.metrics.rejection(account.provider, REJECTED_SOURCE);
            return Err(AppError::rejected(
                RejectionKind::PermissionDenied,
                REASON_WEBHOOK_SOURCE_NOT_ALLOWED,
                "source address not allowed",
            ));
        }
        let now = self.config.clock.now();
        let check = Check {
            now: now.unix_timestamp(),
            tolerance_secs: self.config.tolerance.as_secs(),
        };
        let incoming = match webhook::accept(&account, headers, &body, check) {
            Ok(incoming) => incoming,
            Err(reason) => {
                tracing::warn!(
                    account = %account.name,
                    provider = account.provider.as_str(),
                    reason = reason.as_str(),
                    "webhook delivery rejected"
                );
                self.metrics.rejection(account.provider, reason.as_str());
                return Err(AppError::Webhook(reason));
            }
        };
        let row = store::NewEvent {
            tenant: account.tenant,
            id: EventId::generate(),
            account: account.name.clone(),
            provider: account.provider,
            provider_event_id: incoming.provider_event_id,
            event_type: incoming.event_type,
            payload: body,
            received_at: super::customers::now_micros(),
            // The worker that applies the event links its span to this one.
            traceparent: crate::telemetry::traceparent(&tracing::Span::current()),
        };
        let (provider_event_id, event_type) =
            (row.provider_event_id.clone(), row.event_type.clone());
        // The statement commits on its own; an answer lost in flight may hide a commit, which
        // the group commit reports as OUTCOME_UNKNOWN (the sidecar's 503: the provider's retry
        // is then a duplicate).
        let stored = match self.inserts.write(row).await? {
            Some(stored) => stored,
            // The first delivery committed while this one's insert waited on it, after this
            // statement's snapshot: a fresh read sees it.
            None => {
                let mut conn = self.pool.acquire().await?;
                let id = store::find_event_id(&mut conn, &account.name, &provider_event_id)
                    .await?
                    .ok_or_else(|| {
                        AppError::internal("an inbox insert found a conflict but no row")
                    })?;
                store::Stored {
                    id,
                    inserted: false,
                }
            }
        };
        self.metrics.outcome(
            account.provider,
            if stored.inserted {
                "stored"
            } else {
                "duplicate"
            },
        );
        let event_id = EventId::from_uuid(stored.id);
        // DEBUG, not INFO: every stored delivery is in the inbox (ListEvents) and counted, and
        // a line each at thousands a second cost more CPU than storing them. Rejections,
        // which need an operator's eye, are logged at WARN.
        tracing::debug!(
            account = %account.name,
            provider = account.provider.as_str(),
            event_type = %event_type,
            duplicate = !stored.inserted,
            event_id = %event_id,
            "webhook delivery stored"
        );
        Ok(Ingested {
            event_id,
            duplicate: !stored.inserted,
        })
    }

    /// One page of the tenant's events, optionally of one status and one account.
    pub async fn list_events(
        &self,
        ctx: &TenantCtx,
        status: Option<EventStatus>,
        account: Option<&AccountName>,
        size: PageSize,
        token: Option<&str>,
    ) -> Result<Page<WebhookEvent>, AppError> {
        let filters = FilterDigest::of(
            LIST,
            &[
                status.map_or("", EventStatus::as_str),
                account.map_or("", AccountName::as_str),
            ],
        );
        let after = page::start(token, filters)?.unwrap_or(uuid::Uuid::nil());
        let mut conn = self.reads.get().acquire().await?;
        let rows = store::list_events(
            &mut conn,
            ctx.tenant,
            status,
            account,
            after,
            size.get() as i64 + 1,
        )
        .await?;
        Ok(Page::of(rows, size, filters, |e| e.id.as_uuid()))
    }

    /// Puts a dead, failed or ignored event back in the queue, due now, with its attempts
    /// reset.
    /// Removes the payloads of settled events older than the retention period, a batch (one
    /// statement) at a time; returns how many (DESIGN §5.4).
    pub async fn purge_payloads(&self) -> Result<u64, crate::store::StoreError> {
        let Ok(retention) = time::Duration::try_from(self.config.payload_retention) else {
            return Ok(0);
        };
        let Some(cutoff) = self.config.clock.now().checked_sub(retention) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let mut conn = self.pool.acquire().await?;
            let n = store::purge_event_payloads(&mut conn, cutoff, PURGE_BATCH).await?;
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    pub async fn replay_event(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        id: EventId,
    ) -> Result<Done<WebhookEvent>, AppError> {
        let ctx = *ctx;
        let now = super::customers::now_micros();
        self.mutations
            .run_atomic(&ctx, call, move |conn| {
                Box::pin(async move {
                    let event =
                        store::lock_event(conn, ctx.tenant, id)
                            .await?
                            .ok_or_else(|| {
                                AppError::not_found(REASON_EVENT_NOT_FOUND, "event not found")
                            })?;
                    if !event.status.replayable() {
                        return Err(AppError::rejected(
                            RejectionKind::FailedPrecondition,
                            REASON_EVENT_NOT_REPLAYABLE,
                            format!(
                                "the event is {}; only dead, failed or ignored events are replayed",
                                event.status.as_str()
                            ),
                        ));
                    }
                    if event.payload_purged_at.is_some() {
                        return Err(AppError::rejected(
                            RejectionKind::FailedPrecondition,
                            REASON_EVENT_PAYLOAD_PURGED,
                            "the event's payload was removed after the retention period; \
                             there is nothing left to apply",
                        ));
                    }
                    let event = store::requeue_event(conn, ctx.tenant, id, now).await?;
                    audit::insert_audit(
                        conn,
                        ctx.tenant,
                        Some(ctx.key),
                        "webhook_event.replayed",
                        "webhook_event",
                        id.as_uuid(),
                    )
                    .await?;
                    Ok(event)
                })
            })
            .await
    }
}
