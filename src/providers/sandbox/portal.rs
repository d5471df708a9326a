//! The sandbox's customer portal, beside its hosted checkout page on the public listener:
//!
//! - `GET /sandbox/portal/{token}`: the customer's subscriptions, card on file and payments,
//!   with a form per action (no JavaScript).
//! - `POST /sandbox/portal/{token}/subscriptions/{id}`: `action=cancel|undo|pause|resume`, a
//!   cancel at the period's end, undoing it, pausing collection (Stripe's `pause_collection`:
//!   the status stays, nothing is charged), or resuming it (a PAUSED subscription resumes with
//!   a new, charged period, as ResumeSubscription does).
//! - `POST /sandbox/portal/{token}/card`: a new card (the checkout page's test cards and rules),
//!   which becomes the customer's card on file: its renewals charge it, and the customer's
//!   subscriptions waiting for a card are charged on it at once (a PAUSED one resumes with a
//!   new period, an INCOMPLETE one has its first charge tried again; `renewals::card_added`).
//!
//! The token is the session's credential: 256 random bits, stored as its SHA-256
//! (`sandbox_portal_sessions`), good until the session's `expires_at` on the account's clock,
//! and for one customer of one account (so of one tenant). An unknown token is 403, an expired
//! one 410, and neither shows or changes anything. Every form carries the session's CSRF token
//! (a synchronizer token, compared in constant time); a post without it or with another is 403
//! and changes nothing.
//!
//! Subscription changes are not made here. The sandbox is the provider: a change asked in its
//! portal goes to Coffer through [`PortalActions`], a port this module defines and `app`
//! implements with the same use case as the lifecycle RPCs, so it is journaled, recorded in
//! the change outbox and seen by CheckAccess, and the sandbox's subscription changes when
//! Coffer asks it to, as it does for an RPC (decision 0027). A card is the provider's own
//! business, so changing it is the sandbox's alone.
//!
//! Every value written into the page is escaped; card numbers and CVCs are checked and dropped,
//! never stored, logged or echoed.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Form, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_core::future::BoxFuture;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::card::{self, Behaviour, FieldError};
use super::page::{Kept, card_fields, esc, html, layout, money};
use super::status::{PaymentState, SubscriptionState};
use super::store::{self, PortalPayment, PortalSession, PortalSubscription};
use crate::domain::ids::TenantId;
use crate::domain::money::Currency;
use crate::store::StoreError;

/// A card form is a few hundred bytes.
const MAX_FORM_BYTES: usize = 8 << 10;

/// A new random token: 32 bytes, base64url without padding (43 characters).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A lifecycle change the customer asks for in the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalAction {
    /// Cancel at the end of the current period.
    CancelAtPeriodEnd,
    /// Take back a scheduled cancel.
    UndoCancel,
    /// Pause collection (PauseSubscription's change).
    PauseCollection,
    /// Resume paused collection, or a PAUSED subscription (ResumeSubscription's change).
    ResumeCollection,
}

impl PortalAction {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "cancel" => Some(Self::CancelAtPeriodEnd),
            "undo" => Some(Self::UndoCancel),
            "pause" => Some(Self::PauseCollection),
            "resume" => Some(Self::ResumeCollection),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::CancelAtPeriodEnd => "cancel",
            Self::UndoCancel => "undo",
            Self::PauseCollection => "pause",
            Self::ResumeCollection => "resume",
        }
    }
}

/// Who asks, as the portal knows it: the session's tenant, account and Coffer's id of the
/// session (its client reference).
#[derive(Debug, Clone)]
pub struct PortalCaller {
    pub tenant: TenantId,
    pub account: String,
    pub session: Uuid,
}

/// Why Coffer did not make a change.
#[derive(Debug, Clone)]
pub enum PortalRefusal {
    /// Not allowed now (the subscription's state forbids it, or it is not this customer's):
    /// the text is fixed wording for the customer, never an internal error.
    Refused(&'static str),
    /// Coffer could not be reached or failed: try again.
    Unavailable,
}

/// The port through which the portal asks Coffer for a subscription change. `app` implements
/// it with the lifecycle RPCs' use case; adapters import neither `app` nor `grpc`.
pub trait PortalActions: Send + Sync {
    /// Makes `action` to the provider's subscription `subscription` on behalf of `caller`.
    fn change<'a>(
        &'a self,
        caller: &'a PortalCaller,
        subscription: &'a str,
        action: PortalAction,
    ) -> BoxFuture<'a, Result<(), PortalRefusal>>;
}

