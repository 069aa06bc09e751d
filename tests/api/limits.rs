//! Floods, against the real binary so that its own memory is measured: streams that need no
//! token (health watches) by the thousand over a few connections, hundreds of silent
//! connections, and a normal client in the middle of it, who must be served at once. The
//! tests print what they measured.

use std::time::{Duration, Instant};

use bulk_import::proto;
use futures::StreamExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::helpers::*;
use crate::support::Server;

mod half_open;
use half_open::{half_open_on, raw_h2};

const MIB: f64 = 1024.0 * 1024.0;

/// A normal client's call, timed: the import template, from a new connection.
async fn normal_call(url: &str) -> Duration {
    let start = Instant::now();
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("a normal client connects");
    let mut client = proto::import_service_client::ImportServiceClient::new(channel);
    client
        .get_import_template(proto::GetImportTemplateRequest::default())
        .await
        .expect("a normal client is served");
    start.elapsed()
}

/// 20,000 health watches over 4 connections: the server holds `--max-health-watchers` of
/// them and refuses the others at once with RESOURCE_EXHAUSTED, its memory stays bounded, a
/// normal client is served at once meanwhile, and once the streams end the memory comes back
/// near where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_health_watches_is_bounded_and_refused_clearly() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &["--max-health-watchers", "64"],
        None,
    )
    .await;
    normal_call(&server.url).await;
    let baseline = server.rss();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let channel = Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..5_000 {
            let mut health = HealthClient::new(channel.clone());
            calls.push(tokio::spawn(async move {
                health
                    .watch(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner())
            }));
        }
    }
    let during = normal_call(&server.url).await;
    let (mut open, mut refused, mut reset, mut other) = (Vec::new(), 0, 0, Vec::new());
    for call in calls {
        match tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("every watch is answered")
            .unwrap()
        {
            Ok(stream) => open.push(stream),
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert_eq!(
                    status.get_details_error_info().map(|i| i.reason),
                    Some("LIMIT_REACHED".to_owned())
                );
                assert!(
                    status.message().contains("--max-health-watchers"),
                    "{status:?}"
                );
                refused += 1;
            }
            // HTTP/2's own refusal of a stream past SETTINGS_MAX_CONCURRENT_STREAMS, when the
            // client opened it before it read the server's settings.
            Err(status) if format!("{status:?}").contains("REFUSED_STREAM") => reset += 1,
            Err(status) => other.push(status),
        }
    }
    let peak = server.rss();
    assert!(other.is_empty(), "{:?}", &other[..other.len().min(3)]);
    assert_eq!((open.len(), refused + reset), (64, 20_000 - 64));
    // The held watches work: each has its first message.
    for stream in open.iter_mut().take(3) {
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a held watch answers");
        assert!(first.is_some_and(|m| m.is_ok()));
    }
    drop(open);
    // The places come back once the streams end: new watches are held again.
    let mut health = HealthClient::new(server.channel.clone());
    let start = Instant::now();
    let again = loop {
        let watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if let Ok(stream) = watch {
            break stream;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "places never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(again);
    // The server gives free memory back every few seconds: wait for it, boundedly.
    let start = Instant::now();
    let after = loop {
        let rss = server.rss();
        if rss < baseline + 8 * 1024 * 1024 || start.elapsed() > Duration::from_secs(15) {
            break rss;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "health watch flood: RSS {:.1} MiB before, {:.1} MiB at its peak, {:.1} MiB after; \
         a normal call took {during:?} during it; {} held, {refused} refused, {reset} reset",
        baseline as f64 / MIB,
        peak as f64 / MIB,
        after as f64 / MIB,
        64
    );
    assert!(
        during < Duration::from_secs(1),
        "a normal call took {during:?}"
    );
    assert!(
        peak < baseline + 48 * 1024 * 1024,
        "RSS grew from {baseline} to {peak}"
    );
    assert!(
        after < baseline + 16 * 1024 * 1024,
        "RSS stayed at {after} after the flood, from {baseline}"
    );
}

/// 600 connections that never send a byte: past `--max-connections` a connection is closed at
/// once, the silent ones give their places back within a second, and a normal client is served
/// within about a second of arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_keep_a_normal_client_out() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &["--max-connections", "256"],
        None,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..600 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let took = normal_call(&server.url).await;
    println!("600 silent connections: a normal call took {took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "a normal call took {took:?}"
    );
    // The silent ones were closed: by the cap at once, the others after their second.
    let start = Instant::now();
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut socket, &mut byte),
        )
        .await
        .expect("the server closes a silent connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// Connections that send one byte, or all of HTTP/2's preface but its last byte, then nothing:
/// they never get one of the server's places (those wait for the whole preface), so with
/// `--max-connections 16` and 200 of them a normal client is still served at once, and they
/// are closed within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_stop_after_a_byte_take_no_place() {
    use tokio::io::AsyncWriteExt;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &["--max-connections", "16"],
        None,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        let sent: &[u8] = if i % 2 == 0 {
            b"P"
        } else {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r"
        };
        socket.write_all(sent).await.unwrap();
        stalled.push(socket);
    }
    let took = normal_call(&server.url).await;
    println!("200 connections stalled in their preface: a normal call took {took:?}");
    assert!(took < Duration::from_secs(1), "a normal call took {took:?}");
    let start = Instant::now();
    for mut socket in stalled {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut socket, &mut byte),
        )
        .await
        .expect("the server closes a connection stalled in its preface");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    println!("...and all were closed within {:?}", start.elapsed());
    // Still served once they are gone.
    assert!(normal_call(&server.url).await < Duration::from_secs(1));
}

/// More connections that stop after a byte than there are slots for connections that have
/// not spoken yet (1,024): a newcomer takes the slot of the oldest of them, which is closed,
/// rather than being refused; so a normal client is served at once, however many keep the
/// slots busy (a slow preface, one byte every half second, kept them all, for good, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_takes_the_slot_of_the_oldest_silent_connection() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &[],
        None,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..1_100 {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut socket, b"P")
            .await
            .unwrap();
        slow.push(socket);
    }
    let took = normal_call(&server.url).await;
    println!("1,100 connections stopped after a byte: a normal call took {took:?}");
    assert!(took < Duration::from_secs(1), "a normal call took {took:?}");
    // The oldest went first: the first of them is closed already.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::io::AsyncReadExt::read(&mut slow[0], &mut byte),
    )
    .await
    .expect("the oldest slow connection was closed for the newcomers");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// Reflection streams held open (HEADERS, nothing more) up to the limit do not keep health
/// watches out: the two are counted apart. Past the limit a reflection stream is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_streams_held_open_do_not_keep_health_watches_out() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &["--max-health-watchers", "8"],
        None,
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut client = raw_h2(&addr).await.ready().await.unwrap();
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..9 {
        client = client.ready().await.unwrap();
        let reflection = half_open_on(
            &addr,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        );
        let (response, send) = client.send_request(reflection, false).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("the reflection stream is answered")
            .unwrap();
        match response.headers().get("grpc-status") {
            Some(status) => {
                assert_eq!(status, "8");
                refused += 1;
            }
            None => held.push((response, send)),
        }
    }
    assert_eq!((held.len(), refused), (8, 1));
    let mut health = HealthClient::new(server.channel.clone());
    let watch = tokio::time::timeout(
        Duration::from_secs(5),
        health.watch(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("the watch is answered");
    let mut watch = watch
        .expect("a health watch is held beside the reflection streams")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch sends its first status");
    assert!(first.is_some_and(|m| m.is_ok()));
    drop(held);
}
