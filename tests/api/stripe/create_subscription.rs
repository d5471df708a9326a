//! CreateSubscription on a Stripe account: `POST /v1/subscriptions` on the fake Stripe with
//! the mirrored customer and price and `metadata[coffer_subscription_id]`, under the
//! journal's idempotency key; the subscription's events and a lost answer find the one row by
//! that metadata (decision 0026).

use std::time::Duration;

use coffer::grpc::pb::{CreateSubscriptionRequest, Subscription, SubscriptionStatus};
use http::Method;
use serde_json::{Value, json};
use tonic::Code;

use super::fake::Fault;
use super::{Env, uuid_of};
use crate::checkout::{customer, plan};
use crate::helpers::{details, eventually, idem};

const PATH: &str = "/v1/subscriptions";

fn create(customer: &str, price: &str, trial_days: Option<i64>) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        customer_id: customer.into(),
        price_id: price.into(),
        quantity: 2,
        trial_days,
        account: String::new(),
    }
}

async fn create_with(
    env: &Env,
    r: CreateSubscriptionRequest,
    key: &str,
) -> Result<Subscription, tonic::Status> {
    env.app
        .subscriptions()
        .await
        .create_subscription(idem(r, &env.app.key, key))
        .await
        .map(tonic::Response::into_inner)
}

/// The subscriptions on the fake Stripe (not their schedules), newest first.
fn stripe_subscriptions(env: &Env) -> Vec<Value> {
    env.fake
        .objects("sub_")
        .into_iter()
        .filter(|s| s["object"] == "subscription")
        .collect()
}

/// The one `POST /v1/subscriptions` request's idempotency key, and how often the fake
/// executed it.
fn one_create(env: &Env) -> (String, u32) {
    let posts = env.fake.requests(Method::POST, PATH);
    let key = posts[0]
        .idempotency_key
        .clone()
        .expect("a write carries a key");
    assert!(
        posts
            .iter()
            .all(|p| p.idempotency_key.as_deref() == Some(key.as_str())),
        "{posts:?}"
    );
    let executions = env.fake.executions(&key);
    (key, executions)
}

/// A customer and the plan `pro` (monthly 29.00 USD with a 14-day trial, yearly 290.00 USD):
/// (customer id, monthly price id, yearly price id).
async fn customer_and_plan(env: &Env, who: &str) -> (String, String, String) {
    let who = customer(&env.app, &env.app.key, who).await;
    let (_, [monthly, yearly, _]) = plan(&env.app, "pro").await;
    (who, monthly, yearly)
}

