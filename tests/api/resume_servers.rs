//! Resumable uploads across servers: a server stopped or killed mid-upload and started again,
//! a resume on another PostgreSQL replica (after a cut, and after a kill -9 of the replica that
//! held the upload), and the metrics of resumes. The uploads go through the CLI binary and a
//! TCP proxy the test controls (`proxy`), as in `resume`.

use std::time::{Duration, Instant};

use crate::cli::bulk_import;
use crate::helpers::*;
use crate::proxy::{Cut, Proxy};
use crate::resume::{
    ATTEMPTS, came_to, cuts, exit_code, finish_of, on_disk, resumable, send, until, whole,
};
use crate::resume::{stop_half_way, the_rest};
use crate::support::Server;

/// The address a `Server` listens on, for the proxy.
fn addr_of(server: &Server) -> std::net::SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// The flags of every server of these tests: small batches, so that a cut falls between
/// many; a quick graceful stop.
const FLAGS: &[&str] = &["--batch-rows", "200", "--shutdown-grace-seconds", "1"];

/// Starts the service's binary on `url` with `FLAGS`.
async fn server(url: &str) -> Server {
    Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        url,
        FLAGS,
        None,
    )
    .await
}

/// Runs `upload --resumable` of `path` into `account` through `proxy`, in the background.
fn cli_upload(
    proxy: &Proxy,
    account: &str,
    path: &std::path::Path,
) -> tokio::task::JoinHandle<crate::cli::Ran> {
    let (url, account, path) = (proxy.url(), account.to_owned(), path.to_owned());
    tokio::spawn(async move {
        bulk_import(
            None,
            "upload",
            &[
                "--server",
                &url,
                "--account",
                &account,
                "--resumable",
                "--import-id",
                "r",
                "--chunk-size",
                "5000",
                path.to_str().unwrap(),
            ],
        )
        .await
    })
}

backend_tests! {
    async fn a_waiting_import_outlives_its_server_stopped_or_killed(backend) {
        let database = TestDatabase::new(backend).await;
        let (file, _) = generate(&["--rows", "6000", "--invalid-rate", "0.02", "--dup-rate",
            "0.01", "--seed", "25"]);
        let path = on_disk(&file);
        let mut running = server(&database.url).await;
        let expected = {
            let mut client = running.client();
            whole(&mut client, "whole", &file).await;
            came_to(&mut client, "whole", "whole").await
        };
        for how in ["stopped", "killed"] {
            let proxy = Proxy::start(addr_of(&running)).await;
            // The upload stalls half-way, held by the proxy, while its server goes.
            proxy.then([Cut::HoldAfter(file.len() as u64 / 2)]);
            let account = format!("resumed-{how}");
            let upload = cli_upload(&proxy, &account, path.path());
            let mut client = running.client();
            until(&mut client, &account, "r", Duration::from_secs(30), |i| i.committed_bytes > 0)
                .await;
            match how {
                "stopped" => running.stop(),
                _ => running.kill(),
            }
            running = server(&database.url).await;
            proxy.set_target(addr_of(&running));
            // Recovery at start (SQLite) or the reaper (PostgreSQL, once the dead server's lock
            // stood gone for its grace) leaves it waiting; the client resumes it.
            let ran = tokio::time::timeout(Duration::from_secs(120), upload)
                .await
                .expect("the upload resumes in time")
                .unwrap();
            assert!(ran.err.contains("resuming import r at byte"), "{how}: {}", ran.err);
            assert_eq!(ran.code, exit_code(expected.import.0), "{how}: {}{}", ran.out, ran.err);
            let mut client = running.client();
            assert_eq!(came_to(&mut client, &account, "r").await, expected, "{how}");
        }
    }
}

