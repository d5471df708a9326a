//! The webhook sidecar over real HTTP: `POST /webhooks/{account}` in front of the real server
//! (in-process, with its ephemeral key, or standalone with a stored system key), and in front
//! of a recording fake core to see exactly what it forwards.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer::domain::account::{Account, ProviderKind};
use coffer::domain::auth::ApiKey;
use coffer::domain::cidr::{Cidr, Cidrs};
use coffer::domain::ids::TenantId;
use coffer::grpc::pb::provider_events_server::{ProviderEvents, ProviderEventsServer};
use coffer::grpc::pb::{
    IngestEventRequest, IngestEventResponse, ListEventsRequest, ListEventsResponse,
    ReplayEventRequest, WebhookEvent,
};
use coffer::providers::signature::sign;
use coffer::store::pool::{self, PoolConfig};
use coffer::webhooks::{Standalone, StandaloneConfig};
use reqwest::StatusCode;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::binary::{BIN, Receiver, Served, TempDir, db_url, hex};
use crate::events::{Env, STRIPE_SECRET, account, now, stripe_body};
use crate::helpers::{Proxy, TestDb, eventually, http_get};

fn client() -> reqwest::Client {
    coffer::providers::outbound::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn url(addr: SocketAddr, account: &str) -> String {
    format!("http://{addr}/webhooks/{account}")
}

/// POSTs a Stripe delivery of `id` signed with `secret`; (status, Retry-After, body).
pub async fn post_stripe(
    addr: SocketAddr,
    account: &str,
    id: &str,
    secret: &str,
) -> (StatusCode, Option<String>, String) {
    post_stripe_from(addr, account, id, secret, &[]).await
}

/// [`post_stripe`] with an `X-Forwarded-For` header for each of `forwarded_for`.
async fn post_stripe_from(
    addr: SocketAddr,
    account: &str,
    id: &str,
    secret: &str,
    forwarded_for: &[&str],
) -> (StatusCode, Option<String>, String) {
    let body = stripe_body(id);
    let mut request = client().post(url(addr, account));
    for value in forwarded_for {
        request = request.header("x-forwarded-for", *value);
    }
    let response = request
        .header("content-type", "application/json")
        .header(
            "Stripe-Signature",
            sign::stripe(secret, now(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.text().await.unwrap())
}

#[tokio::test]
async fn deliveries_through_the_sidecar_get_the_right_answers() {
    let env = Env::spawn().await;
    let http = env.app.http_addr.expect("the sidecar runs");

    let (status, _, _) = post_stripe(http, "shop-stripe", "evt_1", STRIPE_SECRET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.rows().await, 1, "stored before the 200");
    let (status, _, _) = post_stripe(http, "shop-stripe", "evt_1", STRIPE_SECRET).await;
    assert_eq!(status, StatusCode::OK, "a duplicate is acknowledged");
    assert_eq!(env.rows().await, 1);

    let (status, _, body) = post_stripe(http, "shop-stripe", "evt_2", "whsec_forged").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, "invalid signature");

    let unsigned = client()
        .post(url(http, "shop-stripe"))
        .body(stripe_body("evt_3"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unsigned.text().await.unwrap(), "invalid signature");

    let (status, _, _) = post_stripe(http, "nope", "evt_4", STRIPE_SECRET).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let huge = vec![b'x'; 2 << 20];
    let too_large = client()
        .post(url(http, "shop-stripe"))
        .header(
            "Stripe-Signature",
            sign::stripe(STRIPE_SECRET, now(), &huge),
        )
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Exactly at the limit is read and verified (and refused for its signature, not its size).
    let limit = vec![b' '; 1 << 20];
    let at_limit = client()
        .post(url(http, "shop-stripe"))
        .header("Stripe-Signature", sign::stripe("whsec_x", now(), &limit))
        .body(limit)
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), StatusCode::BAD_REQUEST);

    // Repeated signature headers reach the core as two, which refuses to pick one.
    let body = stripe_body("evt_5");
    let signature = sign::stripe(STRIPE_SECRET, now(), body.as_bytes());
    let repeated = client()
        .post(url(http, "shop-stripe"))
        .header("Stripe-Signature", &signature)
        .header("stripe-signature", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(repeated.status(), StatusCode::BAD_REQUEST);
    assert_eq!(env.rows().await, 1, "only evt_1 was stored");
    env.app.stop().await.unwrap();
}

/// A Stripe account of `tenant` whose deliveries may come only from `ranges`.
fn listed(name: &str, tenant: TenantId, ranges: &[&str]) -> Account {
    let ranges = ranges.iter().map(|r| Cidr::parse(r).unwrap()).collect();
    Account {
        webhook_sources: Some(Cidrs::new(ranges).unwrap()),
        ..account(name, tenant, ProviderKind::Stripe, STRIPE_SECRET)
    }
}

/// An account's source list is checked first: a delivery from loopback to an account that
/// lists 127.0.0.1/32 is stored; one to an account that lists 10.0.0.0/8 is 403, whether its
/// signature is good or forged (so before the signature is looked at), stores nothing and is
/// counted as `source`. From a peer that is no trusted proxy, X-Forwarded-For is not believed.
#[tokio::test]
async fn a_source_list_admits_its_ranges_and_refuses_the_rest_first() {
    let env = Env::spawn_with(|mut c| {
        let shop = c.accounts[0].tenant;
        c.accounts
            .push(listed("shop-near", shop, &["127.0.0.1/32"]));
        c.accounts
            .push(listed("shop-far", shop, &["10.0.0.0/8", "2600:1f18::/32"]));
        c
    })
    .await;
    let http = env.app.http_addr.unwrap();
    let (status, _, body) = post_stripe(http, "shop-near", "evt_1", STRIPE_SECRET).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(env.rows().await, 1);

    for (secret, forwarded_for) in [
        (STRIPE_SECRET, &[][..]),
        ("whsec_forged", &[]),
        // Not from a trusted proxy (there is none): the header is the client's own claim.
        (STRIPE_SECRET, &["10.1.2.3"]),
    ] {
        let (status, retry_after, body) =
            post_stripe_from(http, "shop-far", "evt_2", secret, forwarded_for).await;
        assert_eq!(
            (status, body.as_str(), retry_after),
            (StatusCode::FORBIDDEN, "forbidden", None),
            "{secret} {forwarded_for:?}"
        );
    }
    assert_eq!(env.rows().await, 1, "nothing stored");
    let rejected = |reason: &str| {
        let series =
            format!("coffer_webhooks_rejected_total{{provider=\"stripe\",reason=\"{reason}\"}}");
        let env = &env;
        async move { env.metric(&series).await }
    };
    assert_eq!(rejected("source").await, 3.0);
    assert_eq!(
        rejected("mismatch").await,
        0.0,
        "the forged delivery was refused before its signature was checked"
    );
    assert_eq!(
        env.metric("coffer_webhooks_received_total{provider=\"stripe\",outcome=\"rejected\"}")
            .await,
        3.0
    );
    env.app.stop().await.unwrap();
}

/// With the test's own client (127.0.0.1) declared a trusted proxy, the address it reports in
/// X-Forwarded-For is what the account's list is checked against: the right-most one that is
/// not a trusted proxy, so an entry the client wrote further left, allowed or not, changes
/// nothing.
#[tokio::test]
async fn behind_a_trusted_proxy_the_client_it_reports_is_what_is_checked() {
    let env = Env::spawn_with(|mut c| {
        let shop = c.accounts[0].tenant;
        c.accounts.push(listed(
            "shop-ranges",
            shop,
            &["3.18.12.63/32", "2600:1f18::/32"],
        ));
        c.accounts
            .push(listed("shop-near", shop, &["127.0.0.1/32"]));
        c.webhook_trusted_proxies = vec![Cidr::parse("127.0.0.1/32").unwrap()];
        c
    })
    .await;
    let http = env.app.http_addr.unwrap();
    let (ok, forbidden) = (StatusCode::OK, StatusCode::FORBIDDEN);
    let cases: &[(&str, &[&str], StatusCode)] = &[
        ("shop-ranges", &["3.18.12.63"], ok),
        // A spoofed allowed address on the left is ignored: the proxy's entry is the client.
        ("shop-ranges", &["3.18.12.63, 198.51.100.7"], forbidden),
        // And so is a spoofed disallowed one.
        ("shop-ranges", &["198.51.100.7, 3.18.12.63"], ok),
        ("shop-ranges", &["198.51.100.7", "3.18.12.63"], ok),
        ("shop-ranges", &["2600:1f18::1"], ok),
        ("shop-ranges", &["[2600:1f18::2]:443"], ok),
        ("shop-ranges", &["2600:1f19::1"], forbidden),
        // The proxy reported no client, or only itself: unknown, and refused.
        ("shop-ranges", &[], forbidden),
        ("shop-ranges", &["127.0.0.1"], forbidden),
        ("shop-ranges", &["unknown"], forbidden),
        // The proxy's own address is not the client's.
        ("shop-near", &["198.51.100.7"], forbidden),
        // An account without a list takes a delivery from anywhere.
        ("shop-stripe", &["198.51.100.7"], ok),
    ];
    for (i, (account, forwarded_for, expected)) in cases.iter().enumerate() {
        let (status, _, _) = post_stripe_from(
            http,
            account,
            &format!("evt_{i}"),
            STRIPE_SECRET,
            forwarded_for,
        )
        .await;
        assert_eq!(status, *expected, "{account} {forwarded_for:?}");
    }
    let stored = cases.iter().filter(|c| c.2 == ok).count();
    assert_eq!(env.rows().await, stored as i64);
    assert_eq!(
        env.metric("coffer_webhooks_rejected_total{provider=\"stripe\",reason=\"source\"}")
            .await,
        (cases.len() - stored) as f64
    );
    env.app.stop().await.unwrap();
}

#[tokio::test]
async fn the_sidecar_answers_503_while_the_database_is_down() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let proxy = Proxy::to_db(&db.options).await;
    let through_proxy = pool::pool(
        &proxy.options(&db.options),
        &PoolConfig {
            acquire_timeout: Duration::from_millis(500),
            ..PoolConfig::default()
        },
    );
    let env = Env::spawn_on(db, pool, through_proxy, |c| c).await;
    let http = env.app.http_addr.unwrap();
    let (status, _, _) = post_stripe(http, "shop-stripe", "evt_1", STRIPE_SECRET).await;
    assert_eq!(status, StatusCode::OK);

    proxy.cut().await;
    let (status, retry_after, _) = post_stripe(http, "shop-stripe", "evt_2", STRIPE_SECRET).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // The provider's retry, once the database is back, is stored.
    proxy.restore();
    assert!(
        eventually(Duration::from_secs(10), || async {
            post_stripe(http, "shop-stripe", "evt_2", STRIPE_SECRET)
                .await
                .0
                == StatusCode::OK
        })
        .await
    );
    assert_eq!(env.rows().await, 2);
}

#[tokio::test]
async fn a_standalone_sidecar_works_the_same_and_is_ready_with_its_upstream() {
    let env = Env::spawn().await;
    let config = StandaloneConfig {
        grpc_endpoint: format!("http://{}", env.app.addr),
        upstream_tls: Default::default(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        drain_timeout: Duration::from_secs(5),
        trusted_proxies: Vec::new(),
        limits: Default::default(),
    };
    let key = ApiKey::parse(&env.ingest_key).unwrap();
    let sidecar = Standalone::bind(config, &key).await.unwrap();
    let (http, admin) = (sidecar.http_addr(), sidecar.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(sidecar.run(async move {
        let _ = stopped.await;
    }));

    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let (status, _, _) = post_stripe(http, "shop-stripe", "evt_1", STRIPE_SECRET).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = post_stripe(http, "shop-stripe", "evt_2", "whsec_forged").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "invalid signature")
    );
    assert_eq!(env.rows().await, 1);

    // What it refuses alone it counts on its own /metrics, as the core counts the rest.
    let huge = vec![b'x'; (1 << 20) + 1];
    let too_large = client()
        .post(url(http, "shop-stripe"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &metrics,
            "coffer_webhooks_rejected_total{provider=\"unknown\",reason=\"too_large\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        env.metric("coffer_webhooks_rejected_total{provider=\"stripe\",reason=\"mismatch\"}")
            .await,
        1.0
    );

    // With the core gone, deliveries are 503 and the sidecar is not ready.
    env.app.stop().await.unwrap();
    let (status, retry_after, _) = post_stripe(http, "shop-stripe", "evt_3", STRIPE_SECRET).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after.is_some());
    assert_eq!(http_get(admin, "/readyz").await.0, 503);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the sidecar drains and stops")
        .unwrap();
}

/// The sidecar reads the core's ErrorInfo reasons from the gRPC contract (`grpc::status`), and
/// counts the refusals it decides alone under the core's label values, which it holds itself.
#[test]
fn the_sidecar_speaks_the_cores_reasons() {
    use coffer::app::events;
    use coffer::webhooks as sidecar;
    assert_eq!(
        sidecar::REASON_UNKNOWN_ACCOUNT,
        events::REASON_UNKNOWN_ACCOUNT
    );
    assert_eq!(sidecar::UNKNOWN_PROVIDER, events::UNKNOWN_PROVIDER);
}

/// The value of a sample in a `/metrics` text, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The refusals that reached no metric before: a body over the limit (the sidecar's 413), a
/// name no account has (the core's 404) and a path that is no name at all (the sidecar's), a
/// verified payload whose event cannot be read (the core's 400). Through the real binary:
/// each is answered as before, logged with its reason and counted under it, once.
#[tokio::test]
async fn refusals_are_answered_as_before_logged_and_counted_with_their_reason() {
    let db = TestDb::new().await;
    crate::binary::acme(&db).await;
    let state = TempDir::new();
    let config = state.0.join("coffer.toml");
    std::fs::write(
        &config,
        r#"
[[account]]
name = "acme-stripe"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_TEST_STRIPE_KEY"
webhook_secret_env = "COFFER_TEST_STRIPE_WHSEC"
"#,
    )
    .unwrap();
    let served = Served::start(
        &db,
        &state.0,
        &["--config", config.to_str().unwrap()],
        &[
            ("COFFER_TEST_STRIPE_KEY", "sk_test_x".into()),
            ("COFFER_TEST_STRIPE_WHSEC", STRIPE_SECRET.into()),
        ],
    )
    .await;
    let http: SocketAddr = served.http.parse().unwrap();
    let answer = |response: reqwest::Response| async move {
        (response.status(), response.text().await.unwrap())
    };

    let huge = vec![b'x'; (1 << 20) + 1];
    let too_large = client()
        .post(url(http, "acme-stripe"))
        .header(
            "Stripe-Signature",
            sign::stripe(STRIPE_SECRET, now(), &huge),
        )
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(too_large).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "payload too large".into())
    );

    let (status, _, body) = post_stripe(http, "nope", "evt_1", STRIPE_SECRET).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "unknown account")
    );
    // Not UTF-8 once decoded: no name at all, refused by the sidecar itself.
    let no_name = client()
        .post(format!("http://{http}/webhooks/%FF"))
        .body(stripe_body("evt_2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(no_name).await,
        (StatusCode::NOT_FOUND, "unknown account".into())
    );

    // Correctly signed, but no event in it.
    let unparseable = client()
        .post(url(http, "acme-stripe"))
        .header(
            "Stripe-Signature",
            sign::stripe(STRIPE_SECRET, now(), b"not json"),
        )
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(unparseable).await,
        (StatusCode::BAD_REQUEST, "invalid signature".into())
    );

    let admin: SocketAddr = served.admin.parse().unwrap();
    let (_, metrics) = http_get(admin, "/metrics").await;
    for (series, n) in [
        ("{provider=\"unknown\",reason=\"too_large\"}", 1.0),
        ("{provider=\"unknown\",reason=\"unknown_account\"}", 2.0),
        ("{provider=\"stripe\",reason=\"unparseable\"}", 1.0),
        ("{provider=\"stripe\",reason=\"malformed\"}", 0.0),
        ("{provider=\"stripe\",reason=\"mismatch\"}", 0.0),
    ] {
        let series = format!("coffer_webhooks_rejected_total{series}");
        assert_eq!(sample(&metrics, &series), n, "{series}\n{metrics}");
    }
    assert_eq!(
        metrics
            .matches("# TYPE coffer_webhooks_rejected counter")
            .count(),
        1,
        "one family for the core's and the sidecar's refusals"
    );
    // The log writer is asynchronous: the lines come shortly.
    let logged = |reason: &'static str, times: usize| {
        let served = &served;
        async move {
            served
                .logs()
                .lines()
                .filter(|l| l.contains("webhook delivery rejected") && l.contains(reason))
                .count()
                == times
        }
    };
    for (reason, times) in [("too_large", 1), ("unknown_account", 2), ("unparseable", 1)] {
        assert!(
            eventually(Duration::from_secs(5), || logged(reason, times)).await,
            "{reason} logged {times} times:\n{}",
            served.logs()
        );
    }
    assert!(
        !served.logs().contains("%FF") && !served.logs().contains("not json"),
        "neither the path's junk nor the body is logged"
    );
    served.sigterm();
    assert_eq!(served.wait().await.0, Some(0));
}

