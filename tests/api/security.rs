//! Who may import into which account, over TLS, with limits: bearer tokens scoped to accounts
//! on every RPC (streaming ones included), a tokens file read again when it changes, TLS and
//! mutual TLS with certificates made here (rcgen) and rotated on disk, a stalled upload, and
//! both concurrency limits.

use std::path::Path;
use std::time::{Duration, Instant};

use bulk_import::app::READINESS_SERVICE;
use bulk_import::auth::digest;
use bulk_import::cli::Bearer;
use bulk_import::proto::import_service_client::ImportServiceClient;
use bulk_import::proto::{self, ImportStatus};
use futures::StreamExt;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

type Client = ImportServiceClient<InterceptedService<Channel, Bearer>>;

/// The code of a call's error; `None` when it succeeded.
fn code<T>(result: Result<T, tonic::Status>) -> Option<Code> {
    result.err().map(|e| e.code())
}

/// A tokens file: `(name, token, accounts)`.
pub(crate) fn tokens_file(path: &Path, tokens: &[(&str, &str, &[&str])]) {
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

/// The `ErrorInfo` of a status: its reason and domain.
fn reason(status: &tonic::Status) -> Option<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| (info.reason, info.domain))
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
        // Through the one mapping of errors, with its ErrorInfo.
        assert_eq!(reason(&refused), Some(("UNAUTHENTICATED".into(), "bulkimport.v1".into())));

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
        // Every RPC that names an account checks it, through one helper (`grpc::auth::scoped`).
        let globex = || "globex".to_owned();
        let x = || "x".to_owned();
        let answers = [
            acme.cancel_import(proto::CancelImportRequest { account_id: globex(), import_id: x() })
                .await
                .map(|_| ()),
            acme.revert_import(proto::RevertImportRequest { account_id: globex(), import_id: x() })
                .await
                .map(|_| ()),
            acme.get_import_error_report(proto::GetImportErrorReportRequest {
                account_id: globex(),
                import_id: x(),
            })
            .await
            .map(|_| ()),
            acme.list_users(proto::ListUsersRequest { account_id: globex(), ..Default::default() })
                .await
                .map(|_| ()),
        ];
        for answer in answers {
            let status = answer.unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert_eq!(reason(&status).unwrap().0, "ACCOUNT_NOT_ALLOWED");
        }
        let denied_upload = upload(&mut acme, "globex", "theirs").await.unwrap_err();
        assert_eq!(reason(&denied_upload).unwrap().0, "ACCOUNT_NOT_ALLOWED");

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

    /// A tokens file emptied (cut short while it was written) is refused like a broken one:
    /// the tokens read before stay. A server does not start on an empty file unless it is
    /// told to (`--allow-empty-tokens`, or `allow_empty = true` in the file).
    async fn an_empty_tokens_file_locks_nobody_out(backend) {
        let dir = tempfile::tempdir().unwrap();
        let app = spawn_with_tokens(backend, dir.path()).await;
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "").unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            list(&mut client(&app, Some("acme-secret")), "acme").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let database = TestDatabase::new(backend).await;
        let mut args = serve_args(&database.url);
        args.auth_tokens_file = Some(empty.clone());
        let refused = bulk_import::app::Application::bind(args.clone()).await.err().unwrap();
        assert!(refused.to_string().contains("lists no token"), "{refused}");
        args.allow_empty_tokens = true;
        assert!(bulk_import::app::Application::bind(args.clone()).await.is_ok());
        std::fs::write(&empty, "allow_empty = true\n").unwrap();
        args.allow_empty_tokens = false;
        assert!(bulk_import::app::Application::bind(args).await.is_ok());
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

        // Empty chunks every half second are no bytes of the file: the upload stalls all the
        // same.
        let dodging = crate::lifecycle::open_upload(&app, ACCOUNT, "dodging").await;
        dodging.tx.send(chunk(HEADER.as_bytes())).await.unwrap();
        let quiet_since = Instant::now();
        let keepalive = tokio::spawn(async move {
            for _ in 0..20 {
                if dodging.tx.send(chunk(b"")).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let reply = dodging.call.await.unwrap().unwrap_err();
        assert_eq!(reply.code(), Code::DeadlineExceeded, "{reply:?}");
        assert!(quiet_since.elapsed() < Duration::from_secs(5), "{:?}", quiet_since.elapsed());
        keepalive.abort();
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

/// Refusals are in the log for an audit: who (the token's name, the peer), where (the
/// account), why; a flood of them is one line a second with the count left out; the token
/// itself never. A refused upload names its account and who asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    tokens_file(&path, &[("hr-sync", "tok-audit-secret-1", &["acme"])]);
    let database = TestDatabase::sqlite();
    let log = dir.path().join("server.log");
    let server = crate::support::Server::start_with(
        Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &[
            "--auth-tokens-file",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        Some(&log),
    )
    .await;
    let client = |token: &str| -> Client {
        ImportServiceClient::with_interceptor(
            server.channel.clone(),
            Bearer::new(Some(token)).unwrap(),
        )
    };
    let get = |account: &str| proto::GetImportRequest {
        account_id: account.into(),
        import_id: "x".into(),
        ..Default::default()
    };
    // An upload into an account the token does not cover, then a GetImport there.
    let messages = upload_messages(
        "other",
        "denied",
        "users.csv",
        HEADER.as_bytes(),
        8,
        finish(),
    );
    let denied = client("tok-audit-secret-1")
        .upload_import(tokio_stream::iter(messages))
        .await;
    assert_eq!(code(denied), Some(Code::PermissionDenied));
    // A flood of calls with a wrong token.
    for _ in 0..50 {
        let refused = client("tok-audit-wrong-2").get_import(get("acme")).await;
        assert_eq!(code(refused), Some(Code::Unauthenticated));
    }
    // An upload refused before its import exists.
    let mut messages =
        upload_messages("acme", "retry", "users.csv", HEADER.as_bytes(), 8, finish());
    if let Some(proto::upload_import_request::Payload::Metadata(m)) = &mut messages[0].payload {
        m.retry_of_import_id = "no-such-import".into();
    }
    let refused = client("tok-audit-secret-1")
        .upload_import(tokio_stream::iter(messages))
        .await;
    assert_eq!(code(refused), Some(Code::InvalidArgument));
    server.stop();

    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let with = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .map(|l| &l["fields"])
            .collect()
    };
    let denied = with("refused a call: PERMISSION_DENIED");
    assert_eq!(denied.len(), 1, "{logged}");
    assert_eq!(denied[0]["token"], "hr-sync");
    assert_eq!(denied[0]["account_id"], "other");
    assert_eq!(denied[0]["rpc"], "UploadImport");
    let unauthenticated = with("refused a call: UNAUTHENTICATED");
    // 50 refusals in well under a second or two: one line, or two across a second's edge,
    // and together with the lines left out they count every refusal.
    assert!(
        (1..=2).contains(&unauthenticated.len()),
        "{unauthenticated:?}"
    );
    let counted: u64 = unauthenticated
        .iter()
        .map(|l| 1 + l["suppressed"].as_u64().unwrap())
        .sum();
    assert!((1..=50).contains(&counted), "{unauthenticated:?}");
    assert!(
        unauthenticated[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{unauthenticated:?}"
    );
    assert!(
        unauthenticated[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{unauthenticated:?}"
    );
    let refused = with("upload refused");
    assert_eq!(refused.len(), 1, "{logged}");
    assert_eq!(refused[0]["account_id"], "acme");
    assert_eq!(refused[0]["import_id"], "retry");
    assert_eq!(refused[0]["created_by"], "hr-sync");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no-such-import"),
        "{refused:?}"
    );
    assert!(!logged.contains("tok-audit-secret"), "{logged}");
    assert!(!logged.contains("tok-audit-wrong"), "{logged}");
}
