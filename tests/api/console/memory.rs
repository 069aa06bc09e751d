//! The console's upload in a real browser holds no more of the file than a gRPC upload does:
//! the small version of `cargo bench --bench import -- --console-only` (199 MiB there).

use bulk_import::proto::ImportStatus;

use super::*;
use crate::support;

/// Chromium uploads a 20 MiB file through the New Import form into the real binary; another
/// server of the same binary takes it over gRPC. Both stay under the service's memory bound,
/// and the browser's server within a quarter of the gRPC one's peak (the benchmark's 199 MiB
/// figure is the one the README gives; a debug build at 20 MiB is noisier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(browser_tests),
    ignore = "chromium and chromedriver are not installed (.ci/run installs them)"
)]
async fn a_browser_upload_holds_no_more_than_a_grpc_one() {
    let file = support::users_file(20, 2);
    let rows = support::data_rows(&file) as i64;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import"));

    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = support::Server::start_with(binary, &database.url, &[], None).await;
    let (import, grpc_time) = support::upload(server.channel.clone(), ACCOUNT, &file).await;
    assert_eq!(
        ImportStatus::try_from(import.status),
        Ok(ImportStatus::CompletedSuccess)
    );
    let grpc_peak = server.peak_rss();
    server.stop();

    let database = TestDatabase::new(Backend::Sqlite).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let flags = ["--console-listen", &addr.to_string()];
    let server = support::Server::start_with(binary, &database.url, &flags, None).await;
    let (browser_time, imported) =
        support::browser::upload_in_browser(addr, ACCOUNT, &file, Duration::from_secs(300)).await;
    assert_eq!(imported, rows);
    let browser_peak = server.peak_rss();
    server.stop();

    println!(
        "20 MiB (unoptimised build): gRPC {:.2} s, peak RSS {:.1} MiB; browser {:.2} s, peak RSS \
         {:.1} MiB; ratio {:.3}",
        grpc_time.as_secs_f64(),
        support::mib(grpc_peak),
        browser_time.as_secs_f64(),
        support::mib(browser_peak),
        browser_peak as f64 / grpc_peak as f64
    );
    assert!(grpc_peak > 0 && browser_peak > 0, "peaks read from /proc");
    assert!(browser_peak <= 128 * 1024 * 1024, "over the 128 MiB bound");
    assert!(
        browser_peak as f64 <= grpc_peak as f64 * 1.25,
        "the browser's upload held {:.1} MiB against gRPC's {:.1} MiB",
        support::mib(browser_peak),
        support::mib(grpc_peak)
    );
}
