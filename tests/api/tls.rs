//! TLS and mTLS on the gRPC listener, with certificates this test makes (rcgen): a client with a
//! certificate from the client CA is served, one without (or in plain text) is refused; a
//! rotated server certificate is served to new connections while open ones keep going; a
//! broken rotation keeps the working certificate; the in-process sidecar and a standalone
//! sidecar (with its own client certificate) still reach the core.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer::grpc::pb::CreateCustomerRequest;
use coffer::grpc::pb::customers_client::CustomersClient;
use coffer::grpc::tls::TlsFiles;
use coffer::webhooks::{Standalone, StandaloneConfig, UpstreamTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use coffer::app::tenants::KeyFor;

use crate::helpers::{TestApp, eventually, req, test_config};

/// A CA that signs certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `name` and its key, PEM.
    fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("coffer-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.join(name);
        // Written beside and renamed, as a rotation tool does, so a reload never reads half.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A channel to `app` over TLS trusting `ca`, with `identity` as its client certificate.
async fn connect(
    app: &TestApp,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn healthy(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

async fn spawn_tls(files: TlsFiles) -> TestApp {
    TestApp::spawn_configured("", &[], move |config| {
        config.tls = Some(files);
        config.http_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

#[tokio::test]
async fn mtls_serves_clients_with_a_certificate_and_refuses_the_others() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let files = Files::new();
    let (cert, key) = server_ca.leaf("localhost");
    let app = spawn_tls(TlsFiles {
        cert: files.write("server.pem", &cert),
        key: files.write("server.key", &key),
        client_ca: Some(files.write("clients.pem", &client_ca.pem())),
    })
    .await;

    // A client certificate from the client CA: served, with the API key as always.
    let client = client_ca.leaf("billing-service");
    let channel = connect(&app, &server_ca.pem(), Some(&client))
        .await
        .expect("an mTLS client connects");
    healthy(channel.clone()).await.unwrap();
    let created = CustomersClient::new(channel)
        .create_customer(req(
            CreateCustomerRequest {
                external_id: "over-mtls".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.id.starts_with("customer_"), "{}", created.id);

    // No client certificate, one from another CA, or plain text: refused.
    let stranger = server_ca.leaf("stranger");
    for identity in [None, Some(&stranger)] {
        let refused = match connect(&app, &server_ca.pem(), identity).await {
            Err(_) => true,
            Ok(channel) => healthy(channel).await.is_err(),
        };
        assert!(refused, "a client with {identity:?} was served");
    }
    let plain = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => healthy(channel).await.is_err(),
    };
    assert!(refused, "a plain-text client was served");

    // The in-process sidecar still reaches the core (no TLS, no certificate: nothing leaves
    // the process): an unknown account is the core's NOT_FOUND, answered 404.
    let http = app.http_addr.unwrap();
    let (status, _) = post_webhook(http, "nope").await;
    assert_eq!(status, 404);

    // A sidecar run alone reaches it over TLS with a client certificate of its own; without
    // one, the core is unreachable to it and a delivery is answered 503.
    let sidecar_cert = (
        files.write("sidecar.pem", &client.0),
        files.write("sidecar.key", &client.1),
    );
    let server_ca_file = files.write("server-ca.pem", &server_ca.pem());
    let ingest = app.key(KeyFor::System, "events:ingest").await;
    for (identity, expected) in [(Some(sidecar_cert), 404), (None, 503)] {
        let key = coffer::domain::auth::ApiKey::parse(&ingest).unwrap();
        let sidecar = Standalone::bind(
            StandaloneConfig {
                grpc_endpoint: format!("https://localhost:{}", app.addr.port()),
                upstream_tls: UpstreamTls {
                    ca: Some(server_ca_file.clone()),
                    identity,
                },
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
        let addr = sidecar.http_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(sidecar.run(async move {
            let _ = stopped.await;
        }));
        let (status, body) = post_webhook(addr, "nope").await;
        assert_eq!(status, expected, "{body}");
        let _ = stop.send(());
        running.await.unwrap();
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_without_dropping_open_ones() {
    let old_ca = Ca::new("old ca");
    let new_ca = Ca::new("new ca");
    let files = Files::new();
    let (cert, key) = old_ca.leaf("localhost");
    let tls = TlsFiles {
        cert: files.write("server.pem", &cert),
        key: files.write("server.key", &key),
        client_ca: None,
    };
    let app = spawn_tls(tls.clone()).await;
    let open = connect(&app, &old_ca.pem(), None).await.unwrap();
    healthy(open.clone()).await.unwrap();
    assert!(
        connect(&app, &new_ca.pem(), None).await.is_err(),
        "the new CA is not trusted yet"
    );

    // Rotate: the key first, then the certificate (a reload in between fails and keeps the
    // old pair, so clients never see a mismatch).
    let (cert, key) = new_ca.leaf("localhost");
    write_to(&tls.key, &key);
    write_to(&tls.cert, &cert);
    assert!(
        eventually(Duration::from_secs(20), || async {
            connect(&app, &new_ca.pem(), None).await.is_ok()
        })
        .await,
        "the rotated certificate was never served"
    );
    // The connection opened before the rotation is still up.
    healthy(open.clone()).await.unwrap();

    // A broken rotation (garbage for a key) keeps the working certificate.
    write_to(
        &tls.key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    let failed = || async {
        let metrics = crate::helpers::http_get(app.admin_addr, "/metrics").await.1;
        metrics.contains("coffer_tls_reloads_total{outcome=\"failed\"}")
    };
    assert!(eventually(Duration::from_secs(20), failed).await);
    connect(&app, &new_ca.pem(), None)
        .await
        .expect("the last good certificate is still served");
    healthy(open).await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_mismatched_certificate_stops_the_server_from_starting() {
    let ca = Ca::new("ca");
    let files = Files::new();
    let (cert, _) = ca.leaf("localhost");
    let (_, other_key) = ca.leaf("localhost");
    let db = crate::helpers::TestDb::new().await;
    let pool = db.pool().await;
    for tls in [
        TlsFiles {
            cert: files.dir.join("absent.pem"),
            key: files.write("k1.pem", &other_key),
            client_ca: None,
        },
        TlsFiles {
            cert: files.write("c.pem", &cert),
            key: files.write("k2.pem", &other_key),
            client_ca: None,
        },
    ] {
        let config = coffer::startup::ServerConfig {
            tls: Some(tls),
            ..test_config()
        };
        let e = coffer::startup::Server::bind(config, pool.clone())
            .await
            .err()
            .expect("refused");
        let text = coffer::grpc::status::chain(&e);
        assert!(
            text.contains("absent.pem") || text.contains("do not go together"),
            "{text}"
        );
    }
}

fn write_to(path: &Path, pem: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// POSTs an empty signed-looking delivery to a sidecar: (status, body).
async fn post_webhook(addr: std::net::SocketAddr, account: &str) -> (u16, String) {
    let client = coffer::providers::outbound::client_builder()
        .build()
        .unwrap();
    let response = client
        .post(format!("http://{addr}/webhooks/{account}"))
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", "1")
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}
