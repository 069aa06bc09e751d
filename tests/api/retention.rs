//! Retention: past `--retention` (`--dry-run-retention` for dry runs) a finished import's row
//! errors and fix-up file are removed, in the background, while the import stays with its
//! counters and says so; SQLite gives the room back to the filesystem; on PostgreSQL one
//! replica removes at a time.
//!
//! Each test makes its imports on a server that keeps everything, then starts another on the
//! same database with a short retention: what is expired is then known exactly, whatever the
//! machine's speed.

use std::time::{Duration, Instant};

use bulk_import::config::ServeArgs;
use bulk_import::config::duration::KeepFor;
use bulk_import::proto;
use tonic::Code;

use crate::features::report;
use crate::helpers::*;

/// Two good rows, three that fail (an address, a role, an empty email).
const FILE: &str = "email,first_name,last_name,role,job_title,external_id\n\
                    ada@example.com,Ada,,,,\n\
                    not-an-address,Bad,,,,\n\
                    grace@example.com,Grace,,boss,,\n\
                    alan@example.com,Alan,,,,E1\n\
                    ,Nobody,,,,\n";

/// Keeps everything: the server that makes the imports.
fn keep_all(args: &mut ServeArgs) {
    args.retention = KeepFor(None);
    args.dry_run_retention = KeepFor(None);
}

/// A clean-up every 50 ms, with these retentions, and metrics.
fn clean_up(imports: Option<Duration>, dry_runs: Option<Duration>) -> impl FnOnce(&mut ServeArgs) {
    move |args| {
        args.retention = KeepFor(imports);
        args.dry_run_retention = KeepFor(dry_runs);
        args.retention_interval = Duration::from_millis(50);
        args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    }
}

