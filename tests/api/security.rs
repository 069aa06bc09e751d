//! Who may import into which account, over TLS, with limits: bearer tokens scoped to accounts
//! on every RPC (streaming ones included), a tokens file read again when it changes, TLS and
//! mutual TLS with certificates made here (rcgen) and rotated on disk, a stalled upload, and
//! both concurrency limits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulk_import::app::{Application, READINESS_SERVICE};
use bulk_import::auth::digest;
use bulk_import::cli::Bearer;
use bulk_import::proto::import_service_client::ImportServiceClient;
use bulk_import::proto::{self, ImportStatus};
use futures::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

type Client = ImportServiceClient<InterceptedService<Channel, Bearer>>;

/// The code of a call's error; `None` when it succeeded.
fn code<T>(result: Result<T, tonic::Status>) -> Option<Code> {
    result.err().map(|e| e.code())
}

/// A tokens file: `(name, token, accounts)`.
fn tokens_file(path: &Path, tokens: &[(&str, &str, &[&str])]) {
    let text: String = tokens
        .iter()
        .map(|(name, token, accounts)| {
            let accounts: Vec<String> = accounts.iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\naccounts = [{}]\n\n",
                digest(token),
                accounts.join(", ")
            )
        })
        .collect();
    // Written aside and renamed, as the kubelet swaps a Secret's files.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(partial, path).unwrap();
}

fn client(app: &TestApp, token: Option<&str>) -> Client {
    ImportServiceClient::with_interceptor(app.channel(), Bearer::new(token).unwrap())
}

async fn upload(
    client: &mut Client,
    account: &str,
    id: &str,
) -> Result<proto::Import, tonic::Status> {
    let file = format!("{HEADER}{id}@example.com,A,B,,,\n");
    let messages = upload_messages(account, id, "users.csv", file.as_bytes(), 16, finish());
    Ok(client
        .upload_import(tokio_stream::iter(messages))
        .await?
        .into_inner()
        .import
        .unwrap())
}

async fn get(client: &mut Client, account: &str, id: &str) -> Result<proto::Import, tonic::Status> {
    let request = proto::GetImportRequest {
        account_id: account.into(),
        import_id: id.into(),
        ..Default::default()
    };
    Ok(client
        .get_import(request)
        .await?
        .into_inner()
        .import
        .unwrap())
}

async fn list(client: &mut Client, account: &str) -> Result<Vec<proto::Import>, tonic::Status> {
    let request = proto::ListImportsRequest {
        account_id: account.into(),
        ..Default::default()
    };
    Ok(client.list_imports(request).await?.into_inner().imports)
}

async fn watch(
    client: &mut Client,
    account: &str,
    id: &str,
) -> Result<proto::Import, tonic::Status> {
    let request = proto::WatchImportRequest {
        account_id: account.into(),
        import_id: id.into(),
    };
    let mut stream = client.watch_import(request).await?.into_inner();
    let first = stream.next().await.expect("a message")?;
    Ok(first.import.unwrap())
}

async fn template(client: &mut Client) -> Result<(), tonic::Status> {
    client
        .get_import_template(proto::GetImportTemplateRequest::default())
        .await
        .map(|_| ())
}

async fn spawn_with_tokens(backend: Backend, dir: &Path) -> TestApp {
    let path = dir.join("tokens.toml");
    tokens_file(
        &path,
        &[
            ("hr-sync", "acme-secret", &["acme"]),
            ("ops", "all-secret", &["*"]),
        ],
    );
    spawn_app_with(backend, |args| args.auth_tokens_file = Some(path)).await
}

