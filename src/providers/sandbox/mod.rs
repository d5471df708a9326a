//! The sandbox: Coffer's own fake provider, for development and tests, enabled only by
//! `serve --dev` or `--sandbox`. Every tenant gets an account of its own, `{tenant}-sandbox`,
//! made the first time it is needed (so tenants created after the start get one too), with a
//! random signing secret kept in `sandbox_accounts` (or the tenant's
//! `sandbox_webhook_secret_env`).
//!
//! Its objects live in Postgres (`store::sandbox`) and carry versions, so a late event never
//! overwrites newer state. Checkout URLs point at `{public_url}/sandbox/checkout/{id}`.
//!
//! Its events are queued in `sandbox_outbox` ([`events`]) and delivered over HTTP to the
//! server's own `/webhooks/{account}` ([`delivery`]); each account has a clock of its own that
//! AdvanceClock moves forward, and sessions expire by it ([`clock`]).
//!
//! The hosted checkout page ([`page`]) takes test cards ([`card`]) and moves the session, its
//! payment and its subscription on, with the events reporting them ([`events`], whose objects
//! [`objects`] writes) in the same transaction. Refunds are made here: under the sandbox
//! payment's row lock, never past what is left of it, emitting `refund.succeeded` in the same
//! transaction. [`wire`] reads the event objects back, for Coffer's side.
//!
//! Statuses are types from the row up: [`store`] reads each status column into its enum (a
//! value it does not know is a corrupt row), the code compares enums, and only the SQL and
//! [`objects`] spell them. A session's and a refund's are Coffer's domain enums (the same
//! values, spelled the same); a payment's and a subscription's are the sandbox's own
//! ([`status`]).

pub mod card;
pub mod clock;
pub mod create;
pub mod delivery;
pub mod events;
pub mod objects;
pub mod page;
pub mod plan_change;
pub mod portal;
pub mod renewals;
pub mod status;
pub mod store;
pub mod webhook;
pub mod wire;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_core::future::BoxFuture;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use sqlx::Connection as _;

use self::events::EventType;
use self::status::PaymentState;
use super::{
    CheckoutRequest, CreatedSubscription, CustomerRequest, ObjectKind, PAYMENT_METHOD_REQUIRED,
    PlanChangePreview, PortalRequest, Provider, ProviderCheckout, ProviderError, ProviderObject,
    ProviderPayment, ProviderPortal, ProviderRefund, ProviderSubscription, RefundRequest,
    SubscriptionRequest, SubscriptionUpdate,
};
use crate::domain::account::{AccountName, ProviderKind, Secret};
use crate::domain::checkout::{Mode, PaymentStatus, Status};
use crate::domain::ids::TenantId;
use crate::domain::plan::{Billing, Interval};
use crate::domain::subscription::{Change, Lifecycle, PlanChange};
use crate::store::StoreError;

/// Faults the sandbox can be told to inject. Reachable only from code holding the handle the
/// server was built with (the tests); nothing on the API can set them.
///
/// Deliveries: [`Faults::hold`] keeps every event queued (the workers claim nothing) until
/// [`Faults::release`], or [`Faults::release_newest_first`], which sends the events held so
/// far newest first (a `checkout.session.completed` before the `payment.succeeded` emitted
/// before it); [`Faults::hold_for`] releases by itself; [`Faults::duplicate_next`] sends
/// events twice. They act on this process's workers only, and assume one worker and a batch
/// larger than what is held (the test configuration's), or the order is only per batch.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next N creates are applied but answered as a timeout (outcome unknown).
    lose_answers: AtomicU32,
    /// The next N calls fail before doing anything (retryable).
    refuse: AtomicU32,
    /// Each of the next N deliveries is sent twice.
    duplicate: AtomicU32,
    hold: Mutex<Hold>,
}

