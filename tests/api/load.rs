//! A bounded load test, loopback only: 32 uploads of about 2 MB at once, each followed by two
//! watchers, on one server (the real binary). Every import must complete with exact counts and
//! every watcher see its end; meanwhile `GetImport` is polled, and the throughput and the p99
//! latency of those polls are printed (`cargo test load -- --nocapture` shows them). Figures,
//! not targets: this machine's noise is too large for a timed assertion.

use std::path::Path;
use std::time::{Duration, Instant};

use bulk_import::proto::{self, ImportStatus};
use futures::StreamExt;

use crate::helpers::*;
use crate::support::{Server, data_rows, upload, users_file};

const UPLOADS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_uploads_with_two_watchers_each_all_complete_exactly() {
    let file = users_file(2, 71);
    let rows = data_rows(&file) as i64;
    let bytes = std::fs::metadata(&file).unwrap().len();
    let database = TestDatabase::sqlite();
    let server = Server::start_with(
        Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        &database.url,
        &[
            "--max-concurrent-uploads",
            "32",
            "--max-concurrent-uploads-per-account",
            "32",
        ],
        None,
    )
    .await;

    let start = Instant::now();
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|i| {
            let (channel, file) = (server.channel.clone(), file.clone());
            tokio::spawn(async move { upload(channel, &format!("load-{i}"), &file).await.0 })
        })
        .collect();
    // GetImport during the whole load, from its start, on a connection of its own (on the
    // uploads' connection it would wait behind their chunks).
    let poller = {
        let channel = tonic::transport::Channel::from_shared(server.url.clone())
            .unwrap()
            .connect_lazy();
        let mut client = proto::import_service_client::ImportServiceClient::new(channel);
        let accounts: Vec<String> = (0..UPLOADS).map(|i| format!("load-{i}")).collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let task = tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = Instant::now();
                // The newest import of an account, by its list: one GetImport-sized read.
                let listed = client
                    .list_imports(proto::ListImportsRequest {
                        account_id: accounts[n % UPLOADS].clone(),
                        page_size: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .imports;
                if let Some(import) = listed.first() {
                    let asked = Instant::now();
                    client
                        .get_import(proto::GetImportRequest {
                            account_id: import.account_id.clone(),
                            import_id: import.import_id.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    latencies.push(asked.elapsed());
                } else {
                    let _ = asked;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        });
        (done, task)
    };
    // The helper lets the server choose the import ids: find them by listing, then watch.
    let accounts: Vec<String> = (0..UPLOADS).map(|i| format!("load-{i}")).collect();
    let mut ids = Vec::new();
    for account in &accounts {
        let mut client = server.client();
        let deadline = Instant::now();
        loop {
            let listed = client
                .list_imports(proto::ListImportsRequest {
                    account_id: account.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .imports;
            if let Some(import) = listed.first() {
                ids.push(import.import_id.clone());
                break;
            }
            assert!(
                deadline.elapsed() < Duration::from_secs(60),
                "never created"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let watchers: Vec<_> = accounts
        .iter()
        .zip(&ids)
        .flat_map(|(account, id)| (0..2).map(move |_| (account.clone(), id.clone())))
        .map(|(account, id)| {
            let mut client = server.client();
            tokio::spawn(async move {
                let mut stream = client
                    .watch_import(proto::WatchImportRequest {
                        account_id: account,
                        import_id: id,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut last = None;
                while let Some(message) =
                    tokio::time::timeout(Duration::from_secs(120), stream.next())
                        .await
                        .expect("a message in time")
                {
                    last = Some(message.unwrap().import.unwrap());
                }
                last.expect("at least one message")
            })
        })
        .collect();

    let mut finished = Vec::new();
    for upload in uploads {
        let import = tokio::time::timeout(Duration::from_secs(600), upload)
            .await
            .expect("the load ends")
            .unwrap();
        finished.push(import);
    }
    let took = start.elapsed();
    poller.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = poller.1.await.unwrap();
    for import in &finished {
        assert_eq!(
            status(import),
            ImportStatus::CompletedSuccess,
            "{}",
            import.error_message
        );
        assert_eq!((import.rows_processed, import.rows_imported), (rows, rows));
    }
    for watcher in watchers {
        let last = watcher.await.unwrap();
        assert_eq!(status(&last), ImportStatus::CompletedSuccess);
        assert_eq!(last.rows_imported, rows);
    }
    assert!(latencies.len() > 10, "{} GetImport calls", latencies.len());
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let total = bytes as f64 * UPLOADS as f64 / (1024.0 * 1024.0);
    println!(
        "load: {UPLOADS} uploads of {:.1} MiB with 2 watchers each in {:.2} s: {:.1} MiB/s, \
         {:.0} rows/s; GetImport during the load: {} calls, p50 {:?}, p99 {:?}",
        bytes as f64 / (1024.0 * 1024.0),
        took.as_secs_f64(),
        total / took.as_secs_f64(),
        (rows as f64 * UPLOADS as f64) / took.as_secs_f64(),
        latencies.len(),
        latencies[latencies.len() / 2],
        p99
    );
}
