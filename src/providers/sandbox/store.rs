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

use crate::domain::ids::TenantId;
use crate::store::{StoreError, statement_span};

/// A sandbox checkout session as stored.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub url: String,
    pub status: String,
    pub payment_status: String,
    pub expires_at: OffsetDateTime,
    pub version: i64,
}

/// A sandbox checkout session to insert.
pub struct NewSession<'a> {
    pub account: &'a str,
    pub id: &'a str,
    pub client_reference: Uuid,
    pub customer: &'a str,
    pub mode: &'a str,
    pub payment_status: &'a str,
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
        s.mode,
        s.payment_status,
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
    Ok(sqlx::query_as!(
        SessionRow,
        "SELECT id, url, status, payment_status, expires_at, version
         FROM sandbox_checkout_sessions WHERE account = $1 AND id = $2",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn find_session_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(sqlx::query_as!(
        SessionRow,
        "SELECT id, url, status, payment_status, expires_at, version
         FROM sandbox_checkout_sessions WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?)
}

/// Expires the session if it is open, bumping its version; `None` if it is not open (or
/// does not exist).
pub async fn expire_session(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(sqlx::query_as!(
        SessionRow,
        "UPDATE sandbox_checkout_sessions
         SET status = 'expired', version = version + 1, updated_at = now()
         WHERE account = $1 AND id = $2 AND status = 'open'
         RETURNING id, url, status, payment_status, expires_at, version",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?)
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
    pub mode: String,
    pub status: String,
    pub payment_status: String,
    pub amount_total: i64,
    pub currency: String,
    pub expires_at: OffsetDateTime,
    pub payment: Option<String>,
    pub subscription: Option<String>,
    pub version: i64,
    /// The account's sandbox time when it expired.
    pub sandbox_now: OffsetDateTime,
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
        ExpiredSession,
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
    Ok(rows)
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
    pub mode: String,
    pub status: String,
    pub payment_status: String,
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
    /// The payment's status, when there is one (`requires_action` while it waits on the
    /// confirmation step).
    pub payment_attempt: Option<String>,
    pub subscription: Option<String>,
    /// The sandbox's now: the database's `now()` plus the account's clock offset.
    pub now: OffsetDateTime,
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
    pub status: String,
    pub failure_code: Option<String>,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub fails_on_renewal: bool,
    pub amount_refunded: i64,
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
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
    pub status: String,
    pub version: i64,
    pub created_at: OffsetDateTime,
}

/// A sandbox subscription as stored.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub account: String,
    pub id: String,
    pub session_id: String,
    pub client_reference: Uuid,
    pub customer: String,
    pub status: String,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub fails_on_renewal: bool,
    pub version: i64,
    pub created_at: OffsetDateTime,
}

/// The session `id` (of any account), for showing. Takes no lock.
pub async fn find_checkout(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<Checkout>, StoreError> {
    Ok(sqlx::query_as!(
        Checkout,
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
    .await?)
}

/// The session `id`, locked for the rest of the transaction: every card attempt on one session
/// takes this lock first, so two submits of one form run one after the other and the second
/// sees what the first did.
pub async fn lock_checkout(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<Checkout>, StoreError> {
    Ok(sqlx::query_as!(
        Checkout,
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
    .await?)
}

/// Marks the session complete with `payment_status`, bumping its version.
pub async fn complete_session(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    payment_status: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE sandbox_checkout_sessions
         SET status = 'complete', payment_status = $3, setup_requires_action = false,
             version = version + 1, updated_at = $4
         WHERE account = $1 AND id = $2 AND status = 'open'",
        account,
        id,
        payment_status,
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
    pub status: &'a str,
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
    Ok(sqlx::query_as!(
        Payment,
        "INSERT INTO sandbox_payments
             (account, id, session_id, client_reference, amount, currency, status, failure_code,
              card_brand, card_last4, fails_on_renewal, version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12)
         ON CONFLICT (account, session_id) DO UPDATE
         SET status = EXCLUDED.status, failure_code = EXCLUDED.failure_code,
             card_brand = EXCLUDED.card_brand, card_last4 = EXCLUDED.card_last4,
             fails_on_renewal = EXCLUDED.fails_on_renewal,
             version = sandbox_payments.version + 1, updated_at = EXCLUDED.updated_at
         RETURNING account, id, session_id, client_reference, amount, currency, status,
                   failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                   version, created_at, updated_at",
        a.account,
        a.new_id,
        a.session_id,
        a.client_reference,
        a.amount,
        a.currency,
        a.status,
        a.failure_code,
        a.card_brand,
        a.card_last4,
        a.fails_on_renewal,
        a.now,
    )
    .fetch_one(conn)
    .instrument(statement_span!("INSERT", "sandbox_payments"))
    .await?)
}

pub async fn find_payment_for_session(
    conn: &mut PgConnection,
    account: &str,
    session_id: &str,
) -> Result<Option<Payment>, StoreError> {
    Ok(sqlx::query_as!(
        Payment,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                version, created_at, updated_at
         FROM sandbox_payments WHERE account = $1 AND session_id = $2",
        account,
        session_id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?)
}

/// Settles a payment waiting on its confirmation step: `succeeded`, or `failed` with
/// `failure_code`. Bumps its version.
pub async fn settle_payment(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    status: &str,
    failure_code: Option<&str>,
    now: OffsetDateTime,
) -> Result<Payment, StoreError> {
    Ok(sqlx::query_as!(
        Payment,
        "UPDATE sandbox_payments
         SET status = $3, failure_code = $4, version = version + 1, updated_at = $5
         WHERE account = $1 AND id = $2
         RETURNING account, id, session_id, client_reference, amount, currency, status,
                   failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                   version, created_at, updated_at",
        account,
        id,
        status,
        failure_code,
        now,
    )
    .fetch_one(conn)
    .instrument(statement_span!("UPDATE", "sandbox_payments"))
    .await?)
}

/// A subscription to insert, made by a completed subscription checkout.
pub struct NewSubscription<'a> {
    pub account: &'a str,
    pub id: &'a str,
    pub session_id: &'a str,
    pub client_reference: Uuid,
    pub customer: &'a str,
    pub status: &'a str,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub fails_on_renewal: bool,
    pub now: OffsetDateTime,
}

/// Inserts the session's subscription (version 1). The caller holds the session's lock and
/// has seen it open, so no subscription exists for it yet.
pub async fn insert_subscription(
    conn: &mut PgConnection,
    s: NewSubscription<'_>,
) -> Result<Subscription, StoreError> {
    Ok(sqlx::query_as!(
        Subscription,
        "INSERT INTO sandbox_subscriptions
             (account, id, session_id, client_reference, customer, status, current_period_start,
              current_period_end, trial_end, fails_on_renewal, version, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11)
         RETURNING account, id, session_id, client_reference, customer, status,
                   current_period_start, current_period_end, trial_end, fails_on_renewal,
                   version, created_at",
        s.account,
        s.id,
        s.session_id,
        s.client_reference,
        s.customer,
        s.status,
        s.current_period_start,
        s.current_period_end,
        s.trial_end,
        s.fails_on_renewal,
        s.now,
    )
    .fetch_one(conn)
    .instrument(statement_span!("INSERT", "sandbox_subscriptions"))
    .await?)
}

// ---- The sandbox's API reads of its money, and its refunds.

/// The payment of the session Coffer created as `client_reference` (its checkout id).
pub async fn find_payment_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<Payment>, StoreError> {
    Ok(sqlx::query_as!(
        Payment,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                version, created_at, updated_at
         FROM sandbox_payments WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?)
}

/// The subscription a session made, if it made one.
pub async fn find_subscription_for_session(
    conn: &mut PgConnection,
    account: &str,
    session_id: &str,
) -> Result<Option<Subscription>, StoreError> {
    Ok(sqlx::query_as!(
        Subscription,
        "SELECT account, id, session_id, client_reference, customer, status,
                current_period_start, current_period_end, trial_end, fails_on_renewal,
                version, created_at
         FROM sandbox_subscriptions WHERE account = $1 AND session_id = $2",
        account,
        session_id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?)
}

pub async fn find_subscription_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<Subscription>, StoreError> {
    Ok(sqlx::query_as!(
        Subscription,
        "SELECT account, id, session_id, client_reference, customer, status,
                current_period_start, current_period_end, trial_end, fails_on_renewal,
                version, created_at
         FROM sandbox_subscriptions WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_subscriptions"))
    .await?)
}

pub async fn find_refund_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<Refund>, StoreError> {
    Ok(sqlx::query_as!(
        Refund,
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
    .await?)
}

/// A sandbox payment locked for a refund: its status, amount and what was refunded.
pub async fn lock_payment(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<Payment>, StoreError> {
    Ok(sqlx::query_as!(
        Payment,
        "SELECT account, id, session_id, client_reference, amount, currency, status,
                failure_code, card_brand, card_last4, fails_on_renewal, amount_refunded,
                version, created_at, updated_at
         FROM sandbox_payments WHERE account = $1 AND id = $2 FOR UPDATE",
        account,
        id,
    )
    .fetch_optional(conn)
    .instrument(statement_span!("SELECT", "sandbox_payments"))
    .await?)
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
        status: "succeeded".into(),
        version: 1,
        created_at,
    })
}