#[derive(Debug, Default)]
struct Hold {
    /// Deliveries are held: for ever (`None` deadline) or until the deadline.
    held: bool,
    until: Option<tokio::time::Instant>,
    /// The next claim takes the newest rows first.
    newest_first: bool,
}

impl Faults {
    /// Send each of the next `n` events twice, back to back (as a provider whose
    /// acknowledgement was lost would).
    pub fn duplicate_next(&self, n: u32) {
        self.duplicate.store(n, Ordering::SeqCst);
    }

    /// Hold every delivery until [`Faults::release`]: events stay queued, unclaimed.
    pub fn hold(&self) {
        let mut hold = self.hold.lock().expect("faults lock");
        hold.held = true;
        hold.until = None;
    }

    /// Hold every delivery for `d`, then deliver as usual.
    pub fn hold_for(&self, d: Duration) {
        let mut hold = self.hold.lock().expect("faults lock");
        hold.held = true;
        hold.until = Some(tokio::time::Instant::now() + d);
    }

    /// Deliver the held events, oldest first, and everything after them.
    pub fn release(&self) {
        *self.hold.lock().expect("faults lock") = Hold::default();
    }

    /// Deliver the held events newest first (the next claim's order), then as usual.
    pub fn release_newest_first(&self) {
        *self.hold.lock().expect("faults lock") = Hold {
            newest_first: true,
            ..Hold::default()
        };
    }

    pub(crate) fn holding(&self) -> bool {
        let mut hold = self.hold.lock().expect("faults lock");
        if hold
            .until
            .is_some_and(|until| tokio::time::Instant::now() >= until)
        {
            *hold = Hold::default();
        }
        hold.held
    }

    pub(crate) fn take_newest_first(&self) -> bool {
        std::mem::take(&mut self.hold.lock().expect("faults lock").newest_first)
    }

    pub(crate) fn take_duplicate(&self) -> bool {
        Self::take(&self.duplicate)
    }

    /// Apply the next `n` creates but lose their answers, as a timeout would.
    pub fn lose_next_answers(&self, n: u32) {
        self.lose_answers.store(n, Ordering::SeqCst);
    }

    /// Refuse the next `n` calls before doing anything, as a 503 would.
    pub fn refuse_next(&self, n: u32) {
        self.refuse.store(n, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// How the sandbox is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where the public listener is reached from a browser: `COFFER_PUBLIC_URL`, or
    /// `http://{http_addr}`. No trailing slash.
    pub public_url: String,
    pub faults: Arc<Faults>,
    /// Where events are delivered: `{webhook_base}/webhooks/{account}`. `Server::bind` sets it
    /// to its own HTTP listener (on loopback) when none is given; without a listener nothing
    /// is delivered (the events wait in the queue).
    pub webhook_base: Option<String>,
    /// The delivery workers.
    pub delivery: delivery::DeliveryConfig,
    /// How often open sessions past their expiry (on their account's clock) are expired.
    pub expire_interval: Duration,
    /// How far ahead of the wall clock AdvanceClock may move an account's clock (10 years by
    /// default, [`MAX_CLOCK_HORIZON`] at most): every time Coffer derives from a sandbox
    /// clock (a session's expiry a day later, a renewal a period later) stays far inside what
    /// Postgres and Coffer's timestamps hold, so none can fail to be written or read back.
    pub clock_horizon: Duration,
    /// How failed renewals are retried, and what becomes of them when the retries run out
    /// (and of a trial ending without a card), where a tenant's settings say nothing.
    pub dunning: renewals::Dunning,
}

/// The largest `clock_horizon`: a century, leaving millennia between the furthest sandbox time
/// and year 9999, the last Coffer's timestamps represent.
pub const MAX_CLOCK_HORIZON: Duration = Duration::from_secs(100 * 366 * 86_400);
/// The default `clock_horizon`: ten years (3 653 days).
pub const DEFAULT_CLOCK_HORIZON: Duration = Duration::from_secs(3_653 * 86_400);

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            faults: Arc::default(),
            webhook_base: None,
            delivery: delivery::DeliveryConfig::default(),
            expire_interval: Duration::from_secs(10),
            clock_horizon: DEFAULT_CLOCK_HORIZON,
            dunning: renewals::Dunning::default(),
        }
    }
}

