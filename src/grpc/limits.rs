//! Bounds on what the gRPC server holds, so an overloaded Coffer answers fast and its memory
//! stays flat, and the end of open calls at the drain deadline.
//!
//! - [`Incoming`] bounds the open client connections (one over the limit is accepted and closed
//!   at once) and closes a connection that has not sent the HTTP/2 preface within the handshake
//!   timeout, so idle sockets cannot pile up.
//! - [`CallLimits`] is a tower layer with two budgets: unary calls in flight, and open streams.
//!   A call over its budget is answered at once with RESOURCE_EXHAUSTED (`OVERLOADED`, with
//!   RetryInfo) instead of queueing. Streams have a budget of their own because they stay
//!   open: a Watch per client must not use up the calls, and a flood of calls must not refuse
//!   a new Watch. A call holds its permit until its response body has been sent.
//! - On shutdown, [`CallLimits::drain`] refuses new calls with UNAVAILABLE before they run and
//!   waits for the running ones; at the drain deadline (or once no unary call runs),
//!   [`CallLimits::end_open_calls`] ends every open stream with UNAVAILABLE trailers (after
//!   the few messages it already has ready, such as a Watch's NOT_SERVING), and
//!   answers every call still running with UNKNOWN (`OUTCOME_UNKNOWN`), so connections can
//!   close and the process can exit.
//!
//! HTTP/2 settings (streams per connection, keep-alive pings) are set on tonic's builder in
//! `startup`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use futures_core::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tower::{Layer, Service};

use super::policy::{self, Policy};
use super::status;

/// The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// How long to stop accepting after the listener fails (out of file descriptors, say), so the
/// accept loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepted connections, at most `max` open at once, each closed if its HTTP/2 preface does not
/// arrive within the handshake timeout.
pub struct Incoming {
    inner: TcpIncoming,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    /// Whether connections are being refused, so the warning is logged once per episode.
    refusing: bool,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    pub fn new(inner: TcpIncoming, max: usize, handshake_timeout: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            handshake_timeout,
            refusing: false,
            backoff: None,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(backoff) = &mut this.backoff {
            ready!(backoff.as_mut().poll(cx));
            this.backoff = None;
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(tcp)) => match this.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        this.refusing = false;
                        return Poll::Ready(Some(Ok(Conn::new(tcp, slot, this.handshake_timeout))));
                    }
                    Err(_) => {
                        // Closed at once: the client learns now, and retries elsewhere or later,
                        // instead of waiting in the listen backlog.
                        if !this.refusing {
                            this.refusing = true;
                            tracing::warn!("too many open connections: closing new ones");
                        }
                        drop(tcp);
                    }
                },
            }
        }
    }
}

/// An accepted connection. It holds one of the connection slots until it is closed.
pub struct Conn {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the preface has arrived: how many of its bytes came, and when the wait ends.
    handshake: Option<(usize, Pin<Box<Sleep>>)>,
}

