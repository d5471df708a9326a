//! The sandbox's hosted checkout page, on the public HTTP listener of `coffer serve` when the
//! sandbox is enabled:
//!
//! - `GET /sandbox/checkout/{id}`: the line items and total, and a card form (no JavaScript).
//! - `POST /sandbox/checkout/{id}`: a card attempt (form-urlencoded `number`, `expiry`, `cvc`,
//!   `name`). Success redirects (303) to the session's `success_url`; a decline shows the form
//!   again with the reason, the session still open; 4000 0025 0000 3155 shows a confirmation
//!   step instead.
//! - `POST /sandbox/checkout/{id}/confirm`: that step's answer, `action=approve|fail`.
//!
//! Every attempt runs in one transaction that first locks the session row, so two submits of
//! one form run one after the other: the second finds the session complete and pays nothing.
//! The payment, the session, the subscription and the events reporting them
//! ([`super::events::emit`]) commit together or not at all.
//!
//! The card number and CVC are checked ([`super::card`]) and dropped: only the brand and last
//! four digits are stored, and neither the number nor the CVC is logged, traced, put in a
//! metric or written back into a page. The form type has no `Debug`, and no HTTP layer on this
//! listener records request bodies.

use axum::Router;
use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Form, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use time::{Duration, OffsetDateTime};
use tracing::Instrument;
use uuid::Uuid;

use super::card::{self, AUTHENTICATION_FAILED, Behaviour, Card, FieldError};
use super::events::{self, EventType};
use super::objects;
use super::status::{PaymentState, SubscriptionState};
use crate::domain::checkout::{Mode, PaymentStatus, Status};
use crate::domain::money::{Currency, format_amount};
use crate::providers::sandbox::store::{self as store, Checkout, Payment};
use crate::store::StoreError;

/// A card form is a few hundred bytes; anything much larger is not one.
const MAX_FORM_BYTES: usize = 8 << 10;

/// The hosted page's routes, to merge into the public listener.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/sandbox/checkout/{id}", get(show).post(submit))
        .route("/sandbox/checkout/{id}/confirm", post(confirm))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(pool)
}

/// The card form as posted. Deliberately without `Debug`: it holds the number and the CVC.
#[derive(Deserialize, Default)]
struct CardForm {
    #[serde(default)]
    number: String,
    #[serde(default)]
    expiry: String,
    #[serde(default)]
    cvc: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    action: String,
}

/// Why a session takes no payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Complete,
    Expired,
}

/// A session is payable while open and before its expiry by the sandbox's clock; the expiry
/// sweeper may not have marked it yet.
fn closed(s: &Checkout) -> Option<Closed> {
    match s.status {
        Status::Complete => Some(Closed::Complete),
        Status::Expired => Some(Closed::Expired),
        Status::Open if s.expires_at <= s.now => Some(Closed::Expired),
        Status::Open => None,
    }
}

/// A trial takes the card without charging it: there is no payment.
fn is_trial(s: &Checkout) -> bool {
    s.payment_status == PaymentStatus::NoPaymentRequired
}

/// A card waits on the confirmation step: a trial's, or the payment's.
fn awaiting_confirmation(s: &Checkout) -> bool {
    s.setup_requires_action || s.payment_attempt == Some(PaymentState::RequiresAction)
}

/// What a card attempt (or its confirmation) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed(&'static str),
    NeedsAction,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed(code) => code,
            Outcome::NeedsAction => "requires_action",
        }
    }
}

async fn show(State(pool): State<PgPool>, id: Result<Path<String>, PathRejection>) -> Response {
    let Some(id) = session_id(id) else {
        return not_found();
    };
    let found = async {
        let mut conn = pool.acquire().await?;
        store::find_checkout(&mut conn, &id).await
    }
    .await;
    match found {
        Ok(Some(s)) => match closed(&s) {
            Some(c) => html(StatusCode::OK, closed_page(&s, c)),
            None if awaiting_confirmation(&s) => html(StatusCode::OK, confirm_page(&s)),
            None => checkout_page(StatusCode::OK, &s, None, &[], &Kept::default()),
        },
        Ok(None) => not_found(),
        Err(e) => unavailable(e),
    }
}

