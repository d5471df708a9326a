//! The customer portal on the sandbox: CreatePortalSession's checks, then the sandbox's portal
//! page over real HTTP (a cancel at period end, its undo and a change of card, each through the
//! same use cases as the lifecycle RPCs), its refusals (a forged or expired token, a post
//! without the page's CSRF token), and a real browser using it.

use std::time::Duration;

use coffer::grpc::pb::create_portal_session_request::Customer as Who;
use coffer::grpc::pb::{CreatePortalSessionRequest, PortalSession, SubscriptionStatus};
use coffer::providers::sandbox::SandboxConfig;
use reqwest::StatusCode;
use tonic::Code;

use crate::e2e::{spawn, subscription};
use crate::helpers::{TestApp, details, idem, req};
use crate::lifecycle::{active_subscription, advance, bought};
use crate::sandbox_page::{Env, FAILS_LATER, PAYS, env_of, form};

const RETURN: &str = "https://shop.acme.example/account";

fn ask(customer: &str, return_url: &str) -> CreatePortalSessionRequest {
    CreatePortalSessionRequest {
        customer: Some(Who::CustomerId(customer.into())),
        return_url: return_url.into(),
    }
}

async fn open_portal(env: &Env) -> PortalSession {
    env.app
        .customers()
        .await
        .create_portal_session(req(ask(&env.customer, RETURN), &env.app.key))
        .await
        .unwrap()
        .into_inner()
}

/// The portal's URL on the test's public listener (the sandbox's `public_url` is not it).
fn local(env: &Env, portal: &PortalSession) -> String {
    let at = portal
        .url
        .find("/sandbox/portal/")
        .expect("a sandbox portal URL");
    format!("http://{}{}", env.http, &portal.url[at..])
}