/// The sandbox provider. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    pool: PgPool,
    config: SandboxConfig,
    dunning: renewals::DunningTable,
}

impl Sandbox {
    pub fn new(pool: PgPool, config: SandboxConfig) -> Self {
        let dunning = renewals::DunningTable::new(config.dunning, None);
        Self {
            pool,
            config,
            dunning,
        }
    }

    /// Each tenant's dunning from `settings` (coffer.toml), over the config's.
    pub fn with_settings(mut self, settings: Arc<crate::settings::Settings>) -> Self {
        self.dunning = renewals::DunningTable::new(self.config.dunning, Some(settings));
        self
    }

    /// Each tenant's dunning, as the renewal passes apply it.
    pub fn dunning(&self) -> &renewals::DunningTable {
        &self.dunning
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The tenant's sandbox account and its signing secret, made on first use. `override_secret`
    /// (coffer.toml's `sandbox_webhook_secret_env`) wins over the stored one. `None` for a
    /// tenant that does not exist.
    pub async fn account_for(
        &self,
        tenant: TenantId,
        override_secret: Option<&Secret>,
    ) -> Result<Option<(AccountName, Secret)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let found = store::ensure_sandbox_account(
            &mut conn,
            tenant,
            |name| AccountName::sandbox_for(name).as_str().to_owned(),
            &new_secret(),
        )
        .await?;
        let Some((name, secret)) = found else {
            return Ok(None);
        };
        let name = AccountName::parse(&name).map_err(|e| crate::store::StoreError::Corrupt {
            what: "sandbox account name",
            detail: e.0,
        })?;
        let secret = override_secret.cloned().unwrap_or(Secret::new(secret));
        Ok(Some((name, secret)))
    }

    /// The tenant's sandbox account's own time (it starts at real time and AdvanceClock moves
    /// it forward); the wall clock for an account it does not know.
    pub async fn now(
        &self,
        tenant: TenantId,
        account: &AccountName,
    ) -> Result<OffsetDateTime, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::sandbox_now(&mut conn, tenant, account.as_str())
            .await?
            .unwrap_or_else(OffsetDateTime::now_utc))
    }

    /// Applies what is due on `account` (every account when `None`): renewals, retries,
    /// scheduled cancels, in order. Returns how many steps it made.
    pub async fn renew_due(&self, account: Option<&AccountName>) -> Result<usize, StoreError> {
        renewals::run_due(&self.pool, account.map(AccountName::as_str), &self.dunning).await
    }

    fn checkout_url(&self, id: &str) -> String {
        format!("{}/sandbox/checkout/{id}", self.config.public_url)
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, ProviderError> {
        if Faults::take(&self.config.faults.refuse) {
            return Err(ProviderError::Retryable {
                message: "sandbox fault: refused".into(),
                retry_after: None,
            });
        }
        self.pool.acquire().await.map_err(|e| unavailable(e.into()))
    }

    /// The answer of a create that was applied: lost, if the fault switch says so.
    fn answer<T>(&self, value: T) -> Result<T, ProviderError> {
        if Faults::take(&self.config.faults.lose_answers) {
            return Err(ProviderError::Unknown {
                message: "sandbox fault: the answer was lost".into(),
            });
        }
        Ok(value)
    }
}

/// A signing secret in Standard Webhooks' form: `whsec_` and 32 random bytes in base64.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A store failure inside the sandbox: nothing was applied unless the commit's answer was lost.
/// A row the sandbox cannot read stays unreadable, so it is no reason to try again.
fn unavailable(e: StoreError) -> ProviderError {
    if let StoreError::Corrupt { .. } = e {
        ProviderError::Definitive {
            code: "corrupt".into(),
            message: e.to_string(),
            decline_code: None,
        }
    } else if e.may_have_committed() {
        ProviderError::Unknown {
            message: e.to_string(),
        }
    } else {
        ProviderError::Retryable {
            message: e.to_string(),
            retry_after: None,
        }
    }
}