#[tokio::test]
async fn a_trial_subscription_is_made_once_on_stripe_and_its_events_update_the_one_row() {
    let env = Env::spawn().await;
    let (carol, monthly, _) = customer_and_plan(&env, "carol").await;
    let made = create_with(&env, create(&carol, &monthly, Some(7)), "trial-1")
        .await
        .unwrap();
    assert_eq!(made.status, SubscriptionStatus::Trialing as i32, "{made:?}");
    assert_eq!(made.price_id, monthly);
    assert_eq!(made.quantity, 2);
    assert!(made.checkout_session_id.is_empty());

    let subs = stripe_subscriptions(&env);
    assert_eq!(subs.len(), 1, "{subs:?}");
    let stripe_sub = &subs[0];
    assert_eq!(made.provider_subscription_id, stripe_sub["id"]);
    assert_eq!(stripe_sub["status"], "trialing");
    assert_eq!(
        made.trial_end.as_ref().unwrap().seconds,
        stripe_sub["trial_end"].as_i64().unwrap()
    );
    let trial =
        stripe_sub["trial_end"].as_i64().unwrap() - stripe_sub["start_date"].as_i64().unwrap();
    assert_eq!(
        trial,
        7 * 86_400,
        "the asked trial, not the price's 14 days"
    );
    // What was sent: the mirrored customer and price, Coffer's id in the metadata.
    let cus = &env.fake.objects("cus_")[0];
    assert_eq!(cus["metadata"]["coffer_customer_id"], uuid_of(&carol));
    assert_eq!(stripe_sub["customer"], cus["id"]);
    let item = &stripe_sub["items"]["data"][0];
    assert_eq!(item["quantity"], 2);
    assert_eq!(
        item["price"]["metadata"]["coffer_price_id"],
        uuid_of(&monthly)
    );
    assert_eq!(
        stripe_sub["metadata"]["coffer_subscription_id"],
        uuid_of(&made.id)
    );
    let (key, executions) = one_create(&env);
    assert_eq!(executions, 1);

    // The same idempotency key again: the same subscription, nothing more on Stripe.
    let replay = create_with(&env, create(&carol, &monthly, Some(7)), "trial-1")
        .await
        .unwrap();
    assert_eq!(replay.id, made.id);
    assert_eq!(env.fake.requests(Method::POST, PATH).len(), 1);
    assert_eq!(env.fake.executions(&key), 1);
    assert_eq!(stripe_subscriptions(&env).len(), 1);

    // Stripe's event of the creation, then the trial's end: the one row follows.
    env.apply("customer.subscription.created", stripe_sub.clone())
        .await;
    let sub_id = made.provider_subscription_id.clone();
    let now = super::fake::now();
    let updated = env.fake.update(&sub_id, |s| {
        s["status"] = json!("active");
        s["trial_end"] = json!(now);
        s["items"]["data"][0]["current_period_start"] = json!(now);
        s["items"]["data"][0]["current_period_end"] = json!(now + 30 * 86_400);
    });
    env.apply("customer.subscription.updated", updated).await;
    let listed = env.subscriptions().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, made.id);
    assert_eq!(listed[0].status, SubscriptionStatus::Active as i32);
}

#[tokio::test]
async fn without_a_payment_method_and_no_trial_nothing_is_made_until_the_customer_has_one() {
    let env = Env::spawn().await;
    let (dana, monthly, yearly) = customer_and_plan(&env, "dana").await;
    // trial_days 0 overrides the price's 14 days.
    let e = create_with(&env, create(&dana, &monthly, Some(0)), "nocard")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(details(&e).0, "PAYMENT_METHOD_REQUIRED");
    assert!(env.subscriptions().await.is_empty());
    assert!(stripe_subscriptions(&env).is_empty());
    let (_, executions) = one_create(&env);
    assert_eq!(executions, 1, "asked once, not retried");
    // Stored under the key like any caller's error: the same key answers it again.
    let again = create_with(&env, create(&dana, &monthly, Some(0)), "nocard")
        .await
        .unwrap_err();
    assert_eq!(details(&again).0, "PAYMENT_METHOD_REQUIRED");
    assert_eq!(env.fake.requests(Method::POST, PATH).len(), 1);

    // The customer saves a card (her default payment method): the first year is charged now.
    let cus = env.fake.objects("cus_")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.fake.update(&cus, |c| {
        c["invoice_settings"] = json!({"default_payment_method": "pm_card_visa"});
    });
    let made = create_with(&env, create(&dana, &yearly, None), "card-1")
        .await
        .unwrap();
    assert_eq!(made.status, SubscriptionStatus::Active as i32, "{made:?}");
    assert!(made.trial_end.is_none());
    let stripe_sub = env.fake.object(&made.provider_subscription_id);
    assert_eq!(stripe_sub["status"], "active");
    assert!(
        env.fake
            .requests(Method::POST, PATH)
            .iter()
            .all(|r| r.params.get("payment_behavior").is_none()),
        "Stripe's default payment_behavior"
    );
    assert_eq!(env.subscriptions().await.len(), 1);
}

