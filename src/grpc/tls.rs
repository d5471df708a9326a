//! TLS, and mutual TLS, on the gRPC listener: rustls on the ring provider, the certificate and
//! key (and the client CA that mTLS requires) read from PEM files, and read again on SIGHUP or
//! when a file changes, without dropping a connection: each new connection takes the
//! configuration current when it arrives; open ones keep theirs.
//!
//! A reload that fails (a half-written file, a key that does not match its certificate) keeps
//! the configuration that works, logs the error, and counts it
//! (`coffer_tls_reloads_total{outcome}`), so a botched rotation cannot take the listener
//! down; the next change or SIGHUP tries again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// (modified, length) of each file, `None` for one that cannot be read.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// How often the files are looked at for a change (their modification times and sizes).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Where the gRPC listener's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to; with it, a client without a
    /// valid certificate is refused during the handshake (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("the TLS configuration is invalid: {0}")]
    Config(String),
}

/// The listener's current TLS configuration, replaced whole on reload. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    current: Arc<RwLock<TlsAcceptor>>,
    stamp: Arc<RwLock<Stamps>>,
    reloads: prometheus_client::metrics::family::Family<
        ReloadLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReloadLabels {
    outcome: &'static str,
}

impl ServerTls {
    /// Reads the files; an error here stops the server from starting.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let acceptor = acceptor(&files)?;
        let stamp = stamps(&files);
        Ok(Self {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(acceptor)),
            stamp: Arc::new(RwLock::new(stamp)),
            reloads: Default::default(),
        })
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "coffer_tls_reloads",
            "Reloads of the gRPC listener's TLS certificate, key and client CA, by outcome",
            self.reloads.clone(),
        );
    }

    /// The acceptor for a connection arriving now.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the files again and, if they make a valid configuration, uses it for the
    /// connections that arrive from now on. On failure the current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamps(&self.files);
        match acceptor(&self.files) {
            Ok(acceptor) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = acceptor;
                *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
                self.reloads
                    .get_or_create(&ReloadLabels {
                        outcome: "reloaded",
                    })
                    .inc();
                tracing::info!("TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                // Remember the broken files' stamps too: retried on their next change (or a
                // SIGHUP), not every few seconds.
                *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
                self.reloads
                    .get_or_create(&ReloadLabels { outcome: "failed" })
                    .inc();
                tracing::error!(error = %e, "TLS reload failed; the previous certificate stays in use");
                Err(e)
            }
        }
    }

    /// Whether a file changed since it was last read.
    fn changed(&self) -> bool {
        let now = stamps(&self.files);
        *self.stamp.read().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Reloads on SIGHUP and when a file changes (looked at every `interval`), until `stop`.
    pub async fn watch(self, interval: Duration, stop: CancellationToken) {
        {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<()>();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = hup => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        let _ = self.reload();
                    }
                    () = tokio::time::sleep(interval) => {
                        if self.changed() {
                            let _ = self.reload();
                        }
                    }
                }
            }
        }
    }
}

fn stamps(files: &TlsFiles) -> Stamps {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        message: format!("no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    path: path.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Config(format!("the certificate and key do not go together: {e}"))
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}