async fn submit(
    State(pool): State<PgPool>,
    id: Result<Path<String>, PathRejection>,
    form: Result<Form<CardForm>, FormRejection>,
) -> Response {
    let Some(id) = session_id(id) else {
        return not_found();
    };
    // The rejection's text is not shown: it could quote the body.
    let Ok(Form(form)) = form else {
        return bad_request();
    };
    let span = tracing::info_span!(
        "sandbox.checkout.submit",
        checkout.session = %id,
        outcome = tracing::field::Empty,
    );
    async move {
        match attempt(&pool, &id, form).await {
            Ok(answer) => {
                tracing::Span::current().record("outcome", answer.outcome);
                answer.response
            }
            Err(e) => unavailable(e),
        }
    }
    .instrument(span)
    .await
}

async fn confirm(
    State(pool): State<PgPool>,
    id: Result<Path<String>, PathRejection>,
    form: Result<Form<ConfirmForm>, FormRejection>,
) -> Response {
    let Some(id) = session_id(id) else {
        return not_found();
    };
    let approve = match form.as_ref().map(|Form(f)| f.action.as_str()) {
        Ok("approve") => true,
        Ok("fail") => false,
        _ => return bad_request(),
    };
    let span = tracing::info_span!(
        "sandbox.checkout.confirm",
        checkout.session = %id,
        approve,
        outcome = tracing::field::Empty,
    );
    async move {
        match answer_confirmation(&pool, &id, approve).await {
            Ok(answer) => {
                tracing::Span::current().record("outcome", answer.outcome);
                answer.response
            }
            Err(e) => unavailable(e),
        }
    }
    .instrument(span)
    .await
}

/// A handler's answer and the outcome its span records.
struct Answer {
    outcome: &'static str,
    response: Response,
}

impl Answer {
    fn new(outcome: &'static str, response: Response) -> Self {
        Self { outcome, response }
    }
}

/// What a card form keeps when it is shown again: never the number or the CVC.
#[derive(Default)]
pub(super) struct Kept {
    pub(super) expiry: String,
    pub(super) name: String,
}

/// A card form's inputs (the number; expiry and CVC in a row; the name on the card), each with
/// its error from `errors`, shared by the checkout page and the portal. The number and CVC are
/// never written back: the person types them again.
pub(super) fn card_fields(number_label: &str, errors: &[FieldError], kept: &Kept) -> String {
    let field = |f: card::Field, label: &str, attrs: &str, value: &str| {
        let error = errors.iter().find(|e| e.field == f);
        let name = f.name();
        let (aria, message) = match error {
            Some(e) => (
                format!(" aria-invalid=\"true\" aria-describedby=\"{name}-error\""),
                format!(
                    "<p class=\"error\" id=\"{name}-error\">{}</p>",
                    esc(e.message)
                ),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "<div><label for=\"{name}\">{label}</label>\
             <input id=\"{name}\" name=\"{name}\" {attrs} value=\"{value}\"{aria}>{message}</div>",
            label = esc(label),
            value = esc(value),
        )
    };
    format!(
        "{number}<div class=\"row\">{expiry}{cvc}</div>{name}",
        number = field(
            card::Field::Number,
            number_label,
            "type=\"text\" inputmode=\"numeric\" autocomplete=\"cc-number\" \
             placeholder=\"1234 1234 1234 1234\" maxlength=\"23\" required",
            "",
        ),
        expiry = field(
            card::Field::Expiry,
            "Expiry (MM / YY)",
            "type=\"text\" inputmode=\"numeric\" autocomplete=\"cc-exp\" placeholder=\"MM / YY\" \
             maxlength=\"9\" required",
            &kept.expiry,
        ),
        cvc = field(
            card::Field::Cvc,
            "CVC",
            "type=\"text\" inputmode=\"numeric\" autocomplete=\"cc-csc\" placeholder=\"123\" \
             maxlength=\"4\" required",
            "",
        ),
        name = field(
            card::Field::Name,
            "Name on card",
            "type=\"text\" autocomplete=\"cc-name\" maxlength=\"100\" required",
            &kept.name,
        ),
    )
}

async fn attempt(pool: &PgPool, id: &str, form: CardForm) -> Result<Answer, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(s) = store::lock_checkout(&mut tx, id).await? else {
        return Ok(Answer::new("not_found", not_found()));
    };
    if let Some(c) = closed(&s) {
        // Nothing written: the transaction only held the lock.
        return Ok(Answer::new(
            "closed",
            html(StatusCode::CONFLICT, closed_page(&s, c)),
        ));
    }
    let kept = Kept {
        expiry: form.expiry.clone(),
        name: form.name.clone(),
    };
    let card = match card::check_form(&form.number, &form.expiry, &form.cvc, &form.name, s.now) {
        Ok(card) => card,
        Err(errors) => {
            return Ok(Answer::new(
                "invalid",
                checkout_page(StatusCode::UNPROCESSABLE_ENTITY, &s, None, &errors, &kept),
            ));
        }
    };
    drop(form);
    let outcome = apply_card(&mut tx, &s, &card).await?;
    tx.commit().await?;
    Ok(Answer::new(outcome.as_str(), after(&s, outcome, &kept)))
}

