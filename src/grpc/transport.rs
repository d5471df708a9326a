//! How connections reach the gRPC server: over TCP (bounded by [`Incoming`]), with TLS over it
//! when the server has a certificate ([`ServerTls`]), and as in-memory pipes from this
//! process's own webhook sidecar ([`InProcess`]).
//!
//! The sidecar's call to IngestEvent stays a real gRPC call through every layer (limits, auth,
//! telemetry, the same traces), but needs neither the kernel's loopback TCP stack nor TLS
//! (nothing leaves the process), so it works the same with or without TLS and mTLS; the
//! sidecar run alone (`coffer webhooks`) calls over TCP, with TLS to an `https` endpoint.
//!
//! One accept loop feeds the server: a TCP connection's TLS handshake runs in its own task,
//! bounded by the handshake timeout, so a slow client cannot hold up the others.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint};

use super::limits::{Conn, Incoming};
use super::tls::ServerTls;

/// Room for connections accepted but not yet taken by the server; the connection slots
/// ([`Incoming`]) are the real bound.
const ACCEPTED: usize = 64;
/// Bytes buffered each way in an in-process pipe.
const PIPE_BYTES: usize = 256 * 1024;

/// A connection the gRPC server serves.
pub enum ServerIo {
    Plain(Conn),
    Tls(Box<TlsStream<Conn>>),
    /// From this process's sidecar.
    Memory(DuplexStream),
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            ServerIo::Plain(c) => c.connect_info(),
            ServerIo::Tls(t) => t.get_ref().0.connect_info(),
            ServerIo::Memory(_) => TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}

macro_rules! each {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            ServerIo::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            ServerIo::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
            ServerIo::Memory($io) => {
                let $io = Pin::new($io);
                $e
            }
        }
    };
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_shutdown(cx))
    }
}

/// The connections the server takes, from the accept loop.
pub struct Accepted {
    rx: mpsc::Receiver<io::Result<ServerIo>>,
}

impl Stream for Accepted {
    type Item = io::Result<ServerIo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// Starts the accept loop: TCP connections from `tcp` (with a TLS handshake of at most
/// `handshake_timeout` each when `tls` is given) and the sidecar's pipes from `pipes`. It
/// ends, closing the listener, once the server stops taking connections.
pub fn accept(
    mut tcp: Incoming,
    tls: Option<ServerTls>,
    mut pipes: mpsc::Receiver<DuplexStream>,
    handshake_timeout: Duration,
) -> Accepted {
    let (tx, rx) = mpsc::channel(ACCEPTED);
    tokio::spawn(async move {
        let mut pipes_open = true;
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                conn = std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_next(cx)) => match conn {
                    None => return,
                    Some(conn) => Next::Tcp(conn),
                },
                pipe = pipes.recv(), if pipes_open => match pipe {
                    None => { pipes_open = false; continue; }
                    Some(pipe) => Next::Pipe(pipe),
                },
            };
            match (next, &tls) {
                (Next::Pipe(pipe), _) => {
                    if tx.send(Ok(ServerIo::Memory(pipe))).await.is_err() {
                        return;
                    }
                }
                (Next::Tcp(Err(e)), _) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                (Next::Tcp(Ok(conn)), None) => {
                    if tx.send(Ok(ServerIo::Plain(conn))).await.is_err() {
                        return;
                    }
                }
                (Next::Tcp(Ok(conn)), Some(tls)) => {
                    let acceptor = tls.acceptor();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(conn)).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Ok(ServerIo::Tls(Box::new(stream)))).await;
                            }
                            // A client that cannot complete the handshake (no certificate under
                            // mTLS, an untrusted server certificate, plain text) is closed; it is
                            // the client's problem, not the server's.
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    Accepted { rx }
}

enum Next {
    Tcp(io::Result<Conn>),
    Pipe(DuplexStream),
}

/// Makes in-memory connections to this process's gRPC server. Cheap to clone.
#[derive(Clone)]
pub struct InProcess {
    tx: mpsc::Sender<DuplexStream>,
}

impl InProcess {
    /// The connector, and the pipes' end for [`accept`].
    pub fn new() -> (Self, mpsc::Receiver<DuplexStream>) {
        let (tx, rx) = mpsc::channel(ACCEPTED);
        (Self { tx }, rx)
    }

    /// A channel over in-memory pipes, made (and remade after a close) as needed.
    pub fn channel(&self) -> Channel {
        let tx = self.tx.clone();
        Endpoint::from_static("http://in-process.coffer.internal").connect_with_connector_lazy(
            tower::service_fn(move |_: http::Uri| {
                let tx = tx.clone();
                async move {
                    let (client, server) = tokio::io::duplex(PIPE_BYTES);
                    tx.send(server).await.map_err(|_| {
                        io::Error::new(io::ErrorKind::ConnectionRefused, "the server has stopped")
                    })?;
                    Ok::<_, io::Error>(TokioIo::new(client))
                }
            }),
        )
    }
}
