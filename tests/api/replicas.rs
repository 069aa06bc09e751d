//! Several replicas on one PostgreSQL: shared progress, uniqueness, a replica's death, and the
//! database going away. Postgres only: ignored when the tests were built without
//! `TEST_DATABASE_URL`.

use std::time::{Duration, Instant, SystemTime};

use bulk_import::proto::{self, ImportStatus};
use futures::StreamExt;
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;
use crate::lifecycle::open_upload;

async fn users_of(database: &TestDatabase, import_id: &str) -> i64 {
    let mut conn = PgConnection::connect(&database.url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM users u JOIN imports i USING (import_key) WHERE i.import_id = $1",
    )
    .bind(import_id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

async fn get(
    client: &mut proto::import_service_client::ImportServiceClient<tonic::transport::Channel>,
    import_id: &str,
) -> Result<proto::Import, tonic::Status> {
    Ok(client
        .get_import(proto::GetImportRequest {
            account_id: ACCOUNT.into(),
            import_id: import_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .import
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_second_replica_follows_an_upload_live_and_ends_it_when_the_first_dies() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let mut first = crate::support::Server::start_this(&database.url).await;
    let second = crate::support::Server::start_this(&database.url).await;
    let (mut on_first, mut on_second) = (first.client(), second.client());

    let (file, _) = generate(&["--rows", "60000", "--seed", "41"]);
    let (tx, rx) = mpsc::channel(4);
    tx.send(metadata(ACCOUNT, "shared", "users.csv"))
        .await
        .unwrap();
    let upload = tokio::spawn(async move { on_first.upload_import(ReceiverStream::new(rx)).await });
    let mut pieces = file.chunks(file.len() / 100);
    tx.send(chunk(pieces.next().unwrap())).await.unwrap();
    let created = Instant::now();
    while get(&mut on_second, "shared").await.is_err() {
        assert!(
            created.elapsed() < Duration::from_secs(10),
            "the second replica never saw the import"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The second replica watches while the first receives a slow upload.
    let mut stream = on_second
        .watch_import(proto::WatchImportRequest {
            account_id: ACCOUNT.into(),
            import_id: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(message)) = stream.next().await {
            seen.push(message.import.unwrap());
        }
        seen
    });
    for piece in pieces.by_ref().take(60) {
        tx.send(chunk(piece)).await.unwrap();
        // A slow client.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let live = get(&mut on_second, "shared").await.unwrap();
    assert_eq!(
        ImportStatus::try_from(live.status).unwrap(),
        ImportStatus::Processing
    );
    assert!(
        live.rows_processed > 0 && live.rows_imported > 0,
        "{live:?}"
    );
    assert!(users_of(&database, "shared").await > 0);

    // The first replica dies mid-upload.
    let killed = SystemTime::now();
    first.kill();
    let _ = upload.await;
    drop(tx);

    let seen = tokio::time::timeout(Duration::from_secs(40), watcher)
        .await
        .expect("the watch ends")
        .unwrap();
    let running: Vec<_> = seen
        .iter()
        .filter(|i| ImportStatus::try_from(i.status) == Ok(ImportStatus::Processing))
        .collect();
    assert!(
        running.len() >= 4,
        "{} updates while running",
        running.len()
    );
    assert!(
        running
            .windows(2)
            .all(|w| w[1].rows_processed >= w[0].rows_processed),
        "counters never go back"
    );
    // How far apart the server's updates were, by its own clock, while the upload ran.
    let moving: Vec<SystemTime> = running
        .iter()
        .map(|i| system_time(i.update_time.as_ref()))
        .filter(|at| *at < killed)
        .collect();
    let longest_gap = moving
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .max()
        .unwrap();
    assert!(
        longest_gap < Duration::from_millis(900),
        "gap of {longest_gap:?}"
    );

    let last = seen.last().unwrap();
    assert_eq!(
        ImportStatus::try_from(last.status).unwrap(),
        ImportStatus::ErrorUnknown
    );
    assert!(
        last.error_message.contains("server stopped"),
        "{}",
        last.error_message
    );
    let took = system_time(last.complete_time.as_ref())
        .duration_since(killed)
        .unwrap_or_default();
    assert!(
        took < Duration::from_secs(30),
        "ended after {took:?}, beyond the lease"
    );
    assert_eq!(users_of(&database, "shared").await, 0);
    let stored = get(&mut on_second, "shared").await.unwrap();
    assert_eq!(&stored, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn two_replicas_importing_the_same_users_at_once_never_duplicate_one() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let (first, second) = tokio::join!(
        crate::support::Server::start_this(&database.url),
        crate::support::Server::start_this(&database.url)
    );
    let (file, stats) = generate(&["--rows", "30000", "--seed", "42"]);
    let upload = |server: &crate::support::Server, id: &'static str| {
        let mut client = server.client();
        let messages = upload_messages(ACCOUNT, id, "users.csv", &file, 16 * 1024, finish());
        async move {
            client
                .upload_import(tokio_stream::iter(messages))
                .await
                .unwrap()
                .into_inner()
                .import
                .unwrap()
        }
    };
    let (a, b) = tokio::join!(upload(&first, "a"), upload(&second, "b"));
    assert_eq!(a.rows_imported + b.rows_imported, stats.valid);
    assert_eq!(a.rows_failed + b.rows_failed, stats.valid);
    let mut conn = PgConnection::connect(&database.url).await.unwrap();
    let (users, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT email) FROM users")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((users, distinct), (stats.valid, stats.valid));
    let codes: Vec<String> = sqlx::query_scalar("SELECT DISTINCT code FROM import_row_errors")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(codes, vec!["ALREADY_EXISTS".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn the_service_rides_out_the_database_going_away() {
    let app = spawn_app(Backend::Postgres).await;
    let (file, stats) = generate(&["--rows", "60000", "--seed", "43"]);
    let upload = open_upload(&app, ACCOUNT, "during-outage").await;
    let mut pieces = file.chunks(64 * 1024);
    for piece in pieces.by_ref().take(20) {
        upload.tx.send(chunk(piece)).await.unwrap();
    }
    crate::lifecycle::wait_for_imported_rows(&app, ACCOUNT, "during-outage").await;

    take_database_away(app.database(), true).await;
    // The running upload fails; the client hears of it.
    for piece in pieces {
        if upload.tx.send(chunk(piece)).await.is_err() {
            break;
        }
    }
    let _ = upload.tx.send(finish_message(finish())).await;
    // The stream ends after finish: that commits the import.
    drop(upload.tx);
    let reply = upload.call.await.unwrap().unwrap_err();
    assert_eq!(reply.code(), tonic::Code::Unavailable, "{reply:?}");
    wait_readiness(&app, ServingStatus::NotServing).await;
    let refused = app.upload(ACCOUNT, "refused", HEADER.as_bytes(), 100).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unavailable);

    // The database comes back: the service recovers by itself.
    take_database_away(app.database(), false).await;
    wait_readiness(&app, ServingStatus::Serving).await;
    let mut ended = None;
    for _ in 0..300 {
        let import = app.get(ACCOUNT, "during-outage").await.unwrap();
        if ImportStatus::try_from(import.status) != Ok(ImportStatus::Processing) {
            ended = Some(import);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = ended.expect("the interrupted import ends once the database is back");
    assert_eq!(
        ImportStatus::try_from(ended.status).unwrap(),
        ImportStatus::ErrorUnknown
    );
    assert_eq!(ended.rows_imported, 0);
    // GetImport shows an ending as decided while it waits to be stored (`ending::pending`,
    // retried with backoff once the database is back); its users go when it is stored.
    let start = std::time::Instant::now();
    while app.users_of(ACCOUNT, "during-outage").await != 0
        && start.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.users_of(ACCOUNT, "during-outage").await, 0);

    let after = app
        .upload(ACCOUNT, "after", &file, 64 * 1024)
        .await
        .unwrap();
    assert_eq!(after.rows_imported, stats.valid);
}

/// Terminates the connections that hold the owner locks of the replicas running PROCESSING
/// imports (what a PostgreSQL restart, a failover or a proxy blip does to them); how many.
async fn drop_owner_locks(database: &TestDatabase) -> i64 {
    let mut conn = PgConnection::connect(&database.url).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = x'42494D50'::int::oid \
         AND l.objid::bigint IN (SELECT owner FROM imports WHERE status = 'PROCESSING')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_live_replica_keeps_its_uploads_when_its_lock_drops_while_another_replica_restarts() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let live = crate::support::Server::start_this(&database.url).await;
    let mut other = crate::support::Server::start_this(&database.url).await;

    // Four slow uploads on the live replica.
    let mut uploads = Vec::new();
    let mut expected = Vec::new();
    for i in 0..4u32 {
        let seed = (70 + i).to_string();
        let (file, stats) = generate(&[
            "--rows",
            "3000",
            "--seed",
            &seed,
            "--start",
            &(i * 10_000).to_string(),
        ]);
        let id = format!("slow-{i}");
        let (tx, rx) = mpsc::channel(4);
        tx.send(metadata(ACCOUNT, &id, "users.csv")).await.unwrap();
        let mut client = live.client();
        let call = tokio::spawn(async move { client.upload_import(ReceiverStream::new(rx)).await });
        uploads.push((id, tx, call, file));
        expected.push(stats.valid);
    }
    let mut on_live = live.client();
    for (id, ..) in &uploads {
        let created = Instant::now();
        while get(&mut on_live, id).await.is_err() {
            assert!(
                created.elapsed() < Duration::from_secs(10),
                "{id} never created"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // The lock's connection drops, and within half a second the other replica is killed and
    // started again. For the next 15 s (longer than the grace the reaper gives a lock that is
    // gone) the lock keeps being taken away, while the uploads go on slowly.
    assert!(
        drop_owner_locks(&database).await >= 1,
        "the live replica held its lock"
    );
    other.kill();
    let restarted = crate::support::Server::start_this(&database.url).await;
    let slow = Instant::now();
    let pieces = 30;
    let mut sent = 0;
    while slow.elapsed() < Duration::from_secs(15) || sent < pieces {
        for (_, tx, _, file) in &uploads {
            let size = file.len().div_ceil(pieces);
            if let Some(piece) = file.chunks(size).nth(sent) {
                tx.send(chunk(piece)).await.unwrap();
            }
        }
        sent += 1;
        drop_owner_locks(&database).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut on_restarted = restarted.client();
    for ((id, tx, call, _), valid) in uploads.into_iter().zip(expected) {
        let running = get(&mut on_restarted, &id).await.unwrap();
        assert_eq!(
            ImportStatus::try_from(running.status).unwrap(),
            ImportStatus::Processing,
            "{id}: {}",
            running.error_message
        );
        tx.send(finish_message(finish())).await.unwrap();
        drop(tx);
        let import = call.await.unwrap().unwrap().into_inner().import.unwrap();
        assert_eq!(
            ImportStatus::try_from(import.status).unwrap(),
            ImportStatus::CompletedSuccess,
            "{id}: {}",
            import.error_message
        );
        assert_eq!(import.rows_imported, valid, "{id}");
        assert_eq!(users_of(&database, &id).await, valid, "{id}");
    }
}