backend_tests! {
    /// Every RPC checks the token: none or a wrong one is UNAUTHENTICATED, an account outside
    /// the token's list PERMISSION_DENIED. Health stays open for the probes.
    async fn every_rpc_checks_the_token_and_its_accounts(backend) {
        let dir = tempfile::tempdir().unwrap();
        let app = spawn_with_tokens(backend, dir.path()).await;
        let mut acme = client(&app, Some("acme-secret"));
        let mut ops = client(&app, Some("all-secret"));
        for token in [None, Some("wrong-secret")] {
            let mut anonymous = client(&app, token);
            let unauthenticated = Some(Code::Unauthenticated);
            assert_eq!(code(upload(&mut anonymous, "acme", "anon").await), unauthenticated);
            assert_eq!(code(get(&mut anonymous, "acme", "anon").await), unauthenticated);
            assert_eq!(code(list(&mut anonymous, "acme").await), unauthenticated);
            assert_eq!(code(watch(&mut anonymous, "acme", "anon").await), unauthenticated);
            assert_eq!(code(template(&mut anonymous).await), unauthenticated);
        }
        // Nothing was created by the refused upload.
        assert!(list(&mut ops, "acme").await.unwrap().is_empty());
        let refused = upload(&mut client(&app, Some("wrong-secret")), "acme", "x").await.unwrap_err();
        assert!(!refused.message().contains("wrong-secret"), "{}", refused.message());

        // The token's own account.
        let import = upload(&mut acme, "acme", "mine").await.unwrap();
        assert_eq!(import.created_by, "hr-sync");
        assert_eq!(get(&mut acme, "acme", "mine").await.unwrap().rows_imported, 1);
        assert_eq!(list(&mut acme, "acme").await.unwrap().len(), 1);
        assert_eq!(watch(&mut acme, "acme", "mine").await.unwrap().import_id, "mine");
        template(&mut acme).await.unwrap();

        // Another account: refused, before any byte of the upload is read.
        let denied = Some(Code::PermissionDenied);
        assert_eq!(code(upload(&mut acme, "globex", "theirs").await), denied);
        assert_eq!(code(get(&mut acme, "globex", "x").await), denied);
        assert_eq!(code(list(&mut acme, "globex").await), denied);
        assert_eq!(code(watch(&mut acme, "globex", "x").await), denied);
        assert!(list(&mut ops, "globex").await.unwrap().is_empty());

        // "*": every account; another token's imports are visible to it, not the reverse.
        upload(&mut ops, "globex", "theirs").await.unwrap();
        assert_eq!(code(get(&mut acme, "globex", "theirs").await), denied);
        assert_eq!(get(&mut ops, "acme", "mine").await.unwrap().created_by, "hr-sync");

        let mut health = HealthClient::new(app.channel());
        let status = health
            .check(HealthCheckRequest { service: READINESS_SERVICE.into() })
            .await
            .unwrap();
        assert_eq!(status.into_inner().status, 1);
    }
}

