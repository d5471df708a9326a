//! The subscription lifecycle on the sandbox, end to end: a subscription bought on the hosted
//! page, then cancelled, paused and resumed through the lifecycle RPCs, each change made by
//! the sandbox (through the journal) and reported back by its signed events through the
//! sidecar and the inbox, as a provider's would be.

use coffer::grpc::pb::checkout_client::CheckoutClient;
use coffer::grpc::pb::customers_client::CustomersClient;
use coffer::grpc::pb::sandbox_client::SandboxClient;
use coffer::grpc::pb::subscriptions_client::SubscriptionsClient;
use coffer::grpc::pb::{
    AdvanceClockRequest, CancelSubscriptionRequest, ChangeSubscriptionPlanRequest, CheckoutMode,
    CheckoutPaymentStatus, CheckoutSessionStatus, CreateCustomerRequest, CreatePlanRequest,
    DeleteCustomerRequest, Interval, PauseSubscriptionRequest, PlanChangeEffective,
    PreviewPlanChangeRequest, Price, Proration, ResumeSubscriptionRequest, Subscription,
    SubscriptionStatus, UndoCancelSubscriptionRequest,
};
use time::{Duration, OffsetDateTime};
use tonic::Code;

use crate::binary::{Served, TempDir, acme};
use crate::checkout::{item, plan, session};
use crate::e2e::{SETTLE, all_delivered_and_processed, get, spawn, subscription};
use crate::helpers::{TestDb, details, eventually, idem, req};
use crate::sandbox_page::{Env, FAILS_LATER, PAYS, form};

/// A yearly subscription bought with the good card, ACTIVE; its id.
pub(crate) async fn active_subscription(env: &Env) -> String {
    let (_, [_, yearly, _]) = plan(&env.app, &env.app.key).await;
    let s = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&yearly, 1)],
        ))
        .await;
    env.pay(&s, PAYS).await;
    assert!(
        eventually(SETTLE, || async {
            let got = get(env, &s.id).await;
            got.status == CheckoutSessionStatus::Complete as i32
                && got.payment_status == CheckoutPaymentStatus::Paid as i32
                && !got.subscription_id.is_empty()
        })
        .await
    );
    let id = get(env, &s.id).await.subscription_id;
    assert!(
        eventually(SETTLE, || async {
            subscription(env, &id).await.status == SubscriptionStatus::Active as i32
        })
        .await
    );
    id
}

fn cancel(id: &str, at_period_end: bool, reason: &str) -> CancelSubscriptionRequest {
    CancelSubscriptionRequest {
        id: id.into(),
        at_period_end,
        reason: reason.into(),
    }
}

