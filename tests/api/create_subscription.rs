//! CreateSubscription on the sandbox, end to end: a subscription made for a customer who paid
//! an earlier checkout (its card on file charged now) or on a trial, then carried by
//! AdvanceClock through its trial's end and its renewals, with the tenant's dunning and
//! trial-end settings from coffer.toml deciding the outcome.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use coffer::app::inbox::{Handlers, InboxConfig};
use coffer::grpc::pb::checkout_client::CheckoutClient;
use coffer::grpc::pb::sandbox_client::SandboxClient;
use coffer::grpc::pb::{
    AdvanceClockRequest, CheckoutMode, CreateSubscriptionRequest, ListPaymentsRequest, Payment,
    PaymentStatus, Subscription, SubscriptionStatus,
};
use coffer::providers::sandbox::Faults;
use time::{Duration, OffsetDateTime};
use tonic::Code;

use crate::checkout::{inline, plan, session};
use crate::e2e::{SETTLE, all_delivered_and_processed, subscription};
use crate::helpers::{TestApp, details, eventually, idem, req, sandbox_test_config};
use crate::sandbox_page::{Env, FAILS_LATER, PAYS, env_of};

/// The server with the sandbox, its delivery workers and inbox workers, and coffer.toml
/// `settings`; a customer "alice" of tenant acme.
pub(crate) async fn spawn(settings: &str) -> Env {
    spawn_with_faults(settings, Arc::default()).await
}

/// [`spawn`], with the sandbox's fault switches `faults`.
async fn spawn_with_faults(settings: &str, faults: Arc<Faults>) -> Env {
    let app = TestApp::spawn_configured(settings, &[], |config| {
        config.http_addr = Some("127.0.0.1:0".parse().unwrap());
        config.sandbox = Some(sandbox_test_config(faults));
        config.resolve_interval = StdDuration::from_millis(100);
        config.sweep_interval = StdDuration::from_millis(100);
        config.inbox = InboxConfig {
            workers: 2,
            batch: 8,
            poll: StdDuration::from_millis(20),
            backoff_base: StdDuration::from_millis(5),
            backoff_cap: StdDuration::from_millis(40),
            handler_timeout: StdDuration::from_secs(30),
            handlers: Handlers::builtin(),
            lease: StdDuration::from_secs(60),
        };
    })
    .await;
    env_of(app).await
}

/// Alice pays a one-time checkout with `card`: the sandbox keeps the card on file.
pub(crate) async fn card_on_file(env: &Env, card: &str) {
    let s = env
        .open(session(
            &env.customer,
            CheckoutMode::Payment,
            vec![inline(1_000, "USD", 1)],
        ))
        .await;
    env.pay(&s, card).await;
}

pub(crate) fn create(
    customer: &str,
    price: &str,
    trial_days: Option<i64>,
) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        customer_id: customer.into(),
        price_id: price.into(),
        quantity: 2,
        trial_days,
        account: String::new(),
    }
}

pub(crate) async fn create_with(
    env: &Env,
    r: CreateSubscriptionRequest,
    key: &str,
) -> Result<tonic::Response<Subscription>, tonic::Status> {
    env.app
        .subscriptions()
        .await
        .create_subscription(idem(r, &env.app.key, key))
        .await
}