backend_tests! {
    /// The tokens file is read again when it changes; a broken new file keeps the old tokens.
    async fn a_tokens_file_changed_while_the_server_runs(backend) {
        let dir = tempfile::tempdir().unwrap();
        let app = spawn_with_tokens(backend, dir.path()).await;
        let path = dir.path().join("tokens.toml");
        tokens_file(&path, &[("rotated", "new-secret", &["acme"])]);
        let start = Instant::now();
        while list(&mut client(&app, Some("new-secret")), "acme").await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(15), "the new token never worked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let old = list(&mut client(&app, Some("acme-secret")), "acme").await.unwrap_err();
        assert_eq!(old.code(), Code::Unauthenticated);

        std::fs::write(&path, "[[tokens]]\nname = \"broken\"\n").unwrap();
        // Three reloads' worth of time: the old tokens stay.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            list(&mut client(&app, Some("new-secret")), "acme").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

backend_tests! {
    /// An upload that sends nothing for the idle timeout ends, near it, with nothing imported.
    async fn a_stalled_upload_is_ended_near_the_idle_timeout(backend) {
        let app = spawn_app_with(backend, |args| args.upload_idle_timeout = 1).await;
        let upload = crate::lifecycle::open_upload(&app, ACCOUNT, "stalled").await;
        upload.tx.send(chunk(HEADER.as_bytes())).await.unwrap();
        upload.tx.send(chunk(b"ada@example.com,Ada,,,,\n")).await.unwrap();
        let quiet_since = Instant::now();
        let reply = upload.call.await.unwrap().unwrap_err();
        let took = quiet_since.elapsed();
        assert_eq!(reply.code(), Code::DeadlineExceeded, "{reply:?}");
        assert!(reply.message().contains("nothing arrived for 1 s"), "{}", reply.message());
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
        let import = app.get(ACCOUNT, "stalled").await.unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(import.error_message.starts_with("upload stalled"), "{}", import.error_message);
        assert_eq!(app.users_of(ACCOUNT, "stalled").await, 0);
        drop(upload.tx);
    }
}

backend_tests! {
    /// Past either concurrency limit: RESOURCE_EXHAUSTED naming it, with no import created,
    /// while other accounts go on.
    async fn both_concurrency_limits_answer_resource_exhausted(backend) {
        let app = spawn_app_with(backend, |args| {
            args.max_concurrent_uploads = 2;
            args.max_concurrent_uploads_per_account = 1;
        })
        .await;
        let first = crate::lifecycle::open_upload(&app, "a", "a-1").await;
        crate::lifecycle::wait_for_import(&app, "a", "a-1").await;

        let same_account = app.upload("a", "a-2", HEADER.as_bytes(), 100).await.unwrap_err();
        assert_eq!(same_account.code(), Code::ResourceExhausted);
        assert!(
            same_account.message().contains("--max-concurrent-uploads-per-account"),
            "{}",
            same_account.message()
        );
        assert!(same_account.message().contains("retry later"));
        assert_eq!(app.get("a", "a-2").await.unwrap_err().code(), Code::NotFound);

        let other = crate::lifecycle::open_upload(&app, "b", "b-1").await;
        crate::lifecycle::wait_for_import(&app, "b", "b-1").await;
        let third = app.upload("c", "c-1", HEADER.as_bytes(), 100).await.unwrap_err();
        assert_eq!(third.code(), Code::ResourceExhausted);
        assert!(third.message().contains("(--max-concurrent-uploads)"), "{}", third.message());
        assert_eq!(app.get("c", "c-1").await.unwrap_err().code(), Code::NotFound);

        for (upload, account) in [(first, "a"), (other, "b")] {
            let file = format!("{HEADER}{account}@example.com,A,,,,\n");
            upload.tx.send(chunk(file.as_bytes())).await.unwrap();
            upload.tx.send(finish_message(finish())).await.unwrap();
            drop(upload.tx);
            let import = upload.call.await.unwrap().unwrap();
            assert_eq!(import.rows_imported, 1, "{account}");
        }
        // Places come back.
        app.upload("c", "c-1", HEADER.as_bytes(), 100).await.unwrap();
    }
}

/// A certificate authority made for a test, and the PEM files it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
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
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
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
struct TlsServer {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _database: TestDatabase,
}

impl TlsServer {
    async fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        let database = TestDatabase::sqlite();
        let mut args = serve_args(&database.url);
        args.tls_cert = Some(cert.to_owned());
        args.tls_key = Some(key.to_owned());
        args.tls_client_ca = client_ca.map(Path::to_owned);
        let app = Application::bind(args).await.unwrap();
        let port = app.local_addr().port();
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

    async fn stop(mut self) {
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

/// Tokens never reach the log, even at debug level: not when they work, not when they fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_ever_logged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    tokens_file(&path, &[("hr-sync", "tok-visible-nowhere-1", &["acme"])]);
    let database = TestDatabase::sqlite();
    let log = dir.path().join("server.log");
    let server = crate::support::Server::start_with(
        Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &["--auth-tokens-file", path.to_str().unwrap()],
        Some(&log),
    )
    .await;
    for (token, import_id) in [
        ("tok-visible-nowhere-1", "first"),
        ("tok-visible-nowhere-2", "second"),
    ] {
        let mut client = ImportServiceClient::with_interceptor(
            server.channel.clone(),
            Bearer::new(Some(token)).unwrap(),
        );
        let file = format!("{HEADER}ada@example.com,Ada,,,,\n");
        let messages =
            upload_messages("acme", import_id, "users.csv", file.as_bytes(), 8, finish());
        let _ = client.upload_import(tokio_stream::iter(messages)).await;
    }
    server.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("upload started"),
        "the log was written: {logged}"
    );
    assert!(logged.contains("hr-sync"), "the token's name is: {logged}");
    assert!(!logged.contains("tok-visible-nowhere"), "{logged}");
    assert!(!logged.contains("ada@example.com"), "{logged}");
    // A file is not a terminal: no colour codes in it.
    assert!(!logged.contains('\u{1b}'), "{logged}");
}

/// The service's own client: `--token` on a server with tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with_tokens(Backend::Sqlite, dir.path()).await;
    let server = format!("http://{}", app.addr);
    let run = |token: Option<&'static str>| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bulk-import"));
            command.args(["list", "--server", &server, "--account", "acme"]);
            if let Some(token) = token {
                command.args(["--token", token]);
            }
            command.output().unwrap()
        })
    };
    let with = run(Some("acme-secret")).await.unwrap();
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let without = run(None).await.unwrap();
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("bearer token"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
}