#[derive(Clone)]
struct PortalState {
    pool: PgPool,
    actions: Arc<dyn PortalActions>,
}

/// The portal's routes, to merge into the public listener beside the checkout page's.
pub fn router(pool: PgPool, actions: Arc<dyn PortalActions>) -> Router {
    Router::new()
        .route("/sandbox/portal/{token}", get(show))
        .route(
            "/sandbox/portal/{token}/subscriptions/{id}",
            post(change_subscription),
        )
        .route("/sandbox/portal/{token}/card", post(change_card))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(PortalState { pool, actions })
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
}

/// The card form as posted. Deliberately without `Debug`: it holds the number and the CVC.
#[derive(Deserialize, Default)]
struct CardForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    number: String,
    #[serde(default)]
    expiry: String,
    #[serde(default)]
    cvc: String,
    #[serde(default)]
    name: String,
}

/// A session the token opens, or the page that says why not.
enum Opened {
    Open(PortalSession),
    Refused(Response),
}

/// A token has the shape [`new_token`] makes; anything else is looked up no further.
fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn open(pool: &PgPool, token: &str) -> Opened {
    if !well_formed(token) {
        return Opened::Refused(forbidden());
    }
    let found = async {
        let mut conn = pool.acquire().await?;
        store::find_portal_session(&mut conn, &token_hash(token)).await
    }
    .await;
    match found {
        Ok(Some(s)) if s.expires_at <= s.now => Opened::Refused(expired(&s)),
        Ok(Some(s)) => Opened::Open(s),
        Ok(None) => Opened::Refused(forbidden()),
        Err(e) => Opened::Refused(unavailable(e)),
    }
}

/// Whether the posted CSRF token is the session's, in constant time.
fn csrf_ok(s: &PortalSession, posted: &str) -> bool {
    !posted.is_empty() && bool::from(posted.as_bytes().ct_eq(s.csrf.as_bytes()))
}

/// A fixed notice after a change, chosen by the redirect's query: nothing posted is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    Canceled,
    Undone,
    Paused,
    Resumed,
    CardChanged,
}

impl Notice {
    fn parse(query: Option<&str>) -> Option<Self> {
        let value = query?
            .split('&')
            .find_map(|pair| pair.strip_prefix("notice="))?;
        match value {
            "cancel" => Some(Self::Canceled),
            "undo" => Some(Self::Undone),
            "pause" => Some(Self::Paused),
            "resume" => Some(Self::Resumed),
            "card" => Some(Self::CardChanged),
            _ => None,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Canceled => "Your subscription will end at the close of the current period.",
            Self::Undone => "Your subscription will continue.",
            Self::Paused => "Payments on your subscription are paused.",
            Self::Resumed => "Payments on your subscription have resumed.",
            Self::CardChanged => "Your card was saved. Future payments will use it.",
        }
    }
}

