//! The sandbox provider's own tables (`sandbox_accounts`, `sandbox_customers`,
//! `sandbox_checkout_sessions`, its payments, refunds, subscriptions and outbox): what a real
//! provider would hold on its side. Its SQL lives in the adapter, not in `store/`: these tables
//! are the fake provider's, and nothing but the sandbox reads or writes them (the one exception
//! to "store/ is the only place with SQL", written in ARCHITECTURE.md).

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::status::{PaymentState, SubscriptionState};
use crate::domain::checkout::{Mode, PaymentStatus, Status};
use crate::domain::ids::TenantId;
use crate::domain::payment::RefundStatus;
use crate::store::{StoreError, corrupt, statement_span};

/// A status column read into its type: a value the type does not know is a corrupt row
/// (the tables' CHECKs allow none, so only a manual edit or a migration gone wrong gets here).
fn decode<T>(
    what: &'static str,
    value: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(value).ok_or_else(|| corrupt(what, format!("{value:?}")))
}

/// A sandbox checkout session as stored.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub url: String,
    pub status: Status,
    pub payment_status: PaymentStatus,
    pub expires_at: OffsetDateTime,
    pub version: i64,
}

/// A [`SessionRow`] as its columns come back, before its statuses are read.
struct SessionRecord {
    id: String,
    url: String,
    status: String,
    payment_status: String,
    expires_at: OffsetDateTime,
    version: i64,
}

impl SessionRecord {
    fn decode(self) -> Result<SessionRow, StoreError> {
        Ok(SessionRow {
            status: decode("sandbox session status", &self.status, Status::parse)?,
            payment_status: decode(
                "sandbox session payment status",
                &self.payment_status,
                PaymentStatus::parse,
            )?,
            id: self.id,
            url: self.url,
            expires_at: self.expires_at,
            version: self.version,
        })
    }
}

/// A sandbox checkout session to insert.
pub struct NewSession<'a> {
    pub account: &'a str,
    pub id: &'a str,
    pub client_reference: Uuid,
    pub customer: &'a str,
    pub mode: Mode,
    pub payment_status: PaymentStatus,
    pub line_items: serde_json::Value,
    pub amount_total: i64,
    pub currency: &'a str,
    pub trial_days: i16,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    pub url: &'a str,
    pub expires_at: OffsetDateTime,
}

/// The tenant's sandbox account (name and secret), made with `name` and `secret` if it has
/// none yet. `None` for a tenant that does not exist.
pub async fn ensure_sandbox_account(
    conn: &mut PgConnection,
    tenant: TenantId,
    name: impl FnOnce(&str) -> String,
    secret: &str,
) -> Result<Option<(String, String)>, StoreError> {
    if let Some(found) = find_sandbox_account(conn, tenant).await? {
        return Ok(Some(found));
    }
    let Some(tenant_name) =
        sqlx::query_scalar!("SELECT name FROM tenants WHERE id = $1", tenant.as_uuid())
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    sqlx::query!(
        "INSERT INTO sandbox_accounts (tenant_id, account, webhook_secret, created_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (tenant_id) DO NOTHING",
        tenant.as_uuid(),
        name(&tenant_name),
        secret,
    )
    .execute(&mut *conn)
    .await?;
    find_sandbox_account(conn, tenant).await
}

pub async fn find_sandbox_account(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<(String, String)>, StoreError> {
    let row = sqlx::query!(
        "SELECT account, webhook_secret FROM sandbox_accounts WHERE tenant_id = $1",
        tenant.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.account, r.webhook_secret)))
}

/// The sandbox customer made for `client_reference`, created as `id` if there is none.
pub async fn upsert_customer(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    client_reference: Uuid,
) -> Result<String, StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_customers (account, id, client_reference, version, created_at)
         VALUES ($1, $2, $3, 1, now())
         ON CONFLICT (account, client_reference) DO NOTHING",
        account,
        id,
        client_reference,
    )
    .execute(&mut *conn)
    .await?;
    find_customer(conn, account, client_reference)
        .await?
        .ok_or_else(|| crate::store::corrupt("sandbox customer", "missing after insert"))
}

pub async fn find_customer(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM sandbox_customers WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?)
}

/// Inserts the session unless one exists for its client reference; returns the one stored.
pub async fn upsert_session(
    conn: &mut PgConnection,
    s: NewSession<'_>,
) -> Result<SessionRow, StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_checkout_sessions
             (account, id, client_reference, customer, mode, status, payment_status, line_items,
              amount_total, currency, trial_days, success_url, cancel_url, url, expires_at,
              version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, now(), now())
         ON CONFLICT (account, client_reference) DO NOTHING",
        s.account,
        s.id,
        s.client_reference,
        s.customer,
        s.mode.as_str(),
        s.payment_status.as_str(),
        Json(&s.line_items) as _,
        s.amount_total,
        s.currency,
        s.trial_days,
        s.success_url,
        s.cancel_url,
        s.url,
        s.expires_at,
    )
    .execute(&mut *conn)
    .await?;
    find_session_by_reference(conn, s.account, s.client_reference)
        .await?
        .ok_or_else(|| crate::store::corrupt("sandbox session", "missing after insert"))
}

pub async fn find_session(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<SessionRow>, StoreError> {
    sqlx::query_as!(
        SessionRecord,
        "SELECT id, url, status, payment_status, expires_at, version
         FROM sandbox_checkout_sessions WHERE account = $1 AND id = $2",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?
    .map(SessionRecord::decode)
    .transpose()
}

pub async fn find_session_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<SessionRow>, StoreError> {
    sqlx::query_as!(
        SessionRecord,
        "SELECT id, url, status, payment_status, expires_at, version
         FROM sandbox_checkout_sessions WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?
    .map(SessionRecord::decode)
    .transpose()
}

/// Expires the session if it is open, bumping its version; `None` if it is not open (or
/// does not exist).
pub async fn expire_session(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<SessionRow>, StoreError> {
    sqlx::query_as!(
        SessionRecord,
        "UPDATE sandbox_checkout_sessions
         SET status = 'expired', version = version + 1, updated_at = now()
         WHERE account = $1 AND id = $2 AND status = 'open'
         RETURNING id, url, status, payment_status, expires_at, version",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?
    .map(SessionRecord::decode)
    .transpose()
}

/// Queues an event body for delivery, due now. `webhook_id` is unique: an event is queued once.
pub async fn enqueue_event(
    conn: &mut PgConnection,
    account: &str,
    webhook_id: &str,
    event_type: &str,
    body: &[u8],
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_outbox (account, webhook_id, event_type, body, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, now(), now())",
        account,
        webhook_id,
        event_type,
        body,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// An outbox row claimed for delivery, with what signing it needs.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub account: String,
    pub webhook_id: String,
    pub event_type: String,
    pub body: Vec<u8>,
    /// This attempt's number (1 for the first).
    pub attempts: i32,
    /// The account's tenant and stored secret; `None` if the account row is gone (which no
    /// path does: accounts are never deleted).
    pub tenant: Option<uuid::Uuid>,
    pub secret: Option<String>,
}

/// Claims up to `limit` due outbox rows, oldest first (newest first when `newest_first`),
/// skipping rows another worker holds, and leases them: `attempts` + 1 and the next attempt
/// `lease` from now, so a worker that dies mid-send leaves its rows due again when the lease
/// runs out. Commit before sending: the lease, not a row lock, keeps other workers off.
pub async fn claim_deliveries(
    conn: &mut PgConnection,
    limit: i64,
    lease: std::time::Duration,
    newest_first: bool,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let rows = sqlx::query!(
        r#"WITH due AS (
               SELECT id FROM sandbox_outbox
               WHERE status = 'pending' AND next_attempt_at <= now()
               ORDER BY CASE WHEN $3 THEN -id ELSE id END
               LIMIT $1
               FOR UPDATE SKIP LOCKED
           ), claimed AS (
               UPDATE sandbox_outbox o
               SET attempts = o.attempts + 1,
                   next_attempt_at = now() + make_interval(secs => $2)
               FROM due WHERE o.id = due.id
               RETURNING o.id, o.account, o.webhook_id, o.event_type, o.body, o.attempts
           )
           SELECT c.id AS "id!", c.account AS "account!", c.webhook_id AS "webhook_id!",
                  c.event_type AS "event_type!", c.body AS "body!", c.attempts AS "attempts!",
                  a.tenant_id AS "tenant?", a.webhook_secret AS "secret?"
           FROM claimed c LEFT JOIN sandbox_accounts a ON a.account = c.account
           ORDER BY CASE WHEN $3 THEN -c.id ELSE c.id END"#,
        limit,
        lease.as_secs_f64(),
        newest_first,
    )
    .fetch_all(conn)
    .instrument(statement_span!("UPDATE", "sandbox_outbox"))
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimedDelivery {
            id: r.id,
            account: r.account,
            webhook_id: r.webhook_id,
            event_type: r.event_type,
            body: r.body,
            attempts: r.attempts,
            tenant: r.tenant,
            secret: r.secret,
        })
        .collect())
}

/// Marks a delivery done: the endpoint answered 2xx.
pub async fn mark_delivered(conn: &mut PgConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_outbox
         SET status = 'delivered', delivered_at = now(), last_error = NULL
         WHERE id = $1 AND status = 'pending'",
        id,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_outbox"))
    .await?;
    Ok(())
}

/// Schedules the next attempt of a delivery that failed, `retry_in` from now, with why (a
/// status code or a network error: never the body or a secret).
pub async fn reschedule_delivery(
    conn: &mut PgConnection,
    id: i64,
    retry_in: std::time::Duration,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_outbox
         SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3
         WHERE id = $1 AND status = 'pending'",
        id,
        retry_in.as_secs_f64(),
        error,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_outbox"))
    .await?;
    Ok(())
}

/// A sandbox account found by name: its tenant and stored secret.
pub async fn find_sandbox_account_by_name(
    conn: &mut PgConnection,
    account: &str,
) -> Result<Option<(TenantId, String)>, StoreError> {
    let row = sqlx::query!(
        "SELECT tenant_id, webhook_secret FROM sandbox_accounts WHERE account = $1",
        account
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (TenantId::from_uuid(r.tenant_id), r.webhook_secret)))
}

/// What moving an account's clock found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMove {
    /// Moved: the account's sandbox time is now this.
    Moved(OffsetDateTime),
    /// `to` is before the account's sandbox time, which stays this.
    InThePast(OffsetDateTime),
    /// The tenant has no sandbox account of that name.
    NotFound,
}

