//! Requests whose message never comes, and answers nobody reads: raw HTTP/2 streams held
//! half open against the real binary, which must bound them, end them, and keep serving a
//! normal client meanwhile. The tests print what they measured.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::{MIB, normal_call};
use crate::helpers::*;
use crate::support::Server;

/// A raw HTTP/2 connection to the server: `(client, task driving the connection)`.
pub(super) async fn raw_h2(addr: &str) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A unary call's request whose message never comes: its HEADERS, without END_STREAM.
fn half_open(addr: &str) -> http::Request<()> {
    half_open_on(addr, "/grpc.health.v1.Health/Check")
}

/// A request to `path` whose message never comes.
pub(super) fn half_open_on(addr: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The `grpc-status` of a response, from its headers (a trailers-only answer) or its trailers.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> Option<String> {
    let status = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    if let Some(code) = status(response.headers()) {
        return Some(code);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        if data.is_err() {
            return None;
        }
    }
    body.trailers()
        .await
        .ok()
        .flatten()
        .as_ref()
        .and_then(status)
}

/// Streams whose request never ends (HEADERS without END_STREAM, which no gRPC client sends
/// for a unary call), 128 on each of 48 connections: each connection holds its own
/// `--max-pending-requests-per-connection` of them, and together they hold the
/// `--max-pending-requests` shared ones; the others are refused at once with
/// RESOURCE_EXHAUSTED, the held ones end with DEADLINE_EXCEEDED after
/// `--request-message-timeout`, the memory stays bounded and comes back, and a normal client
/// is served at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_message_never_comes_are_bounded_and_ended() {
    const CONNECTIONS: usize = 48;
    const STREAMS: usize = 128;
    const PENDING: usize = 16;
    const SHARED: usize = 256;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &[
            "--max-streams-per-connection",
            &STREAMS.to_string(),
            "--max-pending-requests-per-connection",
            &PENDING.to_string(),
            "--max-pending-requests",
            &SHARED.to_string(),
            "--request-message-timeout",
            "5s",
        ],
        None,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    normal_call(&server.url).await;
    let baseline = server.rss();
    let mut responses = Vec::new();
    let (mut senders, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..CONNECTIONS {
        let client = raw_h2(&addr).await;
        clients.push(client.clone());
        // Wait for the server's SETTINGS, so that no stream is past its stream limit.
        let mut client = client.ready().await.unwrap();
        for _ in 0..STREAMS {
            client = client.ready().await.unwrap();
            let (response, send) = client.send_request(half_open(&addr), false).unwrap();
            senders.push(send);
            responses.push(tokio::spawn(async move {
                let started = Instant::now();
                let status = grpc_status(response.await.unwrap()).await;
                (status, started.elapsed())
            }));
        }
    }
    let during = normal_call(&server.url).await;
    let peak = server.rss();
    let (mut refused, mut ended, mut other) = (0, 0, Vec::new());
    let mut waited = Duration::ZERO;
    for response in responses {
        let (status, took) = tokio::time::timeout(Duration::from_secs(30), response)
            .await
            .expect("every stream is answered")
            .unwrap();
        match status.as_deref() {
            Some("8") => refused += 1,
            Some("4") => {
                ended += 1;
                waited = waited.max(took);
            }
            _ => other.push(status),
        }
    }
    // The connections close once their last handle is gone; the server gives free memory
    // back every few seconds.
    drop((senders, clients));
    normal_call(&server.url).await;
    let start = Instant::now();
    let after = loop {
        let rss = server.rss();
        if rss < baseline + 8 * 1024 * 1024 || start.elapsed() > Duration::from_secs(15) {
            break rss;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "{} half-open streams over {CONNECTIONS} connections: RSS {:.1} MiB before, {:.1} MiB \
         with them, {:.1} MiB {:?} after; {refused} refused, {ended} ended after at most {waited:?}; \
         a normal call took {during:?}",
        CONNECTIONS * STREAMS,
        baseline as f64 / MIB,
        peak as f64 / MIB,
        after as f64 / MIB,
        start.elapsed(),
    );
    assert!(other.is_empty(), "{:?}", &other[..other.len().min(3)]);
    let held = CONNECTIONS * PENDING + SHARED;
    assert_eq!((ended, refused), (held, CONNECTIONS * STREAMS - held));
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(
        during < Duration::from_secs(1),
        "a normal call took {during:?}"
    );
    assert!(
        peak < baseline + 32 * 1024 * 1024,
        "RSS grew from {baseline} to {peak}"
    );
    assert!(
        after < baseline + 8 * 1024 * 1024,
        "RSS stayed at {after} after, from {baseline}"
    );
}

/// Uploads whose first message (the metadata) never comes are pending requests like any
/// other: each connection's own places, then the shared ones, then RESOURCE_EXHAUSTED at once;
/// the held ones end with DEADLINE_EXCEEDED after `--request-message-timeout`, not after the
/// upload's idle timeout (a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_whose_metadata_never_comes_are_pending_requests() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &[
            "--max-pending-requests-per-connection",
            "2",
            "--max-pending-requests",
            "1",
            "--request-message-timeout",
            "1s",
        ],
        None,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut client = raw_h2(&addr).await.ready().await.unwrap();
    let (mut responses, mut senders) = (Vec::new(), Vec::new());
    let start = Instant::now();
    for _ in 0..5 {
        client = client.ready().await.unwrap();
        let upload = half_open_on(&addr, "/bulkimport.v1.ImportService/UploadImport");
        let (response, send) = client.send_request(upload, false).unwrap();
        senders.push(send);
        responses.push(tokio::spawn(async move {
            grpc_status(response.await.unwrap()).await
        }));
    }
    let mut codes = Vec::new();
    for response in responses {
        let code = tokio::time::timeout(Duration::from_secs(20), response)
            .await
            .expect("every upload is answered")
            .unwrap();
        codes.push(code.unwrap_or_default());
    }
    codes.sort();
    // 2 own places and 1 shared held, then ended; 2 refused at once.
    assert_eq!(codes, ["4", "4", "4", "8", "8"]);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    drop(senders);
}