async fn show(
    State(state): State<PortalState>,
    token: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Response {
    let Ok(Path(token)) = token else {
        return forbidden();
    };
    let s = match open(&state.pool, &token).await {
        Opened::Open(s) => s,
        Opened::Refused(r) => return r,
    };
    let notice = Notice::parse(uri.query()).map(Notice::text);
    render(
        &state.pool,
        &s,
        &token,
        StatusCode::OK,
        notice,
        None,
        &[],
        &Kept::default(),
    )
    .await
}

async fn change_subscription(
    State(state): State<PortalState>,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let Ok(Path((token, id))) = path else {
        return forbidden();
    };
    let s = match open(&state.pool, &token).await {
        Opened::Open(s) => s,
        Opened::Refused(r) => return r,
    };
    let Ok(Form(form)) = form else {
        return refused_post();
    };
    if !csrf_ok(&s, &form.csrf) {
        return refused_post();
    }
    let Some(action) = PortalAction::parse(&form.action) else {
        return bad_request();
    };
    // Only this customer's subscriptions: a made-up id is the same "not yours" as another's.
    let listed = async {
        let mut conn = state.pool.acquire().await?;
        store::list_customer_subscriptions(&mut conn, &s.account, &s.customer).await
    }
    .await;
    match listed {
        Ok(subs) if subs.iter().any(|sub| sub.id == id) => {}
        Ok(_) => {
            return render(
                &state.pool,
                &s,
                &token,
                StatusCode::NOT_FOUND,
                None,
                Some("That subscription is not one of yours."),
                &[],
                &Kept::default(),
            )
            .await;
        }
        Err(e) => return unavailable(e),
    }
    let caller = PortalCaller {
        tenant: s.tenant,
        account: s.account.clone(),
        session: s.client_reference,
    };
    let span = tracing::info_span!(
        "sandbox.portal.change",
        portal.session = %s.id,
        subscription = %id,
        action = action.as_str(),
    );
    let changed = state
        .actions
        .change(&caller, &id, action)
        .instrument(span)
        .await;
    match changed {
        Ok(()) => see_other(&format!(
            "/sandbox/portal/{token}?notice={}",
            action.as_str()
        )),
        Err(PortalRefusal::Refused(why)) => {
            render(
                &state.pool,
                &s,
                &token,
                StatusCode::CONFLICT,
                None,
                Some(why),
                &[],
                &Kept::default(),
            )
            .await
        }
        Err(PortalRefusal::Unavailable) => try_again(),
    }
}

async fn change_card(
    State(state): State<PortalState>,
    token: Result<Path<String>, PathRejection>,
    form: Result<Form<CardForm>, FormRejection>,
) -> Response {
    let Ok(Path(token)) = token else {
        return forbidden();
    };
    let s = match open(&state.pool, &token).await {
        Opened::Open(s) => s,
        Opened::Refused(r) => return r,
    };
    // The rejection's text is not shown: it could quote the body.
    let Ok(Form(form)) = form else {
        return refused_post();
    };
    if !csrf_ok(&s, &form.csrf) {
        return refused_post();
    }
    let kept = Kept {
        expiry: form.expiry.clone(),
        name: form.name.clone(),
    };
    let checked = card::check_form(&form.number, &form.expiry, &form.cvc, &form.name, s.now);
    drop(form);
    let card = match checked {
        Ok(card) => card,
        Err(errors) => {
            return render(
                &state.pool,
                &s,
                &token,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                None,
                &errors,
                &kept,
            )
            .await;
        }
    };
    // Saving a card is a setup, not a charge: a card that would be declined is refused, and
    // the portal has no confirmation step to offer 3155's.
    let refusal = match card.behaviour {
        Behaviour::Declined => Some("Your card was declined. Try another card."),
        Behaviour::InsufficientFunds => Some("Your card was declined. Try another card."),
        Behaviour::RequiresAction => Some(
            "Your bank asks to confirm this card, which the sandbox portal cannot do. \
             Try another card.",
        ),
        Behaviour::Succeeds | Behaviour::FailsOnRenewal => None,
    };
    if let Some(why) = refusal {
        tracing::info!(
            portal.session = %s.id,
            outcome = "card_refused",
            "sandbox portal card change"
        );
        return render(
            &state.pool,
            &s,
            &token,
            StatusCode::PAYMENT_REQUIRED,
            None,
            Some(why),
            &[],
            &kept,
        )
        .await;
    }
    let saved = async {
        let mut tx = state.pool.begin().await?;
        store::set_customer_card(
            &mut tx,
            &s.account,
            &s.customer,
            card.brand,
            &card.last4,
            card.behaviour == Behaviour::FailsOnRenewal,
            s.now,
        )
        .await?;
        // What waited for a card is charged on it now, in the same transaction, its events
        // sent as every change's are.
        super::renewals::card_added(&mut tx, &s.account, &s.customer, s.now).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    match saved {
        Ok(()) => {
            tracing::info!(
                portal.session = %s.id,
                outcome = "card_saved",
                "sandbox portal card change"
            );
            see_other(&format!("/sandbox/portal/{token}?notice=card"))
        }
        Err(e) => unavailable(e),
    }
}

// ---- Responses.

fn see_other(location: &str) -> Response {
    match axum::http::HeaderValue::from_str(location) {
        Ok(l) => (StatusCode::SEE_OTHER, [(axum::http::header::LOCATION, l)]).into_response(),
        Err(_) => bad_request(),
    }
}

fn forbidden() -> Response {
    html(
        StatusCode::FORBIDDEN,
        layout(
            "Link not valid",
            "<h1>This link is not valid</h1><div class=\"box\"><p>Go back to the shop and open \
             your billing page again.</p></div>",
        ),
    )
}

fn expired(s: &PortalSession) -> Response {
    html(
        StatusCode::GONE,
        layout(
            "Link expired",
            &format!(
                "<h1>This link has expired</h1><div class=\"box\"><p>For your security, billing \
                 links work for a short time only. Go back and open your billing page again.\
                 </p></div><a class=\"cancel\" href=\"{back}\">Return to the shop</a>",
                back = esc(&s.return_url),
            ),
        ),
    )
}

/// A post without the page's CSRF token (or with another one): nothing was changed.
fn refused_post() -> Response {
    html(
        StatusCode::FORBIDDEN,
        layout(
            "Request refused",
            "<h1>Request refused</h1><div class=\"box\"><p>This form did not come from your \
             billing page. Nothing was changed. Open your billing page and try again.</p></div>",
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

fn try_again() -> Response {
    let mut response = html(
        StatusCode::SERVICE_UNAVAILABLE,
        layout(
            "Try again",
            "<h1>Try again in a moment</h1><p>Your change could not be made right now. Nothing \
             was changed.</p>",
        ),
    );
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    response
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!(error = %e, "the sandbox's portal could not reach its database");
    try_again()
}

// ---- HTML.

fn date(t: OffsetDateTime) -> String {
    format!("{} {} {}", t.day(), t.month(), t.year())
}

fn every(months: Option<i32>) -> &'static str {
    match months {
        Some(1) => " per month",
        Some(12) => " per year",
        Some(_) => " per period",
        None => "",
    }
}

fn status_label(s: &PortalSubscription) -> (&'static str, &'static str) {
    match s.status {
        _ if s.collection_paused => ("Collection paused", "warn"),
        SubscriptionState::Trialing => ("Trial", "ok"),
        SubscriptionState::Active if s.cancel_at_period_end => ("Cancels soon", "warn"),
        SubscriptionState::Active => ("Active", "ok"),
        SubscriptionState::PastDue => ("Past due", "bad"),
        SubscriptionState::Unpaid => ("Unpaid", "bad"),
        SubscriptionState::Incomplete => ("Incomplete", "bad"),
        SubscriptionState::IncompleteExpired => ("Expired", "off"),
        SubscriptionState::Paused => ("Paused", "warn"),
        SubscriptionState::Canceled => ("Canceled", "off"),
    }
}

fn subscription_box(s: &PortalSession, sub: &PortalSubscription, token: &str) -> String {
    let (label, class) = status_label(sub);
    let price = match (sub.amount, sub.currency.as_deref()) {
        (Some(amount), Some(code)) => format!(
            "{}{}",
            esc(&money(amount, Currency::parse(code).ok(), code)),
            every(sub.period_months)
        ),
        _ => String::new(),
    };
    let when = match sub.status {
        SubscriptionState::Canceled | SubscriptionState::IncompleteExpired => {
            "This subscription has ended.".to_owned()
        }
        SubscriptionState::Paused => {
            "Paused: your trial ended without a card. Add a card below to resume.".to_owned()
        }
        SubscriptionState::Incomplete => {
            "Its first payment failed. Add a card below to pay it.".to_owned()
        }
        _ if sub.cancel_at_period_end => format!(
            "Ends on <strong>{}</strong>; you keep access until then.",
            date(sub.current_period_end)
        ),
        SubscriptionState::Trialing => format!(
            "Trial ends on <strong>{}</strong>.",
            date(sub.trial_end.unwrap_or(sub.current_period_end))
        ),
        _ if sub.collection_paused => {
            "Collection paused: nothing is charged until you resume payments.".to_owned()
        }
        _ => format!(
            "Renews on <strong>{}</strong>.",
            date(sub.current_period_end)
        ),
    };
    // Each action the state allows, as the domain's rules do: pausing collection needs a
    // TRIALING or ACTIVE subscription without a scheduled cancel to show beside.
    let actions: &[(&str, &str, &str)] = match sub.status {
        SubscriptionState::Canceled
        | SubscriptionState::IncompleteExpired
        | SubscriptionState::Incomplete
        | SubscriptionState::Paused => &[],
        _ if sub.cancel_at_period_end => &[("undo", "Keep my subscription", "")],
        _ if sub.collection_paused => &[("resume", "Resume payments", "")],
        SubscriptionState::Trialing | SubscriptionState::Active => &[
            ("pause", "Pause payments", " class=\"quiet\""),
            ("cancel", "Cancel subscription", " class=\"fail\""),
        ],
        _ => &[("cancel", "Cancel subscription", " class=\"fail\"")],
    };
    let form: String = actions
        .iter()
        .map(|(action, button, style)| {
            format!(
                "<form method=\"post\" action=\"/sandbox/portal/{token}/subscriptions/{id}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"action\" value=\"{action}\">\
                 <button type=\"submit\" id=\"{action}-{id}\"{style}>{button}</button></form>",
                token = esc(token),
                id = esc(&sub.id),
                csrf = esc(&s.csrf),
            )
        })
        .collect();
    format!(
        "<div class=\"box sub\" data-subscription=\"{id}\"><div class=\"head\"><h2>{name}</h2>\
         <span class=\"pill {class}\">{label}</span></div>\
         <p class=\"muted\">{price}</p><p>{when}</p>{form}</div>",
        id = esc(&sub.id),
        name = esc(if sub.name.is_empty() {
            "Subscription"
        } else {
            &sub.name
        }),
    )
}

fn payment_row(p: &PortalPayment) -> String {
    let status = match p.status {
        PaymentState::Succeeded if p.amount_refunded >= p.amount => "Refunded",
        PaymentState::Succeeded if p.amount_refunded > 0 => "Partly refunded",
        PaymentState::Succeeded => "Paid",
        PaymentState::Failed => "Failed",
        PaymentState::RequiresAction => "Awaiting confirmation",
    };
    let card = match (&p.card_brand, &p.card_last4) {
        (Some(brand), Some(last4)) => format!("{} ·· {}", esc(&capitalised(brand)), esc(last4)),
        _ => String::new(),
    };
    format!(
        "<tr><td>{date}</td><td>{card}</td><td>{status}</td><td class=\"n\">{amount}</td></tr>",
        date = date(p.created_at),
        amount = esc(&money(
            p.amount,
            Currency::parse(&p.currency).ok(),
            &p.currency
        )),
    )
}

fn card_form(
    s: &PortalSession,
    token: &str,
    card: Option<&(String, String)>,
    errors: &[FieldError],
    kept: &Kept,
) -> String {
    let on_file = match card {
        Some((brand, last4)) => format!(
            "<p id=\"card-on-file\">{} ending in <strong>{}</strong></p>",
            esc(&capitalised(brand)),
            esc(last4)
        ),
        None => "<p id=\"card-on-file\" class=\"muted\">No card on file.</p>".to_owned(),
    };
    format!(
        "<form class=\"box\" method=\"post\" action=\"/sandbox/portal/{token}/card\" novalidate>\
         <h2>Payment method</h2>{on_file}\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         {fields}\
         <button type=\"submit\" id=\"save-card\">Save new card</button></form>",
        token = esc(token),
        csrf = esc(&s.csrf),
        fields = card_fields("New card number", errors, kept),
    )
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Extra styles of the portal, on top of the checkout page's.
const PORTAL_STYLE: &str = "<style>\
.head{display:flex;justify-content:space-between;align-items:flex-start;gap:.5rem}\
.head h2{margin:0;min-width:0;overflow-wrap:anywhere}\
.pill{font-size:.75rem;font-weight:600;border-radius:1rem;padding:.1rem .6rem;white-space:nowrap}\
.pill.ok{background:#e3f6e8;color:#1b6b34}.pill.warn{background:#fff4d6;color:#7a4f00}\
.pill.bad{background:#fdecea;color:#8a1c1c}.pill.off{background:#eceff3;color:#5b6470}\
.sub form button{margin-top:.25rem}\
.sub form button.quiet{background:#fff;color:#1f2937;border:1px solid #c6ccd4;margin-top:.75rem}\
.notice{background:#e3f6e8;border:1px solid #b7e1c2;color:#1b6b34;border-radius:.375rem;padding:.75rem;margin-bottom:1rem}\
</style>";

#[allow(clippy::too_many_arguments)]
async fn render(
    pool: &PgPool,
    s: &PortalSession,
    token: &str,
    status: StatusCode,
    notice: Option<&str>,
    alert: Option<&str>,
    errors: &[FieldError],
    kept: &Kept,
) -> Response {
    let loaded = async {
        let mut conn = pool.acquire().await?;
        let subs = store::list_customer_subscriptions(&mut conn, &s.account, &s.customer).await?;
        let payments = store::list_customer_payments(&mut conn, &s.account, &s.customer).await?;
        let card = store::find_customer_card(&mut conn, &s.account, &s.customer).await?;
        Ok::<_, StoreError>((subs, payments, card))
    }
    .await;
    let (subs, payments, card) = match loaded {
        Ok(found) => found,
        Err(e) => return unavailable(e),
    };
    // The token is in the page's own form actions: the page is its holder's already.
    let token = token.to_owned();
    let notice = notice
        .map(|n| format!("<div class=\"notice\" role=\"status\">{}</div>", esc(n)))
        .unwrap_or_default();
    let alert = alert
        .map(|a| format!("<div class=\"alert\" role=\"alert\">{}</div>", esc(a)))
        .or_else(|| {
            (!errors.is_empty()).then(|| {
                "<div class=\"alert\" role=\"alert\">Check the card details below.</div>".to_owned()
            })
        })
        .unwrap_or_default();
    let subscriptions = if subs.is_empty() {
        "<div class=\"box\"><p class=\"muted\">You have no subscriptions.</p></div>".to_owned()
    } else {
        subs.iter()
            .map(|sub| subscription_box(s, sub, &token))
            .collect()
    };
    let payments = if payments.is_empty() {
        "<p class=\"muted\">No payments yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Date</th><th scope=\"col\">Card</th>\
             <th scope=\"col\">Status</th><th scope=\"col\" class=\"n\">Amount</th></tr></thead>\
             <tbody>{}</tbody></table>",
            payments.iter().map(payment_row).collect::<String>()
        )
    };
    let body = format!(
        "{PORTAL_STYLE}<h1>Your billing</h1>{notice}{alert}\
         <h2>Subscriptions</h2>{subscriptions}\
         {card}\
         <div class=\"box\"><h2>Payments</h2>{payments}</div>\
         <details class=\"muted\"><summary>Sandbox test cards</summary><ul>\
         <li><code>4242 4242 4242 4242</code> succeeds</li>\
         <li><code>4000 0000 0000 0341</code> is saved, then fails on renewal</li>\
         <li><code>4000 0000 0000 0002</code> is declined</li>\
         </ul>Any future expiry, any 3-digit CVC.</details>\
         <a class=\"cancel\" href=\"{back}\">Return to the shop</a>",
        card = card_form(s, &token, card.as_ref(), errors, kept),
        back = esc(&s.return_url),
    );
    html(status, layout("Your billing", &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(csrf: &str) -> PortalSession {
        let now = OffsetDateTime::now_utc();
        PortalSession {
            account: "acme-sandbox".into(),
            id: "ps_sbx_1".into(),
            tenant: TenantId::generate(),
            client_reference: Uuid::now_v7(),
            customer: "cus_sbx_1".into(),
            csrf: csrf.into(),
            return_url: "https://shop.example/".into(),
            expires_at: now,
            now,
        }
    }

    #[test]
    fn tokens_are_random_url_safe_and_stored_only_as_their_hash() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(well_formed(&a) && well_formed(&b), "{a}");
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a).as_slice(), a.as_bytes());
        for bad in ["", "short", &"a".repeat(44), &format!("{}/", &a[..42])] {
            assert!(!well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn a_post_needs_the_sessions_own_csrf_token() {
        let s = session("the-token");
        assert!(csrf_ok(&s, "the-token"));
        assert!(!csrf_ok(&s, ""));
        assert!(!csrf_ok(&s, "the-toke"));
        assert!(!csrf_ok(&s, "the-token "));
        assert!(!csrf_ok(&session(""), ""), "an empty token never matches");
    }

    #[test]
    fn notices_are_fixed_text_chosen_by_name() {
        assert_eq!(Notice::parse(Some("notice=cancel")), Some(Notice::Canceled));
        assert_eq!(
            Notice::parse(Some("x=1&notice=card")),
            Some(Notice::CardChanged)
        );
        assert_eq!(Notice::parse(Some("notice=<script>")), None);
        assert_eq!(Notice::parse(None), None);
        assert_eq!(PortalAction::parse("undo"), Some(PortalAction::UndoCancel));
        assert_eq!(
            PortalAction::parse("pause"),
            Some(PortalAction::PauseCollection)
        );
        assert_eq!(PortalAction::parse("stop"), None);
    }
}