/// The sandbox time of the tenant's account `account` (`None`: no such account).
pub async fn sandbox_now(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT now() + clock_offset AS "now!" FROM sandbox_accounts
           WHERE tenant_id = $1 AND account = $2"#,
        tenant.as_uuid(),
        account,
    )
    .fetch_optional(conn)
    .await?)
}

/// Moves the tenant's sandbox account `account` forward so its sandbox time is `to`, under
/// a row lock (concurrent moves serialise, and none moves it back).
pub async fn advance_clock(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    to: OffsetDateTime,
) -> Result<ClockMove, StoreError> {
    let Some(now) = sqlx::query_scalar!(
        r#"SELECT now() + clock_offset AS "now!" FROM sandbox_accounts
           WHERE tenant_id = $1 AND account = $2 FOR UPDATE"#,
        tenant.as_uuid(),
        account,
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(ClockMove::NotFound);
    };
    if to < now {
        return Ok(ClockMove::InThePast(now));
    }
    let now = sqlx::query_scalar!(
        r#"UPDATE sandbox_accounts SET clock_offset = $3 - now()
           WHERE tenant_id = $1 AND account = $2
           RETURNING now() + clock_offset AS "now!""#,
        tenant.as_uuid(),
        account,
        to,
    )
    .fetch_one(conn)
    .await?;
    Ok(ClockMove::Moved(now))
}

/// A checkout session that has just expired, with what its event says about it.
#[derive(Debug, Clone)]
pub struct ExpiredSession {
    pub account: String,
    pub id: String,
    pub client_reference: Uuid,
    pub customer: String,
    pub mode: Mode,
    pub status: Status,
    pub payment_status: PaymentStatus,
    pub amount_total: i64,
    pub currency: String,
    pub expires_at: OffsetDateTime,
    pub payment: Option<String>,
    pub subscription: Option<String>,
    pub version: i64,
    /// The account's sandbox time when it expired.
    pub sandbox_now: OffsetDateTime,
}

/// An [`ExpiredSession`] as its columns come back, before its statuses are read.
struct ExpiredRecord {
    account: String,
    id: String,
    client_reference: Uuid,
    customer: String,
    mode: String,
    status: String,
    payment_status: String,
    amount_total: i64,
    currency: String,
    expires_at: OffsetDateTime,
    payment: Option<String>,
    subscription: Option<String>,
    version: i64,
    sandbox_now: OffsetDateTime,
}

impl ExpiredRecord {
    fn decode(self) -> Result<ExpiredSession, StoreError> {
        Ok(ExpiredSession {
            mode: decode("sandbox session mode", &self.mode, Mode::parse)?,
            status: decode("sandbox session status", &self.status, Status::parse)?,
            payment_status: decode(
                "sandbox session payment status",
                &self.payment_status,
                PaymentStatus::parse,
            )?,
            account: self.account,
            id: self.id,
            client_reference: self.client_reference,
            customer: self.customer,
            amount_total: self.amount_total,
            currency: self.currency,
            expires_at: self.expires_at,
            payment: self.payment,
            subscription: self.subscription,
            version: self.version,
            sandbox_now: self.sandbox_now,
        })
    }
}

/// Expires, in one statement, up to `limit` open sessions whose `expires_at` has passed on
/// their account's clock (only `account`'s when given), bumping their versions; sessions
/// another transaction holds are left for the next pass. Returns them, for their events.
pub async fn expire_due_sessions(
    conn: &mut PgConnection,
    account: Option<&str>,
    limit: i64,
) -> Result<Vec<ExpiredSession>, StoreError> {
    let rows = sqlx::query_as!(
        ExpiredRecord,
        r#"WITH due AS (
               SELECT s.account, s.id, now() + a.clock_offset AS sandbox_now
               FROM sandbox_checkout_sessions s
               JOIN sandbox_accounts a ON a.account = s.account
               WHERE s.status = 'open' AND s.expires_at <= now() + a.clock_offset
                 -- No account's clock is further on: a range of the expiry index.
                 AND s.expires_at <= now() + (SELECT max(clock_offset) FROM sandbox_accounts)
                 AND ($1::text IS NULL OR s.account = $1)
               ORDER BY s.expires_at
               LIMIT $2
               FOR UPDATE OF s SKIP LOCKED
           ), expired AS (
               UPDATE sandbox_checkout_sessions s
               SET status = 'expired', version = s.version + 1, updated_at = now()
               FROM due WHERE s.account = due.account AND s.id = due.id
               RETURNING s.account, s.id, s.client_reference, s.customer, s.mode, s.status,
                         s.payment_status, s.amount_total, s.currency, s.expires_at, s.version,
                         due.sandbox_now
           )
           SELECT e.account AS "account!", e.id AS "id!",
                  e.client_reference AS "client_reference!", e.customer AS "customer!",
                  e.mode AS "mode!", e.status AS "status!",
                  e.payment_status AS "payment_status!", e.amount_total AS "amount_total!",
                  e.currency AS "currency!", e.expires_at AS "expires_at!",
                  p.id AS "payment?", sub.id AS "subscription?", e.version AS "version!",
                  e.sandbox_now AS "sandbox_now!"
           FROM expired e
           LEFT JOIN sandbox_payments p ON p.account = e.account AND p.session_id = e.id
           LEFT JOIN sandbox_subscriptions sub
               ON sub.account = e.account AND sub.session_id = e.id
           ORDER BY e.expires_at, e.id"#,
        account,
        limit,
    )
    .fetch_all(conn)
    .instrument(statement_span!("UPDATE", "sandbox_checkout_sessions"))
    .await?;
    rows.into_iter().map(ExpiredRecord::decode).collect()
}

