//! Storage faults: the disk fills mid-upload, the database goes away at the moment an import
//! completes, a database backend is killed in the middle of a batch. Each import still ends
//! exactly once, the client's answer agrees with what is stored, nothing of a failed import
//! is left, and the service recovers by itself, without a restart.

use std::time::{Duration, Instant};

use bulk_import::proto::{self, ImportStatus};
use sqlx::{Connection, PgConnection, SqliteConnection};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;
use crate::lifecycle::open_upload;

/// The SQLite file's cap in the disk-full test: 32 MiB of 4 KiB pages.
const MAX_PAGES: i64 = 8192;

/// Fills the SQLite database with a table of the test's own (its connection has no cap)
/// until fewer than `room` pages are left below `MAX_PAGES`: to the server, a nearly full disk.
async fn fill(conn: &mut SqliteConnection, room: i64) {
    sqlx::query("CREATE TABLE ballast (data BLOB NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    // A MiB (256 pages) at a time while that fits, then a page at a time.
    for chunk in [1024 * 1024, 4096] {
        for _ in 0..MAX_PAGES {
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            if pages + (chunk as i64 / 4096) + 2 > MAX_PAGES - room {
                break;
            }
            sqlx::query("INSERT INTO ballast (data) VALUES (zeroblob(?1))")
                .bind(chunk)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
}

/// The disk fills in the middle of an upload (SQLite, its file capped as a full disk would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_ends_the_upload_and_the_service_recovers_once_there_is_room() {
    let database = TestDatabase::sqlite();
    let app = spawn_on(&database.url, |args| {
        args.sqlite_max_pages = Some(MAX_PAGES as u64)
    })
    .await;
    let mut ballast = SqliteConnection::connect(&database.url).await.unwrap();
    fill(&mut ballast, 64).await;

    // More rows than a batch: the first batch does not fit.
    let (file, stats) = generate(&["--rows", "60000", "--seed", "51"]);
    let refused = app
        .upload(ACCOUNT, "too-big", &file, 64 * 1024)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("the database's disk is full"),
        "{}",
        refused.message()
    );
    let failed = app.get(ACCOUNT, "too-big").await.unwrap();
    assert_eq!(status(&failed), ImportStatus::ErrorUnknown);
    assert!(
        failed
            .error_message
            .contains("because the database's disk is full"),
        "{}",
        failed.error_message
    );
    assert_eq!(failed.rows_imported, 0);
    assert_eq!(app.stored(ACCOUNT, "too-big").await.0, "ERROR_UNKNOWN");
    assert_eq!(app.users_of(ACCOUNT, "too-big").await, 0);

    // While the disk is full, the service says it is not ready and refuses uploads at once,
    // leaving no import behind.
    wait_readiness(&app, ServingStatus::NotServing).await;
    let small = format!("{HEADER}ada@example.com,Ada,Lovelace,,,\n");
    let while_full = app
        .upload(ACCOUNT, "while-full", small.as_bytes(), 1024)
        .await
        .unwrap_err();
    assert_eq!(while_full.code(), Code::Unavailable);
    assert!(
        while_full.message().contains("the database's disk is full"),
        "{}",
        while_full.message()
    );
    let absent = app.get(ACCOUNT, "while-full").await.unwrap_err();
    assert_eq!(absent.code(), Code::NotFound);

    // Room again: the service comes back by itself, and the same file imports whole.
    sqlx::query("DELETE FROM ballast")
        .execute(&mut ballast)
        .await
        .unwrap();
    wait_readiness(&app, ServingStatus::Serving).await;
    let imported = app
        .upload(ACCOUNT, "after", &file, 64 * 1024)
        .await
        .unwrap();
    assert_eq!(imported.rows_imported, stats.valid);
    assert_eq!(app.users_of(ACCOUNT, "after").await, stats.valid);
    assert_eq!(app.users_of(ACCOUNT, "too-big").await, 0);
}

/// Makes the database unavailable to the server until `restore`: PostgreSQL closed to
/// connections (open ones dropped); SQLite's write lock held by another process's connection.
enum Away {
    Postgres,
    Sqlite(SqliteConnection),
}

impl Away {
    async fn start(app: &TestApp, backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                take_database_away(app.database(), true).await;
                Away::Postgres
            }
            Backend::Sqlite => {
                let mut conn = SqliteConnection::connect(&app.database_url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Away::Sqlite(conn)
            }
        }
    }

    async fn restore(self, app: &TestApp) {
        match self {
            Away::Postgres => take_database_away(app.database(), false).await,
            Away::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// Waits until the import's stored status is `wanted`.
async fn wait_stored(app: &TestApp, import_id: &str, wanted: &str) -> (String, i64, i64) {
    let start = Instant::now();
    loop {
        let stored = app.stored(ACCOUNT, import_id).await;
        if stored.0 == wanted {
            return stored;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the import stayed {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

backend_tests! {
    /// Every batch is written; then the database goes away just as the finish message comes.
    /// The client hears UNAVAILABLE, and once the database is back the stored ending is
    /// ERROR_UNKNOWN with no users left: never COMPLETED after the client heard otherwise.
    async fn the_database_going_away_at_completion_ends_the_import_with_nothing_imported(backend) {
        // SQLite: a write waits 200 ms for the lock another process holds, not 30 s.
        let app = spawn_app_with(backend, |args| args.sqlite_busy_timeout_ms = 200).await;
        let (file, stats) = generate(&["--rows", "20000", "--seed", "52"]);
        let upload = open_upload(&app, ACCOUNT, "at-completion").await;
        for piece in file.chunks(64 * 1024) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        // The last rows are written once the client is quiet for a moment.
        let start = Instant::now();
        while app.stored(ACCOUNT, "at-completion").await.2 < stats.valid {
            assert!(start.elapsed() < Duration::from_secs(30), "the rows were never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(app.users_of(ACCOUNT, "at-completion").await, stats.valid);

        let away = Away::start(&app, backend).await;
        upload.tx.send(finish_message(finish())).await.unwrap();
        // The stream ends after finish: that commits the import.
        drop(upload.tx);
        let reply = upload.call.await.unwrap().unwrap_err();
        assert_eq!(reply.code(), Code::Unavailable, "{reply:?}");
        assert!(reply.message().contains("could not be completed"), "{}", reply.message());
        if backend == Backend::Sqlite {
            // The server still reads: it shows the ending it will store.
            let shown = app.get(ACCOUNT, "at-completion").await.unwrap();
            assert_eq!(status(&shown), ImportStatus::ErrorUnknown);
        }

        away.restore(&app).await;
        let (_, rows_processed, rows_imported) =
            wait_stored(&app, "at-completion", "ERROR_UNKNOWN").await;
        assert_eq!((rows_processed, rows_imported), (stats.rows, 0));
        assert_eq!(app.users_of(ACCOUNT, "at-completion").await, 0);
        let ended = app.get(ACCOUNT, "at-completion").await.unwrap();
        assert_eq!(status(&ended), ImportStatus::ErrorUnknown);
        assert!(
            ended.error_message.contains("when the import completed"),
            "{}",
            ended.error_message
        );

        // Nothing is wedged: the same file imports.
        let again = app.upload(ACCOUNT, "again", &file, 64 * 1024).await.unwrap();
        assert_eq!(again.rows_imported, stats.valid);
    }
}

/// PostgreSQL: the connection writing a batch is terminated by the server
/// (`pg_terminate_backend`) while the batch is in its transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_backend_killed_mid_batch_ends_the_import_and_the_next_upload_works() {
    let app = spawn_app(Backend::Postgres).await;
    let (file, stats) = generate(&["--rows", "60000", "--seed", "53"]);
    let upload = open_upload(&app, ACCOUNT, "cut").await;
    let mut pieces = file.chunks(64 * 1024);
    for piece in pieces.by_ref().take(20) {
        upload.tx.send(chunk(piece)).await.unwrap();
    }
    crate::lifecycle::wait_for_imported_rows(&app, ACCOUNT, "cut").await;

    // Hold the import's row: the next batch then waits for it inside its transaction.
    let mut holder = PgConnection::connect(&app.database_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM imports WHERE import_id = 'cut' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let rest: Vec<Vec<u8>> = pieces.map(<[u8]>::to_vec).collect();
    let tx = upload.tx.clone();
    let sender = tokio::spawn(async move {
        for piece in rest {
            if tx.send(chunk(&piece)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(finish_message(finish())).await;
    });
    drop(upload.tx);

    // Kill the connections of the waiting batch. (Asked on a connection of its own: within
    // the holder's transaction, pg_stat_activity would show the same snapshot each time.)
    let mut admin = PgConnection::connect(&app.database_url).await.unwrap();
    let start = Instant::now();
    loop {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'bulk-import' \
             AND wait_event_type = 'Lock' AND query LIKE '%FOR KEY SHARE%'",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        if !killed.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no batch ever waited for the import"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let reply = upload.call.await.unwrap().unwrap_err();
    assert_eq!(reply.code(), Code::Unavailable, "{reply:?}");
    assert!(
        reply
            .message()
            .contains("connection to the database was lost"),
        "{}",
        reply.message()
    );
    sender.await.unwrap();
    let ended = app.get(ACCOUNT, "cut").await.unwrap();
    assert_eq!(status(&ended), ImportStatus::ErrorUnknown);
    assert!(
        ended
            .error_message
            .contains("because the connection to the database was lost"),
        "{}",
        ended.error_message
    );
    assert_eq!(ended.rows_imported, 0);
    assert_eq!(app.users_of(ACCOUNT, "cut").await, 0);
    assert_eq!(
        crate::health::check(&app, bulk_import::app::READINESS_SERVICE).await,
        ServingStatus::Serving
    );

    let after = app
        .upload(ACCOUNT, "after", &file, 64 * 1024)
        .await
        .unwrap();
    assert_eq!(after.rows_imported, stats.valid);
}

backend_tests! {
    /// A failed UPDATE import whose ending must wait for the database: from the moment a
    /// terminal status is shown, every answer shows the same status and counters, and they are
    /// the stored ones (nothing imported, skipped or updated), never counts that later drop.
    async fn a_failed_update_ending_that_waits_shows_the_counters_it_will_store(backend) {
        let app = spawn_app_with(backend, |args| args.sqlite_busy_timeout_ms = 200).await;
        let (base, stats) = generate(&["--rows", "4000", "--seed", "53"]);
        let first = app.upload(ACCOUNT, "base", &base, 64 * 1024).await.unwrap();
        assert_eq!(first.rows_imported, stats.valid);
        let before = app.users(ACCOUNT).await;
        // The same users, every first name changed.
        let (changed, _) = generate(&["--rows", "4000", "--seed", "53", "--changed-rate", "1"]);
        let upload = crate::lifecycle::open_upload_with(&app, ACCOUNT, "update", |m| {
            m.on_conflict = proto::ConflictPolicy::Update as i32;
        })
        .await;
        for piece in changed.chunks(64 * 1024) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        crate::lifecycle::wait_for_import(&app, ACCOUNT, "update").await;
        let start = Instant::now();
        loop {
            let shown = app.get(ACCOUNT, "update").await.unwrap();
            if shown.rows_updated == stats.valid {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "never updated: {shown:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let away = Away::start(&app, backend).await;
        upload.tx.send(finish_message(finish())).await.unwrap();
        drop(upload.tx);
        let reply = upload.call.await.unwrap().unwrap_err();
        assert_eq!(reply.code(), Code::Unavailable, "{reply:?}");
        let mut seen: Vec<proto::Import> = Vec::new();
        let mut look = async || {
            if let Ok(shown) = app.get(ACCOUNT, "update").await {
                seen.push(shown);
            }
        };
        for _ in 0..5 {
            look().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        away.restore(&app).await;
        wait_stored(&app, "update", "ERROR_UNKNOWN").await;
        look().await;

        let terminal: Vec<&proto::Import> = seen
            .iter()
            .skip_while(|i| status(i) == ImportStatus::Processing)
            .collect();
        assert!(!terminal.is_empty(), "{seen:?}");
        if backend == Backend::Sqlite {
            // The server still reads while the lock is held: it showed the waiting ending.
            assert!(terminal.len() > 1, "{seen:?}");
        }
        let stored = terminal.last().unwrap();
        assert_eq!(status(stored), ImportStatus::ErrorUnknown);
        assert_eq!(
            (stored.rows_imported, stored.rows_skipped, stored.rows_updated),
            (0, 0, 0)
        );
        assert_eq!(stored.rows_processed, stats.rows);
        for shown in &terminal {
            assert_eq!(status(shown), ImportStatus::ErrorUnknown);
            assert_eq!(
                (
                    shown.rows_processed,
                    shown.rows_imported,
                    shown.rows_failed,
                    shown.rows_skipped,
                    shown.rows_updated,
                    shown.row_errors_omitted,
                ),
                (
                    stored.rows_processed,
                    stored.rows_imported,
                    stored.rows_failed,
                    stored.rows_skipped,
                    stored.rows_updated,
                    stored.row_errors_omitted,
                ),
                "a waiting ending showed other counters than it stored"
            );
        }
        // The update was undone.
        assert_eq!(app.users(ACCOUNT).await, before);
    }
}
