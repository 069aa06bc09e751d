//! The console's HTTP from outside a browser, as an attacker's script sends it: cookies,
//! headers, CSRF, revoked tokens, and `--console-listen off`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// An answer: status, headers (names in lower case), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The session cookie it sets, as `name=value`.
    fn session(&self) -> String {
        let cookie = self.header("set-cookie").expect("a cookie");
        cookie.split(';').next().unwrap().to_owned()
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form") + 19;
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

/// Sends one HTTP/1.1 request, `Connection: close`, and reads the whole answer.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        addr.port(),
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    parse(&raw)
}

/// An HTTP/1.1 answer, read whole.
fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Every answer forbids inline scripts and framing; the session cookie is HttpOnly,
/// SameSite=Strict, and Secure when the browser came over HTTPS (a TLS-terminating proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_a_strict_policy_and_cookie() {
    let app = console_app(Backend::Sqlite, |_| {}).await;
    let addr = app.console_addr.unwrap();
    let home = send(addr, "GET", "/", &[], b"").await;
    assert_eq!(home.status, 200);
    let csp = home.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(home.header("x-content-type-options"), Some("nosniff"));
    let cookie = home.header("set-cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    // An anonymous visitor's id lasts as long as the browser; a signed-in session's, its TTL
    // (`a_revoked_token_ends_its_sessions`).
    assert!(!cookie.contains("Max-Age"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(!home.body.contains("<script>"), "no inline script");
    let https = send(addr, "GET", "/", &[("X-Forwarded-Proto", "https")], b"").await;
    let secure = https.header("set-cookie").unwrap();
    assert!(
        secure.starts_with("__Host-bulk_import_session=") && secure.contains("Secure"),
        "{secure}"
    );
    // The assets are the console's own, compiled in.
    let js = home
        .body
        .split("<script src=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let script = send(addr, "GET", &js, &[], b"").await;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = send(addr, "GET", "/no/such/page", &[], b"").await;
    assert_eq!(missing.status, 404);
}

/// A state-changing request without the session's CSRF token is refused before it acts: a
/// revert, a cancel, an upload, a sign-out, with no token, another session's, or none at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_its_csrf_token_changes_nothing() {
    let app = console_app(Backend::Sqlite, |_| {}).await;
    app.upload(
        ACCOUNT,
        "done",
        format!("{HEADER}a@example.com,A,B,,,\n").as_bytes(),
        64,
    )
    .await
    .unwrap();
    let addr = app.console_addr.unwrap();
    let mine = send(addr, "GET", "/accounts/acme/imports/done/revert", &[], b"").await;
    let theirs = send(addr, "GET", "/accounts/acme/imports/done/revert", &[], b"").await;
    let cookie = mine.session();
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let other_token = format!("csrf={}", theirs.csrf());
    for (headers, body) in [
        (vec![("Cookie", cookie.as_str()), form], b"".as_slice()),
        (
            vec![("Cookie", cookie.as_str()), form],
            other_token.as_bytes(),
        ),
        (vec![form], format!("csrf={}", mine.csrf()).as_bytes()),
    ] {
        let revert = send(
            addr,
            "POST",
            "/accounts/acme/imports/done/revert",
            &headers,
            body,
        )
        .await;
        assert_eq!(revert.status, 403, "{}", revert.body);
        assert!(
            revert.body.contains("The form has expired"),
            "{}",
            revert.body
        );
    }
    let upload = send(
        addr,
        "POST",
        "/accounts/acme/new-import/upload?filename=x.csv&size=22",
        &[("Cookie", cookie.as_str()), ("x-csrf-token", "guess")],
        b"email\nb@example.com\n",
    )
    .await;
    assert_eq!(upload.status, 403);
    assert_eq!(app.user_count().await, 1);
    assert_eq!(app.list(ACCOUNT).await.len(), 1);

    // With its token, the same revert works.
    let ok = format!("csrf={}", mine.csrf());
    let revert = send(
        addr,
        "POST",
        "/accounts/acme/imports/done/revert",
        &[("Cookie", cookie.as_str()), form],
        ok.as_bytes(),
    )
    .await;
    assert_eq!(revert.status, 303, "{}", revert.body);
    assert_eq!(app.user_count().await, 0);
}

/// A token removed from the tokens file ends its console sessions within seconds, as it stops
/// its gRPC calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_ends_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let token = "revoked-soon-5c1e0d9f2a";
    crate::security::tokens_file(
        &path,
        &[
            ("leaving", token, &["acme"]),
            ("staying", "another-one-77", &["acme"]),
        ],
    );
    let app = console_app(Backend::Sqlite, |args| {
        args.auth_tokens_file = Some(path.clone())
    })
    .await;
    let addr = app.console_addr.unwrap();
    let page = send(addr, "GET", "/sign-in", &[], b"").await;
    let anonymous = page.session();
    let body = format!(
        "csrf={}&token={token}&next=%2Faccounts%2Facme%2Fimports",
        page.csrf()
    );
    let signed = send(
        addr,
        "POST",
        "/sign-in",
        &[
            ("Cookie", anonymous.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(signed.status, 303, "{}", signed.body);
    assert_eq!(signed.header("location"), Some("/accounts/acme/imports"));
    let session = signed.session();
    assert_ne!(session, anonymous, "sign-in gives a new session id");
    assert!(
        signed
            .header("set-cookie")
            .unwrap()
            .contains("Max-Age=28800")
    );
    let old = send(
        addr,
        "GET",
        "/accounts/acme/imports",
        &[("Cookie", anonymous.as_str())],
        b"",
    )
    .await;
    assert_eq!(
        old.status, 303,
        "the id from before sign-in is worth nothing"
    );
    let list = send(
        addr,
        "GET",
        "/accounts/acme/imports",
        &[("Cookie", session.as_str())],
        b"",
    )
    .await;
    assert_eq!(list.status, 200);

    crate::security::tokens_file(&path, &[("staying", "another-one-77", &["acme"])]);
    let deadline = Instant::now() + WAIT;
    loop {
        let list = send(
            addr,
            "GET",
            "/accounts/acme/imports",
            &[("Cookie", session.as_str())],
            b"",
        )
        .await;
        if list.status == 303 {
            assert!(list.header("location").unwrap().starts_with("/sign-in"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked token still opens the console"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--console-listen off` serves no console; the tests' servers run so by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_serves_no_console() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(app.console_addr, None);
}

/// Without `--console-listen`, a taken default port (another server on the machine) leaves the
/// console off and the server serving; an address given on purpose that is taken stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_default_port_leaves_the_console_off() {
    use bulk_import::config::console::{ConsoleListen, DEFAULT_CONSOLE_LISTEN};
    // Held by this test, or already by someone else: taken either way.
    let _holder = std::net::TcpListener::bind(DEFAULT_CONSOLE_LISTEN);
    let app = spawn_app_with(Backend::Sqlite, |args| args.console_listen = None).await;
    assert_eq!(app.console_addr, None);
    assert!(app.list(ACCOUNT).await.is_empty(), "gRPC serves");

    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut args = serve_args(&database.url);
    args.console_listen = Some(ConsoleListen::At(DEFAULT_CONSOLE_LISTEN));
    let error = bulk_import::app::Application::bind(args)
        .await
        .err()
        .expect("refused");
    assert!(
        error
            .to_string()
            .contains("--console-listen off turns it off"),
        "{error}"
    );
}

/// A console on a loopback address answers only loopback names: a page of another site whose
/// name was rebound to 127.0.0.1 (DNS rebinding) gets 421, not an open server's console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_name_gets_no_console() {
    let app = console_app(Backend::Sqlite, |_| {}).await;
    let addr = app.console_addr.unwrap();
    for host in [
        "rebind.attacker.example:8080",
        "127.0.0.1.attacker.example",
        "evil",
        "",
    ] {
        let page = send_host(addr, host).await;
        assert_eq!(page.status, 421, "{host}: {}", page.body);
        assert!(page.header("set-cookie").is_none(), "{host}");
        assert!(!page.body.contains("csrf"), "{host}");
    }
    for host in ["localhost:8080", "127.0.0.1", "[::1]:9", "app.localhost"] {
        assert_eq!(send_host(addr, host).await.status, 200, "{host}");
    }
}

/// `GET /accounts/acme/new-import` with this `Host` header.
async fn send_host(addr: SocketAddr, host: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /accounts/acme/new-import HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    parse(&raw)
}

/// A connection that trickles its headers, or says nothing, is closed after the header
/// timeout (10 s), one that withholds its body is answered 400 after the body timeout (10 s); a flood of them is held to the console's connection cap, so the gRPC port
/// keeps serving and the console answers again once they are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_cut_and_bounded() {
    let app = console_app(Backend::Sqlite, |_| {}).await;
    let addr = app.console_addr.unwrap();
    let started = Instant::now();
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // Whole headers, then a body that never comes.
    let mut withheld = tokio::net::TcpStream::connect(addr).await.unwrap();
    withheld
        .write_all(
            b"POST /sign-in HTTP/1.1\r\nHost: localhost\r\nContent-Length: 16000\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\r\ncsrf=",
        )
        .await
        .unwrap();
    // Far more than the cap (256): the rest wait in the kernel's queue, not in the server.
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    assert!(app.list(ACCOUNT).await.is_empty(), "gRPC serves meanwhile");
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(WAIT, trickle.read(&mut buffer))
        .await
        .expect("cut");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the trickling connection was closed: {read:?}"
    );
    let cut_after = started.elapsed();
    assert!(cut_after >= Duration::from_secs(9), "{cut_after:?}");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, withheld.read_to_end(&mut raw))
        .await
        .expect("answered")
        .unwrap();
    let answer = parse(&raw);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains("did not arrive whole within 10 s"),
        "{}",
        answer.body
    );
    // Once the held ones are cut, a real request is served.
    let page = send(addr, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    drop(silent);
}

/// With `--tls-cert` the console serves HTTPS with the same certificate (HTTP/1.1 by ALPN),
/// and its cookie is `__Host-…; Secure`; a plaintext request gets no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_https_with_the_servers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tls::Pki::new(dir.path(), "console");
    let (cert, key) = pki.issue("server", &["localhost"]);
    // The gRPC port speaks TLS too: no plaintext test client; the server alone.
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut args = serve_args(&database.url);
    args.tls_cert = Some(cert);
    args.tls_key = Some(key);
    args.console_listen = Some(bulk_import::config::console::ConsoleListen::At(
        "127.0.0.1:0".parse().unwrap(),
    ));
    let app = bulk_import::app::Application::bind(args).await.unwrap();
    let addr = app.console_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(dir.path().join("console-ca.pem")).unwrap();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("a TLS handshake");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap();
    let home = parse(&raw);
    assert_eq!(home.status, 200, "{}", home.body);
    let cookie = home.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with("__Host-bulk_import_session=") && cookie.contains("Secure"),
        "{cookie}"
    );

    // Plain HTTP to the TLS port: no page.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut raw))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT, server).await;
}

/// A live view ends when its session does: signed out while an import runs, the stream of
/// counters stops at the next update instead of following the import to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_view_ends_with_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let (token, ops) = ("live-view-token-0b9c2f", "live-view-ops-7e51aa");
    crate::security::tokens_file(&path, &[("person", token, &["acme"]), ("ops", ops, &["*"])]);
    let app = console_app(Backend::Sqlite, |args| {
        args.auth_tokens_file = Some(path);
        args.batch_rows = Some(50);
    })
    .await;
    let addr = app.console_addr.unwrap();
    // An upload that runs: the test holds its stream open.
    let mut client =
        bulk_import::proto::import_service_client::ImportServiceClient::with_interceptor(
            app.channel(),
            bulk_import::cli::Bearer::new(Some(ops)).unwrap(),
        );
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let upload = tokio::spawn(async move {
        client
            .upload_import(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(metadata(ACCOUNT, "live", "live.csv"))
        .await
        .unwrap();
    let rows = |from: usize| -> String {
        (from..from + 400)
            .map(|i| format!("u{i}@example.com,A,B,,,\n"))
            .collect()
    };
    tx.send(chunk(format!("{HEADER}{}", rows(0)).as_bytes()))
        .await
        .unwrap();

    // Signed in, following the import.
    let page = send(addr, "GET", "/sign-in", &[], b"").await;
    let body = format!("csrf={}&token={token}&next=%2F", page.csrf());
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let anonymous = page.session();
    let signed = send(
        addr,
        "POST",
        "/sign-in",
        &[("Cookie", anonymous.as_str()), form],
        body.as_bytes(),
    )
    .await;
    let session = signed.session();
    let deadline = Instant::now() + WAIT;
    let mut live = loop {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /accounts/acme/imports/live/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: {session}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut first = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut first))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&first[..n]).into_owned();
        if text.starts_with("HTTP/1.1 200") {
            break stream;
        }
        // The import is not there yet: the page would not be offered either.
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Signed out: the next update ends the stream.
    let page = send(
        addr,
        "GET",
        "/accounts/acme/imports",
        &[("Cookie", session.as_str())],
        b"",
    )
    .await;
    let out = format!("csrf={}", page.csrf());
    let gone = send(
        addr,
        "POST",
        "/sign-out",
        &[("Cookie", session.as_str()), form],
        out.as_bytes(),
    )
    .await;
    assert_eq!(gone.status, 303);
    tx.send(chunk(rows(400).as_bytes())).await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT, live.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the live view went on after sign-out");
    drop(tx);
    let _ = upload.await;
}