/// Queues several event bodies in one statement (see [`enqueue_event`]).
pub async fn enqueue_events(
    conn: &mut PgConnection,
    accounts: &[String],
    webhook_ids: &[String],
    event_types: &[String],
    bodies: &[Vec<u8>],
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_outbox (account, webhook_id, event_type, body, next_attempt_at, created_at)
         SELECT account, webhook_id, event_type, body, now(), now()
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[])
             AS e (account, webhook_id, event_type, body)",
        accounts,
        webhook_ids,
        event_types,
        bodies,
    )
    .execute(conn)
    .instrument(statement_span!("INSERT", "sandbox_outbox"))
    .await?;
    Ok(())
}

// ---- The hosted checkout page: a session as the page sees it, its payment, its subscription.

/// A sandbox checkout session whole, with the ids of its payment and subscription and the
/// sandbox's clock as it read it: what the hosted page shows and what its events carry.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub account: String,
    pub id: String,
    pub client_reference: Uuid,
    pub customer: String,
    pub mode: Mode,
    pub status: Status,
    pub payment_status: PaymentStatus,
    /// `[{name, unit_amount, quantity, amount_total, interval?, interval_count?}]`.
    pub line_items: serde_json::Value,
    pub amount_total: i64,
    pub currency: String,
    pub trial_days: i16,
    pub success_url: String,
    pub cancel_url: String,
    pub expires_at: OffsetDateTime,
    /// A trial's card is waiting on the confirmation step (4000 0025 0000 3155).
    pub setup_requires_action: bool,
    pub version: i64,
    pub payment: Option<String>,
    /// The payment's status, when there is one (`RequiresAction` while it waits on the
    /// confirmation step).
    pub payment_attempt: Option<PaymentState>,
    pub subscription: Option<String>,
    /// The sandbox's now: the database's `now()` plus the account's clock offset.
    pub now: OffsetDateTime,
}

/// A [`Checkout`] as its columns come back, before its statuses are read.
struct CheckoutRecord {
    account: String,
    id: String,
    client_reference: Uuid,
    customer: String,
    mode: String,
    status: String,
    payment_status: String,
    line_items: serde_json::Value,
    amount_total: i64,
    currency: String,
    trial_days: i16,
    success_url: String,
    cancel_url: String,
    expires_at: OffsetDateTime,
    setup_requires_action: bool,
    version: i64,
    payment: Option<String>,
    payment_attempt: Option<String>,
    subscription: Option<String>,
    now: OffsetDateTime,
}

impl CheckoutRecord {
    fn decode(self) -> Result<Checkout, StoreError> {
        Ok(Checkout {
            mode: decode("sandbox session mode", &self.mode, Mode::parse)?,
            status: decode("sandbox session status", &self.status, Status::parse)?,
            payment_status: decode(
                "sandbox session payment status",
                &self.payment_status,
                PaymentStatus::parse,
            )?,
            payment_attempt: self
                .payment_attempt
                .map(|p| decode("sandbox payment status", &p, PaymentState::parse))
                .transpose()?,
            account: self.account,
            id: self.id,
            client_reference: self.client_reference,
            customer: self.customer,
            line_items: self.line_items,
            amount_total: self.amount_total,
            currency: self.currency,
            trial_days: self.trial_days,
            success_url: self.success_url,
            cancel_url: self.cancel_url,
            expires_at: self.expires_at,
            setup_requires_action: self.setup_requires_action,
            version: self.version,
            payment: self.payment,
            subscription: self.subscription,
            now: self.now,
        })
    }
}