/// The created event arrives while the call's answer is still on its way: one row.
#[tokio::test]
async fn a_webhook_racing_the_create_updates_the_one_subscription() {
    let env = Env::spawn().await;
    let (erin, monthly, _) = customer_and_plan(&env, "erin").await;
    // The subscription is made at once, its answer takes 400 ms (within the attempt's time).
    env.fake.fail(
        Method::POST,
        PATH,
        1,
        Fault::Slow(Duration::from_millis(400)),
    );
    let client = env.app.subscriptions().await;
    let key = env.app.key.clone();
    let request = create(&erin, &monthly, None);
    let call = tokio::spawn(async move {
        let mut client = client;
        client
            .create_subscription(idem(request, &key, "race-1"))
            .await
            .unwrap()
            .into_inner()
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            !stripe_subscriptions(&env).is_empty()
        })
        .await
    );
    let stripe_sub = stripe_subscriptions(&env)[0].clone();
    let event = env
        .deliver("customer.subscription.created", stripe_sub.clone())
        .await;
    let made = call.await.unwrap();
    assert!(env.settled(&event, "processed").await);
    assert_eq!(made.provider_subscription_id, stripe_sub["id"]);
    assert_eq!(
        made.status,
        SubscriptionStatus::Trialing as i32,
        "the price's trial"
    );
    let listed = env.subscriptions().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, made.id);
    assert_eq!(stripe_subscriptions(&env).len(), 1);
}

/// Every answer is lost (after the work): the resolver finds the subscription by Coffer's id
/// in its metadata, and the retry under the same key answers it, made once.
#[tokio::test]
async fn a_lost_answer_is_settled_by_finding_the_one_subscription() {
    let env = Env::spawn().await;
    let (fay, monthly, _) = customer_and_plan(&env, "fay").await;
    // The customer and the price are mirrored first, by a call whose answer is not lost.
    let first = create_with(&env, create(&fay, &monthly, Some(3)), "warm-up")
        .await
        .unwrap();
    env.fake.fail(
        Method::POST,
        PATH,
        usize::MAX,
        Fault::Slow(Duration::from_millis(900)),
    );
    let e = create_with(&env, create(&fay, &monthly, Some(5)), "lost-1")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Unavailable, "PROVIDER_OUTCOME_UNKNOWN")
    );
    let tries: Vec<_> = env
        .fake
        .requests(Method::POST, PATH)
        .into_iter()
        .skip(1)
        .collect();
    assert!(tries.len() >= 2, "retried under its key: {tries:?}");
    let key = tries[0].idempotency_key.clone().unwrap();
    assert_eq!(env.fake.executions(&key), 1, "made once, replayed after");
    env.fake.clear_faults();
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM provider_operations
                  WHERE kind = 'create_subscription' AND status = 'succeeded'",
            )
            .fetch_one(&env.app.pool)
            .await
            .unwrap()
                == 2
        })
        .await,
        "the resolver settles it"
    );
    assert!(
        !env.fake
            .requests(Method::GET, "/v1/subscriptions/search")
            .is_empty(),
        "found by its metadata"
    );
    let retried = create_with(&env, create(&fay, &monthly, Some(5)), "lost-1")
        .await
        .unwrap();
    assert_ne!(retried.id, first.id);
    assert_eq!(retried.status, SubscriptionStatus::Trialing as i32);
    assert_eq!(env.fake.executions(&key), 1);
    assert_eq!(stripe_subscriptions(&env).len(), 2);
    assert_eq!(env.subscriptions().await.len(), 2);
}