async fn answer_confirmation(pool: &PgPool, id: &str, approve: bool) -> Result<Answer, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(s) = store::lock_checkout(&mut tx, id).await? else {
        return Ok(Answer::new("not_found", not_found()));
    };
    if let Some(c) = closed(&s) {
        return Ok(Answer::new(
            "closed",
            html(StatusCode::CONFLICT, closed_page(&s, c)),
        ));
    }
    let outcome = if is_trial(&s) {
        if !s.setup_requires_action {
            return Ok(nothing_to_confirm(&s));
        }
        if approve {
            complete(&mut tx, &s, None, false).await?;
            Outcome::Completed
        } else {
            store::set_setup_requires_action(&mut tx, &s.account, &s.id, false).await?;
            Outcome::Failed(AUTHENTICATION_FAILED)
        }
    } else {
        let payment = store::find_payment_for_session(&mut tx, &s.account, &s.id).await?;
        let Some(payment) = payment.filter(|p| p.status == PaymentState::RequiresAction) else {
            return Ok(nothing_to_confirm(&s));
        };
        if approve {
            let paid = store::settle_payment(
                &mut tx,
                &s.account,
                &payment.id,
                PaymentState::Succeeded,
                None,
                s.now,
            )
            .await?;
            let fails_on_renewal = paid.fails_on_renewal;
            complete(&mut tx, &s, Some(paid), fails_on_renewal).await?;
            Outcome::Completed
        } else {
            let failed = store::settle_payment(
                &mut tx,
                &s.account,
                &payment.id,
                PaymentState::Failed,
                Some(AUTHENTICATION_FAILED),
                s.now,
            )
            .await?;
            emit_payment(&mut tx, &s, EventType::PaymentFailed, &failed).await?;
            Outcome::Failed(AUTHENTICATION_FAILED)
        }
    };
    tx.commit().await?;
    Ok(Answer::new(
        outcome.as_str(),
        after(&s, outcome, &Kept::default()),
    ))
}

fn nothing_to_confirm(s: &Checkout) -> Answer {
    Answer::new(
        "nothing_to_confirm",
        checkout_page(
            StatusCode::CONFLICT,
            s,
            Some("There is no payment waiting for confirmation. Enter your card to pay."),
            &[],
            &Kept::default(),
        ),
    )
}

