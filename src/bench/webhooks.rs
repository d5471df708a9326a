//! `coffer bench webhooks`: signed deliveries of distinct events POSTed to the sidecar's
//! `/webhooks/{account}`, each counted when it is answered 200 (which the sidecar answers only
//! once the event's inbox row is committed), next to the same rows inserted straight into a
//! copy of `webhook_events`, one per transaction, at the same concurrency.
//!
//! The deliveries are what the sandbox sends: Standard Webhooks signatures over a JSON event,
//! one HTTP/1.1 connection per worker kept alive between deliveries, as a provider's delivery
//! workers do. Their type (`bench.delivery`) has no handler, so inbox workers settle them as
//! `ignored`. The goal's figure is the server's ingestion alone (`--inbox-workers 0`), which
//! is what the baseline does; with the workers in the same process, they share the CPU and
//! the database with the deliveries as they would in production (docs/operations.md,
//! Performance).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{BenchError, Load, Measurement, Report, run_id, run_load};
use crate::config::WebhooksBenchArgs;
use crate::providers::signature::sign;
use crate::store::bench as store;

/// The events' type: no handler applies it, so the workers only mark it `ignored`.
const EVENT_TYPE: &str = "bench.delivery";

/// The body of delivery `id`: the sandbox's event shape, about a payment of its own (so every
/// event names another object and takes another advisory lock in the workers).
fn event_body(id: &str, seq: u64, created: i64) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"{EVENT_TYPE}","created":{created},"livemode":false,"data":{{"object":{{"object":"payment","id":"pay_bench_{seq}","checkout_session":"cs_bench_{seq}","client_reference_id":"00000000-0000-0000-0000-000000000000","amount":2500,"currency":"USD","status":"succeeded","failure_code":null,"card":{{"brand":"visa","last4":"4242"}},"amount_refunded":0,"version":1}}}}}}"#
    )
    .into_bytes()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A worker's connection to the sidecar, made at its first delivery and again after a failure.
pub(super) type Connection = Mutex<Option<SendRequest<Full<Bytes>>>>;

/// Where the deliveries go.
#[derive(Clone)]
struct Target {
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
    /// `/…/webhooks/{account}`.
    path: String,
}

