//! The lifecycle RPCs on a Polar account, through Coffer's gRPC API against the fake Polar:
//! cancel at the period's end and its undoing (`PATCH cancel_at_period_end`), cancel now
//! (`DELETE`, Polar's revoke), a plan change (`PATCH product_id` with its
//! `proration_behavior`); what Polar lacks is PROVIDER_UNSUPPORTED; and Polar's own
//! `subscription.revoked` taking access away.

use axum::http::Method;
use coffer::grpc::pb::check_access_request::Customer as Who;
use coffer::grpc::pb::{
    CancelSubscriptionRequest, ChangeSubscriptionPlanRequest, CheckAccessRequest, CheckoutMode,
    CreatePlanRequest, Feature, GetSubscriptionRequest, Interval, PauseSubscriptionRequest,
    PlanChangeEffective, PreviewPlanChangeRequest, Price, Proration, Subscription,
    SubscriptionStatus, UndoCancelSubscriptionRequest,
};
use serde_json::{Value, json};
use tonic::Code;

use super::fake::FakePolar;
use super::{WAIT, all_processed, customer, events, hook, spawn};
use crate::checkout::{client, item, session};
use crate::helpers::{TestApp, details, eventually, idem, req};

/// Plan `pro` (29.00 USD a month, no features) and plan `max` (99.00 USD a month, with
/// `reports`): their monthly prices.
async fn plans(app: &TestApp) -> (String, String) {
    let mut made = Vec::new();
    for (key, amount, features) in [
        ("pro", 2_900, vec![]),
        (
            "max",
            9_900,
            vec![Feature {
                key: "reports".into(),
                ..Default::default()
            }],
        ),
    ] {
        let plan = app
            .subscriptions()
            .await
            .create_plan(req(
                CreatePlanRequest {
                    key: key.into(),
                    name: format!("Plan {key}"),
                    features,
                    prices: vec![Price {
                        amount,
                        currency: "USD".into(),
                        interval: Interval::Month as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                &app.key,
            ))
            .await
            .unwrap()
            .into_inner();
        made.push(plan.prices[0].id.clone());
    }
    (made[0].clone(), made[1].clone())
}

/// A customer `who` subscribed to `price` through a Polar checkout, paid, its events applied:
/// (Coffer's customer id, Coffer's subscription, Polar's subscription id).
async fn subscribe(
    app: &TestApp,
    fake: &FakePolar,
    url: &str,
    who: &str,
    price: &str,
    processed: usize,
) -> (String, Subscription, String) {
    let buyer = customer(app, who, &format!("{who}@example.com")).await;
    let opened = client(app)
        .await
        .create_checkout_session(req(
            session(&buyer, CheckoutMode::Subscription, vec![item(price, 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let (_, sub) = fake.pay(&opened.provider_session_id);
    let sub = sub.unwrap();
    for (event, data) in [
        (
            "checkout.updated",
            fake.object("checkouts", &opened.provider_session_id),
        ),
        ("subscription.created", fake.object("subscriptions", &sub)),
    ] {
        assert_eq!(fake.deliver(url, event, data).await, 200, "{event}");
    }
    assert!(
        eventually(WAIT, || all_processed(app, processed)).await,
        "{:?}",
        events(app).await
    );
    let mine = app
        .subscriptions()
        .await
        .list_subscriptions(req(Default::default(), &app.key))
        .await
        .unwrap()
        .into_inner()
        .subscriptions
        .into_iter()
        .find(|s| s.provider_subscription_id == sub)
        .expect("Coffer has the subscription");
    assert_eq!(mine.status(), SubscriptionStatus::Active);
    (buyer, mine, sub)
}

async fn get(app: &TestApp, id: &str) -> Subscription {
    app.subscriptions()
        .await
        .get_subscription(req(GetSubscriptionRequest { id: id.into() }, &app.key))
        .await
        .unwrap()
        .into_inner()
}

async fn allowed(app: &TestApp, customer: &str, feature: &str) -> bool {
    app.subscriptions()
        .await
        .check_access(req(
            CheckAccessRequest {
                customer: Some(Who::CustomerId(customer.into())),
                features: vec![feature.into()],
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .allowed
}

fn change(
    id: &str,
    price: &str,
    proration: Proration,
    effective: PlanChangeEffective,
) -> ChangeSubscriptionPlanRequest {
    ChangeSubscriptionPlanRequest {
        id: id.into(),
        price_id: price.into(),
        quantity: 1,
        proration: proration as i32,
        effective: effective as i32,
        proration_time: None,
    }
}

/// The body of the last PATCH to Polar's subscription `sub`.
fn last_patch(fake: &FakePolar, sub: &str) -> Value {
    fake.seen()
        .into_iter()
        .rev()
        .find(|s| s.method == Method::PATCH && s.path == format!("/v1/subscriptions/{sub}"))
        .expect("a PATCH was sent")
        .body
}

#[tokio::test]
async fn polar_subscriptions_are_canceled_undone_moved_and_revoked_through_coffer() {
    let fake = FakePolar::start().await;
    let (app, sidecar) = spawn(&fake).await;
    let url = hook(sidecar);
    let (pro, max) = plans(&app).await;
    let (alice, sub, polar_sub) = subscribe(&app, &fake, &url, "alice", &pro, 2).await;
    let id = sub.id.clone();
    let mut subs = app.subscriptions().await;
    let key = &app.key;
    assert!(!allowed(&app, &alice, "reports").await);

    // Cancel at the period's end, and undo it.
    let scheduled = subs
        .cancel_subscription(idem(
            CancelSubscriptionRequest {
                id: id.clone(),
                at_period_end: true,
                reason: String::new(),
            },
            key,
            "polar-cancel-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(scheduled.cancel_at_period_end);
    assert_eq!(
        last_patch(&fake, &polar_sub),
        json!({"cancel_at_period_end": true})
    );
    assert_eq!(
        fake.object("subscriptions", &polar_sub)["cancel_at_period_end"],
        true
    );
    let undone = subs
        .undo_cancel_subscription(req(UndoCancelSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap()
        .into_inner();
    assert!(!undone.cancel_at_period_end);
    assert_eq!(
        last_patch(&fake, &polar_sub),
        json!({"cancel_at_period_end": false})
    );

    // A plan change now, prorated: Polar's product becomes `max`'s mirrored product.
    let moved = subs
        .change_subscription_plan(idem(
            change(&id, &max, Proration::Prorate, PlanChangeEffective::Now),
            key,
            "polar-move-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.price_id, max);
    let sent = last_patch(&fake, &polar_sub);
    assert_eq!(sent["proration_behavior"], "prorate");
    let max_product = sent["product_id"].as_str().unwrap().to_owned();
    assert_eq!(
        fake.object("products", &max_product)["metadata"]["coffer_price_id"],
        coffer::domain::ids::PriceId::parse(&max)
            .unwrap()
            .as_uuid()
            .to_string()
    );
    assert_eq!(
        fake.object("subscriptions", &polar_sub)["product_id"],
        max_product.as_str()
    );
    assert!(
        eventually(WAIT, || allowed(&app, &alice, "reports")).await,
        "the new plan's feature is granted"
    );

    // ALWAYS_INVOICE is Polar's `invoice`; NONE now has no Polar equivalent and is refused.
    let back = subs
        .change_subscription_plan(req(
            change(
                &id,
                &pro,
                Proration::AlwaysInvoice,
                PlanChangeEffective::Now,
            ),
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.price_id, pro);
    assert_eq!(
        last_patch(&fake, &polar_sub)["proration_behavior"],
        "invoice"
    );
    let e = subs
        .change_subscription_plan(req(
            change(&id, &max, Proration::None, PlanChangeEffective::Now),
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "PROVIDER_REJECTED")
    );

    // At the period's end: Polar's `next_period`; Coffer keeps the price until the renewal.
    let later = subs
        .change_subscription_plan(req(
            change(
                &id,
                &max,
                Proration::Prorate,
                PlanChangeEffective::PeriodEnd,
            ),
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.price_id, pro);
    assert_eq!(
        last_patch(&fake, &polar_sub)["proration_behavior"],
        "next_period"
    );
    let pending = fake.object("subscriptions", &polar_sub);
    assert_eq!(
        pending["pending_update"]["product_id"],
        max_product.as_str()
    );

    // What Polar lacks: a preview, paused collection.
    let e = subs
        .preview_plan_change(req(
            PreviewPlanChangeRequest {
                id: id.clone(),
                price_id: max.clone(),
                quantity: 1,
                proration: Proration::Prorate as i32,
                effective: PlanChangeEffective::Now as i32,
                proration_time: None,
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "PROVIDER_UNSUPPORTED");
    let e = subs
        .pause_subscription(req(PauseSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "PROVIDER_UNSUPPORTED");

    // Cancel now: Polar's revoke.
    let canceled = subs
        .cancel_subscription(idem(
            CancelSubscriptionRequest {
                id: id.clone(),
                at_period_end: false,
                reason: String::new(),
            },
            key,
            "polar-cancel-now-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.status(), SubscriptionStatus::Canceled);
    assert_eq!(
        fake.count(Method::DELETE, &format!("/v1/subscriptions/{polar_sub}")),
        1
    );
    assert_eq!(get(&app, &id).await.status(), SubscriptionStatus::Canceled);
}

#[tokio::test]
async fn polars_revocation_event_takes_access_away() {
    let fake = FakePolar::start().await;
    let (app, sidecar) = spawn(&fake).await;
    let url = hook(sidecar);
    let (_, max) = plans(&app).await;
    let (bob, sub, polar_sub) = subscribe(&app, &fake, &url, "bob", &max, 2).await;
    assert!(eventually(WAIT, || allowed(&app, &bob, "reports")).await);

    // Revoked on Polar (its dashboard): the event is a trigger, the fetch finds it canceled.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let revoked = fake.update_subscription(&polar_sub, |s| {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(now);
        s["ended_at"] = json!(now);
    });
    assert_eq!(
        fake.deliver(&url, "subscription.revoked", revoked).await,
        200
    );
    assert!(
        eventually(WAIT, || all_processed(&app, 3)).await,
        "{:?}",
        events(&app).await
    );
    assert_eq!(
        get(&app, &sub.id).await.status(),
        SubscriptionStatus::Canceled
    );
    assert!(
        eventually(WAIT, || async { !allowed(&app, &bob, "reports").await }).await,
        "access revoked within one event"
    );
}
