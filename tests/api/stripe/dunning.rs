//! Dunning on Stripe (decision 0034): Stripe retries a failed renewal on its own schedule
//! (Smart Retries, set in its dashboard); when its retries run out and it leaves the
//! subscription past due, Coffer applies the tenant's `dunning_end`: CANCELED is a cancel made
//! on Stripe through the lifecycle's journaled cancel, once; UNPAID, which Stripe's API cannot
//! set, sends nothing, and CheckAccess has denied the subscription since its grace ended.

use super::*;

/// An active subscription made by a paid checkout: (Coffer's id, Stripe's id).
async fn active(env: &Env) -> (String, String) {
    let opened = env.open_subscription_session(Some(0)).await;
    let completed = env.fake.complete_session(&opened.provider_session_id);
    env.apply("checkout.session.completed", completed).await;
    let id = env.session(&opened.id).await.subscription_id;
    let sub = env.subscription(&id).await;
    assert_eq!(sub.status, SubscriptionStatus::Active as i32);
    (id, sub.provider_subscription_id)
}

async fn count(env: &Env, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&env.app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn stripe_retries_run_out_and_coffer_cancels_once_when_the_tenant_ends_dunning_canceled() {
    let env = Env::spawn_with(FakeStripe::start().await, "", "dunning_end = \"canceled\"").await;
    let fake = &env.fake;
    let (id, sub_id) = active(&env).await;
    let path = format!("/v1/subscriptions/{sub_id}");

    // The renewal fails; Stripe will try again: PAST_DUE, and Coffer leaves it to Stripe.
    let invoice = fake.fail_renewal(&sub_id);
    env.apply("invoice.payment_failed", invoice.clone()).await;
    assert_eq!(
        env.subscription(&id).await.status,
        SubscriptionStatus::PastDue as i32
    );
    let invoice_id = invoice["id"].as_str().unwrap();
    let retried = fake.retry_fails(invoice_id, false);
    env.apply("invoice.payment_failed", retried).await;
    assert_eq!(
        env.subscription(&id).await.status,
        SubscriptionStatus::PastDue as i32
    );
    assert!(fake.requests(Method::DELETE, &path).is_empty());
    // The subscription was fetched with its latest invoice, whose next attempt says so.
    let fetched = fake.requests(Method::GET, &path);
    assert!(!fetched.is_empty());

    // The last retry fails: no next attempt, and Stripe leaves it past due. Coffer cancels it
    // on Stripe, now, as the tenant's dunning_end says.
    let last = fake.retry_fails(invoice_id, true);
    assert_eq!(last["next_payment_attempt"], Value::Null);
    assert_eq!(fake.object(&sub_id)["status"], "past_due");
    env.apply("invoice.payment_failed", last.clone()).await;
    let sub = env.subscription(&id).await;
    assert_eq!(sub.status, SubscriptionStatus::Canceled as i32);
    assert_eq!(fake.object(&sub_id)["status"], "canceled");
    let deletes = fake.requests(Method::DELETE, &path);
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].idempotency_key.is_some(), "{:?}", deletes[0]);

    // Once: the same event delivered again, and Stripe's own events about the cancel, find
    // it made; one journaled change, audited as Coffer's own (no API key).
    env.apply("invoice.payment_failed", last).await;
    env.apply("customer.subscription.deleted", fake.object(&sub_id))
        .await;
    assert_eq!(fake.requests(Method::DELETE, &path).len(), 1);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM provider_operations WHERE kind = 'update_subscription'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM audit_log
             WHERE action = 'subscription.canceled' AND key_id IS NULL"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_subscription_stripe_marked_unpaid_is_canceled_when_the_tenant_ends_dunning_canceled() {
    // Stripe's dashboard says "mark as unpaid", the tenant says canceled: the tenant's word.
    let env = Env::spawn_with(FakeStripe::start().await, "", "dunning_end = \"canceled\"").await;
    let fake = &env.fake;
    let (id, sub_id) = active(&env).await;
    let invoice = fake.fail_renewal(&sub_id);
    let last = fake.retry_fails(invoice["id"].as_str().unwrap(), true);
    fake.update(&sub_id, |s| s["status"] = "unpaid".into());
    env.apply("customer.subscription.updated", fake.object(&sub_id))
        .await;
    env.apply("invoice.payment_failed", last).await;
    assert_eq!(
        env.subscription(&id).await.status,
        SubscriptionStatus::Canceled as i32
    );
    let path = format!("/v1/subscriptions/{sub_id}");
    assert_eq!(fake.requests(Method::DELETE, &path).len(), 1);
}

