//! The public listener under hostile clients, over real sockets: slow headers, a full
//! connection cap, a body that stops, an idle keep-alive connection, in `serve` and in the
//! standalone sidecar. Small limits, set through the config as the `--http-*` flags set them.

use std::net::SocketAddr;
use std::time::Duration;

use coffer::domain::auth::ApiKey;
use coffer::providers::signature::sign;
use coffer::startup::ServerConfig;
use coffer::webhooks::{ListenerLimits, Standalone, StandaloneConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::events::{Env, STRIPE_SECRET, now, stripe_body};
use crate::helpers::{eventually, http_get};

fn limited(limits: ListenerLimits) -> impl FnOnce(ServerConfig) -> ServerConfig {
    move |config| ServerConfig {
        http_limits: limits,
        ..config
    }
}

/// A signed Stripe delivery of `id` to shop-stripe: its head (keep-alive) and its body.
fn delivery(id: &str) -> (String, Vec<u8>) {
    let body = stripe_body(id);
    let head = format!(
        "POST /webhooks/shop-stripe HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         stripe-signature: {}\r\ncontent-length: {}\r\n\r\n",
        sign::stripe(STRIPE_SECRET, now(), body.as_bytes()),
        body.len()
    );
    (head, body.into_bytes())
}

/// Reads one response from `s`: its status and body (by content-length).
async fn response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status = head[9..12].parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < end + length {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((
        status,
        String::from_utf8_lossy(&buf[end..end + length]).into_owned(),
    ))
}

/// Delivers `id` over `s` and gives the answer's status.
async fn deliver(s: &mut TcpStream, id: &str) -> Option<u16> {
    let (head, body) = delivery(id);
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(&body).await.ok()?;
    response(s).await.map(|(status, _)| status)
}

/// Waits (up to `within`) for the server to close `s`: true when it did (EOF or a reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Connections that send half a head, a head one byte at a time, or nothing are all closed
/// once the header timeout has passed, and the gauge of open connections falls back to 0.
#[tokio::test]
async fn slow_headers_are_closed_within_the_header_timeout() {
    let header_timeout = Duration::from_millis(600);
    let env = Env::spawn_with(limited(ListenerLimits {
        header_timeout,
        idle_timeout: Duration::from_secs(30),
        ..ListenerLimits::default()
    }))
    .await;
    let http = env.app.http_addr.unwrap();
    let started = Instant::now();
    let mut half = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"POST /webhooks/shop-stripe HTTP/1.1\r\nhost: test\r\n")
            .await
            .unwrap();
        half.push(s);
    }
    let mut silent = TcpStream::connect(http).await.unwrap();
    let mut trickle = TcpStream::connect(http).await.unwrap();
    let trickling = tokio::spawn(async move {
        // One byte every 100 ms: always progressing, never done.
        for b in b"POST /webhooks/shop-stripe HTTP/1.1\r\nx-slow: "
            .iter()
            .cycle()
        {
            if trickle.write_all(&[*b]).await.is_err() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unreachable!()
    });
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(env.app.admin_addr, "coffer_public_connections_open").await >= 52.0
        })
        .await,
        "all held at first"
    );
    let bound = header_timeout + Duration::from_millis(1500);
    for s in &mut half {
        assert!(closed_within(s, bound).await, "half a head is cut");
    }
    assert!(
        closed_within(&mut silent, bound).await,
        "nothing at all is cut"
    );
    let cut = tokio::time::timeout(bound * 2, trickling)
        .await
        .expect("a trickled head is cut")
        .unwrap();
    assert!(
        cut - started < header_timeout + bound,
        "{:?}",
        cut - started
    );
    assert!(
        started.elapsed() >= header_timeout,
        "not before the timeout"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(env.app.admin_addr, "coffer_public_connections_open").await == 0.0
        })
        .await
    );
    // A prompt client is served as ever.
    let mut s = TcpStream::connect(http).await.unwrap();
    assert_eq!(deliver(&mut s, "evt_prompt").await, Some(200));
    assert_eq!(env.rows().await, 1);
    env.app.stop().await.unwrap();
}