/// The page after a committed attempt.
fn after(s: &Checkout, outcome: Outcome, kept: &Kept) -> Response {
    match outcome {
        Outcome::Completed => see_other(&s.success_url),
        Outcome::NeedsAction => html(StatusCode::OK, confirm_page(s)),
        Outcome::Failed(code) => checkout_page(
            StatusCode::PAYMENT_REQUIRED,
            s,
            Some(failure_message(code)),
            &[],
            kept,
        ),
    }
}

fn failure_message(code: &str) -> &'static str {
    match code {
        card::CARD_DECLINED => "Your card was declined. Try another card.",
        card::INSUFFICIENT_FUNDS => "Your card has insufficient funds. Try another card.",
        _ => "The payment was not confirmed. Try again or use another card.",
    }
}

/// Applies a checked card to the open, locked session `s`.
async fn apply_card(
    conn: &mut PgConnection,
    s: &Checkout,
    card: &Card,
) -> Result<Outcome, StoreError> {
    if is_trial(s) {
        // Nothing is charged, so a refused card leaves nothing to record.
        return Ok(match card.behaviour {
            Behaviour::Declined | Behaviour::InsufficientFunds => {
                Outcome::Failed(card.behaviour.failure_code().expect("a failing card"))
            }
            Behaviour::RequiresAction => {
                store::set_setup_requires_action(conn, &s.account, &s.id, true).await?;
                Outcome::NeedsAction
            }
            Behaviour::Succeeds | Behaviour::FailsOnRenewal => {
                complete(conn, s, None, card.behaviour == Behaviour::FailsOnRenewal).await?;
                Outcome::Completed
            }
        });
    }
    let (status, failure_code) = match card.behaviour {
        Behaviour::Succeeds | Behaviour::FailsOnRenewal => (PaymentState::Succeeded, None),
        Behaviour::Declined | Behaviour::InsufficientFunds => {
            (PaymentState::Failed, card.behaviour.failure_code())
        }
        Behaviour::RequiresAction => (PaymentState::RequiresAction, None),
    };
    let new_id = format!("py_sbx_{}", Uuid::now_v7().simple());
    let payment = store::record_attempt(
        conn,
        store::PaymentAttempt {
            account: &s.account,
            new_id: &new_id,
            session_id: &s.id,
            client_reference: s.client_reference,
            amount: s.amount_total,
            currency: &s.currency,
            status,
            failure_code,
            card_brand: card.brand,
            card_last4: &card.last4,
            fails_on_renewal: card.behaviour == Behaviour::FailsOnRenewal,
            now: s.now,
        },
    )
    .await?;
    Ok(match (status, failure_code) {
        (PaymentState::Failed, Some(code)) => {
            emit_payment(conn, s, EventType::PaymentFailed, &payment).await?;
            Outcome::Failed(code)
        }
        (PaymentState::RequiresAction, _) => Outcome::NeedsAction,
        _ => {
            let fails_on_renewal = payment.fails_on_renewal;
            complete(conn, s, Some(payment), fails_on_renewal).await?;
            Outcome::Completed
        }
    })
}

async fn emit_payment(
    conn: &mut PgConnection,
    s: &Checkout,
    event: EventType,
    payment: &Payment,
) -> Result<(), StoreError> {
    events::emit(conn, &s.account, event, &objects::payment(payment), s.now).await?;
    Ok(())
}