/// A declined first invoice leaves the subscription INCOMPLETE; Stripe expires it after 23
/// hours, telling it as `customer.subscription.updated` or `.deleted` with the status
/// `incomplete_expired`: either way Coffer's row becomes INCOMPLETE_EXPIRED (final), not
/// CANCELED.
#[tokio::test]
async fn an_incomplete_subscription_expired_by_stripe_is_incomplete_expired_by_either_event() {
    let env = Env::spawn().await;
    let (_, [monthly, _, _]) = plan(&env.app, "pro").await;
    for (who, event) in [
        ("fay", "customer.subscription.updated"),
        ("gus", "customer.subscription.deleted"),
    ] {
        let someone = customer(&env.app, &env.app.key, who).await;
        // Refused without a card, the create has mirrored the customer all the same.
        let e = create_with(
            &env,
            create(&someone, &monthly, Some(0)),
            &format!("{who}-0"),
        )
        .await
        .unwrap_err();
        assert_eq!(details(&e).0, "PAYMENT_METHOD_REQUIRED");
        let cus_id = env
            .fake
            .objects("cus_")
            .into_iter()
            .find(|c| c["metadata"]["coffer_customer_id"] == uuid_of(&someone))
            .expect("the mirrored customer")["id"]
            .as_str()
            .unwrap()
            .to_owned();
        // Her default payment method declines every charge (Stripe's test method).
        env.fake.update(&cus_id, |c| {
            c["invoice_settings"] = json!({"default_payment_method": "pm_card_chargeCustomerFail"});
        });
        let made = create_with(
            &env,
            create(&someone, &monthly, Some(0)),
            &format!("{who}-1"),
        )
        .await
        .unwrap();
        assert_eq!(
            made.status,
            SubscriptionStatus::Incomplete as i32,
            "{made:?}"
        );

        let now = super::fake::now();
        let expired = env.fake.update(&made.provider_subscription_id, |s| {
            s["status"] = json!("incomplete_expired");
            s["ended_at"] = json!(now);
        });
        env.apply(event, expired).await;
        let got = env
            .subscriptions()
            .await
            .into_iter()
            .find(|s| s.id == made.id)
            .unwrap();
        assert_eq!(
            got.status,
            SubscriptionStatus::IncompleteExpired as i32,
            "{event}: {got:?}"
        );
        assert!(got.canceled_at.is_none(), "{got:?}");
    }
}

/// A trial that ended without a payment method is `paused` on Stripe; ResumeSubscription on it
/// is Stripe's resume (`POST /v1/subscriptions/{id}/resume`, a new billing cycle from now),
/// not the unset of `pause_collection`, and its answer makes the row ACTIVE.
#[tokio::test]
async fn resume_subscription_on_a_paused_stripe_subscription_is_stripes_resume() {
    use coffer::grpc::pb::ResumeSubscriptionRequest;
    let env = Env::spawn().await;
    let (hal, monthly, _) = customer_and_plan(&env, "hal").await;
    let made = create_with(&env, create(&hal, &monthly, Some(7)), "trial")
        .await
        .unwrap();
    let sub_id = made.provider_subscription_id.clone();
    let paused = env.fake.update(&sub_id, |s| s["status"] = json!("paused"));
    env.apply("customer.subscription.paused", paused).await;
    let listed = env.subscriptions().await;
    assert_eq!(listed[0].status, SubscriptionStatus::Paused as i32);

    let resumed = env
        .app
        .subscriptions()
        .await
        .resume_subscription(idem(
            ResumeSubscriptionRequest {
                id: made.id.clone(),
            },
            &env.app.key,
            "resume-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resumed.status,
        SubscriptionStatus::Active as i32,
        "{resumed:?}"
    );
    let path = format!("/v1/subscriptions/{sub_id}/resume");
    let sent = env.fake.requests(Method::POST, &path);
    assert_eq!(sent.len(), 1, "{:?}", env.fake.all_requests());
    assert_eq!(sent[0].params["billing_cycle_anchor"], "now");
    assert!(sent[0].idempotency_key.is_some());
    // Not the pause_collection unset a paused collection's resume sends.
    assert!(
        env.fake
            .requests(Method::POST, &format!("/v1/subscriptions/{sub_id}"))
            .iter()
            .all(|r| r.params.get("pause_collection").is_none())
    );
}
