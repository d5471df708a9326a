//! CreateSubscription on a Stripe account: `POST /v1/subscriptions` on the fake Stripe with
//! the mirrored customer and price and `metadata[coffer_subscription_id]`, under the
//! journal's idempotency key; the subscription's events and a lost answer find the one row by
//! that metadata (decision 0026).

use std::time::Duration;

use coffer::grpc::pb::check_access_request::Customer as Who;
use coffer::grpc::pb::{
    AccessReason, CheckAccessRequest, CreatePlanRequest, CreateSubscriptionRequest, Feature,
    GetPaymentRequest, Interval, ListPaymentsRequest, Payment, PaymentStatus, Price,
    RefundPaymentRequest, RefundStatus, Subscription, SubscriptionStatus,
};
use http::Method;
use serde_json::{Value, json};
use tonic::Code;

use super::fake::Fault;
use super::{Env, uuid_of};
use crate::checkout::{client, customer, plan};
use crate::helpers::{details, eventually, idem, req};

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

/// The plan "team": the switch feature `reports`, and a monthly price of 12.50 USD without a
/// trial. Its price's id.
async fn team_plan(env: &Env) -> String {
    env.app
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
                    amount: 1_250,
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

/// `who`'s subscription to two of `price`, charged at once on Stripe: a first ask mirrors the
/// customer and is refused for want of a card, then the customer saves one (her default
/// payment method) and the second ask is paid. The subscription, and Stripe's.
async fn paid_subscription(env: &Env, who: &str, price: &str) -> (Subscription, Value) {
    let e = create_with(env, create(who, price, None), &format!("{who}-no-card"))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "PAYMENT_METHOD_REQUIRED");
    let cus = env
        .fake
        .objects("cus_")
        .into_iter()
        .find(|c| c["metadata"]["coffer_customer_id"] == uuid_of(who))
        .expect("the customer is mirrored");
    env.fake.update(cus["id"].as_str().unwrap(), |c| {
        c["invoice_settings"] = json!({"default_payment_method": "pm_card_visa"});
    });
    let made = create_with(env, create(who, price, None), &format!("{who}-paid"))
        .await
        .unwrap();
    assert_eq!(made.status, SubscriptionStatus::Active as i32, "{made:?}");
    let stripe_sub = env.fake.object(&made.provider_subscription_id);
    (made, stripe_sub)
}