/// With the cap held by half-open connections, a new connection is closed at once and
/// counted, while an established connection keeps delivering; once a slot frees, a new one
/// is served.
#[tokio::test]
async fn at_the_cap_new_connections_are_refused_while_established_ones_deliver() {
    let env = Env::spawn_with(limited(ListenerLimits {
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4,
        ..ListenerLimits::default()
    }))
    .await;
    let http = env.app.http_addr.unwrap();
    let admin = env.app.admin_addr;
    let mut provider = TcpStream::connect(http).await.unwrap();
    assert_eq!(deliver(&mut provider, "evt_1").await, Some(200));
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"POST /webhooks/shop-stripe HTTP/1.1\r\n")
            .await
            .unwrap();
        holders.push(s);
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(admin, "coffer_public_connections_open").await == 4.0
        })
        .await
    );

    for i in 0..5 {
        let mut refused = TcpStream::connect(http).await.unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            deliver(&mut refused, &format!("evt_refused_{i}")),
        )
        .await
        .expect("refused at once, not left waiting");
        assert_eq!(answer, None, "closed without an answer");
    }
    assert_eq!(
        metric(admin, "coffer_public_connections_refused_total").await,
        5.0
    );
    assert_eq!(metric(admin, "coffer_public_connections_open").await, 4.0);

    // Deliveries on the established connection go on.
    for i in 2..5 {
        assert_eq!(deliver(&mut provider, &format!("evt_{i}")).await, Some(200));
    }
    assert_eq!(env.rows().await, 4, "evt_1..4, none of the refused");

    drop(holders.pop());
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(admin, "coffer_public_connections_open").await == 3.0
        })
        .await
    );
    let mut again = TcpStream::connect(http).await.unwrap();
    assert_eq!(deliver(&mut again, "evt_5").await, Some(200));
    env.app.stop().await.unwrap();
}

/// From 127.0.0.2 on `http`'s port: another source address on loopback.
async fn connect_from_another_source(http: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    socket.connect(http).await.unwrap()
}

/// One source holding its own cap of half-open connections has its next one closed at once and
/// counted as `reason="source"`, while another source still connects and delivers.
#[tokio::test]
async fn one_source_cannot_hold_more_than_its_share_of_connections() {
    let env = Env::spawn_with(limited(ListenerLimits {
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_connections: 16,
        max_connections_per_source: std::num::NonZeroUsize::new(3),
        ..ListenerLimits::default()
    }))
    .await;
    let http = env.app.http_addr.unwrap();
    let admin = env.app.admin_addr;
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from_another_source(http).await;
        s.write_all(b"POST /webhooks/shop-stripe HTTP/1.1\r\n")
            .await
            .unwrap();
        holders.push(s);
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(admin, "coffer_public_connections_open").await == 3.0
        })
        .await
    );
    let mut refused = connect_from_another_source(http).await;
    let answer = tokio::time::timeout(Duration::from_secs(2), deliver(&mut refused, "evt_refused"))
        .await
        .expect("refused at once, not left waiting");
    assert_eq!(answer, None, "closed without an answer");
    assert_eq!(
        metric(
            admin,
            "coffer_public_connections_refused_total{reason=\"source\"}"
        )
        .await,
        1.0
    );

    // Another source is served beside them.
    let mut provider = TcpStream::connect(http).await.unwrap();
    assert_eq!(deliver(&mut provider, "evt_1").await, Some(200));
    // A slot freed is a slot again.
    drop(holders.pop());
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(admin, "coffer_public_connections_open").await == 3.0
        })
        .await
    );
    let mut again = connect_from_another_source(http).await;
    assert_eq!(deliver(&mut again, "evt_2").await, Some(200));
    assert_eq!(env.rows().await, 2, "evt_1 and evt_2, not the refused one");
    env.app.stop().await.unwrap();
}