/// On PostgreSQL, any replica takes a resume: the upload cut on one goes on on the other, and
/// after a kill -9 of the replica that held it, on the one that is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn another_replica_resumes_a_cut_upload_and_one_whose_replica_was_killed() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let (file, _) = generate(&["--rows", "6000", "--invalid-rate", "0.02", "--seed", "26"]);
    let path = on_disk(&file);
    let mut first = server(&database.url).await;
    let other = server(&database.url).await;
    let expected = {
        let mut client = other.client();
        whole(&mut client, "whole", &file).await;
        came_to(&mut client, "whole", "whole").await
    };
    let mut client = other.client();

    // Cut: the resume goes to the other replica.
    let mut resumed_once = false;
    for attempt in 0..ATTEMPTS {
        let proxy = Proxy::start(addr_of(&first)).await;
        proxy.cut_after(&cuts(1, file.len() as u64 / 2));
        proxy.switch_after_cut(addr_of(&other));
        let account = format!("cut-{attempt}");
        let ran = cli_upload(&proxy, &account, path.path()).await.unwrap();
        assert_eq!(proxy.cuts_made(), 1, "{}", ran.err);
        assert_eq!(came_to(&mut client, &account, "r").await, expected);
        if ran.err.contains("resuming import r at byte") {
            resumed_once = true;
            break;
        }
    }
    assert!(resumed_once, "no cut fell after the import existed");

    // kill -9 of the replica that holds the upload: the other takes it once its reaper has
    // seen the dead replica's lock gone for its grace.
    let proxy = Proxy::start(addr_of(&first)).await;
    proxy.then([Cut::HoldAfter(file.len() as u64 / 2)]);
    proxy.switch_after_cut(addr_of(&other));
    let upload = cli_upload(&proxy, "killed", path.path());
    until(&mut client, "killed", "r", Duration::from_secs(30), |i| {
        i.committed_bytes > 0
    })
    .await;
    first.kill();
    let ran = tokio::time::timeout(Duration::from_secs(120), upload)
        .await
        .expect("the upload resumes in time")
        .unwrap();
    assert!(ran.err.contains("resuming import r at byte"), "{}", ran.err);
    assert_eq!(
        ran.code,
        exit_code(expected.import.0),
        "{}{}",
        ran.out,
        ran.err
    );
    assert_eq!(came_to(&mut client, "killed", "r").await, expected);
}

/// `/metrics` counts what resumes did: the upload that stopped to wait, the waiting import (as
/// the upkeep counts it), and each resume by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_are_counted_by_outcome() {
    let mut app = spawn_app_with(Backend::Sqlite, |a| {
        a.batch_rows = Some(100);
        a.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut client = app.client.clone();
    let (file, _) = generate(&["--rows", "600", "--seed", "27"]);
    stop_half_way(&mut client, "r", &file).await;
    let committed = app.get(ACCOUNT, "r").await.unwrap().committed_bytes as u64;
    // The upkeep counts the waiting import within one round (3 s).
    let start = Instant::now();
    loop {
        let scraped = crate::metrics::scrape(&app).await;
        if scraped.get("bulk_import_uploads_waiting") == Some(&1.0) {
            // Waiting is no upload: nothing of it runs or is held here.
            assert_eq!(scraped.get("bulk_import_active_uploads"), Some(&0.0));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{scraped:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wrong = send(
        &mut client,
        vec![resumable("r", committed + 3), finish_of(&file)],
    )
    .await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::FailedPrecondition);
    send(&mut client, the_rest("r", &file, committed))
        .await
        .unwrap();
    let scraped = crate::metrics::scrape(&app).await;
    let value = |series: &str| scraped.get(series).copied().unwrap_or(0.0);
    assert_eq!(
        value("bulk_import_uploads_paused_total"),
        1.0,
        "{scraped:?}"
    );
    assert_eq!(
        value("bulk_import_resumes_total{outcome=\"wrong_offset\"}"),
        1.0
    );
    assert_eq!(value("bulk_import_resumes_total{outcome=\"resumed\"}"), 1.0);
    assert_eq!(
        value("bulk_import_imports_total{status=\"completed_success\"}"),
        1.0
    );
    app.stop().await;
}