/// The subscription's payments, by period (ListPayments filtered by subscription_id).
async fn charges(env: &Env, subscription: &str) -> Vec<Payment> {
    let mut payments = client(&env.app)
        .await
        .list_payments(req(
            ListPaymentsRequest {
                page_size: 100,
                subscription_id: subscription.into(),
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .payments;
    payments.sort_by_key(|p| p.period_start.as_ref().map(|t| t.seconds));
    payments
}

/// The payment intent that paid the fake's invoice `invoice`.
fn intent_of(env: &Env, invoice: &Value) -> String {
    let payments = env
        .fake
        .objects("inpay_")
        .into_iter()
        .filter(|p| p["invoice"] == invoice["id"])
        .collect::<Vec<_>>();
    assert_eq!(payments.len(), 1, "{payments:?}");
    payments[0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The first invoice and a renewal's, each delivered twice and out of order: two payments of
/// the subscription, exact amounts, its customer, the period each pays for; refundable, and
/// Stripe's `charge.refunded` for a charge with no metadata is found through its invoice.
#[tokio::test]
async fn each_paid_invoice_of_a_created_subscription_is_one_payment_however_its_events_come() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let price = team_plan(&env).await;
    let gina = customer(&env.app, &env.app.key, "gina").await;
    let (made, stripe_sub) = paid_subscription(&env, &gina, &price).await;
    let sub_id = made.provider_subscription_id.clone();
    let first = fake.object(stripe_sub["latest_invoice"].as_str().unwrap());
    assert_eq!(first["billing_reason"], "subscription_create");
    // Stripe's clock renews it: the next period's invoice is paid.
    let second = fake.renew(&sub_id);
    assert_eq!(second["billing_reason"], "subscription_cycle");

    env.apply("invoice.paid", second.clone()).await;
    env.apply("invoice.payment_succeeded", first.clone()).await;
    env.apply("invoice.paid", first.clone()).await;
    env.apply("invoice.paid", second.clone()).await;

    let paid = charges(&env, &made.id).await;
    assert_eq!(paid.len(), 2, "one payment per invoice: {paid:?}");
    for (payment, invoice) in paid.iter().zip([&first, &second]) {
        assert_eq!(
            payment.status,
            PaymentStatus::Succeeded as i32,
            "{payment:?}"
        );
        assert_eq!((payment.amount, payment.currency.as_str()), (2_500, "USD"));
        assert_eq!(payment.customer_id, gina);
        assert_eq!(payment.subscription_id, made.id);
        assert!(payment.checkout_session_id.is_empty());
        assert_eq!(payment.provider_payment_id, intent_of(&env, invoice));
        assert_eq!(
            payment.period_start.as_ref().unwrap().seconds,
            invoice["lines"]["data"][0]["period"]["start"]
                .as_i64()
                .unwrap()
        );
        assert_eq!(
            (payment.card_brand.as_str(), payment.card_last4.as_str()),
            ("visa", "4242")
        );
    }
    // The subscription follows Stripe, in the same transactions: its second period.
    let sub = env.subscription(&made.id).await;
    assert_eq!(
        sub.current_period_start.unwrap().seconds,
        fake.object(&sub_id)["items"]["data"][0]["current_period_start"]
            .as_i64()
            .unwrap()
    );
    let got = client(&env.app)
        .await
        .get_payment(req(
            GetPaymentRequest {
                id: paid[1].id.clone(),
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, paid[1]);

    // A refund of part of the renewal: against its payment intent on Stripe.
    let refund = client(&env.app)
        .await
        .refund_payment(idem(
            RefundPaymentRequest {
                payment_id: paid[1].id.clone(),
                amount: Some(700),
                ..Default::default()
            },
            &env.app.key,
            "refund-renewal",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (refund.status, refund.amount),
        (RefundStatus::Succeeded as i32, 700)
    );
    let pi = intent_of(&env, &second);
    assert_eq!(
        fake.object(&refund.provider_refund_id)["payment_intent"],
        pi.as_str()
    );
    // Stripe's event of it names the charge, whose payment intent carries no metadata: the
    // payment is found through the invoice it paid.
    let charge = fake.object(fake.object(&pi)["latest_charge"].as_str().unwrap());
    env.apply("charge.refunded", charge).await;
    assert!(
        !fake
            .requests(Method::GET, "/v1/invoice_payments")
            .is_empty()
    );
    let refunded = env.payment(&paid[1].id).await;
    assert_eq!(refunded.amount_refunded, 700);
    assert_eq!(refunded.status, PaymentStatus::Succeeded as i32);
    assert_eq!(charges(&env, &made.id).await.len(), 2);
}

/// A renewal whose card is declined is that period's payment FAILED (the subscription
/// PAST_DUE); Stripe's retry that pays the same invoice makes the same payment SUCCEEDED.
#[tokio::test]
async fn a_declined_renewal_is_a_failed_payment_until_stripes_retry_pays_it() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let price = team_plan(&env).await;
    let jo = customer(&env.app, &env.app.key, "jo").await;
    let (made, stripe_sub) = paid_subscription(&env, &jo, &price).await;
    let sub_id = made.provider_subscription_id.clone();
    let first = fake.object(stripe_sub["latest_invoice"].as_str().unwrap());
    env.apply("invoice.paid", first).await;

    let renewal = fake.renew(&sub_id);
    let declined = fake.decline_invoice(renewal["id"].as_str().unwrap(), "insufficient_funds");
    fake.update(&sub_id, |s| s["status"] = "past_due".into());
    env.apply("invoice.payment_failed", declined).await;
    let paid = charges(&env, &made.id).await;
    assert_eq!(paid.len(), 2, "{paid:?}");
    assert_eq!(
        paid[1].status,
        PaymentStatus::Failed as i32,
        "{:?}",
        paid[1]
    );
    assert_eq!(paid[1].failure_code, "insufficient_funds");
    assert_eq!(paid[1].amount, 2_500);
    assert_eq!(
        env.subscription(&made.id).await.status,
        SubscriptionStatus::PastDue as i32
    );

    let retried = fake.pay_invoice(renewal["id"].as_str().unwrap());
    fake.update(&sub_id, |s| s["status"] = "active".into());
    env.apply("invoice.paid", retried).await;
    let after = charges(&env, &made.id).await;
    assert_eq!(after.len(), 2, "the same period's payment: {after:?}");
    assert_eq!(after[1].id, paid[1].id);
    assert_eq!(after[1].status, PaymentStatus::Succeeded as i32);
    assert_eq!(
        env.subscription(&made.id).await.status,
        SubscriptionStatus::Active as i32
    );
}

/// CheckAccess for `reports`: (allowed, reason).
async fn reports(env: &Env, customer: &str) -> (bool, i32) {
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

/// A chargeback of a created subscription's first charge (no checkout session behind it): the
/// payment is DISPUTED, and CheckAccess follows the tenant's `disputed_access` — denied by
/// default until the dispute is won, kept with `allow`.
#[tokio::test]
async fn a_dispute_of_a_created_subscriptions_charge_disputes_its_payment_and_access_follows() {
    let active = AccessReason::Active as i32;
    let disputed = AccessReason::PaymentDisputed as i32;
    for (setting, while_disputed) in [
        ("", (false, disputed)),
        ("disputed_access = \"allow\"", (true, active)),
    ] {
        let env = Env::spawn_with_tenant(setting).await;
        let fake = &env.fake;
        let price = team_plan(&env).await;
        let hana = customer(&env.app, &env.app.key, "hana").await;
        let (made, stripe_sub) = paid_subscription(&env, &hana, &price).await;
        let invoice = fake.object(stripe_sub["latest_invoice"].as_str().unwrap());
        env.apply("invoice.paid", invoice.clone()).await;
        let [payment] = charges(&env, &made.id).await.try_into().unwrap();
        assert_eq!(reports(&env, &hana).await, (true, active), "{setting}");

        let pi = intent_of(&env, &invoice);
        let dispute = fake.open_dispute(&pi, 2_500, "fraudulent");
        env.apply("charge.dispute.created", dispute.clone()).await;
        let now = env.payment(&payment.id).await;
        assert_eq!(now.status, PaymentStatus::Disputed as i32, "{setting}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                reports(&env, &hana).await == while_disputed
            })
            .await,
            "{setting}: {:?}",
            reports(&env, &hana).await
        );

        // Won: SUCCEEDED again, and access with it.
        let id = dispute["id"].as_str().unwrap();
        let closed = fake.update(id, |d| d["status"] = "won".into());
        env.apply("charge.dispute.closed", closed).await;
        assert_eq!(
            env.payment(&payment.id).await.status,
            PaymentStatus::Succeeded as i32
        );
        assert!(
            eventually(Duration::from_secs(5), || async {
                reports(&env, &hana).await == (true, active)
            })
            .await,
            "{setting}"
        );
    }
}

/// The create's answer is lost and Stripe's Search has not indexed the subscription yet: the
/// resolver's search finds nothing and the list of recent subscriptions finds it, so it is
/// settled once, and the retry under the same key answers it with nothing made again.
#[tokio::test]
async fn a_lost_answer_is_found_by_the_list_while_search_lags() {
    let env = Env::spawn().await;
    let (ivy, monthly, _) = customer_and_plan(&env, "ivy").await;
    // The customer and the price are mirrored first, by a call whose answer is not lost.
    let first = create_with(&env, create(&ivy, &monthly, Some(3)), "warm-up")
        .await
        .unwrap();
    env.fake.set_search_lag(3_600);
    env.fake.fail(
        Method::POST,
        PATH,
        usize::MAX,
        Fault::Slow(Duration::from_millis(900)),
    );
    let e = create_with(&env, create(&ivy, &monthly, Some(5)), "lost-2")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Unavailable, "PROVIDER_OUTCOME_UNKNOWN")
    );
    let key = env.fake.requests(Method::POST, PATH)[1]
        .idempotency_key
        .clone()
        .unwrap();
    assert_eq!(env.fake.executions(&key), 1);
    let made = stripe_subscriptions(&env)[0].clone();
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
    // Search was asked and answered nothing; the list of recent subscriptions found it.
    let searches = env.fake.requests(Method::GET, "/v1/subscriptions/search");
    assert!(
        searches.iter().any(|r| r.params["query"]
            .as_str()
            .unwrap()
            .starts_with("metadata['coffer_subscription_id']")),
        "{searches:?}"
    );
    let lists = env.fake.requests(Method::GET, PATH);
    assert!(!lists.is_empty(), "the list fallback was read");
    for list in &lists {
        assert_eq!(list.params["status"], "all");
        let since: i64 = list.params["created"]["gte"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(since <= made["created"].as_i64().unwrap());
    }
    let retried = create_with(&env, create(&ivy, &monthly, Some(5)), "lost-2")
        .await
        .unwrap();
    assert_ne!(retried.id, first.id);
    assert_eq!(retried.provider_subscription_id, made["id"]);
    assert_eq!(
        made["metadata"]["coffer_subscription_id"],
        uuid_of(&retried.id)
    );
    assert_eq!(retried.status, SubscriptionStatus::Trialing as i32);
    assert_eq!(env.fake.executions(&key), 1, "made once");
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