/// The subscription's charges, oldest first (ListPayments filtered by subscription_id).
pub(crate) async fn charges(env: &Env, id: &str) -> Vec<Payment> {
    CheckoutClient::new(env.app.channel().await)
        .list_payments(req(
            ListPaymentsRequest {
                page_size: 100,
                subscription_id: id.into(),
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .payments
}

pub(crate) async fn advance(env: &Env, to: OffsetDateTime) {
    SandboxClient::new(env.app.channel().await)
        .advance_clock(req(
            AdvanceClockRequest {
                account: String::new(),
                to: Some(prost_types::Timestamp {
                    seconds: to.unix_timestamp(),
                    nanos: 0,
                }),
            },
            &env.app.key,
        ))
        .await
        .unwrap();
}

pub(crate) async fn reaches(env: &Env, id: &str, status: SubscriptionStatus) -> Subscription {
    let ok = eventually(SETTLE, || async {
        subscription(env, id).await.status == status as i32
    })
    .await;
    let s = subscription(env, id).await;
    assert!(ok, "{id} never became {status:?}: {s:?}");
    s
}

pub(crate) fn at(t: &prost_types::Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.seconds).unwrap()
}

#[tokio::test]
async fn with_a_card_on_file_the_first_period_is_charged_now_and_a_replay_charges_nothing_more() {
    let env = spawn("").await;
    let (_, [monthly, yearly, _]) = plan(&env.app, "pro").await;
    // No card yet and no trial: refused, with a stable reason.
    let e = create_with(&env, create(&env.customer, &yearly, None), "nocard")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(details(&e).0, "PAYMENT_METHOD_REQUIRED");

    card_on_file(&env, PAYS).await;
    let first = create_with(&env, create(&env.customer, &yearly, None), "sub-1")
        .await
        .unwrap()
        .into_inner();
    assert!(first.id.starts_with("subscription_"), "{first:?}");
    assert_eq!(first.status, SubscriptionStatus::Active as i32);
    assert_eq!(first.price_id, yearly);
    assert_eq!(first.quantity, 2);
    assert!(first.checkout_session_id.is_empty());
    assert!(first.trial_end.is_none());
    // A year's period.
    let (start, end) = (
        at(first.current_period_start.as_ref().unwrap()),
        at(first.current_period_end.as_ref().unwrap()),
    );
    assert!((365..=366).contains(&(end - start).whole_days()));
    // The first period's charge, at once: 2 × 290.00 USD, naming the subscription and period.
    let paid = charges(&env, &first.id).await;
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_eq!(paid[0].amount, 58_000);
    assert_eq!(paid[0].currency, "USD");
    assert_eq!(paid[0].status, PaymentStatus::Succeeded as i32);
    assert_eq!(paid[0].subscription_id, first.id);
    assert!(paid[0].checkout_session_id.is_empty());
    assert_eq!(at(paid[0].period_start.as_ref().unwrap()), start);
    assert_eq!(at(paid[0].period_end.as_ref().unwrap()), end);

    // The same key again: the same subscription, replayed, and no second charge.
    let replay = create_with(&env, create(&env.customer, &yearly, None), "sub-1")
        .await
        .unwrap();
    assert_eq!(
        replay
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(replay.into_inner(), first);
    // The same key with another request is refused.
    let e = create_with(&env, create(&env.customer, &monthly, None), "sub-1")
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "IDEMPOTENCY_KEY_REUSED");
    // Its events arrive, are applied without error, and change nothing: still one charge,
    // still ACTIVE.
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert_eq!(charges(&env, &first.id).await.len(), 1);
    assert_eq!(
        subscription(&env, &first.id).await.status,
        SubscriptionStatus::Active as i32
    );
    let rows: Vec<(uuid::Uuid, String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT id, status, checkout_session_id FROM subscriptions")
            .fetch_all(&env.app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
}

#[tokio::test]
async fn the_0341_card_on_file_is_declined_and_the_subscription_is_incomplete() {
    let env = spawn("").await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    card_on_file(&env, FAILS_LATER).await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(0)), "k")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Incomplete as i32);
    let paid = charges(&env, &s.id).await;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].status, PaymentStatus::Failed as i32);
    assert_eq!(paid[0].failure_code, "card_declined");
    assert_eq!(paid[0].amount, 5_800);
}

#[tokio::test]
async fn an_incomplete_subscription_expires_23_hours_after_it_was_made_on_the_sandbox_clock() {
    let env = spawn("").await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    card_on_file(&env, FAILS_LATER).await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(0)), "k")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Incomplete as i32);
    let made = at(s.current_period_start.as_ref().unwrap());
    // Not yet: a minute short of 23 hours it is still waiting for its first charge.
    advance(&env, made + Duration::hours(23) - Duration::minutes(1)).await;
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert_eq!(
        subscription(&env, &s.id).await.status,
        SubscriptionStatus::Incomplete as i32
    );
    advance(&env, made + Duration::hours(23) + Duration::minutes(1)).await;
    let expired = reaches(&env, &s.id, SubscriptionStatus::IncompleteExpired).await;
    assert!(expired.canceled_at.is_none());
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    // Final: a month later nothing renews, nothing more is charged, and it stays expired.
    advance(&env, made + Duration::days(40)).await;
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert_eq!(
        subscription(&env, &s.id).await.status,
        SubscriptionStatus::IncompleteExpired as i32
    );
    let paid = charges(&env, &s.id).await;
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_eq!(paid[0].status, PaymentStatus::Failed as i32);
    // The sandbox sent it as an update carrying the new status, signed, through the inbox.
    let (kind, status): (String, String) = sqlx::query_as(
        "SELECT event_type, status FROM webhook_events
         WHERE convert_from(payload, 'UTF8')::jsonb->'data'->'object'->>'status'
               = 'incomplete_expired'",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), status.as_str()),
        ("subscription.updated", "processed")
    );
    // A lifecycle call on it is refused, naming the status.
    let e = env
        .app
        .subscriptions()
        .await
        .cancel_subscription(idem(
            coffer::grpc::pb::CancelSubscriptionRequest {
                id: s.id.clone(),
                at_period_end: false,
                reason: String::new(),
            },
            &env.app.key,
            "c",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("incomplete_expired"), "{e:?}");
}

