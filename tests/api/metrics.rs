//! `/metrics` as Prometheus scrapes it: an import moves the counters by exactly its own
//! numbers; uploads and watchers are counted while they run; the pools and the process are
//! there; `/livez` and `/readyz` answer as the gRPC health service does.

use std::collections::HashMap;
use std::net::SocketAddr;

use bulk_import::proto;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::lifecycle::{open_upload, wait_for_imported_rows};

/// A GET over plain HTTP/1.1: the status code and the body.
///
/// A connection closed before any answer is asked again, at most three times, as a scraper
/// would at its next scrape: it was seen once, in a full parallel run on two cores, while
/// other tests held thousands of sockets.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut response = String::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        response.clear();
        stream.read_to_string(&mut response).await.unwrap();
        if !response.is_empty() {
            break;
        }
    }
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// The status of a GET, or `None` while nothing answers on `addr` (a server starting).
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Every sample of a scrape, by its name and labels as written (`name{label="value"}`).
pub(crate) async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let (status, text) = http_get(app.metrics_addr.expect("metrics on"), "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    let value = |m: &HashMap<String, f64>| m.get(series).copied().unwrap_or(0.0);
    value(after) - value(before)
}

async fn spawn_with_metrics(backend: Backend) -> TestApp {
    spawn_app_with(backend, |args| {
        args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

backend_tests! {
    async fn a_scrape_shows_exactly_what_an_import_did(backend) {
        let app = spawn_with_metrics(backend).await;
        let (file, stats) = generate(&["--rows", "5000", "--invalid-rate", "0.02", "--seed", "4"]);
        let before = scrape(&app).await;
        let import = app.upload(ACCOUNT, "counted", &file, 32 * 1024).await.unwrap();
        assert_eq!(status(&import), proto::ImportStatus::CompletedPartial);
        let after = scrape(&app).await;
        let delta = |series: &str| moved(&before, &after, series);
        assert_eq!(delta("bulk_import_imports_total{status=\"completed_partial\"}"), 1.0);
        assert_eq!(delta("bulk_import_imports_total{status=\"completed_success\"}"), 0.0);
        assert_eq!(delta("bulk_import_rows_total{outcome=\"imported\"}"), stats.valid as f64);
        assert_eq!(delta("bulk_import_rows_total{outcome=\"failed\"}"), (stats.rows - stats.valid) as f64);
        assert_eq!(delta("bulk_import_rows_total{outcome=\"skipped\"}"), 0.0);
        assert_eq!(delta("bulk_import_received_bytes_total"), stats.bytes as f64);
        assert_eq!(delta("bulk_import_upload_duration_seconds_count"), 1.0);
        assert_eq!(after["bulk_import_active_uploads"], 0.0);
        assert_eq!(after["bulk_import_active_watchers"], 0.0);
        assert!(after["bulk_import_db_connections{state=\"idle\"}"] >= 1.0, "{after:?}");
        assert!(after.contains_key("bulk_import_db_connections{state=\"in_use\"}"));
        assert!(after["process_resident_memory_bytes"] > 0.0);
        assert!(after.contains_key("process_cpu_seconds_total"));

        // A dry run counts as an import, its rows do not.
        let dry = app
            .upload_with(ACCOUNT, "dry", &file, 1 << 20, |m| m.validate_only = true)
            .await
            .unwrap();
        assert_eq!(status(&dry), proto::ImportStatus::CompletedPartial);
        let last = scrape(&app).await;
        assert_eq!(moved(&after, &last, "bulk_import_imports_total{status=\"completed_partial\"}"), 1.0);
        assert_eq!(moved(&after, &last, "bulk_import_rows_total{outcome=\"imported\"}"), 0.0);
    }

    async fn uploads_and_watchers_are_counted_while_they_run(backend) {
        let app = spawn_with_metrics(backend).await;
        let (file, _) = generate(&["--rows", "20000", "--seed", "5"]);
        let upload = open_upload(&app, ACCOUNT, "running").await;
        for piece in file.chunks(64 * 1024).take(10) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        wait_for_imported_rows(&app, ACCOUNT, "running").await;
        let mut client = app.client.clone();
        let mut watch = client
            .watch_import(proto::WatchImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "running".into(),
            })
            .await
            .unwrap()
            .into_inner();
        watch.next().await.expect("a first snapshot").unwrap();
        let now = scrape(&app).await;
        assert_eq!(now["bulk_import_active_uploads"], 1.0);
        assert_eq!(now["bulk_import_active_watchers"], 1.0);
        drop(upload);
        while watch.next().await.is_some() {}
        // The watcher hears the end as it is stored; the upload's task finishes right after.
        let mut ended = scrape(&app).await;
        for _ in 0..100 {
            if ended["bulk_import_active_uploads"] == 0.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            ended = scrape(&app).await;
        }
        assert_eq!(ended["bulk_import_active_uploads"], 0.0);
        assert_eq!(ended["bulk_import_active_watchers"], 0.0);
        assert_eq!(ended["bulk_import_imports_total{status=\"error_unknown\"}"], 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_over_http_too() {
    let mut app = spawn_with_metrics(Backend::Sqlite).await;
    let addr = app.metrics_addr.unwrap();
    assert_eq!(http_get(addr, "/livez").await.0, 200);
    // `spawn_app` waited for gRPC readiness; /readyz says the same.
    assert_eq!(http_get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(http_get(addr, "/nothing").await.0, 404);
    app.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
