//! ProviderEvents over gRPC: IngestEvent stores verified deliveries once and refuses the rest
//! without writing anything; ListEvents and ReplayEvent serve a tenant's operators only.

use std::time::{SystemTime, UNIX_EPOCH};

use coffer::app::App;
use coffer::app::tenants::KeyFor;
use coffer::domain::account::{
    Account, AccountName, HmacEncoding, HmacMessage, HmacScheme, ProviderKind, Secret,
};
use coffer::domain::auth::TenantName;
use coffer::domain::cidr::{Cidr, Cidrs};
use coffer::domain::ids::TenantId;
use coffer::grpc::pb::provider_events_client::ProviderEventsClient;
use coffer::grpc::pb::{
    EventStatus, Header, IngestEventRequest, ListEventsRequest, ReplayEventRequest,
};
use coffer::providers::signature::sign;
use coffer::startup::ServerConfig;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, TestDb, details, http_get, idem, req, test_config};

pub const SANDBOX_SECRET: &str = "whsec_CIDVmpcN1wy5sTTCIMm7V5T3QOHMbcGZgb+aVYruOUo=";
pub const STRIPE_SECRET: &str = "whsec_test_stripe_secret";
pub const HMAC_SECRET: &str = "hmac-shared-secret";

/// A server with three accounts of tenant "shop" (shop-sandbox, shop-stripe, shop-hmac) and
/// one of tenant "other" (other-stripe), a system ingest key and both tenants' admin keys.
pub struct Env {
    pub app: TestApp,
    pub ingest_key: String,
    pub shop_key: String,
    pub other_key: String,
}

pub fn account(name: &str, tenant: TenantId, provider: ProviderKind, secret: &str) -> Account {
    Account {
        name: AccountName::parse(name).unwrap(),
        tenant,
        provider,
        api_key: None,
        webhook_secrets: vec![Secret::new("whsec_retired_secret"), Secret::new(secret)],
        api_base: None,
        livemode: false,
        hmac: (provider == ProviderKind::Hmac).then(|| HmacScheme {
            signature_header: "x-signature".into(),
            timestamp_header: None,
            message: HmacMessage::Body,
            encoding: HmacEncoding::Hex,
            prefix: Some("sha256=".into()),
        }),
        paytabs: None,
        webhook_sources: None,
    }
}

impl Env {
    pub async fn spawn() -> Self {
        Self::spawn_with(|c| c).await
    }

    /// With the config changed by `f`, and the server's pool made by `server_pool` (a proxy,
    /// say).
    pub async fn spawn_with(f: impl FnOnce(ServerConfig) -> ServerConfig) -> Self {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        Self::spawn_on(db, pool.clone(), pool, f).await
    }

    pub async fn spawn_on(
        db: TestDb,
        pool: sqlx::PgPool,
        server_pool: sqlx::PgPool,
        f: impl FnOnce(ServerConfig) -> ServerConfig,
    ) -> Self {
        let admin = App::new(pool.clone());
        let (shop, shop_key) = admin
            .tenants
            .create_tenant(&TenantName::parse("shop").unwrap())
            .await
            .unwrap();
        let (other, other_key) = admin
            .tenants
            .create_tenant(&TenantName::parse("other").unwrap())
            .await
            .unwrap();
        let config = f(ServerConfig {
            http_addr: Some("127.0.0.1:0".parse().unwrap()),
            accounts: vec![
                account("shop-sandbox", shop, ProviderKind::Sandbox, SANDBOX_SECRET),
                account("shop-stripe", shop, ProviderKind::Stripe, STRIPE_SECRET),
                account("shop-hmac", shop, ProviderKind::Hmac, HMAC_SECRET),
                account("other-stripe", other, ProviderKind::Stripe, STRIPE_SECRET),
            ],
            ..test_config()
        });
        let app = TestApp::spawn_on(db, pool, server_pool, config).await;
        let ingest_key = app.key(KeyFor::System, "events:ingest").await;
        Self {
            app,
            ingest_key,
            shop_key: shop_key.expose().to_owned(),
            other_key: other_key.expose().to_owned(),
        }
    }