impl Conn {
    fn new(io: TcpStream, slot: OwnedSemaphorePermit, handshake_timeout: Duration) -> Self {
        Self {
            io,
            _slot: slot,
            handshake: Some((0, Box::pin(tokio::time::sleep(handshake_timeout)))),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    /// Reads through to the socket. While the preface is incomplete, a read that would wait
    /// past the handshake timeout fails instead, and the server closes the connection.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((seen, deadline)) = &mut this.handshake {
            match polled {
                Poll::Ready(Ok(())) => {
                    *seen += buf.filled().len() - before;
                    if *seen >= PREFACE_LEN {
                        this.handshake = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
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

/// The call and stream budgets shared by every connection, and the signal that ends what is
/// still open. Cheap to clone.
#[derive(Clone)]
pub struct CallLimits {
    inner: Arc<Budgets>,
}

struct Budgets {
    calls: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    /// Counts the unary calls running; closed when the server drains, from which point new
    /// calls are refused. The count and the closed flag are one atomic, so a call either is
    /// refused or is counted and waited for, never neither.
    running: TaskTracker,
    ending: CancellationToken,
}

impl CallLimits {
    pub fn new(max_calls: usize, max_streams: usize) -> Self {
        Self {
            inner: Arc::new(Budgets {
                calls: Arc::new(Semaphore::new(max_calls)),
                streams: Arc::new(Semaphore::new(max_streams)),
                running: TaskTracker::new(),
                ending: CancellationToken::new(),
            }),
        }
    }

    /// Unary calls running now, streams not included.
    pub fn calls_in_flight(&self) -> usize {
        self.inner.running.len()
    }

    /// Refuses new calls and streams with UNAVAILABLE from now on, before they run, and
    /// completes once no unary call is running.
    pub async fn drain(&self) {
        self.inner.running.close();
        self.inner.running.wait().await;
    }

    /// Ends everything still open: open streams with UNAVAILABLE trailers, calls still running
    /// with UNKNOWN at once.
    pub fn end_open_calls(&self) {
        self.inner.running.close();
        self.inner.ending.cancel();
    }
}

impl<S> Layer<S> for CallLimits {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: CallLimits,
}

fn shutting_down() -> Status {
    status::unavailable("the server is shutting down, retry on another connection")
}

/// The answer to a call still running at the drain deadline. A stream's client resumes, and a
/// read can simply be retried, but any other call may have written, and its write may yet
/// commit: "retry shortly" would invite a duplicate, so its outcome is unknown.
fn cut_short(policy: Option<&Policy>) -> Status {
    let retry_is_safe = policy.is_none_or(|p| p.is_stream() || p.reads_only());
    if retry_is_safe {
        shutting_down()
    } else {
        status::outcome_unknown(
            "the server shut down while the call ran, so its outcome is unknown: \
             retry with the same idempotency-key",
        )
    }
}

impl<S> Service<Request<Body>> for Limited<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let budgets = &self.limits.inner;
        // Streams (the policy table's streaming kinds) count against a budget of their own and
        // are ended at the drain deadline rather than waited for.
        let policy = policy::of(req.uri().path());
        let stream = policy.is_some_and(|p| p.is_stream());
        let (budget, what) = if stream {
            (&budgets.streams, "streams open")
        } else {
            (&budgets.calls, "calls in flight")
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            let refused = status::overloaded(&format!("server overloaded: too many {what}"));
            return Box::pin(async { Ok(refused.into_http()) });
        };
        // Taken before looking at whether the server drains: see `Budgets::running`.
        let running = (!stream).then(|| budgets.running.token());
        if budgets.running.is_closed() {
            return Box::pin(async { Ok(shutting_down().into_http()) });
        }
        let ending = budgets.ending.clone();
        // The clone is not ready; take the ready one and leave the clone behind (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = tokio::select! {
                response = inner.call(req) => response?,
                () = ending.cancelled() => return Ok(cut_short(policy).into_http()),
            };
            Ok(response.map(|body| {
                Body::new(Held {
                    body,
                    _permit: permit,
                    _running: running,
                    // A unary body is sent at once; only a stream's can be open at the deadline.
                    end: stream.then(|| Box::pin(ending.cancelled_owned())),
                    flushed: 0,
                    ended: false,
                })
            }))
        })
    }
}

/// A response body that holds its call's permit until it is sent or dropped, and, for a
/// stream, ends with UNAVAILABLE trailers when open calls are ended.
struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
    _running: Option<TaskTrackerToken>,
    end: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Messages sent after the end was signalled.
    flushed: u8,
    ended: bool,
}

/// How many messages a stream that is being ended may still send, if it has them ready.
const MAX_FLUSHED_AT_END: u8 = 8;

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(end) = &mut this.end
            && end.as_mut().poll(cx).is_ready()
        {
            // Messages the stream has ready go out first (a Watch's NOT_SERVING, set just
            // before the streams are ended), a few at most, so a stream that always has more
            // still ends now; then the UNAVAILABLE trailers.
            if this.flushed < MAX_FLUSHED_AT_END
                && let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx)
            {
                match &frame {
                    Some(Ok(f)) if f.is_data() => this.flushed += 1,
                    // The stream's own end (its trailers, an error, or nothing more).
                    _ => this.ended = true,
                }
                return Poll::Ready(frame);
            }
            this.ended = true;
            let mut trailers = HeaderMap::new();
            // Only fails on a message that is not a valid header value, which ours is.
            let _ = shutting_down().add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