/// Completes the session: the payment's success (if it was charged), its subscription (in
/// subscription mode), the session itself, and an event for each, in that order, so a consumer
/// applying them in order finds the payment and subscription before the completion names them.
async fn complete(
    conn: &mut PgConnection,
    s: &Checkout,
    payment: Option<Payment>,
    fails_on_renewal: bool,
) -> Result<(), StoreError> {
    if let Some(p) = &payment {
        emit_payment(conn, s, EventType::PaymentSucceeded, p).await?;
    }
    if s.mode == Mode::Subscription {
        let (months, _) = period_of(&s.line_items)?;
        let trial_end = (s.trial_days > 0).then(|| s.now + Duration::days(s.trial_days.into()));
        // As Stripe's: a trialing subscription's first period is its trial, so its first
        // charge falls when the trial ends.
        let period_end = trial_end.unwrap_or_else(|| add_months(s.now, months));
        let id = format!("sub_sbx_{}", Uuid::now_v7().simple());
        let sub = store::insert_subscription(
            conn,
            store::NewSubscription {
                account: &s.account,
                id: &id,
                session_id: &s.id,
                client_reference: s.client_reference,
                customer: &s.customer,
                status: if trial_end.is_some() {
                    SubscriptionState::Trialing
                } else {
                    SubscriptionState::Active
                },
                current_period_start: s.now,
                current_period_end: period_end,
                trial_end,
                fails_on_renewal,
                amount: s.amount_total,
                currency: &s.currency,
                period_months: months as i32,
                now: s.now,
                expires_at: None,
            },
        )
        .await?;
        events::emit(
            conn,
            &s.account,
            EventType::SubscriptionCreated,
            &objects::subscription(&sub),
            s.now,
        )
        .await?;
    }
    let payment_status = if payment.is_some() {
        PaymentStatus::Paid
    } else {
        PaymentStatus::NoPaymentRequired
    };
    store::complete_session(conn, &s.account, &s.id, payment_status, s.now).await?;
    let done = store::find_checkout(conn, &s.id)
        .await?
        .ok_or_else(|| crate::store::corrupt("sandbox session", "missing after completion"))?;
    events::emit(
        conn,
        &s.account,
        EventType::CheckoutCompleted,
        &objects::checkout_session(&(&done).into()),
        s.now,
    )
    .await?;
    Ok(())
}

/// A line item as the sandbox stored it.
#[derive(Deserialize)]
struct Item {
    name: String,
    unit_amount: i64,
    quantity: i64,
    amount_total: i64,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    interval_count: Option<u32>,
}

fn items(line_items: &serde_json::Value) -> Result<Vec<Item>, StoreError> {
    serde_json::from_value(line_items.clone())
        .map_err(|e| crate::store::corrupt("sandbox line items", e))
}

/// A subscription's period in months (a year is 12) and its unit's name, from its first line
/// item: every item of a subscription renews on the same interval.
fn period_of(line_items: &serde_json::Value) -> Result<(u32, &'static str), StoreError> {
    let first = items(line_items)?.into_iter().next();
    let count = first.as_ref().and_then(|i| i.interval_count).unwrap_or(1);
    match first.as_ref().and_then(|i| i.interval.as_deref()) {
        Some("month") => Ok((count, "month")),
        Some("year") => Ok((12 * count, "year")),
        _ => Err(crate::store::corrupt(
            "sandbox line items",
            "a subscription session without an interval",
        )),
    }
}

/// `t` plus `months` calendar months, the day clamped to the target month's last (Jan 31 + 1
/// month is Feb 28 or 29).
pub(super) fn add_months(t: OffsetDateTime, months: u32) -> OffsetDateTime {
    let index = t.year() * 12 + i32::from(u8::from(t.month())) - 1 + months as i32;
    let (year, month) = (index.div_euclid(12), index.rem_euclid(12) as u8 + 1);
    let month = time::Month::try_from(month).expect("1..=12");
    let day = t.day().min(month.length(year));
    let date = time::Date::from_calendar_date(year, month, day).expect("a clamped day is valid");
    t.replace_date(date)
}

// ---- Responses.

fn session_id(id: Result<Path<String>, PathRejection>) -> Option<String> {
    let Path(id) = id.ok()?;
    let valid =
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    valid.then_some(id)
}

pub(super) fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // A page with a card form is neither cached nor framed, and sends no referrer.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        // Coffer checked the URL when the session was made; one that is no header value now
        // cannot be followed, but the payment stands.
        Err(_) => html(
            StatusCode::OK,
            layout(
                "Payment received",
                "<h1>Payment received</h1><p>You can close this page.</p>",
            ),
        ),
    }
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        layout(
            "Checkout not found",
            "<h1>Checkout not found</h1><p>This checkout link is not valid.</p>",
        ),
    )
}