fn web() -> reqwest::Client {
    coffer::providers::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

async fn get(url: &str) -> Answer {
    answer(web().get(url).send().await.unwrap()).await
}

async fn post(url: &str, pairs: &[(&str, &str)]) -> Answer {
    answer(
        web()
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn answer(r: reqwest::Response) -> Answer {
    Answer {
        status: r.status(),
        location: r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned()),
        body: r.text().await.unwrap(),
    }
}

/// The page's CSRF token, from its first form.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

async fn count(env: &Env, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&env.app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn create_portal_session_checks_its_return_url_and_customer_and_is_idempotent() {
    let app = TestApp::spawn_configured(
        "[tenant.acme]\nallowed_redirect_origins = [\"https://shop.acme.example\"]\n",
        &[],
        |config| {
            config.http_addr = Some("127.0.0.1:0".parse().unwrap());
            config.sandbox = Some(SandboxConfig::default());
        },
    )
    .await;
    let env = env_of(app).await;
    let mut customers = env.app.customers().await;
    let key = &env.app.key;

    for bad in [
        "https://evil.example/account",
        "http://shop.acme.example/account",
        "/account",
        "",
    ] {
        let e = customers
            .create_portal_session(req(ask(&env.customer, bad), key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert_eq!(details(&e).1, vec!["return_url".to_owned()], "{bad}");
    }
    let e = customers
        .create_portal_session(req(
            CreatePortalSessionRequest {
                customer: None,
                return_url: RETURN.into(),
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&e).1, vec!["customer_id".to_owned()]);
    let e = customers
        .create_portal_session(req(
            CreatePortalSessionRequest {
                customer: Some(Who::ExternalId("nobody".into())),
                return_url: RETURN.into(),
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(details(&e).0, "CUSTOMER_NOT_FOUND");
    assert_eq!(count(&env, "SELECT count(*) FROM portal_sessions").await, 0);
    assert_eq!(
        count(&env, "SELECT count(*) FROM sandbox_portal_sessions").await,
        0
    );

    // By external id, under a key: a retry answers the same link and opens nothing more.
    let by_external = CreatePortalSessionRequest {
        customer: Some(Who::ExternalId("alice".into())),
        return_url: RETURN.into(),
    };
    let first = customers
        .create_portal_session(idem(by_external.clone(), key, "portal-a"))
        .await
        .unwrap()
        .into_inner();
    let again = customers
        .create_portal_session(idem(by_external, key, "portal-a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.url, again.url);
    assert_eq!(first.expire_time, again.expire_time);
    assert_eq!(
        count(&env, "SELECT count(*) FROM sandbox_portal_sessions").await,
        1
    );
    // An hour on the sandbox's clock, which has not moved.
    let made =
        first.expire_time.unwrap().seconds - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((3500..=3600).contains(&made), "{made}");
    // The token is in the URL and nowhere in the tables: only its hash is kept.
    let token = first.url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(token.len(), 43);
    let dump: String = sqlx::query_scalar(
        "SELECT string_agg(to_jsonb(t)::text, '') FROM sandbox_portal_sessions t",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert!(!dump.contains(&token));
    // Another tenant's key does not see acme's customer.
    let other = env.app.tenant("globex").await;
    let e = customers
        .create_portal_session(req(ask(&env.customer, RETURN), &other))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn the_portal_cancels_at_period_end_undoes_it_and_changes_the_card_through_coffer() {
    let (env, _faults) = spawn().await;
    let id = active_subscription(&env).await;
    let provider_id = subscription(&env, &id).await.provider_subscription_id;
    let portal = open_portal(&env).await;
    let url = local(&env, &portal);

    let page = get(&url).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains(&provider_id),
        "the subscription is listed"
    );
    assert!(page.body.contains("Cancel subscription"));
    assert!(page.body.contains("Renews on"));
    assert!(page.body.contains("Visa ending in <strong>4242</strong>"));
    assert!(page.body.contains("Paid"), "the payment is listed");
    assert!(page.body.contains(&format!("href=\"{RETURN}\"")));
    let token = csrf(&page.body);
    let action = format!("{url}/subscriptions/{provider_id}");
    let events = || {
        count(
            &env,
            "SELECT count(*) FROM subscription_events WHERE subscription->>'cancel_at_period_end' IS NOT NULL",
        )
    };
    let journaled = || {
        count(
            &env,
            "SELECT count(*) FROM provider_operations WHERE kind = 'update_subscription'",
        )
    };
    let (events_before, journaled_before) = (events().await, journaled().await);

    // Without the CSRF token, or with another: refused, nothing changed.
    for pairs in [
        vec![("action", "cancel")],
        vec![("action", "cancel"), ("csrf", "")],
        vec![("action", "cancel"), ("csrf", "not-the-pages-token")],
    ] {
        let refused = post(&action, &pairs).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{pairs:?}");
        assert!(refused.body.contains("Nothing was changed"));
    }
    assert!(!subscription(&env, &id).await.cancel_at_period_end);
    assert_eq!(journaled().await, journaled_before);

    // Cancel at the period's end: through the lifecycle use case, journaled, in the outbox.
    let done = post(&action, &[("csrf", &token), ("action", "cancel")]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(done.location.unwrap().ends_with("?notice=cancel"));
    let after = subscription(&env, &id).await;
    assert!(
        after.cancel_at_period_end,
        "GetSubscription shows it at once"
    );
    assert_eq!(journaled().await, journaled_before + 1);
    assert!(events().await > events_before);
    let audited: String = sqlx::query_scalar(
        "SELECT a.key_id::text FROM audit_log a WHERE a.object_type = 'subscription'
         ORDER BY a.id DESC LIMIT 1",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    let opener: String = sqlx::query_scalar("SELECT key_id::text FROM portal_sessions")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(audited, opener, "made as the key that opened the portal");
    let page = get(&format!("{url}?notice=cancel")).await;
    assert!(page.body.contains("Keep my subscription"));
    assert!(page.body.contains("will end at the close"));
    // Asked twice (a double submit): answered as the RPC would, and still scheduled.
    let twice = post(&action, &[("csrf", &token), ("action", "cancel")]).await;
    assert_eq!(twice.status, StatusCode::SEE_OTHER);
    assert!(subscription(&env, &id).await.cancel_at_period_end);
    let journaled_before = journaled().await;

    // Undo it.
    let undone = post(&action, &[("csrf", &token), ("action", "undo")]).await;
    assert_eq!(undone.status, StatusCode::SEE_OTHER, "{}", undone.body);
    assert!(!subscription(&env, &id).await.cancel_at_period_end);
    assert_eq!(journaled().await, journaled_before + 1);
    // Undoing what is not scheduled is refused by the state machine, and shown.
    let again = post(&action, &[("csrf", &token), ("action", "resume")]).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(again.body.contains("cannot be changed that way now"));
    assert_eq!(journaled().await, journaled_before + 1);

    // Another subscription id (not this customer's) is refused.
    let other = post(
        &format!("{url}/subscriptions/sub_sbx_0000"),
        &[("csrf", &token), ("action", "cancel")],
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(journaled().await, journaled_before + 1);

    // The card: a declined one is refused and changes nothing; 0341 becomes the card on file
    // and what the renewals charge.
    let card = format!("{url}/card");
    let refused = post(
        &card,
        &[
            ("csrf", &token),
            ("number", crate::sandbox_page::DECLINED),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ],
    )
    .await;
    assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
    assert!(refused.body.contains("declined"));
    let no_csrf = post(
        &card,
        &[
            ("number", FAILS_LATER),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada"),
        ],
    )
    .await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    let fails_on_renewal = || {
        count(
            &env,
            "SELECT count(*) FROM sandbox_subscriptions WHERE fails_on_renewal",
        )
    };
    assert_eq!(fails_on_renewal().await, 0);
    let saved = post(
        &card,
        &[
            ("csrf", &token),
            ("number", FAILS_LATER),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ],
    )
    .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(fails_on_renewal().await, 1);
    let page = get(&url).await;
    assert!(page.body.contains("ending in <strong>0341</strong>"));
    // No card number in any sandbox table.
    let dump: String = sqlx::query_scalar(
        "SELECT concat((SELECT string_agg(to_jsonb(c)::text, '') FROM sandbox_customers c),
                       (SELECT string_agg(to_jsonb(p)::text, '') FROM sandbox_payments p))",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    for number in [PAYS, FAILS_LATER] {
        assert!(!dump.contains(&number.replace(' ', "")));
    }
}

/// The stored idempotent answer of `key`: (response, status, seconds until it lapses).
async fn stored(env: &Env, key: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>, Option<f64>) {
    sqlx::query_as(
        "SELECT response, status, extract(epoch FROM expires_at - now())::float8
         FROM idempotency_keys WHERE key = $1",
    )
    .bind(key)
    .fetch_one(&env.app.pool)
    .await
    .unwrap()
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_portal_answer_replays_byte_exact_while_the_link_works_then_lapses_and_is_scrubbed() {
    use prost::Message as _;

    let app = TestApp::spawn_configured(
        "[tenant.acme]\nallowed_redirect_origins = [\"https://shop.acme.example\"]\n",
        &[],
        |config| {
            config.http_addr = Some("127.0.0.1:0".parse().unwrap());
            config.sandbox = Some(SandboxConfig::default());
        },
    )
    .await;
    let env = env_of(app).await;
    let mut customers = env.app.customers().await;
    let key = &env.app.key;
    // Another stored answer, which lapses never: the scrub leaves it alone.
    let bob = customers
        .create_customer(idem(
            coffer::grpc::pb::CreateCustomerRequest {
                external_id: "bob".into(),
                ..Default::default()
            },
            key,
            "bob-key",
        ))
        .await
        .unwrap()
        .into_inner()
        .id;

    let first = customers
        .create_portal_session(idem(ask(&env.customer, RETURN), key, "portal-l"))
        .await
        .unwrap();
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let first = first.into_inner();
    let token = first.url.rsplit('/').next().unwrap().to_owned();

    // While the link works: the same link, byte for byte, marked replayed.
    let again = customers
        .create_portal_session(idem(ask(&env.customer, RETURN), key, "portal-l"))
        .await
        .unwrap();
    assert_eq!(again.metadata().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.into_inner().encode_to_vec(), first.encode_to_vec());
    assert_eq!(
        count(&env, "SELECT count(*) FROM sandbox_portal_sessions").await,
        1
    );
    // Stored with the link's hour, and the refusal that follows it.
    let (response, status, lapses_in) = stored(&env, "portal-l").await;
    assert_eq!(response.as_deref(), Some(&first.encode_to_vec()[..]));
    assert!(status.is_some());
    let lapses_in = lapses_in.unwrap();
    assert!((3500.0..=3600.0).contains(&lapses_in), "{lapses_in}");
    // Nothing has lapsed: the sweep scrubs nothing.
    let app = &env.app.app;
    assert_eq!(coffer::app::sweeper::scrub_lapsed(app).await.unwrap(), 0);
    assert!(stored(&env, "portal-l").await.0.is_some());

    // The hour passes (on the database's clock, which the stored answer keeps): a replay is
    // refused at once, before any sweep, and never runs again.
    sqlx::query(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'
         WHERE key = 'portal-l'",
    )
    .execute(&env.app.pool)
    .await
    .unwrap();
    let e = customers
        .create_portal_session(idem(ask(&env.customer, RETURN), key, "portal-l"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(details(&e).0, "PORTAL_SESSION_EXPIRED");
    assert!(!e.message().contains(&token));

    // The sweep scrubs it in one statement: the URL and its token are gone from the table.
    assert_eq!(coffer::app::sweeper::scrub_lapsed(app).await.unwrap(), 1);
    let (response, status, lapses_in) = stored(&env, "portal-l").await;
    assert_eq!(response, None);
    assert_eq!(lapses_in, None);
    let status = status.unwrap();
    assert!(!holds(&status, token.as_bytes()));
    let row: String = sqlx::query_scalar(
        "SELECT to_jsonb(k)::text FROM idempotency_keys k WHERE key = 'portal-l'",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert!(!row.contains(&token));
    let token_hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!row.contains(&token_hex));
    // Replays keep the same refusal; another request under the key is still "reused".
    let again = customers
        .create_portal_session(idem(ask(&env.customer, RETURN), key, "portal-l"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(details(&again).0, "PORTAL_SESSION_EXPIRED");
    let reused = customers
        .create_portal_session(idem(
            ask(&env.customer, "https://shop.acme.example/other"),
            key,
            "portal-l",
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&reused).0, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        count(&env, "SELECT count(*) FROM sandbox_portal_sessions").await,
        1,
        "no replay opened another session"
    );

    // Nothing else changed: the other stored answer is whole, and a fresh key opens a link.
    let other: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT response FROM idempotency_keys WHERE key = 'bob-key'")
            .fetch_one(&env.app.pool)
            .await
            .unwrap();
    assert!(holds(&other.unwrap(), bob.as_bytes()));
    let fresh = customers
        .create_portal_session(idem(ask(&env.customer, RETURN), key, "portal-m"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fresh.url, first.url);
}

#[tokio::test]
async fn a_forged_or_expired_link_is_refused_and_changes_nothing() {
    let (env, _faults) = spawn().await;
    let id = active_subscription(&env).await;
    let provider_id = subscription(&env, &id).await.provider_subscription_id;
    let portal = open_portal(&env).await;
    let url = local(&env, &portal);
    let page = get(&url).await;
    let token = csrf(&page.body);

    // A forged token, of the right shape or not.
    let base = format!("http://{}/sandbox/portal", env.http);
    for forged in [
        "A".repeat(43),
        "short".to_owned(),
        format!("{}x", &url.rsplit('/').next().unwrap()[..42]),
    ] {
        let page = get(&format!("{base}/{forged}")).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{forged}");
        assert!(!page.body.contains(&provider_id));
        let post = post(
            &format!("{base}/{forged}/subscriptions/{provider_id}"),
            &[("csrf", &token), ("action", "cancel")],
        )
        .await;
        assert_eq!(post.status, StatusCode::FORBIDDEN, "{forged}");
    }
    assert!(!subscription(&env, &id).await.cancel_at_period_end);

    // Past its hour on the sandbox's clock: gone, and its forms change nothing.
    advance(
        &env,
        time::OffsetDateTime::now_utc() + time::Duration::minutes(61),
    )
    .await;
    let page = get(&url).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.body.contains("expired"));
    assert!(!page.body.contains(&provider_id));
    let late = post(
        &format!("{url}/subscriptions/{provider_id}"),
        &[("csrf", &token), ("action", "cancel")],
    )
    .await;
    assert_eq!(late.status, StatusCode::GONE);
    let late_card = post(
        &format!("{url}/card"),
        &[
            ("csrf", &token),
            ("number", FAILS_LATER),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada"),
        ],
    )
    .await;
    assert_eq!(late_card.status, StatusCode::GONE);
    assert!(!subscription(&env, &id).await.cancel_at_period_end);
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM sandbox_subscriptions WHERE fails_on_renewal"
        )
        .await,
        0
    );
    // A new session works again.
    let fresh = open_portal(&env).await;
    assert_eq!(get(&local(&env, &fresh)).await.status, StatusCode::OK);
}

/// Saves `number` as the card in the portal at `url`, answering the redirect to the page.
async fn save_card(url: &str, number: &str) -> Answer {
    let page = get(url).await;
    post(
        &format!("{url}/card"),
        &[
            ("csrf", &csrf(&page.body)),
            ("number", number),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ],
    )
    .await
}

#[tokio::test]
async fn a_card_added_in_the_portal_resumes_a_paused_trial_with_a_period_charged_from_now() {
    use crate::create_subscription::{at, charges, create, create_with, reaches};
    use coffer::grpc::pb::PaymentStatus;
    use time::Duration as Span;

    let env = crate::create_subscription::spawn(
        "[tenant.acme]\ntrial_end_without_payment_method = \"pause\"\n",
    )
    .await;
    let (_, [monthly, _, _]) = crate::checkout::plan(&env.app, "pro").await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(3)), "t")
        .await
        .unwrap()
        .into_inner();
    let later = at(s.trial_end.as_ref().unwrap()) + Span::days(5);
    crate::create_subscription::advance(&env, later).await;
    reaches(&env, &s.id, SubscriptionStatus::Paused).await;
    let provider_id = subscription(&env, &s.id).await.provider_subscription_id;
    let url = local(&env, &open_portal(&env).await);
    let page = get(&url).await;
    assert!(
        page.body.contains("Add a card below to resume"),
        "{}",
        page.body
    );
    assert!(page.body.contains("No card on file."));

    let saved = save_card(&url, PAYS).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let active = reaches(&env, &s.id, SubscriptionStatus::Active).await;
    let start = at(active.current_period_start.as_ref().unwrap());
    assert!(
        start >= later && start < later + Span::minutes(5),
        "the new period starts at the sandbox clock's now: {start} after {later}"
    );
    assert!(
        crate::helpers::eventually(crate::e2e::SETTLE, || async {
            let paid = charges(&env, &s.id).await;
            paid.len() == 1 && paid[0].status == PaymentStatus::Succeeded as i32
        })
        .await,
        "{:?}",
        charges(&env, &s.id).await
    );
    let paid = charges(&env, &s.id).await;
    assert_eq!(paid[0].amount, 5_800);
    assert_eq!(at(paid[0].period_start.as_ref().unwrap()), start);
    assert_eq!(
        at(paid[0].period_end.as_ref().unwrap()),
        at(active.current_period_end.as_ref().unwrap())
    );
    // The page shows it renewing; a second card changes the card, not the period.
    let page = get(&url).await;
    assert!(page.body.contains("Renews on"), "{}", page.body);
    assert!(page.body.contains(&format!("id=\"pause-{provider_id}\"")));
    save_card(&url, PAYS).await;
    assert!(
        crate::helpers::eventually(crate::e2e::SETTLE, || {
            crate::e2e::all_delivered_and_processed(&env)
        })
        .await
    );
    assert_eq!(charges(&env, &s.id).await.len(), 1);
    assert_eq!(
        subscription(&env, &s.id).await.current_period_start,
        active.current_period_start
    );
}

#[tokio::test]
async fn a_card_added_in_the_portal_pays_an_incomplete_subscriptions_first_charge() {
    use crate::create_subscription::{at, card_on_file, charges, create, create_with, reaches};
    use coffer::grpc::pb::PaymentStatus;
    use time::Duration as Span;

    let env = crate::create_subscription::spawn("").await;
    let (_, [monthly, _, _]) = crate::checkout::plan(&env.app, "pro").await;
    card_on_file(&env, FAILS_LATER).await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(0)), "k")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Incomplete as i32);
    let url = local(&env, &open_portal(&env).await);
    assert!(get(&url).await.body.contains("Add a card below to pay it"));
    // Another 0341 card fails the same way: still INCOMPLETE.
    save_card(&url, FAILS_LATER).await;
    assert!(
        crate::helpers::eventually(crate::e2e::SETTLE, || {
            crate::e2e::all_delivered_and_processed(&env)
        })
        .await
    );
    assert_eq!(
        subscription(&env, &s.id).await.status,
        SubscriptionStatus::Incomplete as i32
    );
    save_card(&url, PAYS).await;
    let active = reaches(&env, &s.id, SubscriptionStatus::Active).await;
    // Its period is the one it was made with; its one charge is now paid.
    assert_eq!(active.current_period_start, s.current_period_start);
    assert!(
        crate::helpers::eventually(crate::e2e::SETTLE, || async {
            let paid = charges(&env, &s.id).await;
            paid.len() == 1 && paid[0].status == PaymentStatus::Succeeded as i32
        })
        .await,
        "{:?}",
        charges(&env, &s.id).await
    );
    // Paid in time, it never expires.
    crate::create_subscription::advance(
        &env,
        at(s.current_period_start.as_ref().unwrap()) + Span::hours(24),
    )
    .await;
    assert!(
        crate::helpers::eventually(crate::e2e::SETTLE, || {
            crate::e2e::all_delivered_and_processed(&env)
        })
        .await
    );
    assert_eq!(
        subscription(&env, &s.id).await.status,
        SubscriptionStatus::Active as i32
    );
}

#[tokio::test]
async fn the_portal_pauses_and_resumes_collection_through_coffer() {
    let (env, _faults) = spawn().await;
    let id = active_subscription(&env).await;
    let provider_id = subscription(&env, &id).await.provider_subscription_id;
    let url = local(&env, &open_portal(&env).await);
    let page = get(&url).await;
    assert!(page.body.contains("Pause payments"));
    let action = format!("{url}/subscriptions/{provider_id}");
    let audited = || {
        count(
            &env,
            "SELECT count(*) FROM audit_log WHERE action = 'subscription.collection_paused'",
        )
    };
    let paused = post(&action, &[("csrf", &csrf(&page.body)), ("action", "pause")]).await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER, "{}", paused.body);
    assert!(paused.location.unwrap().ends_with("?notice=pause"));
    // The RPC's use case: Coffer's row, audited as the key that opened the session.
    let s = subscription(&env, &id).await;
    assert!(s.collection_paused);
    assert_eq!(s.status, SubscriptionStatus::Active as i32);
    assert_eq!(audited().await, 1);
    let page = get(&format!("{url}?notice=pause")).await;
    assert!(page.body.contains("Collection paused"), "{}", page.body);
    assert!(
        page.body
            .contains("Payments on your subscription are paused.")
    );
    assert!(page.body.contains(&format!("id=\"resume-{provider_id}\"")));
    assert!(!page.body.contains(&format!("id=\"pause-{provider_id}\"")));
    // Pausing again is what the domain allows (already so); resuming clears it.
    let resumed = post(
        &action,
        &[("csrf", &csrf(&page.body)), ("action", "resume")],
    )
    .await;
    assert_eq!(resumed.status, StatusCode::SEE_OTHER);
    assert!(!subscription(&env, &id).await.collection_paused);
    assert!(
        get(&url)
            .await
            .body
            .contains(&format!("id=\"pause-{provider_id}\""))
    );
}

#[tokio::test]
async fn a_browser_cancels_undoes_pauses_resumes_and_changes_the_card_in_the_portal() {
    use fantoccini::{ClientBuilder, Locator};

    use crate::sandbox_page::{artefacts, chromedriver, find_binary};

    let chromium = find_binary(&["chromium", "chromium-browser"]).expect(
        "Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)",
    );
    let (env, _faults) = spawn().await;
    // A plan with a name a person would read, for the screenshot.
    let (_, [_, yearly, _]) = crate::checkout::plan(&env.app, "team").await;
    let id = bought(&env, &yearly, PAYS, SubscriptionStatus::Active).await;
    let provider_id = subscription(&env, &id).await.provider_subscription_id;
    let portal = open_portal(&env).await;
    let url = local(&env, &portal);

    let driver = chromedriver().await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=480,1320"],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    let dir = artefacts();
    let wait = Duration::from_secs(15);
    let result = async {
        browser.goto(&url).await?;
        assert_eq!(browser.title().await?, "Your billing · Coffer sandbox");
        let shown = browser
            .find(Locator::Css(&format!(
                "[data-subscription='{provider_id}']"
            )))
            .await?;
        assert!(shown.text().await?.contains("Active"));

        browser
            .find(Locator::Id(&format!("cancel-{provider_id}")))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Id(&format!("undo-{provider_id}")))
            .await?;
        let canceled = subscription(&env, &id).await.cancel_at_period_end;
        let shot = browser.screenshot().await?;
        std::fs::write(dir.join("portal-canceled.png"), &shot).unwrap();
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/portal.png"),
            &shot,
        )
        .unwrap();

        browser
            .find(Locator::Id(&format!("undo-{provider_id}")))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Id(&format!("cancel-{provider_id}")))
            .await?;
        let undone = !subscription(&env, &id).await.cancel_at_period_end;

        // Pause collection: the page says so and offers to resume; then resume.
        browser
            .find(Locator::Id(&format!("pause-{provider_id}")))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Id(&format!("resume-{provider_id}")))
            .await?;
        let paused_text = browser
            .find(Locator::Css(&format!(
                "[data-subscription='{provider_id}']"
            )))
            .await?
            .text()
            .await?;
        let paused = subscription(&env, &id).await.collection_paused;
        let shot = browser.screenshot().await?;
        std::fs::write(dir.join("portal-paused.png"), &shot).unwrap();
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/portal-paused.png"),
            &shot,
        )
        .unwrap();
        browser
            .find(Locator::Id(&format!("resume-{provider_id}")))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Id(&format!("pause-{provider_id}")))
            .await?;
        let resumed = !subscription(&env, &id).await.collection_paused;

        for (field, text) in [
            ("number", FAILS_LATER),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ] {
            browser
                .find(Locator::Id(field))
                .await?
                .send_keys(text)
                .await?;
        }
        browser
            .find(Locator::Id("save-card"))
            .await?
            .click()
            .await?;
        let notice = browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Css("[role=status]"))
            .await?;
        assert!(notice.text().await?.contains("card was saved"));
        let on_file = browser
            .find(Locator::Id("card-on-file"))
            .await?
            .text()
            .await?;
        std::fs::write(
            dir.join("portal-card-changed.png"),
            browser.screenshot().await?,
        )
        .unwrap();
        Ok::<_, fantoccini::error::CmdError>((
            canceled,
            undone,
            (paused, paused_text, resumed),
            on_file,
        ))
    }
    .await;
    let _ = browser.close().await;
    let (canceled, undone, (paused, paused_text, resumed), on_file) =
        result.expect("the browser used the portal");
    assert!(
        paused,
        "GetSubscription showed collection_paused after the click"
    );
    assert!(
        paused_text.contains("Collection paused"),
        "the page says so: {paused_text}"
    );
    assert!(resumed, "and cleared after resuming");
    assert!(
        canceled,
        "GetSubscription showed cancel_at_period_end after the click"
    );
    assert!(undone, "and cleared after the undo");
    assert!(on_file.contains("0341"), "{on_file}");
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM sandbox_subscriptions WHERE fails_on_renewal"
        )
        .await,
        1
    );
    drop(driver);
}

/// A card saved in the portal by a customer with no subscription yet is their card on file:
/// CreateSubscription charges it (ACTIVE, one succeeded charge), and a 0341 card saved after
/// it is the one the next CreateSubscription tries (declined: INCOMPLETE).
#[tokio::test]
async fn a_card_saved_in_the_portal_is_the_one_create_subscription_charges() {
    use crate::create_subscription::{charges, create, create_with};
    use coffer::grpc::pb::PaymentStatus;

    let env = crate::create_subscription::spawn("").await;
    let (_, [monthly, _, _]) = crate::checkout::plan(&env.app, "pro").await;
    let e = create_with(&env, create(&env.customer, &monthly, Some(0)), "before")
        .await
        .unwrap_err();
    assert_eq!(
        crate::helpers::details(&e).0,
        "PAYMENT_METHOD_REQUIRED",
        "no card yet"
    );
    let url = local(&env, &open_portal(&env).await);
    save_card(&url, PAYS).await;
    let s = create_with(&env, create(&env.customer, &monthly, Some(0)), "after")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, SubscriptionStatus::Active as i32, "{s:?}");
    assert!(
        crate::helpers::eventually(crate::e2e::SETTLE, || async {
            let paid = charges(&env, &s.id).await;
            paid.len() == 1 && paid[0].status == PaymentStatus::Succeeded as i32
        })
        .await,
        "{:?}",
        charges(&env, &s.id).await
    );

    save_card(&url, FAILS_LATER).await;
    let declined = create_with(&env, create(&env.customer, &monthly, Some(0)), "later")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        declined.status,
        SubscriptionStatus::Incomplete as i32,
        "{declined:?}"
    );
}