fn to_checkout(row: store::SessionRow) -> ProviderCheckout {
    ProviderCheckout {
        status: row.status,
        payment_status: row.payment_status,
        id: row.id,
        // The sandbox's answers are to calls that name the session already.
        client_reference: None,
        url: row.url,
        expires_at: row.expires_at,
        version: row.version,
        payment: None,
        subscription: None,
    }
}

fn to_payment(row: store::Payment) -> ProviderPayment {
    let card = row.card_brand.zip(row.card_last4);
    ProviderPayment {
        status: row.status.into(),
        id: row.id,
        client_reference: row.client_reference,
        amount: row.amount,
        currency: row.currency,
        failure_code: row.failure_code,
        card,
        amount_refunded: row.amount_refunded,
        renewal: row.renewal,
        period_end: row.period_end,
        subscription: None,
        version: row.version,
    }
}

fn to_refund(row: &store::Refund) -> ProviderRefund {
    ProviderRefund {
        status: row.status,
        id: row.id.clone(),
        payment: row.payment_id.clone(),
        client_reference: row.client_reference,
        amount: row.amount,
        version: row.version,
    }
}

fn to_subscription(row: store::Subscription) -> ProviderSubscription {
    ProviderSubscription {
        status: row.status.into(),
        id: row.id,
        client_reference: row.client_reference,
        current_period_start: row.current_period_start,
        current_period_end: row.current_period_end,
        trial_end: row.trial_end,
        cancel_at_period_end: row.cancel_at_period_end,
        collection_paused: row.collection_paused,
        canceled_at: row.canceled_at,
        cancel_reason: row.cancel_reason,
        // The sandbox takes amounts inline: Coffer's price is Coffer's to keep.
        price: None,
        quantity: None,
        // Its renewals end its dunning themselves, in the tenant's end state.
        retries_exhausted: false,
        version: row.version,
    }
}

/// The sandbox's subscription as the domain's lifecycle, to judge a change by the same rules
/// Coffer does (a real provider has its own; the sandbox's are Stripe's).
fn lifecycle_of(row: &store::Subscription) -> Lifecycle {
    Lifecycle {
        status: row.status.into(),
        cancel_at_period_end: row.cancel_at_period_end,
        collection_paused: row.collection_paused,
        canceled_at: row.canceled_at,
        cancel_reason: row.cancel_reason.clone(),
    }
}

fn refund_refused(code: &str, message: &str) -> ProviderError {
    ProviderError::Definitive {
        code: code.into(),
        message: message.into(),
        decline_code: None,
    }
}

fn no_such_session() -> ProviderError {
    ProviderError::Definitive {
        code: "resource_missing".into(),
        message: "no such checkout session".into(),
        decline_code: None,
    }
}

