//! The outbound stack against a fake provider: an axum server on 127.0.0.1:0 that counts the
//! requests it gets and answers from a script.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::IntoResponse;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, StatusCode};
use prometheus_client::registry::Registry;

use super::*;

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        delay: Duration::ZERO,
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    script: Mutex<VecDeque<Reply>>,
    /// The answer once the script is used up.
    fallback: Mutex<Option<Reply>>,
    received: Mutex<Vec<Received>>,
}

/// What the fake kept of one request.
struct Received {
    idempotency_key: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

struct Fake {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Fake {
    async fn spawn(script: impl IntoIterator<Item = Reply>) -> Self {
        let seen = Arc::new(Seen::default());
        seen.script.lock().unwrap().extend(script);
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    fn answer_from_now_on(&self, reply: Reply) {
        *self.seen.fallback.lock().unwrap() = Some(reply);
    }

    fn keys(&self) -> Vec<Option<String>> {
        let received = self.seen.received.lock().unwrap();
        received.iter().map(|r| r.idempotency_key.clone()).collect()
    }
}

async fn answer(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    seen.received.lock().unwrap().push(Received {
        idempotency_key: text("idempotency-key"),
        content_type: text("content-type"),
        body: body.to_vec(),
    });
    let next = seen.script.lock().unwrap().pop_front();
    let next = next
        .or_else(|| seen.fallback.lock().unwrap().clone())
        .unwrap_or_else(|| reply(200));
    tokio::time::sleep(next.delay).await;
    let mut response = (
        StatusCode::from_u16(next.status).unwrap(),
        r#"{"id":"obj_1"}"#,
    )
        .into_response();
    for (name, value) in next.headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

fn config() -> OutboundConfig {
    OutboundConfig {
        connect_timeout: Duration::from_millis(200),
        attempt_timeout: Duration::from_millis(300),
        deadline: Duration::from_secs(2),
        max_attempts: 4,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        breaker: BreakerConfig {
            window: Duration::from_secs(10),
            failure_rate: 0.5,
            // Out of reach, but in the breaker's own test.
            minimum_calls: 1_000,
            cool_down: Duration::from_millis(300),
            half_open_calls: 1,
        },
        max_concurrent: 8,
        bulkhead_wait: Duration::from_millis(20),
        max_response_bytes: 1 << 20,
    }
}

fn outbound(config: OutboundConfig, provider: ProviderKind, account: &str) -> Outbound {
    outbound_with(config, provider, account, OutboundMetrics::default())
}

fn outbound_with(
    config: OutboundConfig,
    provider: ProviderKind,
    account: &str,
    metrics: OutboundMetrics,
) -> Outbound {
    Outbound::new(
        config,
        provider,
        &AccountName::parse(account).unwrap(),
        metrics,
    )
    .unwrap()
}

fn post(url: String, key: Option<&str>) -> OutboundRequest {
    OutboundRequest {
        operation: "create_customer",
        method: Method::POST,
        url,
        headers: vec![(AUTHORIZATION, "Bearer sk_test_secret".into())],
        body: Some(OutboundBody::Form("email=a%40example.com".into())),
        idempotency_key: key.map(str::to_owned),
    }
}

fn get(url: String) -> OutboundRequest {
    OutboundRequest {
        operation: "fetch_object",
        method: Method::GET,
        url,
        headers: vec![(AUTHORIZATION, "Bearer sk_test_secret".into())],
        body: None,
        idempotency_key: None,
    }
}

fn render(metrics: &OutboundMetrics) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

#[tokio::test]
async fn a_retry_after_in_seconds_is_waited_before_the_retry() {
    let fake = Fake::spawn([reply(429).header("retry-after", "1"), reply(200)]).await;
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let started = Instant::now();
    let response = out.send(post(fake.url("/v1/customers"), Some("k1"))).await;
    let took = started.elapsed();
    assert_eq!(response.unwrap().status, StatusCode::OK);
    assert_eq!(fake.requests(), 2);
    assert!(took >= Duration::from_secs(1), "retried after {took:?}");
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_ends_the_call_at_once_with_it() {
    let fake = Fake::spawn([reply(429).header("retry-after", "30")]).await;
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let started = Instant::now();
    let e = out
        .send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(fake.requests(), 1);
    let ProviderError::Retryable {
        retry_after,
        message,
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(retry_after, Some(Duration::from_secs(30)));
    assert!(message.contains("429"), "{message}");
}

#[tokio::test]
async fn a_server_error_then_success_is_one_successful_call_of_two_requests() {
    let fake = Fake::spawn([reply(500), reply(200).header("request-id", "req_123")]).await;
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let response = out
        .send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.request_id.as_deref(), Some("req_123"));
    assert_eq!(&response.body[..], br#"{"id":"obj_1"}"#);
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn stripes_idempotency_conflict_is_retried_and_other_providers_conflicts_are_answers() {
    let fake = Fake::spawn([
        reply(409).header("stripe-should-retry", "true"),
        reply(200),
        reply(409),
        reply(409).header("stripe-should-retry", "false"),
    ])
    .await;
    let stripe = outbound(config(), ProviderKind::Stripe, "acct");
    let response = stripe
        .send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(fake.requests(), 2);

    let polar = outbound(config(), ProviderKind::Polar, "polar");
    let response = polar
        .send(post(fake.url("/v1/customers"), Some("k2")))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(fake.requests(), 3);

    // A Stripe conflict marked not to be retried is an answer like any other 4xx.
    let response = stripe
        .send(post(fake.url("/v1/customers"), Some("k3")))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(fake.requests(), 4);
}

#[tokio::test]
async fn a_client_error_is_the_answer_and_is_not_retried() {
    let fake = Fake::spawn([reply(400)]).await;
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let response = out
        .send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn stripe_should_retry_false_stops_a_server_error_from_being_retried() {
    let fake = Fake::spawn([reply(500).header("stripe-should-retry", "false")]).await;
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let e = out
        .send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap_err();
    assert_eq!(fake.requests(), 1);
    assert!(matches!(e, ProviderError::Unknown { .. }), "{e:?}");
}

#[tokio::test]
async fn server_errors_until_the_attempts_run_out_are_unknown_for_writes_and_retryable_for_reads() {
    let fake = Fake::spawn([]).await;
    fake.answer_from_now_on(reply(503));
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let e = out
        .send(post(fake.url("/v1/refunds"), Some("k1")))
        .await
        .unwrap_err();
    assert_eq!(fake.requests(), 4);
    let ProviderError::Unknown { message } = e else {
        panic!("{e:?}")
    };
    assert!(
        message.contains("503") && message.contains("after 4 attempts"),
        "{message}"
    );

    let e = out
        .send(get(fake.url("/v1/refunds/re_1")))
        .await
        .unwrap_err();
    assert_eq!(fake.requests(), 8);
    assert!(matches!(e, ProviderError::Retryable { .. }), "{e:?}");

    // A write without an idempotency key is never sent twice after it may have been applied.
    let e = out
        .send(post(fake.url("/v1/refunds"), None))
        .await
        .unwrap_err();
    assert_eq!(fake.requests(), 9);
    assert!(matches!(e, ProviderError::Unknown { .. }), "{e:?}");
}

#[tokio::test]
async fn a_timeout_is_unknown_for_a_write_and_retryable_for_a_read() {
    let fake = Fake::spawn([]).await;
    fake.answer_from_now_on(reply(200).delayed(Duration::from_secs(2)));
    let config = OutboundConfig {
        attempt_timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(100),
        deadline: Duration::from_millis(400),
        ..config()
    };
    let out = outbound(config, ProviderKind::Stripe, "acct");
    let started = Instant::now();
    let e = out
        .send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unknown { .. }), "{e:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(600),
        "{took:?} past the deadline"
    );
    let sent = fake.requests();
    assert!(
        sent >= 2,
        "a keyed write is retried after a timeout ({sent})"
    );

    let e = out
        .send(get(fake.url("/v1/customers/cus_1")))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Retryable { .. }), "{e:?}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_retryable_even_for_a_write() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let metrics = OutboundMetrics::default();
    let out = outbound_with(config(), ProviderKind::Stripe, "acct", metrics.clone());
    let e = out
        .send(post(format!("http://{closed}/v1/customers"), Some("k1")))
        .await
        .unwrap_err();
    let ProviderError::Retryable { message, .. } = e else {
        panic!("{e:?}")
    };
    assert!(message.contains("could not connect"), "{message}");
    assert!(
        render(&metrics).contains(
            r#"coffer_provider_requests_total{provider="stripe",operation="create_customer",outcome="connect_error"} 4"#
        ),
        "{}",
        render(&metrics)
    );
}

#[tokio::test]
async fn every_attempt_carries_the_same_idempotency_key_and_the_body() {
    let fake = Fake::spawn([reply(500), reply(502), reply(201)]).await;
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let response = out
        .send(post(fake.url("/v1/customers"), Some("op-1")))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(fake.keys(), vec![Some("op-1".to_owned()); 3]);
    let received = fake.seen.received.lock().unwrap();
    for r in received.iter() {
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(r.body, b"email=a%40example.com");
    }
}

#[tokio::test]
async fn the_breaker_opens_refuses_without_sending_half_opens_and_closes() {
    let fake = Fake::spawn([]).await;
    fake.answer_from_now_on(reply(500));
    let metrics = OutboundMetrics::default();
    let config = OutboundConfig {
        max_attempts: 1,
        breaker: BreakerConfig {
            minimum_calls: 4,
            ..config().breaker
        },
        ..config()
    };
    let out = outbound_with(config, ProviderKind::Stripe, "acct-b", metrics.clone());
    let url = fake.url("/v1/customers/cus_1");
    for _ in 0..4 {
        let e = out.send(get(url.clone())).await.unwrap_err();
        assert!(matches!(e, ProviderError::Retryable { .. }), "{e:?}");
    }
    assert_eq!(fake.requests(), 4);
    assert_eq!(out.breaker_state(), BreakerState::Open);
    assert!(render(&metrics).contains(r#"coffer_provider_breaker_state{account="acct-b"} 2"#));

    // Open: refused at once, the server untouched, with the cool-down left.
    let started = Instant::now();
    let e = out
        .send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(fake.requests(), 4);
    let ProviderError::Retryable {
        retry_after: Some(wait),
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(300),
        "{wait:?}"
    );

    // Half-open after the cool-down: one trial goes through, fails, and opens it again.
    tokio::time::sleep(wait + Duration::from_millis(10)).await;
    out.send(get(url.clone())).await.unwrap_err();
    assert_eq!(fake.requests(), 5);
    assert_eq!(out.breaker_state(), BreakerState::Open);

    // The provider recovers: the next trial succeeds and closes it.
    fake.answer_from_now_on(reply(200));
    tokio::time::sleep(Duration::from_millis(310)).await;
    out.send(get(url.clone())).await.unwrap();
    assert_eq!(fake.requests(), 6);
    assert_eq!(out.breaker_state(), BreakerState::Closed);
    let text = render(&metrics);
    assert!(text.contains(r#"coffer_provider_breaker_state{account="acct-b"} 0"#));
    assert!(text.contains(
        r#"coffer_provider_requests_total{provider="stripe",operation="create_customer",outcome="breaker_open"} 1"#
    ), "{text}");
}

#[tokio::test]
async fn a_full_bulkhead_refuses_quickly_and_leaves_other_accounts_alone() {
    let fake = Fake::spawn([]).await;
    fake.answer_from_now_on(reply(200).delayed(Duration::from_millis(400)));
    let metrics = OutboundMetrics::default();
    let config = OutboundConfig {
        max_concurrent: 2,
        attempt_timeout: Duration::from_secs(1),
        ..config()
    };
    let a = outbound_with(
        config.clone(),
        ProviderKind::Stripe,
        "acct-a",
        metrics.clone(),
    );
    let b = outbound_with(config, ProviderKind::Stripe, "acct-z", metrics.clone());
    let url = fake.url("/v1/customers/cus_1");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (a, url) = (a.clone(), url.clone());
            tokio::spawn(async move { a.send(get(url)).await })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(2);
    while fake.requests() < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fake.requests(), 2);

    let started = Instant::now();
    let e = a.send(get(url.clone())).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(200));
    assert!(matches!(e, ProviderError::Retryable { .. }), "{e:?}");

    // Another account's stack has its own slots.
    b.send(get(url.clone())).await.unwrap();
    assert_eq!(fake.requests(), 3);
    for call in slow {
        call.await.unwrap().unwrap();
    }
    assert!(render(&metrics).contains(
        r#"coffer_provider_requests_total{provider="stripe",operation="fetch_object",outcome="bulkhead_full"} 1"#
    ));
}

#[tokio::test]
async fn the_metrics_render_every_family() {
    let fake = Fake::spawn([reply(500), reply(200), reply(404)]).await;
    let metrics = OutboundMetrics::default();
    let out = outbound_with(config(), ProviderKind::Stripe, "acct-m", metrics.clone());
    out.send(post(fake.url("/v1/customers"), Some("k1")))
        .await
        .unwrap();
    out.send(get(fake.url("/v1/customers/cus_x")))
        .await
        .unwrap();
    let text = render(&metrics);
    for line in [
        r#"coffer_provider_requests_total{provider="stripe",operation="create_customer",outcome="server_error"} 1"#,
        r#"coffer_provider_requests_total{provider="stripe",operation="create_customer",outcome="success"} 1"#,
        r#"coffer_provider_requests_total{provider="stripe",operation="fetch_object",outcome="client_error"} 1"#,
        r#"coffer_provider_request_duration_seconds_count{provider="stripe",operation="create_customer"} 2"#,
        r#"coffer_provider_breaker_state{account="acct-m"} 0"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn plain_http_goes_to_loopback_only_and_header_values_are_checked() {
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    let e = out
        .send(get("http://api.stripe.com/v1/customers".into()))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Definitive { .. }), "{e:?}");
    let mut request = get("https://api.stripe.com/v1/customers".into());
    request.headers = vec![(AUTHORIZATION, "Bearer sk_test_x\r\nX-Evil: 1".into())];
    let e = out.send(request).await.unwrap_err();
    let ProviderError::Definitive { message, .. } = e else {
        panic!("{e:?}")
    };
    assert!(!message.contains("sk_test"), "{message}");
}

#[tokio::test]
async fn a_long_answer_is_cut() {
    let fake = Fake::spawn([reply(200)]).await;
    let config = OutboundConfig {
        max_response_bytes: 4,
        ..config()
    };
    let out = outbound(config, ProviderKind::Stripe, "acct");
    let e = out
        .send(get(fake.url("/v1/customers/cus_1")))
        .await
        .unwrap_err();
    assert_eq!(fake.requests(), 1);
    assert!(matches!(e, ProviderError::Retryable { .. }), "{e:?}");
}

/// Every span field value recorded while sending, and no header value, body or query among
/// them.
///
/// Whether a callsite records is cached process-wide, and the other tests of this binary,
/// installing and dropping their own subscribers on other threads at the same time, made it
/// come out wrong now and then whatever this test rebuilt. So it runs alone: in a child
/// process of this test binary, with only itself selected (under nextest every test already is
/// its own process, and the child is the test itself).
#[test]
fn the_attempt_spans_carry_the_http_attributes_and_no_secret() {
    const CHILD: &str = "COFFER_OUTBOUND_SPAN_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(attempt_spans());
    }
    let name =
        "providers::outbound::tests::the_attempt_spans_carry_the_http_attributes_and_no_secret";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}

async fn attempt_spans() {
    use tracing_subscriber::layer::SubscriberExt;

    /// Span fields by name; an event's fields as `event.{name}`.
    #[derive(Default, Clone)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>, &'static str);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .lock()
                .unwrap()
                .push((format!("{}{}", self.1, field.name()), format!("{value:?}")));
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Fields {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            attrs.record(&mut self.clone());
        }
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            values.record(&mut self.clone());
        }
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            event.record(&mut Fields(self.0.clone(), "event."));
        }
    }