/// Through the real binary, its trusted proxy given by flag: a delivery whose reported client
/// is outside the account's list, or whose proxy reported none, is 403, logged with reason
/// `source` and the address, and counted.
#[tokio::test]
async fn a_refused_source_is_logged_and_counted_by_the_real_binary() {
    let db = TestDb::new().await;
    crate::binary::acme(&db).await;
    let state = TempDir::new();
    let config = state.0.join("coffer.toml");
    std::fs::write(
        &config,
        r#"
[[account]]
name = "acme-stripe"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_TEST_STRIPE_KEY"
webhook_secret_env = "COFFER_TEST_STRIPE_WHSEC"
webhook_source_cidrs = ["3.18.12.63/32", "2600:1f18::/32"]
"#,
    )
    .unwrap();
    let served = Served::start(
        &db,
        &state.0,
        &[
            "--config",
            config.to_str().unwrap(),
            "--webhook-trusted-proxies",
            "127.0.0.1",
        ],
        &[
            ("COFFER_TEST_STRIPE_KEY", "sk_test_x".into()),
            ("COFFER_TEST_STRIPE_WHSEC", STRIPE_SECRET.into()),
        ],
    )
    .await;
    let http: SocketAddr = served.http.parse().unwrap();
    for (id, forwarded_for, expected) in [
        ("evt_1", &["198.51.100.7, 3.18.12.63"][..], StatusCode::OK),
        (
            "evt_2",
            &["3.18.12.63, 198.51.100.7"],
            StatusCode::FORBIDDEN,
        ),
        ("evt_3", &[], StatusCode::FORBIDDEN),
    ] {
        let (status, _, body) =
            post_stripe_from(http, "acme-stripe", id, STRIPE_SECRET, forwarded_for).await;
        assert_eq!(
            status,
            expected,
            "{forwarded_for:?}: {body}\n{}",
            served.logs()
        );
    }
    let admin: SocketAddr = served.admin.parse().unwrap();
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "coffer_webhooks_rejected_total{provider=\"stripe\",reason=\"source\"}"
        ),
        2.0,
        "{metrics}"
    );
    let logged = |source: &'static str| {
        let served = &served;
        async move {
            served.logs().lines().any(|l| {
                l.contains("webhook delivery rejected")
                    && l.contains("\"reason\":\"source\"")
                    && l.contains(&format!("\"source\":\"{source}\""))
                    && l.contains("acme-stripe")
            })
        }
    };
    for source in ["198.51.100.7", "unknown"] {
        assert!(
            eventually(Duration::from_secs(5), || logged(source)).await,
            "{source} logged:\n{}",
            served.logs()
        );
    }
    served.sigterm();
    assert_eq!(served.wait().await.0, Some(0));
}