#[tokio::test]
async fn stripe_retries_run_out_with_unpaid_as_the_end_and_nothing_is_sent() {
    // The default end state, UNPAID: Stripe's API cannot set it, so Coffer sends nothing.
    let env = Env::spawn().await;
    let fake = &env.fake;
    let (id, sub_id) = active(&env).await;
    let invoice = fake.fail_renewal(&sub_id);
    let last = fake.retry_fails(invoice["id"].as_str().unwrap(), true);
    env.apply("invoice.payment_failed", last).await;
    assert_eq!(
        env.subscription(&id).await.status,
        SubscriptionStatus::PastDue as i32
    );
    let path = format!("/v1/subscriptions/{sub_id}");
    assert!(fake.requests(Method::DELETE, &path).is_empty());
    assert!(
        fake.requests(Method::POST, &path).is_empty(),
        "nothing is asked of Stripe"
    );
}

/// CheckAccess's answer for `customer`'s feature `reports`: (allowed, reason).
async fn reports(env: &Env, customer: &str) -> (bool, i32) {
    use coffer::grpc::pb::CheckAccessRequest;
    use coffer::grpc::pb::check_access_request::Customer as Who;
    let r = env
        .app
        .subscriptions()
        .await
        .check_access(req(
            CheckAccessRequest {
                customer: Some(Who::CustomerId(customer.into())),
                features: vec!["reports".into()],
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    (r[0].allowed, r[0].reason)
}

/// Sets the Stripe subscription's current period to have started `days_ago`.
fn period_started(fake: &FakeStripe, sub_id: &str, days_ago: i64) {
    let start = fake::now() - days_ago * 86_400;
    fake.update(sub_id, |s| {
        s["items"]["data"][0]["current_period_start"] = start.into();
        s["items"]["data"][0]["current_period_end"] = (start + 30 * 86_400).into();
    });
}

#[tokio::test]
async fn the_tenants_grace_period_holds_for_a_past_due_stripe_subscription() {
    use coffer::grpc::pb::{AccessReason, CreatePlanRequest, Feature, Interval, Price};
    let env = Env::spawn().await;
    let fake = &env.fake;
    let key = &env.app.key;
    let plan = env
        .app
        .subscriptions()
        .await
        .create_plan(req(
            CreatePlanRequest {
                key: "team".into(),
                name: "Team".into(),
                features: vec![Feature {
                    key: "reports".into(),
                    ..Default::default()
                }],
                prices: vec![Price {
                    amount: 2_900,
                    currency: "USD".into(),
                    interval: Interval::Month as i32,
                    ..Default::default()
                }],
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    let carol = customer(&env.app, key, "carol").await;
    let opened = client(&env.app)
        .await
        .create_checkout_session(req(
            session(
                &carol,
                CheckoutMode::Subscription,
                vec![item(&plan.prices[0].id, 1)],
            ),
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    let completed = fake.complete_session(&opened.provider_session_id);
    env.apply("checkout.session.completed", completed).await;
    let id = env.session(&opened.id).await.subscription_id;
    let sub_id = env.subscription(&id).await.provider_subscription_id;
    assert_eq!(
        reports(&env, &carol).await,
        (true, AccessReason::Active as i32)
    );

    // The renewal failed a day ago: PAST_DUE, within the default three days of grace.
    let invoice = fake.fail_renewal(&sub_id);
    period_started(fake, &sub_id, 1);
    env.apply("invoice.payment_failed", invoice).await;
    assert_eq!(
        env.subscription(&id).await.status,
        SubscriptionStatus::PastDue as i32
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            reports(&env, &carol).await == (true, AccessReason::PastDueGrace as i32)
        })
        .await
    );
    // Four days ago, Stripe still retrying: the grace is over, whatever Stripe's schedule.
    period_started(fake, &sub_id, 4);
    env.apply("customer.subscription.updated", fake.object(&sub_id))
        .await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            reports(&env, &carol).await == (false, AccessReason::PastDueGraceOver as i32)
        })
        .await
    );
}
