//! The client's command line and connections, as a script and a person meet them: usage
//! errors with their own exit code, a bare `host:port`, servers that never answer, and TLS
//! failures named with their fix.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::cli::bulk_import;
use crate::helpers::*;
use crate::tls::{Pki, TlsServer};

/// A typo is exit 64, never 2 (Completed - Partial) nor 1; help and the version exit 0.
#[tokio::test]
async fn usage_errors_exit_64() {
    let usage = [
        vec![
            "upload",
            "--account",
            "a",
            "--on-conflict",
            "bogus",
            "x.csv",
        ],
        vec!["upload", "--account", "a"],
        vec!["list"],
        vec!["list", "--account", "a", "--timeout", "0s"],
        vec!["list", "--account", "a", "--connect-timeout", "soon"],
        vec!["lsit"],
        vec!["serve", "--max-upload-bytes", "0"],
        vec!["serve", "--max-connections", "0"],
        vec![],
    ];
    for args in usage {
        let (command, rest) = args.split_first().map_or(("", &[][..]), |(c, r)| (*c, r));
        let ran = if command.is_empty() {
            run_bare(&[]).await
        } else {
            bulk_import(None, command, rest).await
        };
        assert_eq!(ran.code, 64, "{args:?}: {}", ran.err);
        assert!(ran.out.is_empty(), "{args:?}: {}", ran.out);
    }
    let ran = bulk_import(None, "list", &["--account", "a", "--timeout", "0s"]).await;
    assert!(ran.err.contains("must be more than zero"), "{}", ran.err);
    // A --server that is no address: found after clap, still a usage error.
    let ran = bulk_import(Some("http://bad host"), "list", &[]).await;
    assert_eq!(ran.code, 64, "{}", ran.err);
    assert!(ran.err.contains("give host:port"), "{}", ran.err);
    for asked in [["--help"], ["--version"]] {
        let ran = run_bare(&asked).await;
        assert_eq!(ran.code, 0, "{asked:?}");
        assert!(!ran.out.is_empty());
    }
    let ran = run_bare(&["--help"]).await;
    assert!(ran.out.contains("64"), "{}", ran.out);
}

