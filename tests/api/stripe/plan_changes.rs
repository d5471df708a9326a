//! Plan changes on a Stripe account, and Stripe's subscription events driving Coffer's state:
//! ChangeSubscriptionPlan and PreviewPlanChange through Coffer's gRPC API against the fake
//! Stripe, which prorates to the second as Stripe documents it.

use std::time::Duration;

use coffer::grpc::pb::check_access_request::Customer as Who;
use coffer::grpc::pb::{
    AccessReason, ChangeSubscriptionPlanRequest, CheckAccessRequest, CreatePlanRequest, Feature,
    Interval, PlanChangeEffective, PreviewPlanChangeRequest, Price, Proration, SubscriptionStatus,
};
use http::Method;
use serde_json::Value;

use super::Env;
use crate::helpers::{eventually, idem, req};

/// An active (untrialed) subscription of plan `pro` (29.00 USD a month) on the fake Stripe,
/// and the plan `max` (99.00 USD a month, with the feature `reports`): (Coffer's subscription
/// id, Stripe's, `max`'s price id, the customer's id).
async fn active(env: &Env) -> (String, String, String, String) {
    let opened = env.open_subscription_session(Some(0)).await;
    let completed = env.fake.complete_session(&opened.provider_session_id);
    env.apply("checkout.session.completed", completed).await;
    let id = env.session(&opened.id).await.subscription_id;
    let sub = env.subscription(&id).await;
    assert_eq!(sub.status, SubscriptionStatus::Active as i32);
    let max = env
        .app
        .subscriptions()
        .await
        .create_plan(req(
            CreatePlanRequest {
                key: "max".into(),
                name: "Max".into(),
                features: vec![Feature {
                    key: "reports".into(),
                    ..Default::default()
                }],
                prices: vec![Price {
                    amount: 9_900,
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
        .into_inner();
    (
        id,
        sub.provider_subscription_id,
        max.prices[0].id.clone(),
        sub.customer_id,
    )
}

fn change(
    id: &str,
    price: &str,
    quantity: i64,
    proration: Proration,
    effective: PlanChangeEffective,
) -> ChangeSubscriptionPlanRequest {
    ChangeSubscriptionPlanRequest {
        id: id.into(),
        price_id: price.into(),
        quantity,
        proration: proration as i32,
        effective: effective as i32,
        proration_time: None,
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

/// The parameters of the last POST to the subscription `sub` on the fake.
fn last_update(env: &Env, sub: &str) -> Value {
    env.fake
        .requests(Method::POST, &format!("/v1/subscriptions/{sub}"))
        .last()
        .expect("an update was posted")
        .params
        .clone()
}

/// The sum of the pending proration invoice items Stripe keeps for `sub`'s next invoice.
fn pending_prorations(env: &Env, sub: &str) -> i64 {
    env.fake
        .objects("ii_")
        .iter()
        .filter(|i| i["subscription"] == sub && i["proration"] == true)
        .map(|i| i["amount"].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn a_prorated_upgrade_on_stripe_adds_exactly_what_its_preview_showed() {
    let env = Env::spawn().await;
    let (id, sub_id, max, _) = active(&env).await;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    let asked = change(&id, &max, 1, Proration::Prorate, PlanChangeEffective::Now);
    let preview = subs
        .preview_plan_change(req(preview_of(&asked), key))
        .await
        .unwrap()
        .into_inner();
    // Stripe's own preview, asked with Coffer's proration time and the mirrored price.
    let asked_preview = &env
        .fake
        .requests(Method::POST, "/v1/invoices/create_preview")[0]
        .params;
    let t = preview.proration_time.unwrap().seconds;
    let details = &asked_preview["subscription_details"];
    assert_eq!(details["proration_behavior"], "create_prorations");
    assert_eq!(details["proration_date"], t.to_string());
    let stripe_max = details["items"][0]["price"].as_str().unwrap().to_owned();
    assert_eq!(env.fake.object(&stripe_max)["unit_amount"], 9_900);
    assert_eq!(preview.currency, "USD");
    assert_eq!(preview.lines.len(), 2, "{preview:?}");
    assert!(preview.lines[0].amount < 0 && preview.lines[1].amount > 0);
    assert!(preview.amount_due > 0);
    assert_eq!(
        preview.amount_due,
        preview.lines.iter().map(|l| l.amount).sum::<i64>()
    );

    let changed = subs
        .change_subscription_plan(idem(
            ChangeSubscriptionPlanRequest {
                proration_time: preview.proration_time,
                ..asked
            },
            key,
            "stripe-upgrade-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (changed.price_id.as_str(), changed.quantity),
        (max.as_str(), 1)
    );
    let sent = last_update(&env, &sub_id);
    let item = env.fake.object(&sub_id)["items"]["data"][0].clone();
    assert_eq!(sent["items"][0]["id"], item["id"]);
    assert_eq!(sent["items"][0]["price"], stripe_max.as_str());
    assert_eq!(sent["items"][0]["quantity"], "1");
    assert_eq!(sent["proration_behavior"], "create_prorations");
    assert_eq!(sent["proration_date"], t.to_string());
    assert_eq!(item["price"]["id"], stripe_max.as_str());
    // Stripe keeps the prorations for the next invoice: exactly the previewed amount.
    assert_eq!(pending_prorations(&env, &sub_id), preview.amount_due);
    assert_eq!(env.subscription(&id).await.price_id, max);
}

#[tokio::test]
async fn none_and_always_invoice_reach_stripe_as_their_proration_behaviors() {
    let env = Env::spawn().await;
    let (id, sub_id, max, _) = active(&env).await;
    let pro = env.subscription(&id).await.price_id;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;

    // NONE: the price moves, nothing is prorated.
    let none = change(&id, &max, 1, Proration::None, PlanChangeEffective::Now);
    let preview = subs
        .preview_plan_change(req(preview_of(&none), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.amount_due, preview.lines.len()), (0, 0));
    let changed = subs
        .change_subscription_plan(idem(none, key, "stripe-none-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.price_id, max);
    assert_eq!(last_update(&env, &sub_id)["proration_behavior"], "none");
    assert_eq!(pending_prorations(&env, &sub_id), 0);
    assert!(env.fake.objects("ii_").is_empty());

    // ALWAYS_INVOICE, back to `pro` with 4 seats (116.00 > 99.00): invoiced and paid now, the
    // invoice's amount the preview's.
    let mut always = change(
        &id,
        &pro,
        4,
        Proration::AlwaysInvoice,
        PlanChangeEffective::Now,
    );
    let preview = subs
        .preview_plan_change(req(preview_of(&always), key))
        .await
        .unwrap()
        .into_inner();
    assert!(preview.amount_due > 0, "{preview:?}");
    always.proration_time = preview.proration_time;
    let changed = subs
        .change_subscription_plan(idem(always, key, "stripe-always-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (changed.price_id.as_str(), changed.quantity),
        (pro.as_str(), 4)
    );
    let sent = last_update(&env, &sub_id);
    assert_eq!(sent["proration_behavior"], "always_invoice");
    assert_eq!(sent["items"][0]["quantity"], "4");
    let invoice_id = env.fake.object(&sub_id)["latest_invoice"]
        .as_str()
        .unwrap()
        .to_owned();
    let invoice = env.fake.object(&invoice_id);
    assert_eq!(invoice["billing_reason"], "subscription_update");
    assert_eq!(invoice["amount_due"], preview.amount_due);
}

#[tokio::test]
async fn a_change_at_period_end_is_a_stripe_schedule_that_the_renewal_applies() {
    let env = Env::spawn().await;
    let (id, sub_id, max, customer) = active(&env).await;
    let pro = env.subscription(&id).await.price_id;
    let before = env.fake.object(&sub_id);
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    let asked = change(
        &id,
        &max,
        2,
        Proration::Prorate,
        PlanChangeEffective::PeriodEnd,
    );
    let preview = subs
        .preview_plan_change(req(preview_of(&asked), key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.amount_due, preview.lines.len()), (0, 0));
    let scheduled = subs
        .change_subscription_plan(idem(asked, key, "stripe-later-1"))
        .await
        .unwrap()
        .into_inner();
    // Nothing changes now: Coffer keeps the change for the renewal, Stripe's schedule too.
    assert_eq!(
        (scheduled.price_id.as_str(), scheduled.quantity),
        (pro.as_str(), 1)
    );
    let now = env.fake.object(&sub_id);
    assert_eq!(
        now["items"]["data"][0]["price"],
        before["items"]["data"][0]["price"]
    );
    let schedule = env.fake.object(now["schedule"].as_str().unwrap());
    let phases = schedule["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    assert_eq!(
        phases[0]["end_date"],
        before["items"]["data"][0]["current_period_end"]
    );
    assert_eq!(phases[1]["items"][0]["quantity"], 2);
    assert_eq!(phases[1]["proration_behavior"], "none");
    assert_eq!(schedule["end_behavior"], "release");
    assert!(env.fake.objects("ii_").is_empty(), "nothing prorated");
    // Asked again (another quantity): the same schedule's phases are replaced.
    let again = change(
        &id,
        &max,
        2,
        Proration::None,
        PlanChangeEffective::PeriodEnd,
    );
    subs.change_subscription_plan(idem(again, key, "stripe-later-2"))
        .await
        .unwrap();
    assert_eq!(env.fake.objects("sub_sched_").len(), 1);

    // Stripe renews: the schedule's next phase, and its event, bring the price to Coffer.
    let rolled = env.fake.roll_period(&sub_id);
    env.apply("customer.subscription.updated", rolled).await;
    let renewed = env.subscription(&id).await;
    assert_eq!(
        (renewed.price_id.as_str(), renewed.quantity),
        (max.as_str(), 2)
    );
    assert_eq!(
        renewed.current_period_start.unwrap().seconds,
        before["items"]["data"][0]["current_period_end"]
            .as_i64()
            .unwrap()
    );
    // `max` has the feature `reports`, `pro` had none.
    assert!(
        eventually(Duration::from_secs(5), || async {
            access(&env, &customer, "reports").await.allowed
        })
        .await
    );
}

async fn access(env: &Env, customer: &str, feature: &str) -> coffer::grpc::pb::AccessResult {
    env.app
        .subscriptions()
        .await
        .check_access(req(
            CheckAccessRequest {
                customer: Some(Who::CustomerId(customer.into())),
                features: vec![feature.into()],
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0)
}

#[tokio::test]
async fn a_lost_plan_change_answer_is_settled_with_the_new_price() {
    let env = Env::spawn().await;
    let (id, sub_id, max, _) = active(&env).await;
    // Mirror `max` first (a preview does), so the lost call is the update alone.
    let asked = change(&id, &max, 3, Proration::None, PlanChangeEffective::Now);
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    subs.preview_plan_change(req(preview_of(&asked), key))
        .await
        .unwrap();
    // Stripe makes the change, but every answer comes after the attempt's timeout.
    let path = format!("/v1/subscriptions/{sub_id}");
    env.fake.fail(
        Method::POST,
        &path,
        usize::MAX,
        super::fake::Fault::Slow(Duration::from_millis(900)),
    );
    let e = subs
        .change_subscription_plan(idem(asked.clone(), key, "stripe-lost-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let tries = env.fake.requests(Method::POST, &path);
    let stripe_key = tries[0].idempotency_key.clone().unwrap();
    assert_eq!(env.fake.executions(&stripe_key), 1, "made once");
    assert_eq!(env.fake.object(&sub_id)["items"]["data"][0]["quantity"], 3);
    assert_eq!(env.subscription(&id).await.quantity, 1, "not known yet");
    env.fake.clear_faults();

    // The resolver finds the subscription by the change's id and writes its new price.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let s = env.subscription(&id).await;
            (s.price_id.as_str(), s.quantity) == (max.as_str(), 3)
        })
        .await,
        "{:?}",
        env.subscription(&id).await
    );
    let status: String = sqlx::query_scalar(
        "SELECT status FROM provider_operations WHERE kind = 'update_subscription'",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(status, "succeeded");
    // The caller's retry answers the change, without making it again.
    let again = subs
        .change_subscription_plan(idem(asked, key, "stripe-lost-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.price_id.as_str(), again.quantity), (max.as_str(), 3));
    assert_eq!(env.fake.executions(&stripe_key), 1);
}

#[tokio::test]
async fn stripe_subscription_events_reach_get_subscription_and_check_access() {
    let env = Env::spawn().await;
    let (id, sub_id, max, customer) = active(&env).await;
    // Coffer mirrors `max` (a preview does); then the price is changed on Stripe itself.
    env.app
        .subscriptions()
        .await
        .preview_plan_change(req(
            preview_of(&change(
                &id,
                &max,
                1,
                Proration::None,
                PlanChangeEffective::Now,
            )),
            &env.app.key,
        ))
        .await
        .unwrap();
    let stripe_max = env
        .fake
        .objects("price_")
        .into_iter()
        .find(|p| p["unit_amount"] == 9_900)
        .map(|p| p["id"].clone())
        .unwrap();
    assert_eq!(
        access(&env, &customer, "reports").await.reason,
        AccessReason::FeatureNotInPlan as i32
    );
    let updated = env.fake.update(&sub_id, |s| {
        s["items"]["data"][0]["price"] = serde_json::json!({"id": stripe_max, "object": "price",
            "unit_amount": 9_900, "currency": "usd"});
    });
    env.apply("customer.subscription.updated", updated).await;
    assert_eq!(env.subscription(&id).await.price_id, max);
    assert!(
        eventually(Duration::from_secs(5), || async {
            access(&env, &customer, "reports").await.allowed
        })
        .await,
        "a grant within one event"
    );

    // Past due on Stripe: the status follows.
    let past_due = env
        .fake
        .update(&sub_id, |s| s["status"] = "past_due".into());
    env.apply("customer.subscription.updated", past_due).await;
    assert_eq!(
        env.subscription(&id).await.status,
        SubscriptionStatus::PastDue as i32
    );

    // Deleted on Stripe: access is revoked.
    let deleted = env.fake.update(&sub_id, |s| {
        s["status"] = "canceled".into();
        s["canceled_at"] = super::fake::now().into();
    });
    env.apply("customer.subscription.deleted", deleted).await;
    assert_eq!(
        env.subscription(&id).await.status,
        SubscriptionStatus::Canceled as i32
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            !access(&env, &customer, "reports").await.allowed
        })
        .await,
        "a revoke within one event"
    );
}

#[tokio::test]
async fn a_change_now_releases_a_change_scheduled_on_stripe() {
    let env = Env::spawn().await;
    let (id, sub_id, max, _) = active(&env).await;
    let pro = env.subscription(&id).await.price_id;
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;
    subs.change_subscription_plan(idem(
        change(
            &id,
            &max,
            1,
            Proration::None,
            PlanChangeEffective::PeriodEnd,
        ),
        key,
        "stripe-sched-1",
    ))
    .await
    .unwrap();
    let schedule = env.fake.object(&sub_id)["schedule"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = subs
        .change_subscription_plan(idem(
            change(&id, &pro, 3, Proration::None, PlanChangeEffective::Now),
            key,
            "stripe-now-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((now.price_id.as_str(), now.quantity), (pro.as_str(), 3));
    assert_eq!(env.fake.object(&schedule)["status"], "released");
    assert_eq!(env.fake.object(&sub_id)["schedule"], Value::Null);
    // The renewal keeps the change made now.
    let rolled = env.fake.roll_period(&sub_id);
    env.apply("customer.subscription.updated", rolled).await;
    let renewed = env.subscription(&id).await;
    assert_eq!(
        (renewed.price_id.as_str(), renewed.quantity),
        (pro.as_str(), 3)
    );
}