/// Calls whose answer is never read (the client's flow-control window at 0), 128 on each of
/// 48 connections: each connection holds its own places and together they hold the shared
/// ones, the others are refused at once with RESOURCE_EXHAUSTED (a trailers-only answer,
/// which flow control does not hold back), the memory stays bounded, and a normal client is
/// served at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_are_bounded() {
    const CONNECTIONS: usize = 48;
    const STREAMS: usize = 128;
    const OWN: usize = 4;
    const SHARED: usize = 256;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &[
            "--max-pending-requests-per-connection",
            &OWN.to_string(),
            "--max-pending-requests",
            &SHARED.to_string(),
        ],
        None,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    normal_call(&server.url).await;
    let baseline = server.rss();
    let (mut answers, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..CONNECTIONS {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        clients.push(client.clone());
        for _ in 0..STREAMS {
            client = client.ready().await.unwrap();
            let check = half_open(&addr);
            let (answer, mut send) = client.send_request(check, false).unwrap();
            // A whole request: an empty HealthCheckRequest, then the end.
            send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
                .unwrap();
            answers.push(tokio::spawn(async move {
                let answer = answer.await.unwrap();
                let status = answer
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
                // Held: the answer stays unread.
                (status, answer)
            }));
        }
    }
    let mut refused = 0;
    let mut held = Vec::new();
    for answer in answers {
        let (status, answer) = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .expect("every call gets its headers")
            .unwrap();
        match status.as_deref() {
            Some("8") => refused += 1,
            None => held.push(answer),
            Some(other) => panic!("grpc-status {other}"),
        }
    }
    let during = normal_call(&server.url).await;
    let peak = server.rss();
    println!(
        "{} calls never read over {CONNECTIONS} connections: RSS {:.1} MiB before, {:.1} MiB \
         with them; {} held, {refused} refused; a normal call took {during:?}",
        CONNECTIONS * STREAMS,
        baseline as f64 / MIB,
        peak as f64 / MIB,
        held.len(),
    );
    let places = CONNECTIONS * OWN + SHARED;
    assert_eq!(
        (held.len(), refused),
        (places, CONNECTIONS * STREAMS - places)
    );
    assert!(during < Duration::from_secs(1), "{during:?}");
    assert!(
        peak < baseline + 32 * 1024 * 1024,
        "RSS grew from {baseline} to {peak}"
    );
    drop((held, clients));
}