/// A stand-in core that records what it is sent and answers as told.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(tonic::metadata::MetadataMap, IngestEventRequest)>>>,
    answer: Arc<Mutex<Option<Status>>>,
}

#[tonic::async_trait]
impl ProviderEvents for Recorder {
    async fn ingest_event(
        &self,
        request: Request<IngestEventRequest>,
    ) -> Result<Response<IngestEventResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.seen.lock().unwrap().push((metadata, message));
        match self.answer.lock().unwrap().clone() {
            Some(status) => Err(status),
            None => Ok(Response::new(IngestEventResponse {
                event_id: "event_01h455vb4pex5vsknk084sn02q".into(),
                duplicate: false,
            })),
        }
    }

    async fn list_events(
        &self,
        _: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn replay_event(
        &self,
        _: Request<ReplayEventRequest>,
    ) -> Result<Response<WebhookEvent>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

#[tokio::test]
async fn the_sidecar_forwards_raw_bytes_every_header_in_order_and_the_trace() {
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let core = listener.local_addr().unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProviderEventsServer::new(recorder.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let key = ApiKey::generate(coffer::domain::ids::KeyId::generate());
    let sidecar = Standalone::bind(
        StandaloneConfig {
            grpc_endpoint: format!("http://{core}"),
            upstream_tls: Default::default(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            drain_timeout: Duration::from_secs(1),
            trusted_proxies: Vec::new(),
            limits: Default::default(),
        },
        &key,
    )
    .await
    .unwrap();
    let http = sidecar.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(sidecar.run(async move {
        let _ = stopped.await;
    }));

    let body: Vec<u8> = vec![0, 159, 146, 150, b'{', b'\n'];
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = client()
        .post(url(http, "shop-stripe"))
        .header("x-repeat", "one")
        .header("webhook-id", "msg_1")
        .header("traceparent", traceparent)
        .header("x-repeat", "two")
        .header(
            "x-binary",
            reqwest::header::HeaderValue::from_bytes(&[0xe9, b'a']).unwrap(),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    {
        let seen = recorder.seen.lock().unwrap();
        let (metadata, message) = &seen[0];
        assert_eq!(message.account, "shop-stripe");
        assert_eq!(message.source_address, "127.0.0.1", "the TCP peer");
        assert_eq!(message.body, body, "raw bytes, untouched");
        let values = |name: &str| -> Vec<Vec<u8>> {
            message
                .headers
                .iter()
                .filter(|h| h.name == name)
                .map(|h| h.value.clone())
                .collect()
        };
        assert_eq!(values("x-repeat"), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(values("x-binary"), [vec![0xe9, b'a']]);
        assert_eq!(values("webhook-id"), [b"msg_1".to_vec()]);
        assert_eq!(
            metadata.get("authorization").unwrap().to_str().unwrap(),
            format!("Bearer {}", key.expose())
        );
        assert_eq!(
            metadata.get("traceparent").unwrap().to_str().unwrap(),
            traceparent,
            "the trace continues into the core"
        );
        assert!(metadata.get("grpc-timeout").is_some(), "a deadline is sent");
    }

    // What the core answers becomes the provider's answer.
    use tonic_types::{ErrorDetails, StatusExt};
    let mut with_retry = ErrorDetails::new();
    with_retry.set_retry_info(Some(Duration::from_millis(2500)));
    let mut source_refused = ErrorDetails::new();
    source_refused.set_error_info(
        coffer::grpc::status::REASON_WEBHOOK_SOURCE_NOT_ALLOWED,
        "coffer",
        std::collections::HashMap::new(),
    );
    for (answer, expected, retry_after) in [
        (
            Status::with_error_details(
                tonic::Code::PermissionDenied,
                "source address not allowed",
                source_refused,
            ),
            StatusCode::FORBIDDEN,
            None,
        ),
        // PERMISSION_DENIED for any other reason is the sidecar's own key refused.
        (
            Status::permission_denied("scope missing"),
            StatusCode::SERVICE_UNAVAILABLE,
            Some("5"),
        ),
        (
            Status::with_error_details(tonic::Code::Unavailable, "down", with_retry),
            StatusCode::SERVICE_UNAVAILABLE,
            Some("3"),
        ),
        (
            Status::deadline_exceeded("slow"),
            StatusCode::SERVICE_UNAVAILABLE,
            Some("5"),
        ),
        (
            Status::unauthenticated("bad key"),
            StatusCode::SERVICE_UNAVAILABLE,
            Some("5"),
        ),
        (
            Status::internal("bug"),
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
        ),
    ] {
        *recorder.answer.lock().unwrap() = Some(answer);
        let response = client()
            .post(url(http, "shop-stripe"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            retry_after
        );
    }

    let _ = stop.send(());
    running.await.unwrap();
    serving.abort();
}

/// A standalone sidecar forwards the address it believes: its TCP peer, or behind a trusted
/// proxy (here the test's own client) the right-most X-Forwarded-For entry that is not one;
/// none when the proxy reported no usable client.
#[tokio::test]
async fn a_standalone_sidecar_forwards_the_source_it_believes() {
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let core = listener.local_addr().unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProviderEventsServer::new(recorder.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let key = ApiKey::generate(coffer::domain::ids::KeyId::generate());
    let mut running = Vec::new();
    let mut sidecars = Vec::new();
    for trusted in [vec![], vec![Cidr::parse("127.0.0.0/8").unwrap()]] {
        let sidecar = Standalone::bind(
            StandaloneConfig {
                grpc_endpoint: format!("http://{core}"),
                upstream_tls: Default::default(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
                drain_timeout: Duration::from_secs(1),
                trusted_proxies: trusted,
                limits: Default::default(),
            },
            &key,
        )
        .await
        .unwrap();
        sidecars.push(sidecar.http_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        running.push((
            stop,
            tokio::spawn(sidecar.run(async move {
                let _ = stopped.await;
            })),
        ));
    }
    let [direct, proxied] = sidecars[..] else {
        unreachable!()
    };
    let forwarded = |addr: SocketAddr, values: &'static [&'static str]| {
        let recorder = recorder.clone();
        async move {
            let mut request = client().post(url(addr, "shop-stripe")).body("{}");
            for v in values {
                request = request.header("x-forwarded-for", *v);
            }
            assert_eq!(request.send().await.unwrap().status(), StatusCode::OK);
            let seen = recorder.seen.lock().unwrap();
            seen.last().unwrap().1.source_address.clone()
        }
    };
    assert_eq!(forwarded(direct, &["3.18.12.63"]).await, "127.0.0.1");
    assert_eq!(forwarded(proxied, &["3.18.12.63"]).await, "3.18.12.63");
    assert_eq!(
        forwarded(proxied, &["3.18.12.63, 198.51.100.7, 127.0.0.9"]).await,
        "198.51.100.7"
    );
    assert_eq!(
        forwarded(proxied, &["2600:1f18::1", "127.0.0.2"]).await,
        "2600:1f18::1"
    );
    assert_eq!(forwarded(proxied, &[]).await, "", "no client reported");
    assert_eq!(forwarded(proxied, &["127.0.0.3"]).await, "");

    for (stop, task) in running {
        let _ = stop.send(());
        task.await.unwrap();
    }
    serving.abort();
}

/// The real binaries: `serve`'s own sidecar, and `coffer webhooks` in front of it with a
/// stored system key, ready while its upstream serves, draining on SIGTERM.
#[tokio::test]
async fn the_real_binaries_answer_webhooks() {
    let db = TestDb::new().await;
    let state = TempDir::new();
    let served = Served::start(&db, &state.0, &[], &[]).await;
    // No coffer.toml yet, so no account exists: the path through the core is a 404.
    let (status, _, _) = post_stripe(served.http.parse().unwrap(), "nope", "evt_1", "x").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", served.logs());

    let key = std::process::Command::new(BIN)
        .args(["key", "create", "--system", "--scopes", "events:ingest"])
        .env("DATABASE_URL", db_url(&db))
        .env("COFFER_STATE_DIR", &state.0)
        .output()
        .unwrap();
    assert!(key.status.success());
    let key = String::from_utf8(key.stdout).unwrap().trim().to_owned();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (http, admin) = (free(), free());
    let sidecar = |key: &str| {
        std::process::Command::new(BIN)
            .args(["webhooks", "--grpc-endpoint", &served.grpc])
            .env("COFFER_SYSTEM_KEY", key)
            .env("COFFER_WEBHOOK_TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8")
            .env("COFFER_HTTP_ADDR", http.to_string())
            .env("COFFER_ADMIN_ADDR", admin.to_string())
            .env_remove("DATABASE_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let bad = sidecar("not-a-key").wait().unwrap();
    assert!(!bad.success(), "a malformed key stops the start");

    let mut child = sidecar(&key);
    let ready = eventually(Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(admin).await.is_ok()
            && http_get(admin, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "the standalone sidecar became ready");
    let (status, _, _) = post_stripe(http, "nope", "evt_1", "x").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "its key was accepted");

    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let exited = eventually(Duration::from_secs(15), || {
        let done = child.try_wait().unwrap();
        async move { done.is_some() }
    })
    .await;
    assert!(exited, "the sidecar stops on SIGTERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    served.sigterm();
    assert_eq!(served.wait().await.0, Some(0));
}

/// The provider's trace continues through the sidecar's span into IngestEvent's, over the
/// real binary's OTLP export; the inbox worker that applies the event, later and in a trace of
/// its own, links its processing span to the IngestEvent span that stored it.
#[tokio::test]
async fn a_delivery_is_one_trace_from_the_sidecar_to_ingest_event_and_its_processing_links_to_it() {
    let (receiver, mut otlp_env) = Receiver::start().await;
    let db = TestDb::new().await;
    let (pool, _, _) = crate::binary::acme(&db).await;
    let state = TempDir::new();
    let config = state.0.join("coffer.toml");
    std::fs::write(
        &config,
        r#"
[[account]]
name = "acme-stripe"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_TEST_STRIPE_KEY"
webhook_secret_env = "COFFER_TEST_STRIPE_WHSEC"
"#,
    )
    .unwrap();
    otlp_env.push(("COFFER_TEST_STRIPE_KEY", "sk_test_x".into()));
    otlp_env.push(("COFFER_TEST_STRIPE_WHSEC", STRIPE_SECRET.into()));
    let served = Served::start(
        &db,
        &state.0,
        &["--config", config.to_str().unwrap(), "--inbox-poll", "50ms"],
        &otlp_env,
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let provider_span = "00f067aa0ba902b7";
    let body = stripe_body("evt_traced");
    let response = client()
        .post(url(served.http.parse().unwrap(), "acme-stripe"))
        .header("traceparent", format!("00-{trace_id}-{provider_span}-01"))
        .header(
            "Stripe-Signature",
            sign::stripe(STRIPE_SECRET, now(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", served.logs());
    // A worker takes it (no handler is registered for Stripe events: it is ignored, through
    // the same processing span).
    let settled = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM webhook_events")
            .fetch_one(&pool)
            .await
            .unwrap()
            != "pending"
    })
    .await;
    assert!(settled, "{}", served.logs());
    served.sigterm();
    let (code, logs) = served.wait().await;
    assert_eq!(code, Some(0), "{logs}");

    let spans = receiver.spans();
    let names = || spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name:?} span among {:?}", names()))
    };
    let sidecar = find("POST /webhooks/{account}");
    assert_eq!(hex(&sidecar.trace_id), trace_id, "the provider's trace");
    assert_eq!(hex(&sidecar.parent_span_id), provider_span);
    assert_eq!(sidecar.kind, 2, "SPAN_KIND_SERVER");
    let ingest = find("coffer.v1.ProviderEvents/IngestEvent");
    assert_eq!(hex(&ingest.trace_id), trace_id);
    assert_eq!(
        ingest.parent_span_id, sidecar.span_id,
        "IngestEvent is the sidecar span's child"
    );
    // The use case inside IngestEvent, which stored the row.
    let stored_by = find("ingest_event");
    assert_eq!(hex(&stored_by.trace_id), trace_id);
    assert_eq!(stored_by.parent_span_id, ingest.span_id);

    let processing = find("inbox event");
    assert_eq!(processing.kind, 5, "SPAN_KIND_CONSUMER");
    assert_ne!(
        hex(&processing.trace_id),
        trace_id,
        "processing is its own trace, not a late child of the delivery"
    );
    assert_eq!(processing.links.len(), 1, "{:?}", processing.links);
    let link = &processing.links[0];
    assert_eq!(
        hex(&link.trace_id),
        trace_id,
        "linked to the delivery's trace"
    );
    assert_eq!(
        link.span_id, stored_by.span_id,
        "linked to the span that stored the event"
    );
    let stored: Option<String> = sqlx::query_scalar("SELECT traceparent FROM webhook_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(format!("00-{trace_id}-{}-01", hex(&stored_by.span_id)).as_str())
    );
}

/// 200 concurrent deliveries of 50 events, each sent 4 times: every one acknowledged, 50 rows,
/// and 50 first deliveries in the counters.
#[tokio::test]
async fn concurrent_redeliveries_leave_one_row_per_event_and_one_effect() {
    // Inbox workers running, with a handler whose every application leaves a row.
    let handlers = coffer::app::inbox::Handlers::builtin().with(
        coffer::domain::account::ProviderKind::Stripe,
        "checkout.session.completed",
        crate::inbox::Recorder,
    );
    let env = Env::spawn_with(|c| coffer::startup::ServerConfig {
        inbox: crate::inbox::inbox(handlers),
        ..c
    })
    .await;
    let http = env.app.http_addr.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            post_stripe(
                http,
                "shop-stripe",
                &format!("evt_{}", i % 50),
                STRIPE_SECRET,
            )
            .await
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(env.rows().await, 50);
    assert_eq!(
        env.metric("coffer_webhooks_received_total{provider=\"stripe\",outcome=\"stored\"}")
            .await,
        50.0
    );
    assert_eq!(
        env.metric("coffer_webhooks_received_total{provider=\"stripe\",outcome=\"duplicate\"}")
            .await,
        150.0
    );
    // 50 events, 50 effects: each applied once, however often it was delivered.
    let processed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM webhook_events WHERE status = 'processed'",
        )
        .fetch_one(&env.app.pool)
        .await
        .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            processed().await == 50
        })
        .await,
        "{} processed",
        processed().await
    );
    assert_eq!(crate::inbox::effects(&env).await, 50);
}

/// A delivery in flight when the server is told to stop still gets its answer, committed,
/// before the server returns; after that nothing listens.
#[tokio::test]
async fn a_delivery_in_flight_at_shutdown_is_answered_before_the_drain_ends() {
    let env = Env::spawn().await;
    let http = env.app.http_addr.unwrap();
    let pool = env.app.pool.clone();
    // Another session holds the event's key uncommitted, so the delivery's insert waits.
    let mut held = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO webhook_events (tenant_id, id, account, provider, provider_event_id,
                                     event_type, next_attempt_at, payload, received_at)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'shop-stripe', 'stripe', 'evt_held',
                 'x', now(), '', now())",
    )
    .execute(&mut *held)
    .await
    .unwrap();
    let delivery = tokio::spawn(async move {
        post_stripe(http, "shop-stripe", "evt_held", STRIPE_SECRET)
            .await
            .0
    });
    assert!(crate::helpers::one_session_waits_on_a_lock(&pool).await);

    let stopping = tokio::spawn(env.app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivery.is_finished(), "still waiting on the held key");
    held.commit().await.unwrap();
    assert_eq!(
        delivery.await.unwrap(),
        StatusCode::OK,
        "answered: a duplicate"
    );
    stopping.await.unwrap().unwrap();
    assert!(
        client()
            .post(url(http, "shop-stripe"))
            .send()
            .await
            .is_err(),
        "nothing listens after the drain"
    );
}