/// The import once its details are removed, polled for at most 20 s.
async fn removed(app: &TestApp, import_id: &str) -> proto::Import {
    let start = Instant::now();
    loop {
        let import = app.get(ACCOUNT, import_id).await.unwrap();
        if import.details_removed_time.is_some() {
            return import;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the details of {import_id} were never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The counters a client sees, which retention must not change.
fn counters(import: &proto::Import) -> [i64; 7] {
    [
        import.status as i64,
        import.bytes_received,
        import.rows_processed,
        import.rows_imported,
        import.rows_failed,
        import.rows_skipped,
        import.rows_updated,
    ]
}

backend_tests! {
    /// A dry run past its retention loses its row errors and fix-up file and says so; the
    /// import beside it, within its own retention, keeps everything; once that passes too, the
    /// import keeps its counters and its users.
    async fn past_its_retention_an_import_keeps_its_counters_and_says_its_details_went(backend) {
        let database = TestDatabase::new(backend).await;
        let mut maker = spawn_on(&database.url, keep_all).await;
        let plain = maker.upload(ACCOUNT, "plain", FILE.as_bytes(), 16).await.unwrap();
        assert_eq!((plain.rows_imported, plain.rows_failed), (2, 3));
        let check = maker
            .upload_with(ACCOUNT, "check", FILE.as_bytes(), 16, |m| m.validate_only = true)
            .await
            .unwrap();
        // Every row now conflicts or fails; a row may have several errors.
        assert_eq!((check.rows_imported, check.rows_failed), (0, 5));
        let check_errors = maker.errors(ACCOUNT, "check").await.len() as f64;
        assert!(check_errors >= 5.0);
        maker.stop().await;

        let mut app = spawn_on(
            &database.url,
            clean_up(Some(Duration::from_secs(3600)), Some(Duration::from_millis(1))),
        )
        .await;
        let gone = removed(&app, "check").await;
        assert_eq!(counters(&gone), counters(&check));
        assert!(app.errors(ACCOUNT, "check").await.is_empty());
        let refused = report(&app, ACCOUNT, "check").await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused.message().contains("(its row errors and fix-up file) were removed on"),
            "{}",
            refused.message()
        );
        assert!(refused.message().contains("dry run of the same file"), "{}", refused.message());
        // The import within its retention keeps everything.
        let kept = app.get(ACCOUNT, "plain").await.unwrap();
        assert!(kept.details_removed_time.is_none());
        assert_eq!(app.errors(ACCOUNT, "plain").await.len(), 3);
        assert!(report(&app, ACCOUNT, "plain").await.is_ok());
        // Still listed.
        assert_eq!(app.list(ACCOUNT).await.len(), 2);
        let metrics = crate::metrics::scrape(&app).await;
        assert_eq!(
            metrics["bulk_import_retention_removed_rows_total{table=\"row_errors\"}"],
            check_errors
        );
        assert_eq!(metrics["bulk_import_retention_removed_rows_total{table=\"failed_rows\"}"], 5.0);
        assert_eq!(metrics["bulk_import_retention_imports_total"], 1.0);
        assert!(metrics["bulk_import_database_size_bytes"] > 0.0);
        app.stop().await;

        let app = spawn_on(&database.url, clean_up(Some(Duration::from_millis(1)), None)).await;
        let gone = removed(&app, "plain").await;
        assert_eq!(counters(&gone), counters(&plain));
        assert_eq!(app.users_of(ACCOUNT, "plain").await, 2);
        assert!(app.errors(ACCOUNT, "plain").await.is_empty());
        assert_eq!(
            report(&app, ACCOUNT, "plain").await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        // The CLI says so too.
        let server = app.addr.to_string();
        let shown = crate::cli::bulk_import(Some(&server), "get", &["plain"]).await;
        assert_eq!(shown.code, 2, "{}", shown.err);
        assert!(shown.out.contains("details:     removed"), "{}", shown.out);
        let fixup = crate::cli::bulk_import(Some(&server), "errors", &["plain"]).await;
        assert_eq!(fixup.code, 1);
        assert!(fixup.err.contains("FAILED_PRECONDITION"), "{}", fixup.err);
        assert!(fixup.err.contains("were removed on"), "{}", fixup.err);
    }
}

/// A SQLite file gives the room of removed details back to the filesystem: an import with
/// 20,000 failed rows, then its details removed; the file shrinks by most of their size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_gives_the_room_back() {
    let database = TestDatabase::sqlite();
    let mut maker = spawn_on(&database.url, keep_all).await;
    let mut file = String::from("email,first_name,last_name,role,job_title,external_id\n");
    for i in 0..20_000 {
        file.push_str(&format!(
            "user-{i}-at-example.com,First {i},Last {i},,Job {i},\n"
        ));
    }
    let import = maker
        .upload(ACCOUNT, "bad", file.as_bytes(), 64 * 1024)
        .await
        .unwrap();
    assert_eq!(import.rows_failed, 20_000);
    maker.stop().await;
    let before = file_bytes(&database.url);

    let app = spawn_on(
        &database.url,
        clean_up(Some(Duration::from_millis(1)), None),
    )
    .await;
    removed(&app, "bad").await;
    // The room goes back in the same round, after the last step.
    let start = Instant::now();
    let after = loop {
        let size = crate::metrics::scrape(&app).await["bulk_import_database_size_bytes"];
        if size > 0.0 && (size as u64) < before / 2 {
            break size as u64;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the file stays at {size} bytes of {before}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "20,000 failed rows' details removed: the database went from {before} to {after} bytes"
    );
    let metrics = crate::metrics::scrape(&app).await;
    assert_eq!(
        metrics["bulk_import_retention_removed_rows_total{table=\"row_errors\"}"],
        20_000.0
    );
    assert_eq!(
        metrics["bulk_import_retention_removed_rows_total{table=\"failed_rows\"}"],
        20_000.0
    );
}

/// The database file's pages, as SQLite counts them.
fn file_bytes(url: &str) -> u64 {
    let path = url.trim_start_matches("sqlite://");
    std::fs::metadata(path).unwrap().len()
}

/// A SQLite file made before incremental vacuum is converted once, at start, and keeps its
/// data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_sqlite_file_is_converted_to_incremental_vacuum() {
    use sqlx::ConnectOptions;
    let database = TestDatabase::sqlite();
    let path = database.url.trim_start_matches("sqlite://").to_owned();
    {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(mode, 0, "a file as older versions made it");
        sqlx::query("CREATE TABLE left_by_someone (x INTEGER)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut app = spawn_on(&database.url, |_| {}).await;
    app.upload(ACCOUNT, "after", FILE.as_bytes(), 16)
        .await
        .unwrap();
    app.stop().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, 2, "INCREMENTAL");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM left_by_someone")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Two replicas clean up the same database: every import's details are removed once, and the
/// rows removed add up exactly, however the two interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn replicas_remove_details_once() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let mut maker = spawn_on(&database.url, keep_all).await;
    let mut file = String::from("email,first_name,last_name,role,job_title,external_id\n");
    for i in 0..6_000 {
        file.push_str(&format!("user-{i}-at-example.com,First,,,,\n"));
    }
    for i in 0..4 {
        let import = maker
            .upload(ACCOUNT, &format!("bad-{i}"), file.as_bytes(), 64 * 1024)
            .await
            .unwrap();
        assert_eq!(import.rows_failed, 6_000);
    }
    maker.stop().await;
    let policy = || clean_up(Some(Duration::from_millis(1)), None);
    let (first, second) = tokio::join!(
        spawn_on(&database.url, policy()),
        spawn_on(&database.url, policy())
    );
    for i in 0..4 {
        removed(&first, &format!("bad-{i}")).await;
    }
    // An import is marked before its rows go and counted once they are gone: wait for the
    // last count (bounded), then check that nothing was counted twice.
    let start = Instant::now();
    let (a, b) = loop {
        let (a, b) = (
            crate::metrics::scrape(&first).await,
            crate::metrics::scrape(&second).await,
        );
        let cleaned = |m: &std::collections::HashMap<String, f64>| {
            *m.get("bulk_import_retention_imports_total").unwrap_or(&0.0)
        };
        if cleaned(&a) + cleaned(&b) >= 4.0 {
            break (a, b);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replicas counted {} cleaned imports of 4",
            cleaned(&a) + cleaned(&b)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    for (table, count) in [
        (
            "import_row_errors",
            "SELECT count(*) FROM import_row_errors",
        ),
        (
            "import_failed_rows",
            "SELECT count(*) FROM import_failed_rows",
        ),
    ] {
        let left: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
        assert_eq!(left, 0, "rows left in {table}");
    }
    let sum = |series: &str| a.get(series).unwrap_or(&0.0) + b.get(series).unwrap_or(&0.0);
    println!(
        "two replicas: {} and {} imports cleaned",
        a.get("bulk_import_retention_imports_total").unwrap_or(&0.0),
        b.get("bulk_import_retention_imports_total").unwrap_or(&0.0)
    );
    assert_eq!(sum("bulk_import_retention_imports_total"), 4.0);
    assert_eq!(
        sum("bulk_import_retention_removed_rows_total{table=\"row_errors\"}"),
        24_000.0
    );
    assert_eq!(
        sum("bulk_import_retention_removed_rows_total{table=\"failed_rows\"}"),
        24_000.0
    );
}

/// Marks import `import_id` as a removal that a server stopped mid-way leaves it: its details
/// marked removed, half of its failed rows gone.
async fn leave_removal_under_way(app: &TestApp, import_id: &'static str) {
    if app.database_url.starts_with("sqlite:") {
        app.execute(if import_id == "half" {
            "UPDATE imports SET details_removed_time = 1000000, details_left = 1 \
             WHERE import_id = 'half'"
        } else {
            "UPDATE imports SET details_removed_time = 1000000, details_left = 1 \
             WHERE import_id = 'reading'"
        })
        .await;
    } else {
        app.execute(if import_id == "half" {
            "UPDATE imports SET details_removed_time = now(), details_left = TRUE \
             WHERE import_id = 'half'"
        } else {
            "UPDATE imports SET details_removed_time = now(), details_left = TRUE \
             WHERE import_id = 'reading'"
        })
        .await;
    }
    app.execute(
        "DELETE FROM import_failed_rows WHERE import_key = \
         (SELECT import_key FROM imports WHERE import_id IN ('half', 'reading')) \
         AND row_number % 2 = 0",
    )
    .await;
}

/// A file of `rows` rows that all fail.
fn failing(rows: usize) -> String {
    let mut file = String::from("email,first_name,last_name,role,job_title,external_id\n");
    for i in 0..rows {
        file.push_str(&format!("user-{i}-at-example.com,First {i},,,,\n"));
    }
    file
}

backend_tests! {
    /// A removal that a stopped server left under way is finished by the next one, even one
    /// that keeps everything; meanwhile the import shows its details as removed, never the half.
    async fn a_removal_left_under_way_is_finished(backend) {
        let database = TestDatabase::new(backend).await;
        let mut maker = spawn_on(&database.url, keep_all).await;
        maker.upload(ACCOUNT, "half", failing(3_000).as_bytes(), 64 * 1024).await.unwrap();
        leave_removal_under_way(&maker, "half").await;
        let import = maker.get(ACCOUNT, "half").await.unwrap();
        assert!(import.details_removed_time.is_some());
        assert!(maker.errors(ACCOUNT, "half").await.is_empty(), "what is left is not shown");
        assert_eq!(report(&maker, ACCOUNT, "half").await.unwrap_err().code(), Code::FailedPrecondition);
        maker.stop().await;

        let app = spawn_on(&database.url, |args| {
            keep_all(args);
            args.retention_interval = Duration::from_millis(50);
            args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let start = Instant::now();
        while crate::metrics::scrape(&app).await.get("bulk_import_retention_imports_total") != Some(&1.0) {
            assert!(start.elapsed() < Duration::from_secs(20), "the removal was never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = crate::metrics::scrape(&app).await;
        assert_eq!(metrics["bulk_import_retention_removed_rows_total{table=\"row_errors\"}"], 3_000.0);
        assert_eq!(metrics["bulk_import_retention_removed_rows_total{table=\"failed_rows\"}"], 1_500.0);
    }

    /// A fix-up file being read when the retention begins removing its rows ends with the
    /// refusal, not with a file that lacks rows.
    async fn a_report_read_while_its_details_go_is_refused_not_cut(backend) {
        let app = spawn_app_with(backend, keep_all).await;
        app.upload(ACCOUNT, "reading", failing(20_000).as_bytes(), 64 * 1024).await.unwrap();
        let mut client = app.client.clone();
        let mut chunks = client
            .get_import_error_report(proto::GetImportErrorReportRequest {
                account_id: ACCOUNT.into(),
                import_id: "reading".into(),
            })
            .await
            .unwrap()
            .into_inner();
        // The first chunk is read; the server's writer waits on the stream for the rest.
        let first = futures::StreamExt::next(&mut chunks).await.unwrap().unwrap();
        assert!(!first.chunk.is_empty());
        leave_removal_under_way(&app, "reading").await;
        let mut ended = None;
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            if let Err(status) = chunk {
                ended = Some(status);
                break;
            }
        }
        let status = ended.expect("the stream ends with an error, not as a whole file");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().starts_with("the report was cut short: "), "{}", status.message());
    }
}