/// `bulk-import ARGS...` with no command of the test's making.
async fn run_bare(args: &[&str]) -> crate::cli::Ran {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulk-import"))
            .args(&args)
            .output()
            .unwrap();
        crate::cli::Ran {
            code: output.status.code().unwrap(),
            out: String::from_utf8_lossy(&output.stdout).into_owned(),
            err: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// The address as the server prints it, without a scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_scheme_is_reached() {
    let app = spawn_app(Backend::Sqlite).await;
    let ran = bulk_import(Some(&app.addr.to_string()), "list", &["--json"]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    assert_eq!(ran.out.trim(), "{\"imports\":[]}");
}

/// `--limit` is how many imports are shown, newest first, whatever the server's page size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_the_newest_limit_imports() {
    let app = spawn_app(Backend::Sqlite).await;
    for i in 0..5 {
        app.upload(ACCOUNT, &format!("import-{i}"), HEADER.as_bytes(), 100)
            .await
            .unwrap();
    }
    let ids = |out: &str| -> Vec<String> {
        let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        json["imports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["import_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let server = app.addr.to_string();
    let ran = bulk_import(Some(&server), "list", &["--json", "--limit", "3"]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    assert_eq!(ids(&ran.out), ["import-4", "import-3", "import-2"]);
    let ran = bulk_import(Some(&server), "list", &["--json", "--limit", "10"]).await;
    assert_eq!(ids(&ran.out).len(), 5);
    let ran = bulk_import(Some(&server), "list", &["--limit", "0"]).await;
    assert_eq!(ran.code, 64, "{}", ran.err);
}

/// A port that accepts TCP and never answers: the command ends at `--connect-timeout` with
/// what to check. A server that answers the connection and then never answers a call: the
/// command ends at `--timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_never_answer_do_not_hang_the_client() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            kept.push(socket);
        }
    });
    let start = Instant::now();
    let ran = bulk_import(
        Some(&silent_addr.to_string()),
        "list",
        &["--connect-timeout", "1s"],
    )
    .await;
    let took = start.elapsed();
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.err,
        format!(
            "error: cannot reach http://{silent_addr}: no answer within 1s \
             (--connect-timeout); is the address right, and is it a bulk-import server?\n"
        )
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    held.abort();

    // Health answers; every other call waits for ever.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = listener.local_addr().unwrap();
    let (_, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health)
        .into_axum_router()
        .fallback(std::future::pending::<()>);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(routes))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    for command in [vec!["list"], vec!["get", "some-import"]] {
        let (name, rest) = command.split_first().unwrap();
        let mut args = rest.to_vec();
        args.extend(["--timeout", "1s"]);
        let start = Instant::now();
        let ran = bulk_import(Some(&format!("http://{hung}")), name, &args).await;
        let took = start.elapsed();
        assert_eq!(ran.code, 1, "{command:?}");
        assert_eq!(
            ran.err,
            "error: DEADLINE_EXCEEDED: the server did not answer within 1s (--timeout); it \
             may be overloaded, or this is not a bulk-import server\n"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    server.abort();
}

/// Each way a TLS connection fails is named with the flag that fixes it, not
/// `UNKNOWN: transport error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new(dir.path(), "servers");
    let clients = Pki::new(dir.path(), "clients");
    let strangers = Pki::new(dir.path(), "strangers");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (cert, key) = servers.issue("server", &["localhost", "127.0.0.1"]);
    let (other_cert, other_key) = servers.issue("elsewhere", &["imports.example"]);
    let (client_cert, client_key) = clients.issue("hr-sync", &["hr-sync"]);
    let (stranger_cert, stranger_key) = strangers.issue("mallory", &["mallory"]);
    let mutual = TlsServer::start(&cert, &key, Some(&dir.path().join("clients-ca.pem"))).await;
    let other = TlsServer::start(&other_cert, &other_key, None).await;
    let plain = spawn_app(Backend::Sqlite).await;

    let at = |port: u16| format!("https://127.0.0.1:{port}");
    let ca = path("servers-ca.pem");
    let wrong_ca = path("strangers-ca.pem");
    let (client_cert, client_key) = (
        client_cert.to_str().unwrap().to_owned(),
        client_key.to_str().unwrap().to_owned(),
    );
    let (stranger_cert, stranger_key) = (
        stranger_cert.to_str().unwrap().to_owned(),
        stranger_key.to_str().unwrap().to_owned(),
    );
    let m = mutual.port;
    let cases: Vec<(String, Vec<&str>, String)> = vec![
        (
            at(m),
            vec![],
            "give --tls-ca (or BULK_IMPORT_CLIENT_TLS_CA) the CA that signed it".into(),
        ),
        (
            at(m),
            vec!["--tls-ca", &wrong_ca],
            format!("the server's certificate is not signed by the CA in {wrong_ca}"),
        ),
        (
            at(other.port),
            vec!["--tls-ca", &ca],
            "the server's certificate is not for the host in".into(),
        ),
        (
            at(m),
            vec!["--tls-ca", &ca],
            "the server requires a client certificate: give --tls-cert and --tls-key".into(),
        ),
        (
            at(m),
            vec![
                "--tls-ca",
                &ca,
                "--tls-cert",
                &stranger_cert,
                "--tls-key",
                &stranger_key,
            ],
            format!("the server refused the client certificate {stranger_cert}"),
        ),
        (
            format!("http://127.0.0.1:{m}"),
            vec![],
            "the server speaks TLS on this port: connect with https:// and --tls-ca".into(),
        ),
        (
            format!("https://{}", plain.addr),
            vec!["--tls-ca", &ca],
            "the server does not speak TLS on this port: connect with http:// and without --tls-ca"
                .into(),
        ),
    ];
    for (server, mut args, expected) in cases {
        args.extend(["--connect-timeout", "5s"]);
        let ran = bulk_import(Some(&server), "list", &args).await;
        assert_eq!(ran.code, 1, "{server} {args:?}: {}", ran.err);
        assert!(
            ran.err
                .starts_with(&format!("error: cannot reach {server}: ")),
            "{server} {args:?}: {}",
            ran.err
        );
        assert!(
            ran.err.contains(&expected),
            "{server} {args:?}: expected {expected:?} in {}",
            ran.err
        );
        assert_eq!(ran.err.lines().count(), 1, "{}", ran.err);
    }
    // And with everything right, it works.
    let ran = bulk_import(
        Some(&at(m)),
        "list",
        &[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &client_cert,
            "--tls-key",
            &client_key,
            "--json",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    // Without --tls-ca, the system's trust store (here set by SSL_CERT_FILE) is used.
    let ran = crate::cli::bulk_import_with(
        Some(&at(m)),
        "list",
        &[
            "--tls-cert",
            &client_cert,
            "--tls-key",
            &client_key,
            "--json",
        ],
        &[("SSL_CERT_FILE", ca.as_str())],
    )
    .await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    mutual.stop().await;
    other.stop().await;
}

/// A server that takes no more connections closes a new one before a word: the client says
/// that it may be at its limit, not that it may speak TLS (it does not).
#[tokio::test]
async fn a_server_at_its_connection_limit_is_named_so() {
    let mut app = spawn_app_with(Backend::Sqlite, |args| args.max_connections = 1).await;
    // The test's own client holds the one place.
    app.client
        .get_import_template(bulk_import::proto::GetImportTemplateRequest::default())
        .await
        .unwrap();
    let server = format!("http://{}", app.addr);
    let ran = bulk_import(Some(&server), "list", &[]).await;
    assert_eq!(ran.code, 1, "{}", ran.err);
    assert!(ran.err.contains("--max-connections"), "{}", ran.err);
    assert!(!ran.err.contains("TLS"), "{}", ran.err);
    // Not a gRPC scheme: a usage error.
    let ran = bulk_import(Some("ftp://127.0.0.1:1"), "list", &[]).await;
    assert_eq!(ran.code, 64, "{}", ran.err);
    assert!(ran.err.contains("https://host:port"), "{}", ran.err);
}

/// A `--tls-ca`, `--tls-cert` or `--tls-key` file without what it should hold is named, before
/// any connection is tried.
#[tokio::test]
async fn tls_files_without_a_certificate_or_key_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cas");
    let (cert, key) = pki.issue("client", &["client"]);
    let ca = dir.path().join("cas-ca.pem");
    let (ca, cert, key) = (
        ca.to_str().unwrap().to_owned(),
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let words = dir.path().join("words.pem");
    std::fs::write(&words, "not a certificate\n").unwrap();
    let server = Some("https://127.0.0.1:1");
    for bad in [&empty, &words] {
        let bad = bad.to_str().unwrap();
        let ran = bulk_import(server, "list", &["--tls-ca", bad]).await;
        assert_eq!(ran.code, 1, "{}", ran.err);
        assert!(
            ran.err
                .contains(&format!("{bad} holds no certificate in PEM")),
            "{}",
            ran.err
        );
        let ran = bulk_import(
            server,
            "list",
            &["--tls-ca", &ca, "--tls-cert", bad, "--tls-key", &key],
        )
        .await;
        assert!(
            ran.err.contains("holds no certificate in PEM"),
            "{}",
            ran.err
        );
    }
    // A certificate given as the key.
    let ran = bulk_import(
        server,
        "list",
        &["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &cert],
    )
    .await;
    assert_eq!(ran.code, 1, "{}", ran.err);
    assert!(ran.err.contains("holds no private key"), "{}", ran.err);
}

/// A server that accepts and closes at once (as one whose queue of connections that have not
/// spoken is full does) is an error with exit 1, never a death by SIGPIPE (exit 141, no word).
/// (Output into a pipe that closes early still ends quietly: `cli::output_to_a_closed_pipe`.)
#[tokio::test]
async fn a_connection_closed_under_a_write_is_an_error_not_a_signal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            drop(tcp);
        }
    });
    let server = format!("http://{addr}");
    for command in ["list", "get"] {
        let args: &[&str] = if command == "get" { &["some-id"] } else { &[] };
        let ran = bulk_import(Some(&server), command, args).await;
        assert_eq!(ran.code, 1, "{command}: {}", ran.err);
        assert!(ran.err.starts_with("error: "), "{}", ran.err);
    }
    closer.abort();
}

/// A `--server` that is not `http(s)://host:port` with nothing else is a usage error naming
/// what to write, and so is a plaintext `http://` server with TLS flags (which would send the
/// token in the clear).
#[tokio::test]
async fn servers_that_are_not_host_and_port_are_usage_errors() {
    for server in [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "http://127.0.0.1:50051/imports",
        "http://someone@127.0.0.1:50051",
        " 127.0.0.1:50051",
    ] {
        let ran = bulk_import(Some(server), "list", &[]).await;
        assert_eq!(ran.code, 64, "{server}: {}", ran.err);
        assert!(ran.err.contains("give host:port"), "{server}: {}", ran.err);
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cas");
    let ca = dir.path().join("cas-ca.pem");
    let ran = bulk_import(
        Some("http://127.0.0.1:50051"),
        "list",
        &["--tls-ca", ca.to_str().unwrap()],
    )
    .await;
    drop(pki);
    assert_eq!(ran.code, 64, "{}", ran.err);
    assert!(ran.err.contains("use https://"), "{}", ran.err);
}