    let fake = Fake::spawn([
        reply(503),
        reply(200),
        reply(503),
        reply(200).header("request-id", "req_9"),
    ])
    .await;
    let out = outbound(config(), ProviderKind::Stripe, "acct");
    // Other tests, on other threads, hit these callsites first and cache "no subscriber is
    // interested"; one may still be registering a callsite while the subscriber below is
    // installed, and miss the rebuild. So: register them all (the span and the retry's event)
    // here first, then install the subscriber and compute every callsite's interest again.
    out.send(post(fake.url("/v1/customers"), Some("warm-up")))
        .await
        .unwrap();
    let fields = Fields::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(fields.clone()));
    tracing::callsite::rebuild_interest_cache();

    let mut request = post(
        fake.url("/v1/customers?email=a%40example.com"),
        Some("key-1"),
    );
    request.body = Some(OutboundBody::Json(
        br#"{"card":"4000000000009995"}"#.to_vec(),
    ));
    out.send(request).await.unwrap();

    let fields = fields.0.lock().unwrap().clone();
    let value = |name: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim_matches('"').to_owned())
            .collect()
    };
    assert_eq!(value("http.request.method"), ["POST", "POST"]);
    assert_eq!(value("http.response.status_code"), ["503", "200"]);
    assert_eq!(value("attempt"), ["1", "2"]);
    assert_eq!(value("http.request.resend_count"), ["1"]);
    assert_eq!(value("server.address"), ["127.0.0.1", "127.0.0.1"]);
    assert_eq!(value("provider.request_id"), ["req_9"]);
    assert_eq!(value("event.attempt"), ["1"], "one retry logged");
    assert_eq!(value("error.type"), ["503"]);
    assert_eq!(
        value("url.full"),
        vec![format!("http://{}/v1/customers", fake.addr); 2]
    );
    for (name, v) in &fields {
        for secret in ["sk_test_secret", "4000000000009995", "example.com", "key-1"] {
            assert!(!v.contains(secret), "{name} = {v} holds {secret}");
        }
    }
}