/// A body that stops arriving is answered 408 once the body timeout passes, the connection is
/// closed, and nothing of it is stored; a body that arrives slowly but steadily, over several
/// body timeouts in all, is delivered.
#[tokio::test]
async fn a_stalled_body_is_cut_and_nothing_is_stored_while_a_steady_one_is_delivered() {
    let body_timeout = Duration::from_millis(500);
    let env = Env::spawn_with(limited(ListenerLimits {
        body_timeout,
        ..ListenerLimits::default()
    }))
    .await;
    let http = env.app.http_addr.unwrap();

    let (head, body) = delivery("evt_stalled");
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..body.len() / 2]).await.unwrap();
    let sent = Instant::now();
    let (status, text) = tokio::time::timeout(Duration::from_secs(5), response(&mut s))
        .await
        .expect("answered within the body timeout, not the 60 s request timeout")
        .expect("an answer");
    assert_eq!((status, text.as_str()), (408, "request timeout"));
    let waited = sent.elapsed();
    assert!(
        waited >= body_timeout && waited < body_timeout + Duration::from_millis(1500),
        "{waited:?}"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(2)).await,
        "and the connection closed"
    );
    assert_eq!(env.rows().await, 0, "nothing stored from a cut request");

    let (head, body) = delivery("evt_steady");
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let pieces = body.chunks(body.len().div_ceil(8));
    for piece in pieces {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(piece).await.unwrap();
    }
    let (status, _) = response(&mut s).await.expect("an answer");
    assert!(started.elapsed() > body_timeout * 3, "slow in all");
    assert_eq!(status, 200, "a steady body is fine");
    assert_eq!(env.rows().await, 1);
    env.app.stop().await.unwrap();
}

/// A keep-alive connection serves a second delivery within the idle timeout, and is closed
/// once it stays silent longer.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let idle_timeout = Duration::from_millis(800);
    let env = Env::spawn_with(limited(ListenerLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout,
        ..ListenerLimits::default()
    }))
    .await;
    let http = env.app.http_addr.unwrap();
    let mut s = TcpStream::connect(http).await.unwrap();
    assert_eq!(deliver(&mut s, "evt_1").await, Some(200));
    tokio::time::sleep(idle_timeout / 2).await;
    assert_eq!(
        deliver(&mut s, "evt_2").await,
        Some(200),
        "kept alive within the idle timeout"
    );
    let idle = Instant::now();
    assert!(
        closed_within(&mut s, idle_timeout + Duration::from_millis(1500)).await,
        "closed once idle"
    );
    assert!(idle.elapsed() >= idle_timeout - Duration::from_millis(50));
    assert_eq!(env.rows().await, 2);
    env.app.stop().await.unwrap();
}

/// `coffer webhooks` runs the same accept loop: its cap and header timeout hold, and its own
/// `/metrics` carries the connection gauge and refusal counter.
#[tokio::test]
async fn a_standalone_sidecar_has_the_same_limits_and_metrics() {
    let env = Env::spawn().await;
    let config = StandaloneConfig {
        grpc_endpoint: format!("http://{}", env.app.addr),
        upstream_tls: Default::default(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        drain_timeout: Duration::from_secs(5),
        trusted_proxies: Vec::new(),
        limits: ListenerLimits {
            header_timeout: Duration::from_secs(2),
            max_connections: 2,
            ..ListenerLimits::default()
        },
    };
    let key = ApiKey::parse(&env.ingest_key).unwrap();
    let sidecar = Standalone::bind(config, &key).await.unwrap();
    let (http, admin) = (sidecar.http_addr(), sidecar.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(sidecar.run(async move {
        let _ = stopped.await;
    }));

    let mut provider = TcpStream::connect(http).await.unwrap();
    assert_eq!(deliver(&mut provider, "evt_1").await, Some(200));
    let mut slow = TcpStream::connect(http).await.unwrap();
    slow.write_all(b"POST /webhooks/shop-stripe HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(admin, "coffer_public_connections_open").await == 2.0
        })
        .await
    );
    let mut refused = TcpStream::connect(http).await.unwrap();
    assert_eq!(
        deliver(&mut refused, "evt_refused").await,
        None,
        "at the cap"
    );
    assert_eq!(
        metric(admin, "coffer_public_connections_refused_total").await,
        1.0
    );
    assert!(
        closed_within(&mut slow, Duration::from_secs(4)).await,
        "half a head is cut"
    );
    assert_eq!(deliver(&mut provider, "evt_2").await, Some(200));
    assert_eq!(env.rows().await, 2);
    stop.send(()).unwrap();
    running.await.unwrap();
    env.app.stop().await.unwrap();
}