#[tokio::test]
async fn resume_subscription_on_a_paused_trial_needs_a_card_then_charges_a_new_period_from_now() {
    use coffer::grpc::pb::ResumeSubscriptionRequest;
    let env = spawn("[tenant.acme]\ntrial_end_without_payment_method = \"pause\"\n").await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(3)), "t")
        .await
        .unwrap()
        .into_inner();
    let trial_end = at(s.trial_end.as_ref().unwrap());
    let later = trial_end + Duration::days(2);
    advance(&env, later).await;
    reaches(&env, &s.id, SubscriptionStatus::Paused).await;
    let resume = |key: &'static str| {
        let env = &env;
        let id = s.id.clone();
        async move {
            env.app
                .subscriptions()
                .await
                .resume_subscription(idem(ResumeSubscriptionRequest { id }, &env.app.key, key))
                .await
        }
    };
    // No card on file: refused, nothing charged, still PAUSED.
    let e = resume("r1").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(details(&e).0, "PAYMENT_METHOD_REQUIRED");
    assert!(charges(&env, &s.id).await.is_empty());
    assert_eq!(
        subscription(&env, &s.id).await.status,
        SubscriptionStatus::Paused as i32
    );

    // Alice pays a checkout: that card is on file, and the resume charges it.
    card_on_file(&env, PAYS).await;
    let resumed = resume("r2").await.unwrap().into_inner();
    assert_eq!(resumed.status, SubscriptionStatus::Active as i32);
    let start = at(resumed.current_period_start.as_ref().unwrap());
    assert!(
        start >= later && start < later + Duration::minutes(5),
        "the new period starts at the sandbox clock's now: {start} after {later}"
    );
    let days = (at(resumed.current_period_end.as_ref().unwrap()) - start).whole_days();
    assert!((28..=31).contains(&days), "one monthly period: {days} days");
    assert!(
        eventually(SETTLE, || async {
            let paid = charges(&env, &s.id).await;
            paid.len() == 1 && paid[0].status == PaymentStatus::Succeeded as i32
        })
        .await
    );
    let paid = charges(&env, &s.id).await;
    assert_eq!(paid[0].amount, 5_800);
    assert_eq!(at(paid[0].period_start.as_ref().unwrap()), start);
    // A replay answers the same and charges nothing more; resuming again is refused (it is
    // ACTIVE, its collection not paused).
    let again = resume("r2").await.unwrap().into_inner();
    assert_eq!(again.current_period_start, resumed.current_period_start);
    let e = resume("r3").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(details(&e).0, "ILLEGAL_SUBSCRIPTION_TRANSITION");
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert_eq!(charges(&env, &s.id).await.len(), 1);
    // And it renews a period later.
    advance(&env, start + Duration::days(32)).await;
    assert!(
        eventually(SETTLE, || async { charges(&env, &s.id).await.len() == 2 }).await,
        "{:?}",
        charges(&env, &s.id).await
    );
}

#[tokio::test]
async fn a_trial_without_a_card_ends_canceled_by_default() {
    let env = spawn("").await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    // trial_days unset: the price's own 14 days.
    let s = create_with(&env, create(&env.customer, &monthly, None), "t")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Trialing as i32);
    let trial_end = at(s.trial_end.as_ref().unwrap());
    assert_eq!(
        (trial_end - at(s.current_period_start.as_ref().unwrap())).whole_days(),
        14
    );
    assert!(charges(&env, &s.id).await.is_empty());
    advance(&env, trial_end + Duration::hours(1)).await;
    let gone = reaches(&env, &s.id, SubscriptionStatus::Canceled).await;
    assert_eq!(at(gone.canceled_at.as_ref().unwrap()), trial_end);
    assert!(charges(&env, &s.id).await.is_empty());
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
}

#[tokio::test]
async fn a_trial_without_a_card_pauses_when_the_tenant_says_so() {
    let env = spawn("[tenant.acme]\ntrial_end_without_payment_method = \"pause\"\n").await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(3)), "t")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Trialing as i32);
    let trial_end = at(s.trial_end.as_ref().unwrap());
    advance(&env, trial_end + Duration::hours(1)).await;
    let paused = reaches(&env, &s.id, SubscriptionStatus::Paused).await;
    assert!(paused.canceled_at.is_none());
    assert!(charges(&env, &s.id).await.is_empty());
}

