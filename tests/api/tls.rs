//! TLS and mutual TLS, with certificates made here (rcgen) and rotated on disk; and what
//! silent sockets and failed handshakes may not do to real clients.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulk_import::app::Application;
use bulk_import::proto;
use bulk_import::proto::import_service_client::ImportServiceClient;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::helpers::*;

/// A certificate authority made for a test, and the PEM files it signs.
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
        Self {
            ca,
            dir: dir.to_owned(),
        }
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(self.ca.pem())
    }

    /// A certificate for `names`, written to `<file>.pem` and `<file>.key`; returns the paths.
    pub(crate) fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.issue_with(file, names, |_| {})
    }

    /// `issue`, with the parameters changed by `edit` first (say its validity).
    pub(crate) fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file);
        edit(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A server on TLS: its port and what stops it.
pub(crate) struct TlsServer {
    pub(crate) port: u16,
    /// `/metrics`, when the server was started with it.
    metrics: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _database: TestDatabase,
}

/// The serve flags for a TLS server with these files.
fn tls_args(database: &TestDatabase, cert: &Path, key: &Path) -> bulk_import::config::ServeArgs {
    let mut args = serve_args(&database.url);
    args.tls_cert = Some(cert.to_owned());
    args.tls_key = Some(key.to_owned());
    args
}

impl TlsServer {
    pub(crate) async fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        Self::start_with(cert, key, |args| {
            args.tls_client_ca = client_ca.map(Path::to_owned)
        })
        .await
    }

    async fn start_with(
        cert: &Path,
        key: &Path,
        edit: impl FnOnce(&mut bulk_import::config::ServeArgs),
    ) -> Self {
        let database = TestDatabase::sqlite();
        let mut args = tls_args(&database, cert, key);
        edit(&mut args);
        let app = Application::bind(args).await.unwrap();
        let port = app.local_addr().port();
        let metrics = app.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            port,
            metrics,
            stop: Some(stop),
            server,
            _database: database,
        }
    }

    /// A channel to the server trusting `ca`, with `identity` when given.
    async fn connect(
        &self,
        ca: Certificate,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(ca)
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap();
    }
}

/// Whether a call over `channel` works: the template needs no account.
async fn answers(channel: Channel) -> Result<(), tonic::Status> {
    let mut client = ImportServiceClient::new(channel);
    client
        .get_import_template(proto::GetImportTemplateRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusted_clients_refuses_plaintext_and_rotates_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new(dir.path(), "first");
    let (cert, key) = first.issue("server", &["localhost", "127.0.0.1"]);
    let server = TlsServer::start(&cert, &key, None).await;

    let channel = server.connect(first.ca(), None).await.unwrap();
    answers(channel).await.unwrap();

    // A plaintext client on the TLS port fails cleanly, and the server goes on.
    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    assert!(answers(plaintext).await.is_err());
    answers(server.connect(first.ca(), None).await.unwrap())
        .await
        .unwrap();

    // The certificate files are replaced (another CA): new connections get the new one.
    let second = Pki::new(dir.path(), "second");
    let (new_cert, new_key) = second.issue("server-next", &["localhost", "127.0.0.1"]);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let start = Instant::now();
    loop {
        if let Ok(channel) = server.connect(second.ca(), None).await
            && answers(channel).await.is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.connect(first.ca(), None).await.is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_of_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new(dir.path(), "servers");
    let clients = Pki::new(dir.path(), "clients");
    let strangers = Pki::new(dir.path(), "strangers");
    let (cert, key) = servers.issue("server", &["localhost"]);
    let server = TlsServer::start(&cert, &key, Some(&dir.path().join("clients-ca.pem"))).await;

    let identity = |pki: &Pki, name: &str| {
        let (cert, key) = pki.issue(name, &[name]);
        Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
    };
    let trusted = server
        .connect(servers.ca(), Some(identity(&clients, "hr-sync")))
        .await
        .unwrap();
    answers(trusted).await.unwrap();
    // No certificate, or one of another CA: the handshake fails; nothing gets through.
    for client in [None, Some(identity(&strangers, "mallory"))] {
        let refused = match server.connect(servers.ca(), client).await {
            Ok(channel) => answers(channel).await.is_err(),
            Err(_) => true,
        };
        assert!(refused);
    }
    server.stop().await;
}

/// 300 connections to the TLS port that never send a byte: a client with a valid certificate
/// arriving after them is served within a second, and they are closed within a few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_delay_a_real_tls_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "slow");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let server = TlsServer::start(&cert, &key, None).await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(
            TcpStream::connect(("127.0.0.1", server.port))
                .await
                .unwrap(),
        );
    }
    let start = Instant::now();
    let channel = server.connect(pki.ca(), None).await.unwrap();
    answers(channel).await.unwrap();
    let took = start.elapsed();
    println!("300 silent sockets on the TLS port: a real client was served in {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "a real client waited {took:?}"
    );
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut socket, &mut byte),
        )
        .await
        .expect("the server closes a silent socket");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    server.stop().await;
}

/// An expired certificate, or one not valid yet, stops the server at start with the reason
/// and what to do; the error names the file and the certificate.
#[tokio::test]
async fn a_certificate_outside_its_validity_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "dates");
    let database = TestDatabase::sqlite();
    let (expired, key) = pki.issue_with("expired", &["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let Err(error) = Application::bind(tls_args(&database, &expired, &key)).await else {
        panic!("an expired certificate was accepted");
    };
    let error = error.to_string();
    assert!(error.contains(&expired.display().to_string()), "{error}");
    assert!(
        error.contains("\"CN=expired\" expired at 2021-01-01T00:00:00Z"),
        "{error}"
    );
    assert!(error.contains("renewed certificate"), "{error}");

    let (early, key) = pki.issue_with("early", &["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2090, 1, 1);
        p.not_after = rcgen::date_time_ymd(2091, 1, 1);
    });
    let Err(error) = Application::bind(tls_args(&database, &early, &key)).await else {
        panic!("a certificate valid from 2090 was accepted");
    };
    let error = error.to_string();
    assert!(
        error.contains("\"CN=early\" is not valid before 2090-01-01T00:00:00Z"),
        "{error}"
    );
}