/// A sandbox payment as stored. No card number or CVC exists anywhere to be read.
#[derive(Debug, Clone)]
pub struct Payment {
    pub account: String,
    pub id: String,
    pub session_id: String,
    pub client_reference: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentState,
    pub failure_code: Option<String>,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub fails_on_renewal: bool,
    pub amount_refunded: i64,
    /// A renewal's: the subscription and the period it pays for; `None` for a session's own.
    pub renewal: Option<(String, OffsetDateTime)>,
    /// A renewal's: the end of the period it pays for (`None` for charges made before it was
    /// kept).
    pub period_end: Option<OffsetDateTime>,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A [`Payment`] as its columns come back, before its status is read.
struct PaymentRecord {
    account: String,
    id: String,
    session_id: String,
    client_reference: Uuid,
    amount: i64,
    currency: String,
    status: String,
    failure_code: Option<String>,
    card_brand: Option<String>,
    card_last4: Option<String>,
    fails_on_renewal: bool,
    amount_refunded: i64,
    subscription_id: Option<String>,
    period_start: Option<OffsetDateTime>,
    period_end: Option<OffsetDateTime>,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl PaymentRecord {
    fn decode(self) -> Result<Payment, StoreError> {
        Ok(Payment {
            status: decode("sandbox payment status", &self.status, PaymentState::parse)?,
            account: self.account,
            id: self.id,
            session_id: self.session_id,
            client_reference: self.client_reference,
            amount: self.amount,
            currency: self.currency,
            failure_code: self.failure_code,
            card_brand: self.card_brand,
            card_last4: self.card_last4,
            fails_on_renewal: self.fails_on_renewal,
            amount_refunded: self.amount_refunded,
            renewal: self.subscription_id.zip(self.period_start),
            period_end: self.period_end,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A sandbox refund, with its payment's currency (refunds are in the payment's currency).
#[derive(Debug, Clone)]
pub struct Refund {
    pub account: String,
    pub id: String,
    pub payment_id: String,
    pub client_reference: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: RefundStatus,
    pub version: i64,
    pub created_at: OffsetDateTime,
}

/// A [`Refund`] as its columns come back, before its status is read.
struct RefundRecord {
    account: String,
    id: String,
    payment_id: String,
    client_reference: Uuid,
    amount: i64,
    currency: String,
    status: String,
    version: i64,
    created_at: OffsetDateTime,
}

impl RefundRecord {
    fn decode(self) -> Result<Refund, StoreError> {
        Ok(Refund {
            status: decode("sandbox refund status", &self.status, RefundStatus::parse)?,
            account: self.account,
            id: self.id,
            payment_id: self.payment_id,
            client_reference: self.client_reference,
            amount: self.amount,
            currency: self.currency,
            version: self.version,
            created_at: self.created_at,
        })
    }
}

/// A sandbox subscription as stored.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub account: String,
    pub id: String,
    pub session_id: String,
    pub client_reference: Uuid,
    pub customer: String,
    pub status: SubscriptionState,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub fails_on_renewal: bool,
    pub cancel_at_period_end: bool,
    pub collection_paused: bool,
    pub canceled_at: Option<OffsetDateTime>,
    pub cancel_reason: String,
    /// What each period charges, once known (subscriptions made before renewals existed have
    /// none, and are not renewed).
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub period_months: Option<i32>,
    /// Dunning: the unpaid period's payment, the retries made of it, and when the next is due.
    pub retries: i32,
    pub next_retry_at: Option<OffsetDateTime>,
    pub unpaid_payment: Option<String>,
    pub version: i64,
    pub created_at: OffsetDateTime,
}

/// A [`Subscription`] as its columns come back, before its status is read.
struct SubscriptionRecord {
    account: String,
    id: String,
    session_id: String,
    client_reference: Uuid,
    customer: String,
    status: String,
    current_period_start: OffsetDateTime,
    current_period_end: OffsetDateTime,
    trial_end: Option<OffsetDateTime>,
    fails_on_renewal: bool,
    cancel_at_period_end: bool,
    collection_paused: bool,
    canceled_at: Option<OffsetDateTime>,
    cancel_reason: String,
    amount: Option<i64>,
    currency: Option<String>,
    period_months: Option<i32>,
    retries: i32,
    next_retry_at: Option<OffsetDateTime>,
    unpaid_payment: Option<String>,
    version: i64,
    created_at: OffsetDateTime,
}

impl SubscriptionRecord {
    fn decode(self) -> Result<Subscription, StoreError> {
        Ok(Subscription {
            status: decode(
                "sandbox subscription status",
                &self.status,
                SubscriptionState::parse,
            )?,
            account: self.account,
            id: self.id,
            session_id: self.session_id,
            client_reference: self.client_reference,
            customer: self.customer,
            current_period_start: self.current_period_start,
            current_period_end: self.current_period_end,
            trial_end: self.trial_end,
            fails_on_renewal: self.fails_on_renewal,
            cancel_at_period_end: self.cancel_at_period_end,
            collection_paused: self.collection_paused,
            canceled_at: self.canceled_at,
            cancel_reason: self.cancel_reason,
            amount: self.amount,
            currency: self.currency,
            period_months: self.period_months,
            retries: self.retries,
            next_retry_at: self.next_retry_at,
            unpaid_payment: self.unpaid_payment,
            version: self.version,
            created_at: self.created_at,
        })
    }
}

/// The session `id` (of any account), for showing. Takes no lock.
pub async fn find_checkout(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<Checkout>, StoreError> {
    sqlx::query_as!(
        CheckoutRecord,
        r#"SELECT s.account, s.id, s.client_reference, s.customer, s.mode, s.status,
                  s.payment_status, s.line_items, s.amount_total, s.currency, s.trial_days,
                  s.success_url, s.cancel_url, s.expires_at, s.setup_requires_action, s.version,
                  p.id AS "payment?", p.status AS "payment_attempt?",
                  sub.id AS "subscription?",
                  now() + COALESCE(a.clock_offset, '0') AS "now!"
           FROM sandbox_checkout_sessions s
           LEFT JOIN sandbox_accounts a ON a.account = s.account
           LEFT JOIN sandbox_payments p ON p.account = s.account AND p.session_id = s.id
           LEFT JOIN sandbox_subscriptions sub
                  ON sub.account = s.account AND sub.session_id = s.id
           WHERE s.id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_checkout_sessions"))
    .await?
    .map(CheckoutRecord::decode)
    .transpose()
}

/// The session `id`, locked for the rest of the transaction: every card attempt on one session
/// takes this lock first, so two submits of one form run one after the other and the second
/// sees what the first did.
pub async fn lock_checkout(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<Checkout>, StoreError> {
    sqlx::query_as!(
        CheckoutRecord,
        r#"SELECT s.account, s.id, s.client_reference, s.customer, s.mode, s.status,
                  s.payment_status, s.line_items, s.amount_total, s.currency, s.trial_days,
                  s.success_url, s.cancel_url, s.expires_at, s.setup_requires_action, s.version,
                  p.id AS "payment?", p.status AS "payment_attempt?",
                  sub.id AS "subscription?",
                  now() + COALESCE(a.clock_offset, '0') AS "now!"
           FROM sandbox_checkout_sessions s
           LEFT JOIN sandbox_accounts a ON a.account = s.account
           LEFT JOIN sandbox_payments p ON p.account = s.account AND p.session_id = s.id
           LEFT JOIN sandbox_subscriptions sub
                  ON sub.account = s.account AND sub.session_id = s.id
           WHERE s.id = $1
           FOR UPDATE OF s"#,
        id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_checkout_sessions"))
    .await?
    .map(CheckoutRecord::decode)
    .transpose()
}

/// Marks the session complete with `payment_status`, bumping its version.
pub async fn complete_session(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    payment_status: PaymentStatus,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_checkout_sessions
         SET status = 'complete', payment_status = $3, setup_requires_action = false,
             version = version + 1, updated_at = $4
         WHERE account = $1 AND id = $2 AND status = 'open'",
        account,
        id,
        payment_status.as_str(),
        now,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_checkout_sessions"))
    .await?;
    Ok(())
}

/// Sets or clears a trial's pending confirmation step. Not a change a consumer sees (the
/// session's object has no such field), so the version stays.
pub async fn set_setup_requires_action(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    pending: bool,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_checkout_sessions SET setup_requires_action = $3
         WHERE account = $1 AND id = $2",
        account,
        id,
        pending,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_checkout_sessions"))
    .await?;
    Ok(())
}

/// One card attempt's result on a session's payment.
pub struct PaymentAttempt<'a> {
    pub account: &'a str,
    /// The id the payment gets if this attempt is the session's first.
    pub new_id: &'a str,
    pub session_id: &'a str,
    pub client_reference: Uuid,
    pub amount: i64,
    pub currency: &'a str,
    pub status: PaymentState,
    pub failure_code: Option<&'a str>,
    pub card_brand: &'a str,
    pub card_last4: &'a str,
    pub fails_on_renewal: bool,
    pub now: OffsetDateTime,
}

/// Records an attempt on the session's payment: the first attempt makes it (version 1), every
/// later one moves it on (version + 1). One payment per session, whatever the attempts.
pub async fn record_attempt(
    conn: &mut PgConnection,
    a: PaymentAttempt<'_>,
) -> Result<Payment, StoreError> {
    sqlx::query_as!(
        PaymentRecord,
        "INSERT INTO sandbox_payments
             (account, id, session_id, client_reference, amount, currency, status, failure_code,
              card_brand, card_last4, fails_on_renewal, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12)
         ON CONFLICT (account, session_id) WHERE subscription_id IS NULL DO UPDATE
         SET status = EXCLUDED.status, failure_code = EXCLUDED.failure_code,
             card_brand = EXCLUDED.card_brand, card_last4 = EXCLUDED.card_last4,
             fails_on_renewal = EXCLUDED.fails_on_renewal,
             version = sandbox_payments.version + 1, updated_at = EXCLUDED.updated_at
         RETURNING account, id, session_id, client_reference, amount, currency, status,
                   failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                   subscription_id, period_start, period_end, version, created_at, updated_at",
        a.account,
        a.new_id,
        a.session_id,
        a.client_reference,
        a.amount,
        a.currency,
        a.status.as_str(),
        a.failure_code,
        a.card_brand,
        a.card_last4,
        a.fails_on_renewal,
        a.now,
    )
    .fetch_one(conn)
    .instrument(statement_span!("INSERT", "sandbox_payments"))
    .await?
    .decode()
}

pub async fn find_payment_for_session(
    conn: &mut PgConnection,
    account: &str,
    session_id: &str,
) -> Result<Option<Payment>, StoreError> {
    sqlx::query_as!(
        PaymentRecord,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                subscription_id, period_start, period_end, version, created_at, updated_at
         FROM sandbox_payments
         WHERE account = $1 AND session_id = $2 AND subscription_id IS NULL",
        account,
        session_id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?
    .map(PaymentRecord::decode)
    .transpose()
}

/// Settles a payment waiting on its confirmation step: `succeeded`, or `failed` with
/// `failure_code`. Bumps its version.
pub async fn settle_payment(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    status: PaymentState,
    failure_code: Option<&str>,
    now: OffsetDateTime,
) -> Result<Payment, StoreError> {
    sqlx::query_as!(
        PaymentRecord,
        "UPDATE sandbox_payments
         SET status = $3, failure_code = $4, version = version + 1, updated_at = $5
         WHERE account = $1 AND id = $2
         RETURNING account, id, session_id, client_reference, amount, currency, status,
                   failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                   subscription_id, period_start, period_end, version, created_at, updated_at",
        account,
        id,
        status.as_str(),
        failure_code,
        now,
    )
    .fetch_one(conn)
    .instrument(statement_span!("UPDATE", "sandbox_payments"))
    .await?
    .decode()
}

/// A subscription to insert, made by a completed subscription checkout.
pub struct NewSubscription<'a> {
    pub account: &'a str,
    pub id: &'a str,
    pub session_id: &'a str,
    pub client_reference: Uuid,
    pub customer: &'a str,
    pub status: SubscriptionState,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub fails_on_renewal: bool,
    pub amount: i64,
    pub currency: &'a str,
    pub period_months: i32,
    pub now: OffsetDateTime,
    /// An INCOMPLETE subscription's expiry (its first charge declined): kept where a retry's
    /// time is, so the renewal pass finds it due.
    pub expires_at: Option<OffsetDateTime>,
}

/// Inserts the session's subscription (version 1). The caller holds the session's lock and
/// has seen it open, so no subscription exists for it yet.
pub async fn insert_subscription(
    conn: &mut PgConnection,
    s: NewSubscription<'_>,
) -> Result<Subscription, StoreError> {
    sqlx::query_as!(
        SubscriptionRecord,
        "INSERT INTO sandbox_subscriptions
             (account, id, session_id, client_reference, customer, status, current_period_start,
              current_period_end, trial_end, fails_on_renewal, amount, currency, period_months,
              next_retry_at, version, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $13, $14, $15, 1, $11)
         RETURNING account, id, session_id, client_reference, customer, status,
                   current_period_start, current_period_end, trial_end, fails_on_renewal, cancel_at_period_end,
                   collection_paused, canceled_at, cancel_reason, amount, currency, period_months, retries,
                next_retry_at, unpaid_payment, version, created_at",
        s.account,
        s.id,
        s.session_id,
        s.client_reference,
        s.customer,
        s.status.as_str(),
        s.current_period_start,
        s.current_period_end,
        s.trial_end,
        s.fails_on_renewal,
        s.now,
        s.amount,
        s.currency,
        s.period_months,
        s.expires_at,
    )
    .fetch_one(conn)
    .instrument(statement_span!("INSERT", "sandbox_subscriptions"))
    .await?
    .decode()
}

// ---- Changes to subscriptions (the lifecycle calls).

/// The subscription `id`, locked for the rest of the transaction, with the account's sandbox
/// time.
pub async fn lock_subscription(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<(Subscription, OffsetDateTime)>, StoreError> {
    let Some(now) = sqlx::query_scalar!(
        r#"SELECT now() + COALESCE(a.clock_offset, '0') AS "now!"
           FROM sandbox_subscriptions s
           LEFT JOIN sandbox_accounts a ON a.account = s.account
           WHERE s.account = $1 AND s.id = $2
           FOR UPDATE OF s"#,
        account,
        id,
    )
    .fetch_optional(&mut *conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?
    else {
        return Ok(None);
    };
    let sub = find_subscription(conn, account, id)
        .await?
        .ok_or_else(|| corrupt("sandbox subscription", "missing under its lock"))?;
    Ok(Some((sub, now)))
}

pub async fn find_subscription(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as!(
        SubscriptionRecord,
        "SELECT account, id, session_id, client_reference, customer, status,
                current_period_start, current_period_end, trial_end, fails_on_renewal,
                cancel_at_period_end, collection_paused, canceled_at, cancel_reason, amount, currency,
                period_months, retries, next_retry_at, unpaid_payment, version, created_at
         FROM sandbox_subscriptions WHERE account = $1 AND id = $2",
        account,
        id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?
    .map(SubscriptionRecord::decode)
    .transpose()
}

/// The customer's subscriptions that wait for a card (PAUSED: a trial ended without one;
/// INCOMPLETE: the first charge was declined), with a price to charge, locked in id order.
pub async fn lock_waiting_for_card(
    conn: &mut PgConnection,
    account: &str,
    customer: &str,
) -> Result<Vec<Subscription>, StoreError> {
    sqlx::query_as!(
        SubscriptionRecord,
        "SELECT account, id, session_id, client_reference, customer, status,
                current_period_start, current_period_end, trial_end, fails_on_renewal,
                cancel_at_period_end, collection_paused, canceled_at, cancel_reason, amount, currency,
                period_months, retries, next_retry_at, unpaid_payment, version, created_at
         FROM sandbox_subscriptions
         WHERE account = $1 AND customer = $2 AND status IN ('paused', 'incomplete')
           AND amount IS NOT NULL
         ORDER BY id
         FOR UPDATE",
        account,
        customer,
    )
    .fetch_all(conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?
    .into_iter()
    .map(SubscriptionRecord::decode)
    .collect()
}

/// Records that the change `change_reference` (Coffer's change id) was made to subscription
/// `id`, so it is never made twice: a repeat is answered with the subscription as it is.
pub async fn record_subscription_change(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    change_reference: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_subscription_changes (account, client_reference, subscription_id,
                                                   created_at)
         VALUES ($1, $2, $3, now())",
        account,
        change_reference,
        id,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The subscription a change (by Coffer's change id) was made to, if it was made.
pub async fn find_changed_subscription(
    conn: &mut PgConnection,
    account: &str,
    change: Uuid,
) -> Result<Option<Subscription>, StoreError> {
    let Some(id) = sqlx::query_scalar!(
        "SELECT subscription_id FROM sandbox_subscription_changes
         WHERE account = $1 AND client_reference = $2",
        account,
        change,
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    find_subscription(conn, account, &id).await
}

/// A subscription's lifecycle fields after a change, to write.
pub struct SubscriptionChange<'a> {
    pub status: SubscriptionState,
    pub cancel_at_period_end: bool,
    pub collection_paused: bool,
    pub canceled_at: Option<OffsetDateTime>,
    pub cancel_reason: &'a str,
}

/// Writes a locked subscription's change (bumping its version) and records the change's id,
/// so the same change is never made twice.
pub async fn change_subscription(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    change_reference: Uuid,
    c: &SubscriptionChange<'_>,
) -> Result<Subscription, StoreError> {
    record_subscription_change(conn, account, id, change_reference).await?;
    sqlx::query_as!(
        SubscriptionRecord,
        "UPDATE sandbox_subscriptions
         SET status = $3, cancel_at_period_end = $4, collection_paused = $5, canceled_at = $6,
             cancel_reason = $7, version = version + 1
         WHERE account = $1 AND id = $2
         RETURNING account, id, session_id, client_reference, customer, status,
                   current_period_start, current_period_end, trial_end, fails_on_renewal,
                   cancel_at_period_end, collection_paused, canceled_at, cancel_reason, amount, currency,
                   period_months, retries, next_retry_at, unpaid_payment, version, created_at",
        account,
        id,
        c.status.as_str(),
        c.cancel_at_period_end,
        c.collection_paused,
        c.canceled_at,
        c.cancel_reason,
    )
    .fetch_one(conn)
    .instrument(statement_span!("UPDATE", "sandbox_subscriptions"))
    .await?
    .decode()
}

// ---- Renewals (the clock's pass, `renewals`).

/// The live subscription (of `account`, or of any) whose next renewal or retry is the
/// earliest due by its account's clock, locked (skipping one another pass holds), with its
/// account's tenant and sandbox time.
pub async fn lock_next_due(
    conn: &mut PgConnection,
    account: Option<&str>,
) -> Result<Option<(Subscription, TenantId, OffsetDateTime)>, StoreError> {
    let Some(row) = sqlx::query!(
        r#"SELECT s.account, s.id, a.tenant_id, now() + a.clock_offset AS "now!"
           FROM sandbox_subscriptions s
           JOIN sandbox_accounts a ON a.account = s.account
           WHERE ($1::text IS NULL OR s.account = $1)
             AND s.status IN ('incomplete', 'trialing', 'active', 'past_due')
             AND s.amount IS NOT NULL
             AND LEAST(s.current_period_end, COALESCE(s.next_retry_at, 'infinity'))
                 <= now() + a.clock_offset
           ORDER BY LEAST(s.current_period_end, COALESCE(s.next_retry_at, 'infinity'))
           LIMIT 1
           FOR UPDATE OF s SKIP LOCKED"#,
        account,
    )
    .fetch_optional(&mut *conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?
    else {
        return Ok(None);
    };
    let sub = find_subscription(conn, &row.account, &row.id)
        .await?
        .ok_or_else(|| corrupt("sandbox subscription", "missing under its lock"))?;
    Ok(Some((sub, TenantId::from_uuid(row.tenant_id), row.now)))
}

/// A renewal's charge to record.
pub struct NewRenewal<'a> {
    pub account: &'a str,
    pub new_id: &'a str,
    pub subscription: &'a Subscription,
    pub period_start: OffsetDateTime,
    /// The end of the period it pays for.
    pub period_end: OffsetDateTime,
    pub amount: i64,
    pub currency: &'a str,
    pub status: PaymentState,
    pub failure_code: Option<&'a str>,
}

/// The charge of `subscription`'s period starting `period_start`: made once (version 1); if
/// it exists already (a pass that crashed after charging), the one there.
pub async fn insert_renewal(
    conn: &mut PgConnection,
    r: NewRenewal<'_>,
) -> Result<Payment, StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_payments
             (account, id, session_id, client_reference, amount, currency, status, failure_code,
              fails_on_renewal, subscription_id, period_start, period_end, version, created_at,
              updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $11, $11)
         ON CONFLICT (account, subscription_id, period_start) WHERE subscription_id IS NOT NULL
         DO NOTHING",
        r.account,
        r.new_id,
        r.subscription.session_id,
        r.subscription.client_reference,
        r.amount,
        r.currency,
        r.status.as_str(),
        r.failure_code,
        r.subscription.fails_on_renewal,
        r.subscription.id,
        r.period_start,
        r.period_end,
    )
    .execute(&mut *conn)
    .instrument(statement_span!("INSERT", "sandbox_payments"))
    .await?;
    sqlx::query_as!(
        PaymentRecord,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                   failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                   subscription_id, period_start, period_end, version, created_at, updated_at
         FROM sandbox_payments
         WHERE account = $1 AND subscription_id = $2 AND period_start = $3",
        r.account,
        r.subscription.id,
        r.period_start,
    )
    .fetch_one(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?
    .decode()
}

/// A subscription's state after a renewal step, to write (its version bumped).
pub struct Renewed {
    pub status: SubscriptionState,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub cancel_at_period_end: bool,
    pub collection_paused: bool,
    pub canceled_at: Option<OffsetDateTime>,
    pub retries: i32,
    pub next_retry_at: Option<OffsetDateTime>,
    pub unpaid_payment: Option<String>,
}

pub async fn write_renewal(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    r: &Renewed,
) -> Result<Subscription, StoreError> {
    sqlx::query_as!(
        SubscriptionRecord,
        "UPDATE sandbox_subscriptions
         SET status = $3, current_period_start = $4, current_period_end = $5,
             cancel_at_period_end = $6, collection_paused = $7, canceled_at = $8, retries = $9,
             next_retry_at = $10, unpaid_payment = $11, version = version + 1
         WHERE account = $1 AND id = $2
         RETURNING account, id, session_id, client_reference, customer, status,
                   current_period_start, current_period_end, trial_end, fails_on_renewal,
                   cancel_at_period_end, collection_paused, canceled_at, cancel_reason, amount,
                   currency, period_months, retries, next_retry_at, unpaid_payment, version,
                   created_at",
        account,
        id,
        r.status.as_str(),
        r.current_period_start,
        r.current_period_end,
        r.cancel_at_period_end,
        r.collection_paused,
        r.canceled_at,
        r.retries,
        r.next_retry_at,
        r.unpaid_payment.as_deref(),
    )
    .fetch_one(conn)
    .instrument(statement_span!("UPDATE", "sandbox_subscriptions"))
    .await?
    .decode()
}

// ---- The sandbox's API reads of its money, and its refunds.

/// The payment of the session Coffer created as `client_reference` (its checkout id).
pub async fn find_payment_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<Payment>, StoreError> {
    sqlx::query_as!(
        PaymentRecord,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                subscription_id, period_start, period_end, version, created_at, updated_at
         FROM sandbox_payments
         WHERE account = $1 AND client_reference = $2 AND subscription_id IS NULL",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?
    .map(PaymentRecord::decode)
    .transpose()
}

/// The subscription a session made, if it made one.
pub async fn find_subscription_for_session(
    conn: &mut PgConnection,
    account: &str,
    session_id: &str,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as!(
        SubscriptionRecord,
        "SELECT account, id, session_id, client_reference, customer, status,
                current_period_start, current_period_end, trial_end, fails_on_renewal, cancel_at_period_end,
                collection_paused, canceled_at, cancel_reason, amount, currency, period_months, retries,
                next_retry_at, unpaid_payment, version, created_at
         FROM sandbox_subscriptions WHERE account = $1 AND session_id = $2",
        account,
        session_id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?
    .map(SubscriptionRecord::decode)
    .transpose()
}

pub async fn find_subscription_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as!(
        SubscriptionRecord,
        "SELECT account, id, session_id, client_reference, customer, status,
                current_period_start, current_period_end, trial_end, fails_on_renewal, cancel_at_period_end,
                collection_paused, canceled_at, cancel_reason, amount, currency, period_months, retries,
                next_retry_at, unpaid_payment, version, created_at
         FROM sandbox_subscriptions WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?
    .map(SubscriptionRecord::decode)
    .transpose()
}

pub async fn find_refund_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<Refund>, StoreError> {
    sqlx::query_as!(
        RefundRecord,
        "SELECT r.account, r.id, r.payment_id, r.client_reference, r.amount, p.currency,
                r.status, r.version, r.created_at
         FROM sandbox_refunds r
         JOIN sandbox_payments p ON p.account = r.account AND p.id = r.payment_id
         WHERE r.account = $1 AND r.client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_refunds"))
    .await?
    .map(RefundRecord::decode)
    .transpose()
}

/// A sandbox payment locked for a refund: its status, amount and what was refunded.
pub async fn lock_payment(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<Payment>, StoreError> {
    sqlx::query_as!(
        PaymentRecord,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                subscription_id, period_start, period_end, version, created_at, updated_at
         FROM sandbox_payments WHERE account = $1 AND id = $2 FOR UPDATE",
        account,
        id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?
    .map(PaymentRecord::decode)
    .transpose()
}

/// A succeeded refund of `amount` on a locked payment: the refund row and the payment's
/// `amount_refunded` (its CHECK stops an over-refund), the payment's version bumped.
pub async fn insert_refund(
    conn: &mut PgConnection,
    id: &str,
    payment: &Payment,
    client_reference: Uuid,
    amount: i64,
) -> Result<Refund, StoreError> {
    let created_at = sqlx::query_scalar!(
        "INSERT INTO sandbox_refunds (account, id, payment_id, client_reference, amount, status,
                                      version, created_at)
         VALUES ($1, $2, $3, $4, $5, 'succeeded', 1, now())
         RETURNING created_at",
        payment.account,
        id,
        payment.id,
        client_reference,
        amount,
    )
    .fetch_one(&mut *conn)
    .instrument(statement_span!("INSERT", "sandbox_refunds"))
    .await?;
    sqlx::query!(
        "UPDATE sandbox_payments
         SET amount_refunded = amount_refunded + $3, version = version + 1, updated_at = now()
         WHERE account = $1 AND id = $2",
        payment.account,
        payment.id,
        amount,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_payments"))
    .await?;
    Ok(Refund {
        account: payment.account.clone(),
        id: id.to_owned(),
        payment_id: payment.id.clone(),
        client_reference,
        amount,
        currency: payment.currency.clone(),
        // The statement's literal: the sandbox's refunds succeed at once.
        status: RefundStatus::Succeeded,
        version: 1,
        created_at,
    })
}

// ---- Plan changes (ChangeSubscriptionPlan).

/// A locked subscription's per-period amount, changed now.
pub async fn set_subscription_amount(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    amount: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_subscriptions SET amount = $3 WHERE account = $1 AND id = $2",
        account,
        id,
        amount,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_subscriptions"))
    .await?;
    Ok(())
}

/// Schedules a locked subscription's amount for its next period (replacing one scheduled).
pub async fn schedule_amount(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    amount: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_scheduled_changes (account, subscription_id, amount, created_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (account, subscription_id) DO UPDATE SET amount = EXCLUDED.amount",
        account,
        id,
        amount,
    )
    .execute(conn)
    .instrument(statement_span!("INSERT", "sandbox_scheduled_changes"))
    .await?;
    Ok(())
}

/// Takes a locked subscription's scheduled amount, if any, making it the subscription's: what
/// the renewal starting the next period charges.
pub async fn take_scheduled_amount(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<i64>, StoreError> {
    let taken = sqlx::query_scalar!(
        "DELETE FROM sandbox_scheduled_changes WHERE account = $1 AND subscription_id = $2
         RETURNING amount",
        account,
        id,
    )
    .fetch_optional(&mut *conn)
    .instrument(statement_span!("DELETE", "sandbox_scheduled_changes"))
    .await?;
    if let Some(amount) = taken {
        set_subscription_amount(conn, account, id, amount).await?;
    }
    Ok(taken)
}

// ---- Subscriptions made through the API (CreateSubscription).

/// The customer's card on file on `account`: the card of its newest succeeded checkout
/// payment, of its newest subscription that has one (a trial checkout saves the card
/// without charging it), or the one it saved in the portal, whichever is newest. `Some(true)` when that card fails every later charge (0341);
/// `None` when the customer never gave a card.
pub async fn find_card_on_file(
    conn: &mut PgConnection,
    account: &str,
    customer: &str,
) -> Result<Option<bool>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT c.fails AS "fails!" FROM (
               SELECT p.fails_on_renewal AS fails, p.created_at
               FROM sandbox_payments p
               JOIN sandbox_checkout_sessions s ON s.account = p.account AND s.id = p.session_id
               WHERE p.account = $1 AND s.customer = $2 AND p.status = 'succeeded'
                 AND p.subscription_id IS NULL
               UNION ALL
               SELECT fails_on_renewal, created_at FROM sandbox_subscriptions
               WHERE account = $1 AND customer = $2 AND card_on_file
               UNION ALL
               SELECT card_fails_on_renewal, card_updated_at FROM sandbox_customers
               WHERE account = $1 AND id = $2 AND card_fails_on_renewal IS NOT NULL
           ) c
           ORDER BY c.created_at DESC LIMIT 1"#,
        account,
        customer,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?)
}

/// Marks a subscription as having no card on file (a trial begun without one).
pub async fn set_no_card_on_file(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_subscriptions SET card_on_file = false WHERE account = $1 AND id = $2",
        account,
        id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes the customer's card on file (`fails_on_renewal`: the 0341 card) subscription `id`'s,
/// which had none: what a resume charges.
pub async fn adopt_card(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    fails_on_renewal: bool,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_subscriptions SET card_on_file = true, fails_on_renewal = $3
         WHERE account = $1 AND id = $2",
        account,
        id,
        fails_on_renewal,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_subscriptions"))
    .await?;
    Ok(())
}

/// Whether a subscription has a card to charge when its trial ends.
pub async fn has_card_on_file(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT card_on_file FROM sandbox_subscriptions WHERE account = $1 AND id = $2",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?
    .unwrap_or(true))
}

/// The payment of the period starting `period_start` of subscription `id`, if charged.
pub async fn find_renewal(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    period_start: OffsetDateTime,
) -> Result<Option<Payment>, StoreError> {
    sqlx::query_as!(
        PaymentRecord,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                subscription_id, period_start, period_end, version, created_at, updated_at
         FROM sandbox_payments
         WHERE account = $1 AND subscription_id = $2 AND period_start = $3",
        account,
        id,
        period_start,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?
    .map(PaymentRecord::decode)
    .transpose()
}

/// The sandbox time of `account` (its clock's offset on the wall clock); `None` for an
/// account the sandbox does not hold.
pub async fn account_now(
    conn: &mut PgConnection,
    account: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT now() + clock_offset AS "now!" FROM sandbox_accounts WHERE account = $1"#,
        account,
    )
    .fetch_optional(conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    /// The `what` of a corrupt row, or a panic naming what came instead.
    fn corrupt_what<T: std::fmt::Debug>(decoded: Result<T, StoreError>) -> &'static str {
        match decoded {
            Err(StoreError::Corrupt { what, .. }) => what,
            other => panic!("expected a corrupt row, got {other:?}"),
        }
    }

    fn session(status: &str, payment_status: &str) -> SessionRecord {
        SessionRecord {
            id: "cs_sbx_1".into(),
            url: "http://127.0.0.1/sandbox/checkout/cs_sbx_1".into(),
            status: status.into(),
            payment_status: payment_status.into(),
            expires_at: at(1_764_590_000),
            version: 2,
        }
    }

    fn checkout(mode: &str, payment_attempt: Option<&str>) -> CheckoutRecord {
        CheckoutRecord {
            account: "acme-sandbox".into(),
            id: "cs_sbx_1".into(),
            client_reference: Uuid::nil(),
            customer: "cus_sbx_1".into(),
            mode: mode.into(),
            status: "open".into(),
            payment_status: "unpaid".into(),
            line_items: serde_json::json!([]),
            amount_total: 2_900,
            currency: "USD".into(),
            trial_days: 0,
            success_url: "https://shop.example/ok".into(),
            cancel_url: "https://shop.example/cancel".into(),
            expires_at: at(1_764_590_000),
            setup_requires_action: false,
            version: 1,
            payment: payment_attempt.map(|_| "py_sbx_1".into()),
            payment_attempt: payment_attempt.map(Into::into),
            subscription: None,
            now: at(1_764_580_000),
        }
    }

    fn payment(status: &str) -> PaymentRecord {
        PaymentRecord {
            account: "acme-sandbox".into(),
            id: "py_sbx_1".into(),
            session_id: "cs_sbx_1".into(),
            client_reference: Uuid::nil(),
            amount: 2_900,
            currency: "USD".into(),
            status: status.into(),
            failure_code: None,
            card_brand: Some("visa".into()),
            card_last4: Some("4242".into()),
            fails_on_renewal: false,
            amount_refunded: 0,
            subscription_id: None,
            period_start: None,
            period_end: None,
            version: 1,
            created_at: at(1),
            updated_at: at(1),
        }
    }

    fn refund(status: &str) -> RefundRecord {
        RefundRecord {
            account: "acme-sandbox".into(),
            id: "re_sbx_1".into(),
            payment_id: "py_sbx_1".into(),
            client_reference: Uuid::nil(),
            amount: 500,
            currency: "USD".into(),
            status: status.into(),
            version: 1,
            created_at: at(1),
        }
    }

    fn subscription(status: &str) -> SubscriptionRecord {
        SubscriptionRecord {
            account: "acme-sandbox".into(),
            id: "sub_sbx_1".into(),
            session_id: "cs_sbx_1".into(),
            client_reference: Uuid::nil(),
            customer: "cus_sbx_1".into(),
            status: status.into(),
            current_period_start: at(100),
            current_period_end: at(200),
            trial_end: None,
            fails_on_renewal: false,
            cancel_at_period_end: false,
            collection_paused: false,
            canceled_at: None,
            cancel_reason: String::new(),
            amount: None,
            currency: None,
            period_months: None,
            retries: 0,
            next_retry_at: None,
            unpaid_payment: None,
            version: 1,
            created_at: at(100),
        }
    }

    #[test]
    fn rows_read_their_statuses_into_types() {
        let s = session("expired", "no_payment_required").decode().unwrap();
        assert_eq!(
            (s.status, s.payment_status, s.version),
            (Status::Expired, PaymentStatus::NoPaymentRequired, 2)
        );
        let c = checkout("subscription", Some("requires_action"))
            .decode()
            .unwrap();
        assert_eq!(
            (c.mode, c.status, c.payment_attempt),
            (
                Mode::Subscription,
                Status::Open,
                Some(PaymentState::RequiresAction)
            )
        );
        assert_eq!(
            checkout("payment", None).decode().unwrap().payment_attempt,
            None
        );
        assert_eq!(
            payment("succeeded").decode().unwrap().status,
            PaymentState::Succeeded
        );
        assert_eq!(
            refund("pending").decode().unwrap().status,
            RefundStatus::Pending
        );
        assert_eq!(
            subscription("trialing").decode().unwrap().status,
            SubscriptionState::Trialing
        );
    }

    #[test]
    fn a_status_the_sandbox_does_not_know_is_a_corrupt_row() {
        assert_eq!(
            corrupt_what(session("closed", "paid").decode()),
            "sandbox session status"
        );
        assert_eq!(
            corrupt_what(session("open", "refunded").decode()),
            "sandbox session payment status"
        );
        assert_eq!(
            corrupt_what(checkout("setup", None).decode()),
            "sandbox session mode"
        );
        assert_eq!(
            corrupt_what(checkout("payment", Some("processing")).decode()),
            "sandbox payment status"
        );
        // Coffer's own payment states are not the sandbox's.
        assert_eq!(
            corrupt_what(payment("provider_pending").decode()),
            "sandbox payment status"
        );
        assert_eq!(
            corrupt_what(refund("canceled").decode()),
            "sandbox refund status"
        );
        // Not a status of Stripe's list (the sandbox's CHECK has no other spelling).
        assert_eq!(
            corrupt_what(subscription("expired").decode()),
            "sandbox subscription status"
        );
        assert!(subscription("incomplete_expired").decode().is_ok());
        let expired = ExpiredRecord {
            account: "acme-sandbox".into(),
            id: "cs_sbx_1".into(),
            client_reference: Uuid::nil(),
            customer: "cus_sbx_1".into(),
            mode: "payment".into(),
            status: "Expired".into(),
            payment_status: "unpaid".into(),
            amount_total: 2_900,
            currency: "USD".into(),
            expires_at: at(1),
            payment: None,
            subscription: None,
            version: 2,
            sandbox_now: at(2),
        };
        assert_eq!(corrupt_what(expired.decode()), "sandbox session status");
    }

    #[test]
    fn a_corrupt_row_says_what_it_holds() {
        let e = payment("").decode().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"stored sandbox payment status is invalid: """#
        );
    }
}

// ---- The customer portal.

/// A portal session to store: the token's hash, never the token.
pub struct NewPortalSession<'a> {
    pub account: &'a str,
    pub id: &'a str,
    pub token_sha256: &'a [u8],
    pub client_reference: Uuid,
    pub customer: &'a str,
    pub csrf: &'a str,
    pub return_url: &'a str,
    pub expires_at: OffsetDateTime,
}

pub async fn insert_portal_session(
    conn: &mut PgConnection,
    s: NewPortalSession<'_>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_portal_sessions (account, id, token_sha256, client_reference,
                                              customer, csrf, return_url, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())",
        s.account,
        s.id,
        s.token_sha256,
        s.client_reference,
        s.customer,
        s.csrf,
        s.return_url,
        s.expires_at,
    )
    .execute(conn)
    .instrument(statement_span!("INSERT", "sandbox_portal_sessions"))
    .await?;
    Ok(())
}

/// A portal session found by its token, with its account's tenant and clock.
#[derive(Debug, Clone)]
pub struct PortalSession {
    pub account: String,
    pub id: String,
    pub tenant: TenantId,
    pub client_reference: Uuid,
    pub customer: String,
    pub csrf: String,
    pub return_url: String,
    pub expires_at: OffsetDateTime,
    /// The sandbox's now: the database's `now()` plus the account's clock offset.
    pub now: OffsetDateTime,
}

/// The portal session whose token hashes to `token_sha256`, if any (of any account: the
/// token is the credential).
pub async fn find_portal_session(
    conn: &mut PgConnection,
    token_sha256: &[u8],
) -> Result<Option<PortalSession>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT s.account, s.id, a.tenant_id, s.client_reference, s.customer, s.csrf,
                  s.return_url, s.expires_at,
                  now() + COALESCE(a.clock_offset, '0') AS "now!"
           FROM sandbox_portal_sessions s
           JOIN sandbox_accounts a ON a.account = s.account
           WHERE s.token_sha256 = $1"#,
        token_sha256,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_portal_sessions"))
    .await?;
    Ok(row.map(|r| PortalSession {
        account: r.account,
        id: r.id,
        tenant: TenantId::from_uuid(r.tenant_id),
        client_reference: r.client_reference,
        customer: r.customer,
        csrf: r.csrf,
        return_url: r.return_url,
        expires_at: r.expires_at,
        now: r.now,
    }))
}

/// A subscription as the portal lists it.
#[derive(Debug, Clone)]
pub struct PortalSubscription {
    pub id: String,
    /// The first line item's name, from the session that started it.
    pub name: String,
    pub status: SubscriptionState,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    pub collection_paused: bool,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub period_months: Option<i32>,
}

/// The customer's subscriptions on `account`, newest first.
pub async fn list_customer_subscriptions(
    conn: &mut PgConnection,
    account: &str,
    customer: &str,
) -> Result<Vec<PortalSubscription>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT sub.id, COALESCE(s.line_items -> 0 ->> 'name', '') AS "name!", sub.status,
                  sub.current_period_end, sub.trial_end, sub.cancel_at_period_end,
                  sub.collection_paused, sub.amount, sub.currency, sub.period_months
           FROM sandbox_subscriptions sub
           LEFT JOIN sandbox_checkout_sessions s
                  ON s.account = sub.account AND s.id = sub.session_id
           WHERE sub.account = $1 AND sub.customer = $2
           ORDER BY sub.created_at DESC, sub.id DESC
           LIMIT 50"#,
        account,
        customer,
    )
    .fetch_all(conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(PortalSubscription {
                status: decode(
                    "sandbox subscription status",
                    &r.status,
                    SubscriptionState::parse,
                )?,
                id: r.id,
                name: r.name,
                current_period_end: r.current_period_end,
                trial_end: r.trial_end,
                cancel_at_period_end: r.cancel_at_period_end,
                collection_paused: r.collection_paused,
                amount: r.amount,
                currency: r.currency,
                period_months: r.period_months,
            })
        })
        .collect()
}

/// A payment as the portal lists it.
#[derive(Debug, Clone)]
pub struct PortalPayment {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentState,
    pub amount_refunded: i64,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub created_at: OffsetDateTime,
}

/// The customer's latest payments on `account` (a session's and its renewals': every payment
/// names the session that started it), newest first.
pub async fn list_customer_payments(
    conn: &mut PgConnection,
    account: &str,
    customer: &str,
) -> Result<Vec<PortalPayment>, StoreError> {
    let rows = sqlx::query!(
        "SELECT p.id, p.amount, p.currency, p.status, p.amount_refunded, p.card_brand,
                p.card_last4, p.created_at
         FROM sandbox_payments p
         JOIN sandbox_checkout_sessions s ON s.account = p.account AND s.id = p.session_id
         WHERE p.account = $1 AND s.customer = $2
         ORDER BY p.created_at DESC, p.id DESC
         LIMIT 20",
        account,
        customer,
    )
    .fetch_all(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(PortalPayment {
                status: decode("sandbox payment status", &r.status, PaymentState::parse)?,
                id: r.id,
                amount: r.amount,
                currency: r.currency,
                amount_refunded: r.amount_refunded,
                card_brand: r.card_brand,
                card_last4: r.card_last4,
                created_at: r.created_at,
            })
        })
        .collect()
}

/// The customer's card on file: the one the portal last set, else the card of its latest
/// successful payment. Brand and last four only.
pub async fn find_customer_card(
    conn: &mut PgConnection,
    account: &str,
    customer: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT COALESCE(c.card_brand, (
                      SELECT p.card_brand FROM sandbox_payments p
                      JOIN sandbox_checkout_sessions s
                        ON s.account = p.account AND s.id = p.session_id
                      WHERE p.account = c.account AND s.customer = c.id
                        AND p.status = 'succeeded' AND p.card_brand IS NOT NULL
                      ORDER BY p.created_at DESC LIMIT 1)) AS brand,
                  COALESCE(c.card_last4, (
                      SELECT p.card_last4 FROM sandbox_payments p
                      JOIN sandbox_checkout_sessions s
                        ON s.account = p.account AND s.id = p.session_id
                      WHERE p.account = c.account AND s.customer = c.id
                        AND p.status = 'succeeded' AND p.card_last4 IS NOT NULL
                      ORDER BY p.created_at DESC LIMIT 1)) AS last4
           FROM sandbox_customers c
           WHERE c.account = $1 AND c.id = $2"#,
        account,
        customer,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_customers"))
    .await?;
    Ok(row.and_then(|r| r.brand.zip(r.last4)))
}

/// Makes `brand`/`last4` the customer's card on file, and what its subscriptions' renewals
/// charge: a card that fails on renewal (0341) makes them fail, any other makes them succeed.
/// Returns how many subscriptions now renew on it.
pub async fn set_customer_card(
    conn: &mut PgConnection,
    account: &str,
    customer: &str,
    brand: &str,
    last4: &str,
    fails_on_renewal: bool,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    sqlx::query!(
        "UPDATE sandbox_customers
         SET card_brand = $3, card_last4 = $4, card_updated_at = $5,
             card_fails_on_renewal = $6, version = version + 1
         WHERE account = $1 AND id = $2",
        account,
        customer,
        brand,
        last4,
        now,
        fails_on_renewal,
    )
    .execute(&mut *conn)
    .instrument(statement_span!("UPDATE", "sandbox_customers"))
    .await?;
    let done = sqlx::query!(
        "UPDATE sandbox_subscriptions SET fails_on_renewal = $3, card_on_file = true
         WHERE account = $1 AND customer = $2
           AND status NOT IN ('canceled', 'incomplete_expired')",
        account,
        customer,
        fails_on_renewal,
    )
    .execute(conn)
    .instrument(statement_span!("UPDATE", "sandbox_subscriptions"))
    .await?;
    Ok(done.rows_affected())
}
