//! The public listener's accept loop, shared by `coffer serve` (in-process sidecar) and
//! `coffer webhooks`: the one port open to the internet, so it bounds what idle and slow
//! clients can hold.
//!
//! - **Open connections** are capped ([`ListenerLimits::max_connections`]). One over the cap is
//!   accepted and closed at once: the client learns now and retries later, instead of waiting
//!   in the listen backlog, and the accept loop keeps draining the backlog so the kernel never
//!   holds a queue of them for us. Counted in `coffer_public_connections_refused_total`, open
//!   ones in the `coffer_public_connections_open` gauge, and logged (at most every
//!   [`REFUSAL_LOG_EVERY`]) while it lasts. So that one client cannot take the whole cap from
//!   the providers, each source address may also hold at most
//!   [`ListenerLimits::max_connections_per_source`]; one more from it is closed the same way
//!   (counted with `reason="source"`, the global cap's with `reason="cap"`).
//! - **Headers**: a new connection has [`ListenerLimits::header_timeout`] from its accept to
//!   a complete request head, and each later request as long from its first byte.
//! - **Idle keep-alive**: between requests, a connection that sends nothing for
//!   [`ListenerLimits::idle_timeout`] is closed.
//! - **Body progress**: a request body that brings no new bytes for
//!   [`ListenerLimits::body_timeout`] ends in an error, which the sidecar answers 408 (and
//!   closes the connection); a slow but steady body is read to the end, within the sidecar's
//!   whole-request bound.
//!
//! hyper's own `header_read_timeout` is not used: it starts when the connection begins to wait
//! for the next request, so it would be the idle timeout and the header timeout at once. Here
//! the connection's socket wrapper ([`Guarded`]) knows, from the service, whether a request is
//! in flight, and times the wait for one itself. With HTTP/2 (h2c, which providers do not
//! use), any frame outside a request counts as a request's first byte.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How often, at most, refused connections are logged while the cap is reached.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long to stop accepting after the listener fails (out of file descriptors, say), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the public listener lets one client hold (`--http-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// From accept (or a later request's first byte) to a complete request head.
    pub header_timeout: Duration,
    /// The longest a request body may bring no new bytes.
    pub body_timeout: Duration,
    /// The longest a connection may wait, silent, between requests.
    pub idle_timeout: Duration,
    /// Connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Connections open at once from one source address (the TCP peer: behind a load balancer,
    /// the balancer); `None` for no limit beyond `max_connections`.
    pub max_connections_per_source: Option<NonZeroUsize>,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_source: NonZeroUsize::new(512),
        }
    }
}

/// Why a connection was closed on accept.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// The listener's cap ([`ListenerLimits::max_connections`]).
    Cap,
    /// Its source's cap ([`ListenerLimits::max_connections_per_source`]).
    Source,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Cap => "cap",
            Refusal::Source => "source",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// The listener's gauge of open connections and counter of refused ones. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    open: Gauge,
    refused: Family<RefusalLabels, Counter>,
}

impl ListenerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coffer_public_connections_open",
            "Connections open on the public (webhook) listener",
            self.open.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "coffer_public_connections_refused",
            "Connections the public (webhook) listener closed on accept, by reason: its cap (cap) or their source's (source) was reached",
            self.refused.clone(),
        );
    }
}

/// Serves `router` on `listener` within `limits` until `stop`, then stops accepting and
/// returns once every open connection has finished its request in flight and closed (callers
/// bound that wait with their drain deadline). Requests carry their TCP peer as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Sources::default();
    let graceful = GracefulShutdown::new();
    let mut refusals = RefusalLog::default();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "public listener: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Accepted and closed: see the module doc.
            drop(tcp);
            metrics.refuse(Refusal::Cap);
            refusals.refused(limits.max_connections);
            continue;
        };
        let Some(source_slot) = sources.take(peer.ip(), limits.max_connections_per_source) else {
            drop(tcp);
            metrics.refuse(Refusal::Source);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Guarded::new(tcp, activity.clone(), limits));
        let service = hyper::service::service_fn({
            let router = router.clone();
            move |request: http::Request<hyper::body::Incoming>| {
                let request =
                    request.map(|body| Body::new(Progressing::new(body, limits.body_timeout)));
                call(router.clone(), request, peer, activity.clone())
            }
        });
        let open = metrics.open.clone();
        let watcher = graceful.watcher();
        open.inc();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().timer(hyper_util::rt::TokioTimer::new());
            let connection = builder.serve_connection(io, service);
            // Errors here are the client's (a reset, a timeout): nothing to tell an operator.
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, %peer, "public connection ended");
            }
            open.dec();
            drop(source_slot);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