#[test]
fn the_policy_table() {
    use ProviderKind::{Polar, Stripe};
    let s = |code| StatusCode::from_u16(code).unwrap();
    // (provider, status, Stripe-Should-Retry, read, keyed) → (answer, retried)
    #[rustfmt::skip]
    let cases = [
        (Stripe, 200, None,        false, true,  Answer::Final,       false),
        (Stripe, 400, None,        false, true,  Answer::Final,       false),
        (Stripe, 400, Some(true),  false, true,  Answer::Final,       true),
        (Stripe, 404, None,        true,  false, Answer::Final,       false),
        (Stripe, 429, None,        false, false, Answer::RateLimited, true),
        (Stripe, 429, Some(false), false, true,  Answer::RateLimited, false),
        (Stripe, 409, None,        false, true,  Answer::Ambiguous,   true),
        (Stripe, 409, Some(false), false, true,  Answer::Final,       false),
        (Polar,  409, None,        false, true,  Answer::Final,       false),
        (Stripe, 500, None,        false, true,  Answer::Ambiguous,   true),
        (Stripe, 500, None,        false, false, Answer::Ambiguous,   false),
        (Stripe, 500, Some(true),  false, false, Answer::Ambiguous,   true),
        (Stripe, 500, Some(false), true,  false, Answer::Ambiguous,   false),
        (Polar,  503, None,        true,  false, Answer::Ambiguous,   true),
    ];
    for (provider, status, header, read, keyed, answer, retried) in cases {
        assert_eq!(
            policy(provider, s(status), header, read, keyed),
            (answer, retried),
            "{provider} {status} {header:?} read={read} keyed={keyed}"
        );
    }
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let headers = |value: &str| {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    };
    assert_eq!(
        retry_after(&headers("7"), now),
        Some(Duration::from_secs(7))
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
    assert_eq!(
        retry_after(&headers(&later), now),
        Some(Duration::from_secs(120))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
    assert_eq!(retry_after(&headers(&earlier), now), Some(Duration::ZERO));
    assert_eq!(
        retry_after(&headers("86400000"), now),
        Some(MAX_RETRY_AFTER)
    );
    assert_eq!(retry_after(&headers("soon"), now), None);
    assert_eq!(retry_after(&HeaderMap::new(), SystemTime::now()), None);
}

#[test]
fn full_jitter_stays_under_the_doubling_ceiling() {
    let base = Duration::from_millis(100);
    let max = Duration::from_millis(350);
    for _ in 0..50 {
        let waits: Vec<_> = full_jitter_backoff(base, max, 4).collect();
        assert_eq!(waits.len(), 4);
        for (n, (wait, ceiling)) in waits.iter().zip([100, 200, 350, 350]).enumerate() {
            assert!(*wait < Duration::from_millis(ceiling), "wait {n}: {wait:?}");
        }
    }
}

#[test]
fn the_config_must_nest() {
    assert_eq!(OutboundConfig::default().check(), Ok(()));
    let bad = OutboundConfig {
        attempt_timeout: Duration::from_secs(30),
        ..OutboundConfig::default()
    };
    assert!(bad.check().is_err());
    let bad = OutboundConfig {
        max_attempts: 0,
        ..OutboundConfig::default()
    };
    assert!(bad.check().is_err());
}

#[tokio::test]
async fn https_speaks_tls_and_a_failed_handshake_sent_nothing() {
    // The fake speaks plain HTTP: the TLS handshake fails, before any request is written.
    let fake = Fake::spawn([]).await;
    let config = OutboundConfig {
        max_attempts: 1,
        ..config()
    };
    let out = outbound(config, ProviderKind::Stripe, "acct");
    let e = out
        .send(post(
            format!("https://localhost:{}/v1/customers", fake.addr.port()),
            Some("k1"),
        ))
        .await
        .unwrap_err();
    let ProviderError::Retryable { message, .. } = e else {
        panic!("{e:?}")
    };
    // rustls read the server's plain-text answer as a TLS record.
    assert!(
        message.contains("could not connect") && message.contains("InvalidContentType"),
        "{message}"
    );
}