/// The refusal of an illegal change: FAILED_PRECONDITION, its reason, and the status named.
fn assert_illegal(e: &tonic::Status, status: &str) {
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(details(e).0, "ILLEGAL_SUBSCRIPTION_TRANSITION");
    assert!(
        e.message().contains(&format!("a {status} subscription")),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn a_subscription_is_paused_resumed_cancelled_at_period_end_undone_and_cancelled() {
    let (env, _) = spawn().await;
    let id = active_subscription(&env).await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;

    // Pause: the status stays ACTIVE, collection is paused; the same key replays the answer.
    let paused = subs
        .pause_subscription(idem(
            PauseSubscriptionRequest { id: id.clone() },
            key,
            "pause-1",
        ))
        .await
        .unwrap();
    assert!(!paused.metadata().contains_key("idempotent-replayed"));
    let paused = paused.into_inner();
    assert_eq!(paused.status, SubscriptionStatus::Active as i32);
    assert!(paused.collection_paused);
    let replay = subs
        .pause_subscription(idem(
            PauseSubscriptionRequest { id: id.clone() },
            key,
            "pause-1",
        ))
        .await
        .unwrap();
    assert_eq!(
        replay
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(replay.into_inner(), paused);

    // Resume, and resuming what is not paused is refused.
    let resumed = subs
        .resume_subscription(req(ResumeSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap()
        .into_inner();
    assert!(!resumed.collection_paused);
    let e = subs
        .resume_subscription(req(ResumeSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap_err();
    assert_illegal(&e, "active");

    // Nothing scheduled: nothing to undo.
    let e = subs
        .undo_cancel_subscription(req(UndoCancelSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap_err();
    assert_illegal(&e, "active");

    // Cancel at the period's end: still ACTIVE, the cancel scheduled with its reason; undone.
    let scheduled = subs
        .cancel_subscription(req(cancel(&id, true, "too expensive"), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scheduled.status, SubscriptionStatus::Active as i32);
    assert!(scheduled.cancel_at_period_end);
    assert_eq!(scheduled.cancel_reason, "too expensive");
    assert!(scheduled.canceled_at.is_none());
    let undone = subs
        .undo_cancel_subscription(req(UndoCancelSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap()
        .into_inner();
    assert!(!undone.cancel_at_period_end);
    assert_eq!(undone.status, SubscriptionStatus::Active as i32);

    // A live subscription keeps its customer.
    let mut customers = env.app.customers().await;
    let e = customers
        .delete_customer(req(
            DeleteCustomerRequest {
                id: env.customer.clone(),
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(details(&e).0, "CUSTOMER_HAS_LIVE_SUBSCRIPTION");

    // Cancel now: CANCELED, with its time; then every change is refused, naming CANCELED.
    let canceled = subs
        .cancel_subscription(idem(cancel(&id, false, "moved away"), key, "cancel-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.status, SubscriptionStatus::Canceled as i32);
    assert!(canceled.canceled_at.is_some());
    assert_eq!(canceled.cancel_reason, "moved away");
    let e = subs
        .cancel_subscription(req(cancel(&id, false, ""), key))
        .await
        .unwrap_err();
    assert_illegal(&e, "canceled");
    let e = subs
        .cancel_subscription(req(cancel(&id, true, ""), key))
        .await
        .unwrap_err();
    assert_illegal(&e, "canceled");
    let e = subs
        .pause_subscription(req(PauseSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap_err();
    assert_illegal(&e, "canceled");
    // The same key still answers the cancel it made.
    let again = subs
        .cancel_subscription(idem(cancel(&id, false, "moved away"), key, "cancel-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, canceled);

    // Every change went out as the sandbox's signed events and the pipeline applied each
    // (older versions than the answers already applied change nothing).
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let events: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM webhook_events
         WHERE event_type LIKE 'subscription.%' AND status = 'processed'
         GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            ("subscription.created".into(), 1),
            ("subscription.deleted".into(), 1),
            ("subscription.updated".into(), 4),
        ]
    );
    let after: Subscription = subscription(&env, &id).await;
    assert_eq!(after, canceled);
    // One journal operation per change made, each succeeded.
    let ops: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded')
         FROM provider_operations WHERE kind = 'update_subscription'",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(ops, (5, 5));

    // Once it is over, the customer can go.
    customers
        .delete_customer(req(
            DeleteCustomerRequest {
                id: env.customer.clone(),
            },
            key,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_change_whose_answer_is_lost_is_settled_by_fetching_never_made_twice() {
    let (env, faults) = spawn().await;
    let id = active_subscription(&env).await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    faults.lose_next_answers(1);
    let e = subs
        .pause_subscription(idem(
            PauseSubscriptionRequest { id: id.clone() },
            key,
            "lost-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let settled = subs
        .pause_subscription(idem(
            PauseSubscriptionRequest { id: id.clone() },
            key,
            "lost-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(settled.collection_paused);
    let (changes, version): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sandbox_subscription_changes),
                (SELECT max(version) FROM sandbox_subscriptions)",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!((changes, version), (1, 2), "made once");
}

#[tokio::test]
async fn lifecycle_requests_name_their_bad_fields() {
    let (env, _) = spawn().await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    let e = subs
        .cancel_subscription(req(cancel("nope", false, &"x".repeat(501)), key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(details(&e).1, ["id", "reason"]);
    let e = subs
        .pause_subscription(req(
            PauseSubscriptionRequest {
                id: "subscription_00000000000000000000000000".into(),
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(details(&e).0, "SUBSCRIPTION_NOT_FOUND");
}

// ---- Renewals and dunning on the sandbox clock.

/// The account's sandbox clock moved to `to`.
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

/// A subscription bought on the hosted page with `card` at `price`; its id, once Coffer has
/// it in `status`.
pub(crate) async fn bought(
    env: &Env,
    price: &str,
    card: &str,
    status: SubscriptionStatus,
) -> String {
    let s = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(price, 1)],
        ))
        .await;
    env.pay(&s, card).await;
    assert!(
        eventually(SETTLE, || async {
            let id = get(env, &s.id).await.subscription_id;
            !id.is_empty() && subscription(env, &id).await.status == status as i32
        })
        .await
    );
    get(env, &s.id).await.subscription_id
}

/// Waits until the subscription reads as `check` says; the last answer.
async fn reaches(
    env: &Env,
    id: &str,
    what: &str,
    check: impl Fn(&Subscription) -> bool,
) -> Subscription {
    let ok = eventually(SETTLE, || async { check(&subscription(env, id).await) }).await;
    let s = subscription(env, id).await;
    assert!(ok, "{id} never became {what}: {s:?}");
    s
}

fn at(t: &prost_types::Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.seconds).unwrap()
}

/// The customer's payments of each subscription's renewals: (subscription, status, amount,
/// failure code), by period.
async fn renewals(env: &Env) -> Vec<(uuid::Uuid, String, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT subscription_id, status, amount, failure_code FROM payments
         WHERE subscription_id IS NOT NULL ORDER BY subscription_id, period_start",
    )
    .fetch_all(&env.app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn trials_end_renewals_charge_a_failing_card_goes_past_due_then_unpaid_and_cancels_wait_for_the_period()
 {
    let (env, _) = spawn().await;
    // Monthly at 2 900 with 14 trial days.
    let (_, [monthly, _, _]) = plan(&env.app, &env.app.key).await;
    let good = bought(&env, &monthly, PAYS, SubscriptionStatus::Trialing).await;
    let failing = bought(&env, &monthly, FAILS_LATER, SubscriptionStatus::Trialing).await;
    let leaving = bought(&env, &monthly, PAYS, SubscriptionStatus::Trialing).await;
    let mut subs = env.app.subscriptions().await;
    subs.cancel_subscription(req(cancel(&leaving, true, "only trying"), &env.app.key))
        .await
        .unwrap();
    let start = subscription(&env, &good).await;
    let trial_end = at(start.trial_end.as_ref().unwrap());
    assert_eq!(at(start.current_period_end.as_ref().unwrap()), trial_end);

    // A day after the trials end: the good card paid its first month, the 0341 card failed
    // (PAST_DUE), and the scheduled cancel took effect at the trial's end, charging nothing.
    advance(&env, trial_end + Duration::days(1)).await;
    let paid = reaches(&env, &good, "ACTIVE", |s| {
        s.status == SubscriptionStatus::Active as i32
    })
    .await;
    assert_eq!(at(paid.current_period_start.as_ref().unwrap()), trial_end);
    // A calendar month on (the day of the month kept).
    let end = at(paid.current_period_end.as_ref().unwrap());
    assert_eq!(
        end.day(),
        trial_end.day().min(end.month().length(end.year()))
    );
    assert!((28..=31).contains(&(end - trial_end).whole_days()));
    reaches(&env, &failing, "PAST_DUE", |s| {
        s.status == SubscriptionStatus::PastDue as i32
    })
    .await;
    let gone = reaches(&env, &leaving, "CANCELED", |s| {
        s.status == SubscriptionStatus::Canceled as i32
    })
    .await;
    // At its own trial's end (bought a moment after the first).
    let its_end = at(subscription(&env, &leaving)
        .await
        .trial_end
        .as_ref()
        .unwrap());
    assert_eq!(at(gone.canceled_at.as_ref().unwrap()), its_end);
    assert!(!gone.cancel_at_period_end);

    // Past the dunning window (3 retries over 7 days): UNPAID, the default end.
    advance(&env, trial_end + Duration::days(8)).await;
    reaches(&env, &failing, "UNPAID", |s| {
        s.status == SubscriptionStatus::Unpaid as i32
    })
    .await;

    // A month on, the good subscription renews again; the unpaid one is not charged again.
    advance(&env, trial_end + Duration::days(33)).await;
    reaches(&env, &good, "renewed twice", |s| {
        at(s.current_period_start.as_ref().unwrap()) > trial_end + Duration::days(27)
    })
    .await;
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let id = |s: &str| {
        coffer::domain::ids::SubscriptionId::parse(s)
            .unwrap()
            .as_uuid()
    };
    let mut want = vec![
        (id(&good), "succeeded".to_owned(), 2_900, None),
        (id(&good), "succeeded".to_owned(), 2_900, None),
        (
            id(&failing),
            "failed".to_owned(),
            2_900,
            Some("card_declined".to_owned()),
        ),
    ];
    want.sort_by_key(|w| w.0);
    assert_eq!(renewals(&env).await, want);
    // The failed charge was tried four times (the renewal and three retries), as events.
    let tries: i64 =
        sqlx::query_scalar("SELECT max(version) FROM sandbox_payments WHERE status = 'failed'")
            .fetch_one(&env.app.pool)
            .await
            .unwrap();
    assert_eq!(tries, 4);
}

#[tokio::test]
async fn a_years_jump_renews_each_month_once_in_order() {
    let (env, _) = spawn().await;
    let price = monthly_without_trial(&env).await;
    let id = bought(&env, &price, PAYS, SubscriptionStatus::Active).await;
    let start = at(subscription(&env, &id)
        .await
        .current_period_start
        .as_ref()
        .unwrap());
    advance(&env, start + Duration::days(366)).await;
    let renewed = reaches(&env, &id, "a year on", |s| {
        at(s.current_period_start.as_ref().unwrap()).year() == start.year() + 1
            && at(s.current_period_start.as_ref().unwrap()).month() == start.month()
    })
    .await;
    assert_eq!(renewed.status, SubscriptionStatus::Active as i32);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert_twelve_months(&env.app.pool, start).await;
}

/// A plan with one monthly price of 1 000 and no trial; the price's id.
async fn monthly_without_trial(env: &Env) -> String {
    env.app
        .subscriptions()
        .await
        .create_plan(req(
            CreatePlanRequest {
                key: "basic".into(),
                name: "Basic".into(),
                prices: vec![Price {
                    amount: 1_000,
                    currency: "USD".into(),
                    interval: Interval::Month as i32,
                    ..Default::default()
                }],
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .prices[0]
        .id
        .clone()
}

/// Twelve renewals after `start`, one per month in order, on both sides: the sandbox charged
/// each period once, and Coffer holds one succeeded payment per period.
async fn assert_twelve_months(pool: &sqlx::PgPool, start: OffsetDateTime) {
    let sandbox: Vec<(OffsetDateTime, String)> = sqlx::query_as(
        "SELECT period_start, status FROM sandbox_payments
         WHERE subscription_id IS NOT NULL ORDER BY period_start",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(sandbox.len(), 12, "{sandbox:?}");
    for (i, (period, status)) in sandbox.iter().enumerate() {
        let months = start.month() as i32 - 1 + i as i32 + 1;
        assert_eq!(
            (period.year(), period.month() as i32, period.day()),
            (start.year() + months / 12, months % 12 + 1, start.day()),
            "renewal {i}"
        );
        assert_eq!(status, "succeeded");
    }
    let coffer: Vec<(OffsetDateTime, String, i64)> = sqlx::query_as(
        "SELECT period_start, status, amount FROM payments
         WHERE subscription_id IS NOT NULL ORDER BY period_start",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(coffer.len(), 12, "{coffer:?}");
    for ((period, status, amount), (sandbox_period, _)) in coffer.iter().zip(&sandbox) {
        assert_eq!(period.unix_timestamp(), sandbox_period.unix_timestamp());
        assert_eq!((status.as_str(), *amount), ("succeeded", 1_000));
    }
}

#[tokio::test]
async fn a_years_jump_killed_in_the_middle_renews_each_month_exactly_once() {
    let db = TestDb::new().await;
    let (pool, _, key) = acme(&db).await;
    let state = TempDir::new();
    let args = ["--sandbox", "--sandbox-expire-interval", "100ms"];
    let served = Served::start(&db, &state.0, &args, &[]).await;
    let channel = tonic::transport::Channel::from_shared(served.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let customer = CustomersClient::new(channel.clone())
        .create_customer(req(
            CreateCustomerRequest {
                external_id: "kill-9".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let plan = SubscriptionsClient::new(channel.clone())
        .create_plan(req(
            CreatePlanRequest {
                key: "basic".into(),
                name: "Basic".into(),
                prices: vec![Price {
                    amount: 1_000,
                    currency: "USD".into(),
                    interval: Interval::Month as i32,
                    ..Default::default()
                }],
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let s = CheckoutClient::new(channel.clone())
        .create_checkout_session(req(
            session(
                &customer.id,
                CheckoutMode::Subscription,
                vec![item(&plan.prices[0].id, 1)],
            ),
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let paid = coffer::providers::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!(
            "http://{}/sandbox/checkout/{}",
            served.http, s.provider_session_id
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("number", PAYS),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ]))
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_redirection(), "{}", paid.status());
    let (sub, start): (String, OffsetDateTime) =
        sqlx::query_as("SELECT id, current_period_start FROM sandbox_subscriptions")
            .fetch_one(&pool)
            .await
            .unwrap();

    // The fifth month's charge is held up: a transaction inserts its row and waits, so the
    // renewal pass blocks on that period's unique key after committing four.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO sandbox_payments
             (account, id, session_id, client_reference, amount, currency, status, version,
              subscription_id, period_start, created_at, updated_at)
         SELECT account, 'py_blocker', session_id, client_reference, 1, 'USD', 'succeeded', 1,
                id, current_period_start + interval '5 months', now(), now()
         FROM sandbox_subscriptions WHERE id = $1",
    )
    .bind(&sub)
    .execute(&mut *blocker)
    .await
    .unwrap();
    let grpc = served.grpc.clone();
    let key2 = key.clone();
    let jump = tokio::spawn(async move {
        let channel = tonic::transport::Channel::from_shared(grpc)
            .unwrap()
            .connect()
            .await
            .unwrap();
        SandboxClient::new(channel)
            .advance_clock(req(
                AdvanceClockRequest {
                    account: String::new(),
                    to: Some(prost_types::Timestamp {
                        seconds: (start + Duration::days(366)).unix_timestamp(),
                        nanos: 0,
                    }),
                },
                &key2,
            ))
            .await
    });
    let four = eventually(SETTLE, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sandbox_payments WHERE subscription_id IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            == 4
    })
    .await;
    assert!(four, "the pass did not stop at the held-up fifth month");
    // SIGKILL in the middle of the year.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &served.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = jump.await;
    drop(served);
    blocker.rollback().await.unwrap();

    // Started again, its periodic pass carries on from the fifth month; the events the killed
    // process had leased (for delivery, or in its inbox) are taken up again once their leases
    // (60 s) run out.
    let _served = Served::start(&db, &state.0, &args, &[]).await;
    let sandbox = "SELECT count(*) FROM sandbox_payments WHERE subscription_id IS NOT NULL";
    let coffer = "SELECT count(*) FROM payments WHERE subscription_id IS NOT NULL
                  AND status = 'succeeded'";
    assert!(
        eventually(std::time::Duration::from_secs(30), || async {
            count(&pool, sandbox).await == 12
        })
        .await
    );
    assert!(
        eventually(std::time::Duration::from_secs(150), || async {
            count(&pool, coffer).await == 12
        })
        .await,
        "{}",
        count(&pool, coffer).await
    );
    assert_twelve_months(&pool, start).await;
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

// ---- Plan changes.

/// A plan "tiers" with monthly prices of 1 000 and 3 000 USD, a monthly 1 000 EUR and a
/// yearly 10 000 USD; their ids in that order.
async fn tiers(env: &Env) -> [String; 4] {
    let price = |amount, currency: &str, interval: Interval| Price {
        amount,
        currency: currency.into(),
        interval: interval as i32,
        ..Default::default()
    };
    let plan = env
        .app
        .subscriptions()
        .await
        .create_plan(req(
            CreatePlanRequest {
                key: "tiers".into(),
                name: "Tiers".into(),
                prices: vec![
                    price(1_000, "USD", Interval::Month),
                    price(3_000, "USD", Interval::Month),
                    price(1_000, "EUR", Interval::Month),
                    price(10_000, "USD", Interval::Year),
                ],
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    std::array::from_fn(|i| plan.prices[i].id.clone())
}

fn plan_change(
    id: &str,
    price: &str,
    proration: Proration,
    effective: PlanChangeEffective,
    proration_time: Option<prost_types::Timestamp>,
) -> ChangeSubscriptionPlanRequest {
    ChangeSubscriptionPlanRequest {
        id: id.into(),
        price_id: price.into(),
        quantity: 1,
        proration: proration as i32,
        effective: effective as i32,
        proration_time,
    }
}

fn preview_of(c: &ChangeSubscriptionPlanRequest) -> PreviewPlanChangeRequest {
    PreviewPlanChangeRequest {
        id: c.id.clone(),
        price_id: c.price_id.clone(),
        quantity: c.quantity,
        proration: c.proration,
        effective: c.effective,
        proration_time: c.proration_time,
    }
}

/// `total * remaining / length` to the nearest minor unit, halves up: the documented rule,
/// written out again here rather than called.
fn share(total: i64, remaining: i64, length: i64) -> i64 {
    (2 * total * remaining + length) / (2 * length)
}

#[tokio::test]
async fn an_upgrade_mid_period_charges_the_prorated_difference_the_preview_showed_once() {
    let (env, _) = spawn().await;
    let [basic, pro, _, _] = tiers(&env).await;
    let id = bought(&env, &basic, PAYS, SubscriptionStatus::Active).await;
    let s = subscription(&env, &id).await;
    let (start, end) = (
        at(s.current_period_start.as_ref().unwrap()),
        at(s.current_period_end.as_ref().unwrap()),
    );
    advance(&env, start + Duration::days(10) + Duration::seconds(7)).await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    let asked = plan_change(
        &id,
        &pro,
        Proration::Prorate,
        PlanChangeEffective::Now,
        None,
    );
    let preview = subs
        .preview_plan_change(req(preview_of(&asked), key))
        .await
        .unwrap()
        .into_inner();
    // By hand: the unused time on 1 000 credited, the remaining time on 3 000 charged.
    let t = at(preview.proration_time.as_ref().unwrap());
    assert!(t >= start + Duration::days(10) && t < end, "{t}");
    let (remaining, length) = ((end - t).whole_seconds(), (end - start).whole_seconds());
    let (credit, debit) = (
        share(1_000, remaining, length),
        share(3_000, remaining, length),
    );
    assert_eq!(
        preview
            .lines
            .iter()
            .map(|l| (l.amount, l.kind.as_str()))
            .collect::<Vec<_>>(),
        [(-credit, "unused_time"), (debit, "remaining_time")]
    );
    assert_eq!(preview.amount_due, debit - credit);
    assert_eq!(preview.currency, "USD");
    assert!(preview.amount_due > 1_000, "{}", preview.amount_due);
    // The change at the preview's time, twice under one key: one change, one charge.
    let change = ChangeSubscriptionPlanRequest {
        proration_time: preview.proration_time,
        ..asked
    };
    let first = subs
        .change_subscription_plan(idem(change.clone(), key, "upgrade-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.price_id.as_str(), first.quantity), (pro.as_str(), 1));
    let again = subs
        .change_subscription_plan(idem(change, key, "upgrade-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let charged = renewals(&env).await;
    assert_eq!(charged.len(), 1, "{charged:?}");
    assert_eq!(
        (charged[0].1.as_str(), charged[0].2, charged[0].3.as_deref()),
        ("succeeded", preview.amount_due, None)
    );
    let (sub,): (uuid::Uuid,) = sqlx::query_as("SELECT id FROM subscriptions")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(charged[0].0, sub);
    let sandbox: Vec<(i64,)> =
        sqlx::query_as("SELECT amount FROM sandbox_payments WHERE subscription_id IS NOT NULL")
            .fetch_all(&env.app.pool)
            .await
            .unwrap();
    assert_eq!(sandbox, [(preview.amount_due,)]);
    // The next renewal charges the new price.
    advance(&env, end + Duration::hours(1)).await;
    reaches(&env, &id, "renewed", |s| {
        at(s.current_period_start.as_ref().unwrap()) == end
    })
    .await;
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let amounts: Vec<i64> = renewals(&env).await.iter().map(|r| r.2).collect();
    assert_eq!(amounts, [preview.amount_due, 3_000]);
}

#[tokio::test]
async fn a_downgrade_at_period_end_takes_effect_at_the_renewal_and_charges_the_new_price() {
    let (env, _) = spawn().await;
    let [basic, pro, _, _] = tiers(&env).await;
    let id = bought(&env, &pro, PAYS, SubscriptionStatus::Active).await;
    let s = subscription(&env, &id).await;
    let (start, end) = (
        at(s.current_period_start.as_ref().unwrap()),
        at(s.current_period_end.as_ref().unwrap()),
    );
    advance(&env, start + Duration::days(3)).await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    let asked = plan_change(
        &id,
        &basic,
        Proration::Prorate,
        PlanChangeEffective::PeriodEnd,
        None,
    );
    let preview = subs
        .preview_plan_change(req(preview_of(&asked), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.amount_due, preview.lines.len()), (0, 0));
    let changed = subs
        .change_subscription_plan(idem(asked, key, "downgrade-1"))
        .await
        .unwrap()
        .into_inner();
    // Until the period ends, nothing changes and nothing is charged.
    assert_eq!(changed.price_id, pro);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert!(renewals(&env).await.is_empty());
    advance(&env, end + Duration::hours(1)).await;
    let renewed = reaches(&env, &id, "renewed on the new price", |s| {
        at(s.current_period_start.as_ref().unwrap()) == end && s.price_id == basic
    })
    .await;
    assert_eq!(renewed.status, SubscriptionStatus::Active as i32);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let amounts: Vec<(String, i64)> = renewals(&env)
        .await
        .into_iter()
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(amounts, [("succeeded".to_owned(), 1_000)]);
}

#[tokio::test]
async fn plan_changes_name_their_bad_fields_and_a_canceled_subscription_is_refused() {
    let (env, _) = spawn().await;
    let [basic, pro, eur, yearly] = tiers(&env).await;
    let id = bought(&env, &basic, PAYS, SubscriptionStatus::Active).await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    let now = PlanChangeEffective::Now;
    for bad in [
        eur.as_str(),
        yearly.as_str(),
        "price_00000000000000000000000000",
        "nope",
    ] {
        let e = subs
            .change_subscription_plan(req(
                plan_change(&id, bad, Proration::Prorate, now, None),
                key,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert_eq!(details(&e).1, ["price_id"], "{bad}");
        let e = subs
            .preview_plan_change(req(
                preview_of(&plan_change(&id, bad, Proration::Prorate, now, None)),
                key,
            ))
            .await
            .unwrap_err();
        assert_eq!(details(&e).1, ["price_id"], "{bad}");
    }
    let e = subs
        .change_subscription_plan(req(
            ChangeSubscriptionPlanRequest {
                quantity: 0,
                ..plan_change(
                    &id,
                    &pro,
                    Proration::Unspecified,
                    PlanChangeEffective::Unspecified,
                    Some(prost_types::Timestamp {
                        seconds: 0,
                        nanos: 0,
                    }),
                )
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(details(&e).1, ["quantity", "proration", "effective"]);
    let e = subs
        .change_subscription_plan(req(
            plan_change(
                &id,
                &pro,
                Proration::Prorate,
                now,
                Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
            ),
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&e).1, ["proration_time"]);
    // Nothing was changed or charged by any of these.
    assert_eq!(subscription(&env, &id).await.price_id, basic);
    subs.cancel_subscription(req(cancel(&id, false, ""), key))
        .await
        .unwrap();
    reaches(&env, &id, "canceled", |s| {
        s.status == SubscriptionStatus::Canceled as i32
    })
    .await;
    let e = subs
        .change_subscription_plan(req(
            plan_change(&id, &pro, Proration::Prorate, now, None),
            key,
        ))
        .await
        .unwrap_err();
    assert_illegal(&e, "canceled");
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert!(renewals(&env).await.is_empty());
}

#[tokio::test]
async fn a_change_with_no_proration_or_a_net_credit_changes_the_price_and_charges_nothing() {
    let (env, _) = spawn().await;
    let [basic, pro, _, _] = tiers(&env).await;
    let id = bought(&env, &pro, PAYS, SubscriptionStatus::Active).await;
    let start = at(subscription(&env, &id)
        .await
        .current_period_start
        .as_ref()
        .unwrap());
    advance(&env, start + Duration::days(5)).await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    let now = PlanChangeEffective::Now;
    // A downgrade invoiced now: the lines net to a credit, which is not paid out.
    let down = plan_change(&id, &basic, Proration::AlwaysInvoice, now, None);
    let preview = subs
        .preview_plan_change(req(preview_of(&down), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.amount_due, 0);
    assert_eq!(preview.lines.len(), 2);
    assert!(preview.lines.iter().map(|l| l.amount).sum::<i64>() < 0);
    let changed = subs
        .change_subscription_plan(idem(down, key, "down-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.price_id, basic);
    // Back up with no proration: the price changes, nothing is charged.
    let up = plan_change(&id, &pro, Proration::None, now, None);
    let preview = subs
        .preview_plan_change(req(preview_of(&up), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.amount_due, preview.lines.len()), (0, 0));
    let changed = subs
        .change_subscription_plan(idem(up, key, "up-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.price_id, pro);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert!(renewals(&env).await.is_empty());
    let amount: (Option<i64>,) = sqlx::query_as("SELECT amount FROM sandbox_subscriptions")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(amount, (Some(3_000),));
}