impl Target {
    fn of(url: &str, account: &str) -> Result<Self, BenchError> {
        let bad = |why: &str| BenchError::Webhooks(format!("--url {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only plain http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            authority,
            path: format!("{}/webhooks/{account}", uri.path().trim_end_matches('/')),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// The account's Standard Webhooks secret: given, or the one the sandbox keeps for it.
async fn secret(account: &str, given: Option<&str>, pool: &PgPool) -> Result<String, BenchError> {
    let secret = match given {
        Some(s) => s.to_owned(),
        None => store::sandbox_webhook_secret(pool, account)
            .await?
            .ok_or_else(|| {
                BenchError::Webhooks(format!(
                    "no signing secret for account {:?}: set COFFER_BENCH_WEBHOOK_SECRET to the \
                     secret coffer.toml gives it (docs/operations.md, Performance), or name a \
                     sandbox account the server has made",
                    account
                ))
            })?,
    };
    let encoded = secret.strip_prefix("whsec_").unwrap_or(&secret);
    match STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(secret),
        _ => Err(BenchError::Webhooks(
            "the signing secret is not a Standard Webhooks secret (whsec_ and base64)".into(),
        )),
    }
}

/// One delivery on the worker's connection (made, or made again after a failure).
async fn deliver(
    connection: &Connection,
    target: &Target,
    secret: &str,
    id: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let mut request = Request::post(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json");
    for h in sign::standard(secret, id, unix_now(), &body) {
        request = request.header(h.name, h.value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    // Only this worker uses its connection: the lock is never contended.
    let mut connection = connection.lock().await;
    let sender = match connection.as_mut() {
        Some(sender) if !sender.is_closed() => sender,
        _ => connection.insert(target.connect().await?),
    };
    let answered = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Read to the end, so the connection is free for the next delivery.
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    }
    .await;
    match answered {
        Ok((status, _)) if status == http::StatusCode::OK => Ok(()),
        Ok((status, body)) => Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
        Err(e) => {
            *connection = None;
            Err(e.to_string())
        }
    }
}

pub async fn webhooks(args: &WebhooksBenchArgs, pool: &PgPool) -> Result<Report, BenchError> {
    let deliveries = Deliveries::prepare(
        &args.url,
        &args.account,
        args.webhook_secret.as_deref(),
        pool,
    )
    .await?;
    let load = Load {
        concurrency: args.concurrency.max(1),
        warmup: args.warmup,
        duration: args.duration,
    };
    // The baseline runs first: after the deliveries, the server's inbox workers are still
    // settling their backlog, and would slow the baseline down.
    let inserted = insert_baseline(pool, &args.account, load).await?;
    let delivered = deliveries.load(load).await;
    Ok(Report {
        title: format!(
            "coffer bench webhooks: {} deliveries in flight (one HTTP/1.1 connection each) to {}{}, {} Postgres connections for the baseline, {:?} each (after {:?} warm-up)",
            load.concurrency,
            args.url.trim_end_matches('/'),
            deliveries.target.path,
            pool.options().get_max_connections(),
            args.duration,
            args.warmup,
        ),
        measurements: vec![delivered, inserted],
        ratios: vec![("deliveries/s / Postgres insert rows/s".into(), 0, 1)],
        notes: vec![],
    })
}

/// Baseline: the same rows straight into a copy of webhook_events, one per transaction,
/// through a pool as large as the server's (--db-max-connections, the same flag and default
/// `serve` uses).
pub(super) async fn insert_baseline(
    pool: &PgPool,
    account: &str,
    load: Load,
) -> Result<Measurement, BenchError> {
    store::create_webhook_baseline_table(pool).await?;
    let inserted = {
        let pool = pool.clone();
        let account = account.to_owned();
        let run = run_id();
        let tenant = Uuid::now_v7();
        run_load(
            "postgres INSERT webhook_event (1 row/tx)",
            load.concurrency,
            load.warmup,
            load.duration,
            move |_, seq| {
                let pool = pool.clone();
                let account = account.clone();
                let id = format!("msg_base_{run}_{seq}");
                let body = event_body(&id, seq, unix_now());
                async move {
                    store::insert_webhook_baseline_row(
                        &pool, tenant, &account, &id, EVENT_TYPE, &body,
                    )
                    .await
                }
            },
        )
        .await
    };
    store::drop_webhook_baseline_table(pool).await?;
    Ok(inserted)
}

/// Signed deliveries of new events to one account's `/webhooks/{account}`.
#[derive(Clone)]
pub(super) struct Deliveries {
    target: Target,
    secret: Arc<str>,
    account: String,
}

/// Each worker's connection to the sidecar.
pub(super) type Connections = Arc<Vec<Connection>>;

impl Deliveries {
    /// To the sidecar at `url`, signed with `secret` or the one the sandbox keeps for `account`.
    pub async fn prepare(
        url: &str,
        account: &str,
        secret: Option<&str>,
        pool: &PgPool,
    ) -> Result<Self, BenchError> {
        Ok(Self {
            target: Target::of(url, account)?,
            secret: self::secret(account, secret, pool).await?.into(),
            account: account.to_owned(),
        })
    }

    /// `n` connections, made at each worker's first delivery.
    pub fn connections(n: usize) -> Connections {
        Arc::new((0..n).map(|_| Mutex::new(None)).collect())
    }

    /// Delivery `seq` of run `run`, each a new event, on `connection`.
    pub async fn deliver(
        &self,
        connection: &Connection,
        run: &str,
        seq: u64,
    ) -> Result<(), String> {
        let id = format!("msg_bench_{run}_{seq}");
        let body = event_body(&id, seq, unix_now());
        deliver(connection, &self.target, &self.secret, &id, body).await
    }

    /// Deliveries through the sidecar from `load.concurrency` workers, each a new event.
    pub async fn load(&self, load: Load) -> Measurement {
        let connections = Self::connections(load.concurrency);
        let this = self.clone();
        let run = run_id();
        run_load(
            &format!("http POST /webhooks/{} (signed)", self.account),
            load.concurrency,
            load.warmup,
            load.duration,
            move |worker, seq| {
                let (connections, this, run) = (connections.clone(), this.clone(), run.clone());
                async move { this.deliver(&connections[worker], &run, seq).await }
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_bodies() {
        let t = Target::of("http://127.0.0.1:8080", "dev-bench").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/webhooks/dev-bench");
        let t = Target::of("http://localhost/hooks/", "a").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("localhost:80", "/hooks/webhooks/a")
        );
        assert!(Target::of("https://x", "a").is_err());
        assert!(Target::of("not a url", "a").is_err());

        let body: serde_json::Value = serde_json::from_slice(&event_body("msg_1", 7, 1)).unwrap();
        assert_eq!(body["id"], "msg_1");
        assert_eq!(body["type"], EVENT_TYPE);
        assert_eq!(body["data"]["object"]["id"], "pay_bench_7");
    }
}