impl ListenerMetrics {
    fn refuse(&self, reason: Refusal) {
        self.refused
            .get_or_create(&RefusalLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// Connections open per source address, for [`ListenerLimits::max_connections_per_source`].
/// At most `max_connections` entries: an address is removed with its last connection.
#[derive(Clone, Default)]
struct Sources(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Sources {
    /// A slot for one more connection from `ip`, or `None` when it holds `max` already.
    fn take(&self, ip: IpAddr, max: Option<NonZeroUsize>) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if max.is_some_and(|max| *n >= max.get()) {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

/// One open connection of a source; released when dropped.
struct SourceSlot {
    sources: Sources,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One request through the router, counted in flight on its connection until answered.
async fn call(
    router: Router,
    mut request: http::Request<Body>,
    peer: SocketAddr,
    activity: Arc<Activity>,
) -> Result<http::Response<Body>, Infallible> {
    request.extensions_mut().insert(ConnectInfo(peer));
    let _in_flight = activity.begin();
    router.oneshot(request).await
}

/// Logs refusals at the cap: the first at once, then at most every [`REFUSAL_LOG_EVERY`] with
/// how many were refused since.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    fn refused(&mut self, max: usize) {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_none_or(|last| now >= last + REFUSAL_LOG_EVERY) {
            tracing::warn!(
                max_connections = max,
                refused = self.since,
                "public listener at its connection cap: closing new connections"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

/// Whether a connection has a request in flight, and since when it has had none; shared by
/// its socket wrapper and its service.
struct Activity(Mutex<ActivityState>);

struct ActivityState {
    in_flight: usize,
    /// When the last request was answered, or the connection accepted.
    idle_since: Instant,
    /// Whether any request has begun: the first must come within the header timeout.
    served: bool,
    /// The connection's reader, to wake when the last request in flight is answered so it
    /// starts timing the wait for the next.
    reader: Option<Waker>,
}

impl Activity {
    fn new() -> Self {
        Self(Mutex::new(ActivityState {
            in_flight: 0,
            idle_since: Instant::now(),
            served: false,
            reader: None,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.served = true;
        InFlight(self.clone())
    }
}

/// A request in flight; the connection is idle again once every one is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A public connection's socket: while no request is in flight, a read that would wait past
/// the idle or header deadline fails instead, and hyper closes the connection.
struct Guarded {
    io: TcpStream,
    activity: Arc<Activity>,
    limits: ListenerLimits,
    /// The idle period being timed (its start), and when its first byte came.
    period: Option<Instant>,
    first_byte: Option<Instant>,
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(io: TcpStream, activity: Arc<Activity>, limits: ListenerLimits) -> Self {
        Self {
            io,
            activity,
            limits,
            period: None,
            first_byte: None,
            deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waiting = {
            let mut state = this.activity.state();
            if state.in_flight > 0 {
                // Woken when it is answered, to time the wait for the next one.
                match &state.reader {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => state.reader = Some(cx.waker().clone()),
                }
                None
            } else {
                Some((state.idle_since, state.served))
            }
        };
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some((since, served)) = waiting else {
            return polled;
        };
        if this.period != Some(since) {
            this.period = Some(since);
            this.first_byte = None;
        }
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.first_byte.get_or_insert_with(Instant::now);
            }
            Poll::Pending => {
                let deadline = match this.first_byte {
                    Some(first) => first + this.limits.header_timeout,
                    None if !served => since + this.limits.header_timeout,
                    None => since + this.limits.idle_timeout,
                };
                if this.deadline.deadline() != deadline {
                    this.deadline.as_mut().reset(deadline);
                }
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request within the header or idle timeout",
                    )));
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body that fails with [`BodyStalled`] when no frame arrives for its timeout.
struct Progressing {
    inner: hyper::body::Incoming,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Progressing {
    fn new(inner: hyper::body::Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// A request body stopped arriving: no new bytes for the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body made no progress within the body timeout")]
pub struct BodyStalled;

impl http_body::Body for Progressing {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline.as_mut().reset(Instant::now() + this.timeout);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error`, or anything it wraps, is a [`BodyStalled`].
pub fn is_stalled(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyStalled>() {
            return true;
        }
        next = e.source();
    }
    false
}