    pub async fn client(&self) -> ProviderEventsClient<Channel> {
        ProviderEventsClient::new(self.app.channel().await)
    }

    pub async fn rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM webhook_events")
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    /// The value of a `/metrics` sample, 0 when absent.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = http_get(self.app.admin_addr, "/metrics").await;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn stripe_body(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","type":"checkout.session.completed","livemode":false,"data":{{"object":{{"id":"cs_test_1"}}}}}}"#
    )
}

/// A Stripe delivery of event `id` signed at `t` with `secret`.
pub fn stripe(account: &str, id: &str, secret: &str, t: i64) -> IngestEventRequest {
    let body = stripe_body(id);
    IngestEventRequest {
        account: account.into(),
        headers: vec![
            header("content-type", "application/json"),
            header(
                "Stripe-Signature",
                &sign::stripe(secret, t, body.as_bytes()),
            ),
        ],
        body: body.into_bytes(),
        source_address: String::new(),
    }
}

pub fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn reason_metadata(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("reason").cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_valid_event_is_stored_once_and_a_duplicate_says_so() {
    let env = Env::spawn().await;
    let mut c = env.client().await;
    let first = c
        .ingest_event(req(
            stripe("shop-stripe", "evt_1", STRIPE_SECRET, now()),
            &env.ingest_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.event_id.starts_with("event_"), "{}", first.event_id);
    assert!(!first.duplicate);
    // Signed again later (a redelivery), same event id.
    let again = c
        .ingest_event(req(
            stripe("shop-stripe", "evt_1", STRIPE_SECRET, now() - 5),
            &env.ingest_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.event_id, first.event_id);
    assert_eq!(env.rows().await, 1);
    let (account, provider, event_id, event_type, status, payload): (
        String,
        String,
        String,
        String,
        String,
        Vec<u8>,
    ) = sqlx::query_as(
        "SELECT account, provider, provider_event_id, event_type, status, payload
         FROM webhook_events",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            account.as_str(),
            provider.as_str(),
            event_id.as_str(),
            event_type.as_str()
        ),
        (
            "shop-stripe",
            "stripe",
            "evt_1",
            "checkout.session.completed"
        )
    );
    assert_eq!(status, "pending");
    assert_eq!(payload, stripe_body("evt_1").into_bytes(), "the raw bytes");
    assert_eq!(
        env.metric("coffer_webhooks_received_total{provider=\"stripe\",outcome=\"stored\"}")
            .await,
        1.0
    );
    assert_eq!(
        env.metric("coffer_webhooks_received_total{provider=\"stripe\",outcome=\"duplicate\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn sandbox_and_hmac_deliveries_are_stored() {
    let env = Env::spawn().await;
    let mut c = env.client().await;
    let body = br#"{"type":"checkout.completed","data":{}}"#;
    let headers = sign::standard(SANDBOX_SECRET, "msg_abc", now(), body)
        .into_iter()
        .map(|h| Header {
            name: h.name,
            value: h.value,
        })
        .collect();
    c.ingest_event(req(
        IngestEventRequest {
            account: "shop-sandbox".into(),
            headers,
            body: body.to_vec(),
            source_address: String::new(),
        },
        &env.ingest_key,
    ))
    .await
    .unwrap();
    let hmac_body = br#"{"event":"order.created"}"#;
    c.ingest_event(req(
        IngestEventRequest {
            account: "shop-hmac".into(),
            headers: vec![header(
                "X-Signature",
                &format!("sha256={}", sign::body_hex(HMAC_SECRET, hmac_body)),
            )],
            body: hmac_body.to_vec(),
            source_address: String::new(),
        },
        &env.ingest_key,
    ))
    .await
    .unwrap();
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT provider_event_id, event_type FROM webhook_events ORDER BY account DESC",
    )
    .fetch_all(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(ids[0], ("msg_abc".into(), "checkout.completed".into()));
    assert!(ids[1].0.starts_with("sha256:"));
    assert_eq!(ids[1].1, "order.created");
}

#[tokio::test]
async fn forged_stale_unsigned_malformed_and_unparseable_deliveries_change_nothing() {
    let env = Env::spawn().await;
    let mut c = env.client().await;
    let forged = stripe("shop-stripe", "evt_f", "whsec_attacker", now());
    let stale = stripe("shop-stripe", "evt_s", STRIPE_SECRET, now() - 301);
    let mut unsigned = stripe("shop-stripe", "evt_u", STRIPE_SECRET, now());
    unsigned.headers.retain(|h| h.name != "Stripe-Signature");
    let mut malformed = stripe("shop-stripe", "evt_m", STRIPE_SECRET, now());
    malformed.headers[1] = header("Stripe-Signature", "v1=deadbeef");
    let mut tampered = stripe("shop-stripe", "evt_t", STRIPE_SECRET, now());
    tampered.body = stripe_body("evt_T").into_bytes();
    let live = {
        let body = stripe_body("evt_l").replace("\"livemode\":false", "\"livemode\":true");
        IngestEventRequest {
            account: "shop-stripe".into(),
            headers: vec![header(
                "stripe-signature",
                &sign::stripe(STRIPE_SECRET, now(), body.as_bytes()),
            )],
            body: body.into_bytes(),
            source_address: String::new(),
        }
    };
    // Verified, but not an event whose id and type can be read.
    let unparseable = IngestEventRequest {
        account: "shop-stripe".into(),
        headers: vec![header(
            "stripe-signature",
            &sign::stripe(STRIPE_SECRET, now(), b"not json"),
        )],
        body: b"not json".to_vec(),
        source_address: String::new(),
    };
    for (request, code, reason) in [
        (unparseable, Code::InvalidArgument, "unparseable"),
        (forged, Code::InvalidArgument, "mismatch"),
        (stale, Code::InvalidArgument, "stale"),
        (unsigned, Code::Unauthenticated, "missing"),
        (malformed, Code::InvalidArgument, "malformed"),
        (tampered, Code::InvalidArgument, "mismatch"),
        (live, Code::InvalidArgument, "livemode"),
    ] {
        let e = c
            .ingest_event(req(request, &env.ingest_key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{reason}: {e:?}");
        assert_eq!(details(&e).0, "WEBHOOK_SIGNATURE_INVALID", "{reason}");
        assert_eq!(reason_metadata(&e), reason);
        assert_eq!(e.message(), "invalid signature");
    }
    assert_eq!(env.rows().await, 0, "nothing stored");
    for (reason, n) in [
        ("mismatch", 2.0),
        ("stale", 1.0),
        ("missing", 1.0),
        ("malformed", 1.0),
        ("livemode", 1.0),
        ("unparseable", 1.0),
    ] {
        assert_eq!(
            env.metric(&format!(
                "coffer_webhooks_rejected_total{{provider=\"stripe\",reason=\"{reason}\"}}"
            ))
            .await,
            n,
            "{reason}"
        );
    }
}

/// An account with a source list admits a delivery whose `source_address` is in it (an
/// IPv4-mapped form of an allowed IPv4 address too), and refuses, before its signature is
/// looked at, one from elsewhere or with no address at all (an older sidecar): PERMISSION_DENIED
/// with its own reason, nothing stored, counted as `source`. A `source_address` that is no
/// address is the caller's mistake.
#[tokio::test]
async fn a_source_list_is_checked_before_anything_else() {
    let env = Env::spawn_with(|mut c| {
        let shop = c.accounts[0].tenant;
        let ranges = ["3.18.12.63/32", "2600:1f18::/32"]
            .iter()
            .map(|r| Cidr::parse(r).unwrap())
            .collect();
        c.accounts.push(Account {
            webhook_sources: Some(Cidrs::new(ranges).unwrap()),
            ..account("shop-listed", shop, ProviderKind::Stripe, STRIPE_SECRET)
        });
        c
    })
    .await;
    let mut c = env.client().await;
    let from = |source: &str, id: &str, secret: &str| IngestEventRequest {
        source_address: source.into(),
        ..stripe("shop-listed", id, secret, now())
    };
    for (i, source) in ["3.18.12.63", "::ffff:3.18.12.63", "2600:1f18::7"]
        .into_iter()
        .enumerate()
    {
        let stored = c
            .ingest_event(req(
                from(source, &format!("evt_{i}"), STRIPE_SECRET),
                &env.ingest_key,
            ))
            .await;
        assert!(stored.is_ok(), "{source}: {stored:?}");
    }
    for (source, secret) in [
        ("", STRIPE_SECRET),
        ("3.18.12.64", STRIPE_SECRET),
        ("2600:1f19::7", STRIPE_SECRET),
        ("127.0.0.1", STRIPE_SECRET),
        // Forged too: refused for its source, never verified.
        ("10.0.0.1", "whsec_attacker"),
    ] {
        let e = c
            .ingest_event(req(from(source, "evt_x", secret), &env.ingest_key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{source:?}: {e:?}");
        assert_eq!(details(&e).0, "WEBHOOK_SOURCE_NOT_ALLOWED", "{source:?}");
        assert_eq!(e.message(), "source address not allowed");
    }
    assert_eq!(
        env.rows().await,
        3,
        "only the allowed deliveries are stored"
    );
    let rejected = |reason: &str| {
        let series =
            format!("coffer_webhooks_rejected_total{{provider=\"stripe\",reason=\"{reason}\"}}");
        let env = &env;
        async move { env.metric(&series).await }
    };
    assert_eq!(rejected("source").await, 5.0);
    assert_eq!(rejected("mismatch").await, 0.0);

    let e = c
        .ingest_event(req(
            from("3.18.12.63.1", "evt_y", STRIPE_SECRET),
            &env.ingest_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        details(&e),
        ("INVALID_REQUEST".into(), vec!["source_address".into()])
    );

    // An account without a list takes any source, or none.
    for (i, source) in ["", "198.51.100.7"].into_iter().enumerate() {
        let request = IngestEventRequest {
            source_address: source.into(),
            ..stripe("shop-stripe", &format!("evt_any_{i}"), STRIPE_SECRET, now())
        };
        assert!(c.ingest_event(req(request, &env.ingest_key)).await.is_ok());
    }
}

#[tokio::test]
async fn unknown_accounts_are_not_found() {
    let env = Env::spawn().await;
    let mut c = env.client().await;
    for account in ["nope", "", "Not A Name", "shop-stripe/../x"] {
        let e = c
            .ingest_event(req(
                stripe(account, "evt_1", STRIPE_SECRET, now()),
                &env.ingest_key,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{account:?}");
        assert_eq!(details(&e).0, "ACCOUNT_NOT_FOUND");
    }
    assert_eq!(env.rows().await, 0);
}

#[tokio::test]
async fn only_system_ingest_keys_ingest() {
    let env = Env::spawn().await;
    let mut c = env.client().await;
    let delivery = || stripe("shop-stripe", "evt_1", STRIPE_SECRET, now());
    // The tenant's own read,write,admin key.
    let e = c
        .ingest_event(req(delivery(), &env.shop_key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c.ingest_event(delivery()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // And the system key opens nothing else.
    let e = c
        .list_events(req(ListEventsRequest::default(), &env.ingest_key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let read_only = env
        .app
        .key(
            KeyFor::Tenant(TenantName::parse("shop").unwrap()),
            "read,write",
        )
        .await;
    let e = c
        .list_events(req(ListEventsRequest::default(), &read_only))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "admin is needed");
    assert_eq!(env.rows().await, 0);
}

#[tokio::test]
async fn tenants_see_only_their_own_events() {
    let env = Env::spawn().await;
    let mut c = env.client().await;
    for (account, id) in [
        ("shop-stripe", "evt_a"),
        ("shop-stripe", "evt_b"),
        ("other-stripe", "evt_a"),
        ("shop-stripe", "evt_c"),
    ] {
        c.ingest_event(req(
            stripe(account, id, STRIPE_SECRET, now()),
            &env.ingest_key,
        ))
        .await
        .unwrap();
    }
    // Pages of two, oldest first, then the end.
    let first = c
        .list_events(req(
            ListEventsRequest {
                page_size: 2,
                ..Default::default()
            },
            &env.shop_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .list_events(req(
            ListEventsRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
            &env.shop_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = first
        .events
        .iter()
        .chain(&second.events)
        .map(|e| e.provider_event_id.as_str())
        .collect();
    assert_eq!(ids, ["evt_a", "evt_b", "evt_c"]);
    assert!(second.next_page_token.is_empty());
    assert!(
        first
            .events
            .iter()
            .all(|e| e.account == "shop-stripe" && e.status == EventStatus::Pending as i32)
    );
    let other = c
        .list_events(req(ListEventsRequest::default(), &env.other_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.events.len(), 1);
    assert_eq!(other.events[0].account, "other-stripe");
    // Filtering by another tenant's account finds nothing, and a token is bound to filters.
    let filtered = c
        .list_events(req(
            ListEventsRequest {
                account: "other-stripe".into(),
                ..Default::default()
            },
            &env.shop_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.events.is_empty());
    let e = c
        .list_events(req(
            ListEventsRequest {
                page_size: 2,
                page_token: first.next_page_token,
                status: EventStatus::Dead as i32,
                ..Default::default()
            },
            &env.shop_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(details(&e).1, ["page_token"]);
    // Another tenant's event cannot be replayed either: it does not exist for them.
    let theirs = other.events[0].id.clone();
    let e = c
        .replay_event(req(ReplayEventRequest { id: theirs }, &env.shop_key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(details(&e).0, "EVENT_NOT_FOUND");
}

#[tokio::test]
async fn replay_requeues_dead_events_only() {
    let env = Env::spawn().await;
    let mut c = env.client().await;
    let stored = c
        .ingest_event(req(
            stripe("shop-stripe", "evt_dead", STRIPE_SECRET, now()),
            &env.ingest_key,
        ))
        .await
        .unwrap()
        .into_inner();
    // A pending event is refused.
    let e = c
        .replay_event(req(
            ReplayEventRequest {
                id: stored.event_id.clone(),
            },
            &env.shop_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(details(&e).0, "EVENT_NOT_REPLAYABLE");
    // What the workers do after ten failures.
    sqlx::query(
        "UPDATE webhook_events SET status = 'dead', attempts = 10, last_error = 'boom',
                next_attempt_at = now() + interval '1 day'",
    )
    .execute(&env.app.pool)
    .await
    .unwrap();
    let dead = c
        .list_events(req(
            ListEventsRequest {
                status: EventStatus::Dead as i32,
                ..Default::default()
            },
            &env.shop_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.events.len(), 1);
    assert_eq!(dead.events[0].attempts, 10);
    assert_eq!(dead.events[0].last_error, "boom");

    let replayed = c
        .replay_event(idem(
            ReplayEventRequest {
                id: stored.event_id.clone(),
            },
            &env.shop_key,
            "replay-1",
        ))
        .await
        .unwrap();
    assert!(replayed.metadata().get("idempotent-replayed").is_none());
    let replayed = replayed.into_inner();
    assert_eq!(replayed.id, stored.event_id);
    assert_eq!(replayed.status, EventStatus::Pending as i32);
    assert_eq!(replayed.attempts, 0);
    assert_eq!(replayed.last_error, "");
    let due = replayed.next_attempt_time.unwrap().seconds;
    assert!((due - now()).abs() < 60, "due now");
    // The same key answers the same, without a second requeue.
    let again = c
        .replay_event(idem(
            ReplayEventRequest {
                id: stored.event_id.clone(),
            },
            &env.shop_key,
            "replay-1",
        ))
        .await
        .unwrap();
    assert_eq!(again.metadata().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.into_inner(), replayed);
    // Malformed and unknown ids.
    let e = c
        .replay_event(req(
            ReplayEventRequest {
                id: "customer_01h455vb4pex5vsknk084sn02q".into(),
            },
            &env.shop_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .replay_event(req(
            ReplayEventRequest {
                id: "event_01h455vb4pex5vsknk084sn02q".into(),
            },
            &env.shop_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'webhook_event.replayed'",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(audit, 1);
}

#[tokio::test]
async fn concurrent_deliveries_of_one_event_store_one_row() {
    let env = Env::spawn().await;
    let c = env.client().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        let key = env.ingest_key.clone();
        tasks.push(tokio::spawn(async move {
            c.ingest_event(req(
                stripe(
                    "shop-stripe",
                    &format!("evt_{}", i % 4),
                    STRIPE_SECRET,
                    now(),
                ),
                &key,
            ))
            .await
            .unwrap()
            .into_inner()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        if !t.await.unwrap().duplicate {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 4, "one first delivery per event");
    assert_eq!(env.rows().await, 4);
}

/// One batch statement: a fresh event, the same event twice in the batch, and an event stored
/// before; each row gets the stored event's id, and only first rows say they inserted.
#[tokio::test]
async fn a_batch_with_repeats_answers_each_row() {
    use coffer::domain::ids::EventId;
    use coffer::store::events::{NewEvent, Stored, insert_events};

    let db = TestDb::new().await;
    let pool = db.pool().await;
    let tenant = TenantId::generate();
    let row = |event: &str| NewEvent {
        tenant,
        id: EventId::generate(),
        account: AccountName::parse("shop-stripe").unwrap(),
        provider: ProviderKind::Stripe,
        provider_event_id: event.into(),
        event_type: "invoice.paid".into(),
        payload: b"{}".to_vec(),
        received_at: time::OffsetDateTime::now_utc(),
        traceparent: None,
    };
    let mut conn = pool.acquire().await.unwrap();
    let earlier = row("evt_old");
    let earlier_id = earlier.id.as_uuid();
    assert_eq!(
        insert_events(&mut conn, &[earlier]).await.unwrap(),
        [Some(Stored {
            id: earlier_id,
            inserted: true
        })]
    );
    let batch = [
        row("evt_new"),
        row("evt_twice"),
        row("evt_old"),
        row("evt_twice"),
    ];
    let ids: Vec<_> = batch.iter().map(|r| r.id.as_uuid()).collect();
    let got = insert_events(&mut conn, &batch).await.unwrap();
    assert_eq!(
        got,
        [
            Some(Stored {
                id: ids[0],
                inserted: true
            }),
            Some(Stored {
                id: ids[1],
                inserted: true
            }),
            Some(Stored {
                id: earlier_id,
                inserted: false
            }),
            Some(Stored {
                id: ids[1],
                inserted: false
            }),
        ]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);
}

/// The server's clock is injected: with it pinned to the vectors' now, their Stripe case of a
/// delivery signed 30 s earlier is stored, and their stale one refused.
#[tokio::test]
async fn the_clock_is_injected_into_the_server() {
    use coffer::app::events::{Clock, WebhookConfig};
    let Some(vectors) = crate::signatures::shared_vectors() else {
        return;
    };
    let case = |name: &str| {
        vectors["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let valid = case("stripe/valid");
    let now = valid["now"].as_i64().unwrap();
    let secret = valid["secret"].as_str().unwrap().to_owned();
    let env = Env::spawn_with(move |mut c| {
        let mut account = c.accounts[1].clone();
        account.name = AccountName::parse("vectors").unwrap();
        account.webhook_secrets = vec![Secret::new(secret)];
        c.accounts.push(account);
        c.webhooks = WebhookConfig {
            clock: Clock::fixed(time::OffsetDateTime::from_unix_timestamp(now).unwrap()),
            ..WebhookConfig::default()
        };
        c
    })
    .await;
    let mut c = env.client().await;
    let deliver = |case: serde_json::Value| IngestEventRequest {
        account: "vectors".into(),
        headers: case["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| header(k, v.as_str().unwrap()))
            .collect(),
        body: case["payload"].as_str().unwrap().as_bytes().to_vec(),
        source_address: String::new(),
    };
    let stored = c
        .ingest_event(req(deliver(valid), &env.ingest_key))
        .await
        .unwrap()
        .into_inner();
    assert!(!stored.duplicate);
    let e = c
        .ingest_event(req(
            deliver(case("stripe/stale_timestamp")),
            &env.ingest_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_metadata(&e), "stale");
    assert_eq!(env.rows().await, 1);
}
