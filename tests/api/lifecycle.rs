//! The subscription lifecycle on the sandbox, end to end: a subscription bought on the hosted
//! page, then cancelled, paused and resumed through the lifecycle RPCs, each change made by
//! the sandbox (through the journal) and reported back by its signed events through the
//! sidecar and the inbox, as a provider's would be.

use coffer::grpc::pb::{
    CancelSubscriptionRequest, CheckoutMode, CheckoutPaymentStatus, CheckoutSessionStatus,
    DeleteCustomerRequest, PauseSubscriptionRequest, ResumeSubscriptionRequest, Subscription,
    SubscriptionStatus, UndoCancelSubscriptionRequest,
};
use tonic::Code;

use crate::checkout::{item, plan, session};
use crate::e2e::{SETTLE, all_delivered_and_processed, get, spawn, subscription};
use crate::helpers::{details, eventually, idem, req};
use crate::sandbox_page::{Env, PAYS};

/// A yearly subscription bought with the good card, ACTIVE; its id.
async fn active_subscription(env: &Env) -> String {
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
