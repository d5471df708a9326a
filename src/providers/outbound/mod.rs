//! Outbound HTTP to the providers. [`client_builder`] is where every reqwest client in Coffer
//! starts: rustls with the ring provider and Mozilla's roots (`webpki-roots`).

use std::sync::Arc;

/// An HTTP client builder with Coffer's TLS: rustls on the ring provider, Mozilla's roots.
/// Every reqwest client in Coffer (and its tests) starts here: reqwest is built without a
/// crypto provider of its own, and its plain `Client::builder()` panics at `build` unless a
/// process-wide one was installed.
#[allow(clippy::disallowed_methods)]
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(tls_config())
}

fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