fn bad_request() -> Response {
    html(
        StatusCode::BAD_REQUEST,
        layout(
            "Something went wrong",
            "<h1>Something went wrong</h1><p>The form could not be read. Go back and try again.</p>",
        ),
    )
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!(error = %e, "the sandbox's hosted page could not reach its database");
    let mut response = html(
        StatusCode::SERVICE_UNAVAILABLE,
        layout(
            "Try again",
            "<h1>Try again in a moment</h1><p>The sandbox cannot take payments right now. \
             Nothing was charged.</p>",
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

// ---- HTML.

/// Escapes text for HTML content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1a1f36;background:#f6f8fa}\
main{max-width:30rem;margin:0 auto;padding:1.25rem 1rem 3rem}\
.badge{display:inline-block;font-size:.75rem;font-weight:600;letter-spacing:.04em;text-transform:uppercase;background:#fff4d6;color:#7a4f00;border-radius:.25rem;padding:.1rem .5rem}\
h1{font-size:1.5rem;line-height:1.25;margin:.5rem 0 1rem}\
h2{font-size:1rem;margin:0 0 .5rem}\
.box{background:#fff;border:1px solid #e3e8ee;border-radius:.5rem;padding:1rem;margin-bottom:1rem}\
.box>:first-child{margin-top:0}.box>p:last-child{margin-bottom:0}\
table{width:100%;border-collapse:collapse}\
th,td{padding:.35rem 0;text-align:left;vertical-align:top}\
th{font-size:.8rem;color:#5b6470;font-weight:600}\
.n{text-align:right;white-space:nowrap;padding-left:.75rem}\
tfoot td{border-top:1px solid #e3e8ee;font-weight:700;padding-top:.6rem}\
label{display:block;font-weight:600;margin:.8rem 0 .25rem}\
input{width:100%;font:inherit;padding:.6rem .7rem;border:1px solid #c1c9d2;border-radius:.375rem;background:#fff}\
input:focus{outline:2px solid #635bff;outline-offset:1px}\
input[aria-invalid=true]{border-color:#b3261e}\
.row{display:flex;gap:.75rem}.row>div{flex:1;min-width:0}\
button{width:100%;margin-top:1.25rem;font:inherit;font-weight:600;padding:.75rem;border:0;border-radius:.375rem;background:#635bff;color:#fff;cursor:pointer}\
button.fail{background:#fff;color:#b3261e;border:1px solid #b3261e;margin-top:.75rem}\
.alert{background:#fdecea;border:1px solid #f5c2c0;color:#8a1c1c;border-radius:.375rem;padding:.75rem;margin-bottom:1rem}\
.error{color:#b3261e;font-size:.875rem;margin:.25rem 0 0}\
.muted{color:#5b6470;font-size:.875rem}\
a{color:#4b44d6}\
.cancel{display:block;text-align:center;margin-top:1.25rem}\
code{font-size:.85rem}\
ul{padding-left:1.2rem;margin:.5rem 0}";

pub(super) fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>{title} · Coffer sandbox</title><style>{STYLE}</style></head>\
         <body><main><span class=\"badge\">Sandbox · test mode</span>{body}</main></body></html>\n",
        title = esc(title),
    )
}

fn currency_of(s: &Checkout) -> Option<Currency> {
    Currency::parse(&s.currency).ok()
}

/// An amount for people, or the raw minor units if the currency is unknown (a corrupt row
/// still shows something true).
pub(super) fn money(amount: i64, currency: Option<Currency>, code: &str) -> String {
    match currency {
        Some(c) => format_amount(amount, c),
        None => format!("{amount} (minor units) {code}"),
    }
}

/// The order summary: items, total, and for a subscription how it renews.
fn summary(s: &Checkout) -> String {
    let currency = currency_of(s);
    let m = |amount| esc(&money(amount, currency, &s.currency));
    let mut rows = String::new();
    let items = items(&s.line_items).unwrap_or_default();
    for i in &items {
        rows.push_str(&format!(
            "<tr><td>{name}</td><td class=\"n\">{qty}</td><td class=\"n\">{unit}</td>\
             <td class=\"n\">{line}</td></tr>",
            name = esc(&i.name),
            qty = i.quantity,
            unit = m(i.unit_amount),
            line = m(i.amount_total),
        ));
    }
    let mut out = format!(
        "<div class=\"box\"><h2>Order summary</h2><table>\
         <thead><tr><th scope=\"col\">Item</th><th scope=\"col\" class=\"n\">Qty</th>\
         <th scope=\"col\" class=\"n\">Unit price</th><th scope=\"col\" class=\"n\">Amount</th></tr></thead>\
         <tbody>{rows}</tbody>\
         <tfoot><tr><td colspan=\"3\">Total</td><td class=\"n\" id=\"total\">{total}</td></tr></tfoot></table>",
        total = m(s.amount_total),
    );
    if s.mode == Mode::Subscription {
        let every = match period_of(&s.line_items) {
            Ok((12, "year")) => "per year".to_owned(),
            Ok((n, "year")) => format!("every {} years", n / 12),
            Ok((1, _)) => "per month".to_owned(),
            Ok((n, _)) => format!("every {n} months"),
            Err(_) => "per period".to_owned(),
        };
        if is_trial(s) {
            out.push_str(&format!(
                "<p class=\"muted\">Free for {days} days, then {total} {every}. \
                 Due today: <strong>{zero}</strong>.</p>",
                days = s.trial_days,
                total = m(s.amount_total),
                zero = m(0),
            ));
        } else {
            out.push_str(&format!(
                "<p class=\"muted\">Renews at {total} {every} until cancelled.</p>",
                total = m(s.amount_total),
            ));
        }
    }
    out.push_str("</div>");
    out
}

fn checkout_page(
    status: StatusCode,
    s: &Checkout,
    alert: Option<&str>,
    errors: &[FieldError],
    kept: &Kept,
) -> Response {
    let currency = currency_of(s);
    let trial = is_trial(s);
    let (title, button) = if trial {
        ("Start your trial".to_owned(), "Start trial".to_owned())
    } else {
        let total = money(s.amount_total, currency, &s.currency);
        (format!("Pay {total}"), format!("Pay {total}"))
    };
    let alert = alert
        .map(|a| format!("<div class=\"alert\" role=\"alert\">{}</div>", esc(a)))
        .unwrap_or_default();
    let summary_alert = if errors.is_empty() {
        String::new()
    } else {
        "<div class=\"alert\" role=\"alert\">Check the card details below.</div>".to_owned()
    };
    let note = if trial {
        "<p class=\"muted\">Your card is saved for when the trial ends; nothing is charged today.</p>"
    } else {
        ""
    };
    let body = format!(
        "<h1>{title}</h1>{alert}{summary_alert}{summary}\
         <form class=\"box\" method=\"post\" action=\"/sandbox/checkout/{id}\" novalidate>\
         <h2>Card details</h2>{note}\
         {fields}\
         <button type=\"submit\">{button}</button></form>\
         <details class=\"muted\"><summary>Sandbox test cards</summary><ul>\
         <li><code>4242 4242 4242 4242</code> succeeds</li>\
         <li><code>4000 0000 0000 0002</code> is declined</li>\
         <li><code>4000 0000 0000 9995</code> has insufficient funds</li>\
         <li><code>4000 0025 0000 3155</code> asks for confirmation</li>\
         <li><code>4000 0000 0000 0341</code> succeeds, then fails on renewal</li>\
         </ul>Any future expiry, any 3-digit CVC.</details>\
         <a class=\"cancel\" href=\"{cancel}\">Cancel and return</a>",
        title = esc(&title),
        summary = summary(s),
        id = esc(&s.id),
        fields = card_fields("Card number", errors, kept),
        button = esc(&button),
        cancel = esc(&s.cancel_url),
    );
    html(status, layout(&title, &body))
}

fn confirm_page(s: &Checkout) -> String {
    let what = if is_trial(s) {
        "Your bank asks you to confirm this card before the trial starts.".to_owned()
    } else {
        format!(
            "Your bank asks you to confirm the payment of <strong>{}</strong>.",
            esc(&money(s.amount_total, currency_of(s), &s.currency))
        )
    };
    let body = format!(
        "<h1>Confirm the payment</h1><div class=\"box\"><p>{what}</p>\
         <p class=\"muted\">This is the sandbox's stand-in for 3-D Secure: choose what the bank \
         answers.</p>\
         <form method=\"post\" action=\"/sandbox/checkout/{id}/confirm\">\
         <button type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"action\" value=\"fail\" class=\"fail\">Fail</button>\
         </form></div>\
         <a class=\"cancel\" href=\"{cancel}\">Cancel and return</a>",
        id = esc(&s.id),
        cancel = esc(&s.cancel_url),
    );
    layout("Confirm the payment", &body)
}

fn closed_page(s: &Checkout, closed: Closed) -> String {
    let body = match closed {
        Closed::Complete => format!(
            "<h1>This checkout is complete</h1><div class=\"box\"><p>It has already been {what}; \
             nothing more will be charged.</p></div>\
             <a class=\"cancel\" href=\"{back}\">Return to the shop</a>",
            what = if is_trial(s) { "started" } else { "paid" },
            back = esc(&s.success_url),
        ),
        Closed::Expired => format!(
            "<h1>This checkout has expired</h1><div class=\"box\"><p>It can no longer be paid. \
             Go back and start again.</p></div>\
             <a class=\"cancel\" href=\"{back}\">Return to the shop</a>",
            back = esc(&s.cancel_url),
        ),
    };
    let title = match closed {
        Closed::Complete => "Checkout complete",
        Closed::Expired => "Checkout expired",
    };
    layout(title, &body)
}

#[cfg(test)]
mod tests {
    use time::{Date, Month};

    use super::*;

    fn at(y: i32, m: Month, d: u8) -> OffsetDateTime {
        Date::from_calendar_date(y, m, d)
            .unwrap()
            .with_hms(10, 30, 0)
            .unwrap()
            .assume_utc()
    }

    #[test]
    fn months_are_added_on_the_calendar_with_the_day_clamped() {
        assert_eq!(
            add_months(at(2026, Month::January, 31), 1),
            at(2026, Month::February, 28)
        );
        assert_eq!(
            add_months(at(2028, Month::January, 31), 1),
            at(2028, Month::February, 29)
        );
        assert_eq!(
            add_months(at(2026, Month::December, 1), 1),
            at(2027, Month::January, 1)
        );
        assert_eq!(
            add_months(at(2026, Month::March, 15), 12),
            at(2027, Month::March, 15)
        );
        assert_eq!(
            add_months(at(2026, Month::August, 31), 3),
            at(2026, Month::November, 30)
        );
    }

    #[test]
    fn the_period_comes_from_the_first_item() {
        let items = |interval: &str, count: u32| {
            serde_json::json!([{"name": "Pro", "unit_amount": 100, "quantity": 1,
                                "amount_total": 100, "interval": interval,
                                "interval_count": count}])
        };
        assert_eq!(period_of(&items("month", 1)).unwrap(), (1, "month"));
        assert_eq!(period_of(&items("month", 3)).unwrap(), (3, "month"));
        assert_eq!(period_of(&items("year", 1)).unwrap(), (12, "year"));
        assert!(
            period_of(&serde_json::json!([{"name": "x", "unit_amount": 1,
            "quantity": 1, "amount_total": 1}]))
            .is_err()
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">Tom & Jerry's</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
    }
}