impl Provider for Sandbox {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Sandbox
    }

    fn create_customer<'a>(
        &'a self,
        account: &'a AccountName,
        request: CustomerRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let id = format!("cus_sbx_{}", Uuid::now_v7().simple());
            let id =
                store::upsert_customer(&mut conn, account.as_str(), &id, request.client_reference)
                    .await
                    .map_err(unavailable)?;
            self.answer(id)
        })
    }

    /// A portal session on the sandbox's own page ([`portal`]): a random token in the URL,
    /// stored as its hash, good until `request.expires_at` on the account's clock.
    fn create_portal_session<'a>(
        &'a self,
        account: &'a AccountName,
        request: PortalRequest,
    ) -> BoxFuture<'a, Result<ProviderPortal, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let id = format!("ps_sbx_{}", Uuid::now_v7().simple());
            let token = portal::new_token();
            let csrf = portal::new_token();
            store::insert_portal_session(
                &mut conn,
                store::NewPortalSession {
                    account: account.as_str(),
                    id: &id,
                    token_sha256: &portal::token_hash(&token),
                    client_reference: request.client_reference,
                    customer: &request.customer,
                    csrf: &csrf,
                    return_url: &request.return_url,
                    expires_at: request.expires_at,
                },
            )
            .await
            .map_err(unavailable)?;
            self.answer(ProviderPortal {
                url: format!("{}/sandbox/portal/{token}", self.config.public_url),
                expires_at: request.expires_at,
            })
        })
    }

    fn create_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        r: CheckoutRequest,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let Some(customer) = r.customer.as_deref() else {
                return Err(ProviderError::Definitive {
                    code: "customer_required".into(),
                    message: "the sandbox needs a customer".into(),
                    decline_code: None,
                });
            };
            let id = format!("cs_sbx_{}", Uuid::now_v7().simple());
            let items: Vec<serde_json::Value> = r
                .items
                .iter()
                .map(|i| &i.line)
                .map(|i| {
                    let mut item = serde_json::json!({
                        "name": i.name,
                        "unit_amount": i.unit.amount(),
                        "quantity": i.quantity,
                        "amount_total": i.amount_total,
                    });
                    // How a subscription renews: the hosted page shows it and dates the
                    // subscription's first period by it.
                    if let Billing::Recurring {
                        interval, count, ..
                    } = i.billing
                    {
                        item["interval"] = match interval {
                            Interval::Month => "month",
                            Interval::Year => "year",
                        }
                        .into();
                        item["interval_count"] = count.into();
                    }
                    item
                })
                .collect();
            let payment_status = match (r.mode, r.amount_total) {
                (Mode::Subscription, _) if r.trial_days > 0 => PaymentStatus::NoPaymentRequired,
                _ => PaymentStatus::Unpaid,
            };
            let row = store::upsert_session(
                &mut conn,
                store::NewSession {
                    account: account.as_str(),
                    id: &id,
                    client_reference: r.client_reference,
                    customer,
                    mode: r.mode,
                    payment_status,
                    line_items: serde_json::Value::Array(items),
                    amount_total: r.amount_total,
                    currency: r.currency.code(),
                    trial_days: r.trial_days as i16,
                    success_url: &r.success_url,
                    cancel_url: &r.cancel_url,
                    url: &self.checkout_url(&id),
                    expires_at: r.expires_at,
                },
            )
            .await
            .map_err(unavailable)?;
            self.answer(to_checkout(row))
        })
    }

    fn fetch_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let row = store::find_session(&mut conn, account.as_str(), id)
                .await
                .map_err(unavailable)?
                .ok_or_else(no_such_session)?;
            let mut session = to_checkout(row);
            // The session's payment and subscription as the sandbox holds them, so a caller
            // verifying a session sees all of it at once.
            session.payment = store::find_payment_for_session(&mut conn, account.as_str(), id)
                .await
                .map_err(unavailable)?
                .map(to_payment);
            session.subscription =
                store::find_subscription_for_session(&mut conn, account.as_str(), id)
                    .await
                    .map_err(unavailable)?
                    .map(to_subscription)
                    .map(Box::new);
            Ok(session)
        })
    }

    fn expire_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        id: &'a str,
        _idempotency_key: String,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            // The expiry and its `checkout.session.expired` event commit together, as every
            // sandbox change and its event do.
            let expired = async {
                let mut tx = conn.begin().await?;
                let Some(row) = store::expire_session(&mut tx, account.as_str(), id).await? else {
                    return Ok(None);
                };
                let whole = store::find_checkout(&mut tx, id).await?.ok_or_else(|| {
                    crate::store::corrupt("sandbox session", "missing after expiry")
                })?;
                events::emit(
                    &mut tx,
                    account.as_str(),
                    EventType::CheckoutExpired,
                    &objects::checkout_session(&(&whole).into()),
                    whole.now,
                )
                .await?;
                tx.commit().await?;
                Ok::<_, StoreError>(Some(row))
            }
            .await
            .map_err(unavailable)?;
            match expired {
                Some(row) => self.answer(to_checkout(row)),
                None => match store::find_session(&mut conn, account.as_str(), id)
                    .await
                    .map_err(unavailable)?
                {
                    // Already expired: what an idempotent retry of the expiry sees.
                    Some(row) if row.status == Status::Expired => Ok(to_checkout(row)),
                    Some(_) => Err(ProviderError::Definitive {
                        code: "session_not_open".into(),
                        message: "only an open checkout session can be expired".into(),
                        decline_code: None,
                    }),
                    None => Err(no_such_session()),
                },
            }
        })
    }

    fn refund<'a>(
        &'a self,
        account: &'a AccountName,
        r: RefundRequest,
    ) -> BoxFuture<'a, Result<ProviderRefund, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let made = async {
                let mut tx = conn.begin().await?;
                // Asked before under this client reference: the same refund, as a provider's
                // idempotency would answer.
                if let Some(row) =
                    store::find_refund_by_reference(&mut tx, account.as_str(), r.client_reference)
                        .await?
                {
                    return Ok(Ok(row));
                }
                let Some(payment) =
                    store::lock_payment(&mut tx, account.as_str(), &r.payment).await?
                else {
                    return Ok(Err(refund_refused("resource_missing", "no such payment")));
                };
                if payment.status != PaymentState::Succeeded {
                    return Ok(Err(refund_refused(
                        "payment_not_succeeded",
                        "only a succeeded payment can be refunded",
                    )));
                }
                if r.amount.currency().code() != payment.currency {
                    return Ok(Err(refund_refused(
                        "currency_mismatch",
                        "the refund's currency is not the payment's",
                    )));
                }
                if r.amount.amount() > payment.amount - payment.amount_refunded {
                    return Ok(Err(refund_refused(
                        "amount_too_large",
                        "the refund is more than what is left of the payment",
                    )));
                }
                let id = format!("re_sbx_{}", Uuid::now_v7().simple());
                let row = store::insert_refund(
                    &mut tx,
                    &id,
                    &payment,
                    r.client_reference,
                    r.amount.amount(),
                )
                .await?;
                // The event exists if and only if the refund does.
                events::emit(
                    &mut tx,
                    account.as_str(),
                    EventType::RefundSucceeded,
                    &objects::refund(&row),
                    time::OffsetDateTime::now_utc(),
                )
                .await?;
                tx.commit().await?;
                Ok::<_, StoreError>(Ok(row))
            }
            .await
            .map_err(unavailable)?;
            self.answer(to_refund(&made?))
        })
    }

    /// Changes a subscription under its row lock, with its `subscription.updated` (or
    /// `subscription.deleted`) event in the same transaction. A change already made (its
    /// client reference recorded) is answered with the subscription as it is now.
    fn update_subscription<'a>(
        &'a self,
        account: &'a AccountName,
        r: SubscriptionUpdate,
    ) -> BoxFuture<'a, Result<ProviderSubscription, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let made = async {
                let mut tx = conn.begin().await?;
                if let Some(row) =
                    store::find_changed_subscription(&mut tx, account.as_str(), r.client_reference)
                        .await?
                {
                    return Ok(Ok(row));
                }
                let Some((row, now)) =
                    store::lock_subscription(&mut tx, account.as_str(), &r.subscription).await?
                else {
                    return Ok(Err(ProviderError::definitive(
                        "resource_missing",
                        "no such subscription",
                    )));
                };
                let next = match lifecycle_of(&row).apply(&r.change, now) {
                    Ok(next) => next,
                    Err(e) => {
                        return Ok(Err(ProviderError::definitive(
                            "invalid_state",
                            e.to_string(),
                        )));
                    }
                };
                if r.change == Change::Resume {
                    // A PAUSED subscription resumes onto the card on file: its own (one the
                    // portal saved), else the customer's from a later checkout; none is
                    // refused, as Stripe's resume without a payment method is.
                    let mut row = row;
                    if !store::has_card_on_file(&mut tx, account.as_str(), &row.id).await? {
                        let Some(fails) =
                            store::find_card_on_file(&mut tx, account.as_str(), &row.customer)
                                .await?
                        else {
                            return Ok(Err(ProviderError::definitive(
                                PAYMENT_METHOD_REQUIRED,
                                "the customer has no payment method on file",
                            )));
                        };
                        store::adopt_card(&mut tx, account.as_str(), &row.id, fails).await?;
                        row.fails_on_renewal = fails;
                    }
                    store::record_subscription_change(
                        &mut tx,
                        account.as_str(),
                        &row.id,
                        r.client_reference,
                    )
                    .await?;
                    let resumed = renewals::resume(&mut tx, &row, now).await?;
                    tx.commit().await?;
                    return Ok(Ok(resumed));
                }
                if let Change::ChangePlan(plan) = &r.change
                    && let Err(e) = plan_change::make(&mut tx, &row, plan, now).await?
                {
                    return Ok(Err(e));
                }
                let Some(status) = status::SubscriptionState::of(next.status) else {
                    return Ok(Err(ProviderError::definitive(
                        "invalid_state",
                        "the sandbox cannot make this status",
                    )));
                };
                let changed = store::change_subscription(
                    &mut tx,
                    account.as_str(),
                    &row.id,
                    r.client_reference,
                    &store::SubscriptionChange {
                        status,
                        cancel_at_period_end: next.cancel_at_period_end,
                        collection_paused: next.collection_paused,
                        canceled_at: next.canceled_at,
                        cancel_reason: &next.cancel_reason,
                    },
                )
                .await?;
                let event = if matches!(
                    r.change,
                    Change::Cancel {
                        at_period_end: false,
                        ..
                    }
                ) {
                    EventType::SubscriptionDeleted
                } else {
                    EventType::SubscriptionUpdated
                };
                events::emit(
                    &mut tx,
                    account.as_str(),
                    event,
                    &objects::subscription(&changed),
                    now,
                )
                .await?;
                tx.commit().await?;
                Ok::<_, StoreError>(Ok(changed))
            }
            .await
            .map_err(unavailable)?;
            self.answer(to_subscription(made?))
        })
    }

    fn create_subscription<'a>(
        &'a self,
        account: &'a AccountName,
        r: SubscriptionRequest,
    ) -> BoxFuture<'a, Result<CreatedSubscription, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let made = async {
                let mut tx = conn.begin().await?;
                let now = store::account_now(&mut tx, account.as_str())
                    .await?
                    .unwrap_or_else(OffsetDateTime::now_utc);
                // Whole seconds, as its events carry times: the answer and the events then
                // name the same period (a payment is keyed by its period's start).
                let now = now.replace_nanosecond(0).expect("0 is a valid nanosecond");
                let made = create::make(&mut tx, account.as_str(), &r, now).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(made)
            }
            .await
            .map_err(unavailable)?;
            let (sub, payment) = made?;
            self.answer(CreatedSubscription {
                subscription: to_subscription(sub),
                payment: payment.map(to_payment),
            })
        })
    }

    /// The proration by the sandbox's clock, with nothing written.
    fn preview_plan_change<'a>(
        &'a self,
        account: &'a AccountName,
        subscription: &'a str,
        change: &'a PlanChange,
    ) -> BoxFuture<'a, Result<PlanChangePreview, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let found = async {
                let mut tx = conn.begin().await?;
                // Read under the lock a change takes, so the preview sees no half-made change;
                // the transaction is rolled back.
                let found =
                    store::lock_subscription(&mut tx, account.as_str(), subscription).await?;
                tx.rollback().await?;
                Ok::<_, StoreError>(found)
            }
            .await
            .map_err(unavailable)?;
            let Some((row, now)) = found else {
                return Err(ProviderError::definitive(
                    "resource_missing",
                    "no such subscription",
                ));
            };
            plan_change::preview(&row, change, now)
        })
    }

    /// The sandbox's events carry their objects, versioned, so the inbox never fetches for
    /// them; a session is fetched all the same, for a caller that asks.
    fn fetch<'a>(
        &'a self,
        account: &'a AccountName,
        kind: ObjectKind,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            match kind {
                ObjectKind::CheckoutSession => match self.fetch_checkout_session(account, id).await
                {
                    Ok(s) => Ok(Some(ProviderObject::CheckoutSession(s))),
                    Err(e) if e == no_such_session() => Ok(None),
                    Err(e) => Err(e),
                },
                _ => Err(ProviderError::Definitive {
                    code: "unsupported".into(),
                    message: "the sandbox's events carry their objects".into(),
                    decline_code: None,
                }),
            }
        })
    }

    fn fetch_object<'a>(
        &'a self,
        account: &'a AccountName,
        kind: ObjectKind,
        client_reference: Uuid,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            match kind {
                ObjectKind::Customer => {
                    Ok(
                        store::find_customer(&mut conn, account.as_str(), client_reference)
                            .await
                            .map_err(unavailable)?
                            .map(|id| ProviderObject::Customer { id }),
                    )
                }
                ObjectKind::CheckoutSession => {
                    match store::find_session_by_reference(
                        &mut conn,
                        account.as_str(),
                        client_reference,
                    )
                    .await
                    .map_err(unavailable)?
                    {
                        Some(row) => Ok(Some(ProviderObject::CheckoutSession(to_checkout(row)))),
                        None => Ok(None),
                    }
                }
                // A payment and a subscription carry the client reference of their session
                // (Coffer's checkout id); a refund, Coffer's refund id.
                ObjectKind::Payment => Ok(store::find_payment_by_reference(
                    &mut conn,
                    account.as_str(),
                    client_reference,
                )
                .await
                .map_err(unavailable)?
                .map(to_payment)
                .map(ProviderObject::Payment)),
                ObjectKind::Refund => {
                    match store::find_refund_by_reference(
                        &mut conn,
                        account.as_str(),
                        client_reference,
                    )
                    .await
                    .map_err(unavailable)?
                    {
                        Some(row) => Ok(Some(ProviderObject::Refund(to_refund(&row)))),
                        None => Ok(None),
                    }
                }
                // A session's subscription by its session's reference, or the one a change
                // (by the change's reference) was made to.
                ObjectKind::Subscription => {
                    let found = match store::find_subscription_by_reference(
                        &mut conn,
                        account.as_str(),
                        client_reference,
                    )
                    .await
                    .map_err(unavailable)?
                    {
                        Some(row) => Some(row),
                        None => store::find_changed_subscription(
                            &mut conn,
                            account.as_str(),
                            client_reference,
                        )
                        .await
                        .map_err(unavailable)?,
                    };
                    Ok(found.map(to_subscription).map(ProviderObject::Subscription))
                }
                // The sandbox has no disputes, and takes prices inline.
                ObjectKind::Dispute
                | ObjectKind::Price
                | ObjectKind::Meter
                | ObjectKind::UsageBatch => Ok(None),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_row_is_a_definitive_refusal_not_a_retry() {
        let e = unavailable(crate::store::corrupt(
            "sandbox payment status",
            "\"pending\"",
        ));
        assert_eq!(
            e,
            ProviderError::Definitive {
                code: "corrupt".into(),
                message: r#"stored sandbox payment status is invalid: "pending""#.into(),
                decline_code: None,
            }
        );
    }
}