/// A rotation to an expired certificate is refused and the old one stays served; the metrics
/// show the refusal and when the served chain expires, and a good rotation after it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_to_an_expired_certificate_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new(dir.path(), "first");
    let (cert, key) = first.issue_with("server", &["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    });
    let server = TlsServer::start_with(&cert, &key, |args| {
        args.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let metrics = server.metrics.unwrap();
    let expiration = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("bulk_import_tls_certificate_expiration_timestamp_seconds{"))
            .map(str::to_owned)
    };
    // The watcher reports the served chain as soon as it starts.
    let text = wait_for_metric(metrics, |text| expiration(text).is_some()).await;
    assert_eq!(
        expiration(&text).unwrap(),
        "bulk_import_tls_certificate_expiration_timestamp_seconds{subject=\"CN=server\"} 4070908800"
    );

    let second = Pki::new(dir.path(), "second");
    let (expired, expired_key) = second.issue_with("server-expired", &["localhost"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    std::fs::copy(&expired_key, &key).unwrap();
    std::fs::copy(&expired, &cert).unwrap();
    let text = wait_for_metric(metrics, |text| {
        text.contains("bulk_import_tls_reloads_total{result=\"refused\"} 1")
    })
    .await;
    assert!(!text.contains("result=\"loaded\""), "{text}");
    assert!(
        text.contains("{subject=\"CN=server\"} 4070908800"),
        "{text}"
    );
    answers(server.connect(first.ca(), None).await.unwrap())
        .await
        .unwrap();
    assert!(server.connect(second.ca(), None).await.is_err());

    // Renewed: served from the next look at the files.
    let (renewed, renewed_key) = second.issue("server-renewed", &["localhost"]);
    std::fs::copy(&renewed_key, &key).unwrap();
    std::fs::copy(&renewed, &cert).unwrap();
    let text = wait_for_metric(metrics, |text| {
        text.contains("bulk_import_tls_reloads_total{result=\"loaded\"} 1")
    })
    .await;
    assert!(text.contains("{subject=\"CN=server-renewed\"}"), "{text}");
    assert!(!text.contains("{subject=\"CN=server\"}"), "{text}");
    answers(server.connect(second.ca(), None).await.unwrap())
        .await
        .unwrap();
    server.stop().await;
}

/// The metrics text once `ready` says it is, scraped every 50 ms for at most 10 s.
async fn wait_for_metric(addr: std::net::SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (status, text) = crate::metrics::http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if ready(&text) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the metrics never showed it:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Failed handshakes are logged at warn with the peer's address and the reason, at most
/// once a second with the count left out: a plaintext client and a client without the
/// required certificate, against the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_logged_with_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "logged");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let database = TestDatabase::sqlite();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (grpc, metrics) = (free(), free());
    let log = dir.path().join("server.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bulk-import"))
        .args(["serve", "--listen", &grpc.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--console-listen", "off"])
        .args(["--database-url", &database.url, "--log-format", "json"])
        .args(["--tls-cert", cert.to_str().unwrap()])
        .args(["--tls-key", key.to_str().unwrap()])
        .args([
            "--tls-client-ca",
            dir.path().join("logged-ca.pem").to_str().unwrap(),
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while crate::metrics::try_http_get(metrics, "/readyz").await != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A plaintext client, then ten clients with no certificate.
    let plaintext = Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    assert!(answers(plaintext).await.is_err());
    for _ in 0..10 {
        let tls = ClientTlsConfig::new()
            .ca_certificate(pki.ca())
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{grpc}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        assert!(answers(channel).await.is_err());
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let failed: Vec<serde_json::Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "TLS handshake failed; the connection is closed")
        .collect();
    assert!((1..=3).contains(&failed.len()), "{logged}");
    let first = &failed[0]["fields"];
    assert_eq!(failed[0]["level"], "WARN");
    assert!(
        first["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{first}"
    );
    assert!(
        first["reason"].as_str().unwrap().contains("plaintext"),
        "{first}"
    );
    let counted: u64 = failed
        .iter()
        .map(|l| 1 + l["fields"]["suppressed"].as_u64().unwrap())
        .sum();
    assert!(counted <= 11, "{logged}");
}

/// Over TLS too: clients that finish their handshake and then send one byte of HTTP/2's
/// preface take no place; with `--max-connections 16` and 50 of them, a real client is served
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_that_stop_after_their_handshake_take_no_place() {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "stall");
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let server = TlsServer::start_with(&cert, &key, |args| args.max_connections = 16).await;
    let mut roots = rustls::RootCertStore::empty();
    for ca in
        rustls_pki_types::CertificateDer::pem_file_iter(dir.path().join("stall-ca.pem")).unwrap()
    {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let tcp = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"P").await.unwrap();
        tls.flush().await.unwrap();
        stalled.push(tls);
    }
    let start = Instant::now();
    answers(server.connect(pki.ca(), None).await.unwrap())
        .await
        .unwrap();
    let took = start.elapsed();
    println!("50 TLS clients stalled after their handshake: a real client was served in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(stalled);
    server.stop().await;
}