#[tokio::test]
async fn a_trial_with_a_card_renews_into_active_with_a_payment_naming_its_period() {
    let env = spawn("").await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    card_on_file(&env, PAYS).await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(7)), "t")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Trialing as i32);
    let trial_end = at(s.trial_end.as_ref().unwrap());
    advance(&env, trial_end + Duration::hours(1)).await;
    let active = reaches(&env, &s.id, SubscriptionStatus::Active).await;
    assert_eq!(at(active.current_period_start.as_ref().unwrap()), trial_end);
    assert!(
        eventually(SETTLE, || async {
            let paid = charges(&env, &s.id).await;
            paid.len() == 1 && paid[0].status == PaymentStatus::Succeeded as i32
        })
        .await
    );
    let paid = charges(&env, &s.id).await;
    assert_eq!(paid[0].amount, 5_800);
    assert_eq!(paid[0].subscription_id, s.id);
    assert_eq!(at(paid[0].period_start.as_ref().unwrap()), trial_end);
    assert_eq!(
        at(paid[0].period_end.as_ref().unwrap()),
        at(active.current_period_end.as_ref().unwrap())
    );
}

#[tokio::test]
async fn the_tenants_dunning_settings_decide_how_a_failing_renewal_ends() {
    // One retry, then CANCELED (the default would be three over 7 days, then UNPAID).
    let env = spawn(
        "[tenant.acme]\nrenewal_retries = 1\nrenewal_retry_window = \"2days\"\ndunning_end = \"canceled\"\n",
    )
    .await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    card_on_file(&env, FAILS_LATER).await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(7)), "t")
        .await
        .unwrap()
        .into_inner();
    let trial_end = at(s.trial_end.as_ref().unwrap());
    advance(&env, trial_end + Duration::hours(1)).await;
    reaches(&env, &s.id, SubscriptionStatus::PastDue).await;
    // The one retry falls 2 days after the failure, and fails: CANCELED.
    advance(&env, trial_end + Duration::days(2) + Duration::hours(1)).await;
    let gone = reaches(&env, &s.id, SubscriptionStatus::Canceled).await;
    assert!(at(gone.canceled_at.as_ref().unwrap()) >= trial_end + Duration::days(2));
}

#[tokio::test]
async fn bad_requests_name_the_field_and_unknown_ids_are_not_found() {
    let env = spawn("").await;
    let (plan_id, [monthly, _, one_time]) = plan(&env.app, "pro").await;
    card_on_file(&env, PAYS).await;
    let cases: Vec<(CreateSubscriptionRequest, &str)> = vec![
        (
            CreateSubscriptionRequest {
                quantity: 0,
                ..create(&env.customer, &monthly, None)
            },
            "quantity",
        ),
        (create(&env.customer, &monthly, Some(731)), "trial_days"),
        (create(&env.customer, &monthly, Some(-1)), "trial_days"),
        (create(&env.customer, &one_time, None), "price_id"),
        (create("customer_nope", &monthly, None), "customer_id"),
        (create(&env.customer, "price_nope", None), "price_id"),
    ];
    for (i, (r, field)) in cases.into_iter().enumerate() {
        let e = create_with(&env, r, &format!("bad-{i}")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(details(&e).1.iter().any(|f| f == field), "{field}: {e:?}");
    }
    // Well-formed unknown ids.
    let unknown_customer = coffer::domain::ids::CustomerId::generate().to_string();
    let e = create_with(&env, create(&unknown_customer, &monthly, None), "nf-1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(details(&e).0, "CUSTOMER_NOT_FOUND");
    let unknown_price = coffer::domain::ids::PriceId::generate().to_string();
    let e = create_with(&env, create(&env.customer, &unknown_price, None), "nf-2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(details(&e).0, "PRICE_NOT_FOUND");
    // An archived plan's price.
    env.app
        .subscriptions()
        .await
        .archive_plan(req(
            coffer::grpc::pb::ArchivePlanRequest { id: plan_id },
            &env.app.key,
        ))
        .await
        .unwrap();
    let e = create_with(&env, create(&env.customer, &monthly, None), "archived")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(details(&e).1.iter().any(|f| f == "price_id"), "{e:?}");
}

#[tokio::test]
async fn a_lost_answer_is_settled_by_the_retry_and_makes_one_subscription_and_one_charge() {
    let faults = Arc::new(Faults::default());
    let env = spawn_with_faults("", faults.clone()).await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    card_on_file(&env, PAYS).await;
    // The sandbox makes the subscription and charges it, and the answer is lost.
    faults.lose_next_answers(1);
    let e = create_with(&env, create(&env.customer, &monthly, Some(0)), "lost")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The retry under the same key settles it by asking the sandbox: the one it made.
    let s = create_with(&env, create(&env.customer, &monthly, Some(0)), "lost")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Active as i32);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let paid = charges(&env, &s.id).await;
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_eq!(paid[0].status, PaymentStatus::Succeeded as i32);
    let (made, sandbox_made): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM subscriptions), (SELECT count(*) FROM sandbox_subscriptions)",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!((made, sandbox_made), (1, 1));
}
