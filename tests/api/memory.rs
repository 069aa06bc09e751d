//! The small version of the benchmark (`cargo bench --bench import` is the full one): a 20 MiB
//! upload through the real binary, asserting the memory bound and printing the ratio to the
//! database's own loader. Timing is only printed, never asserted: `cargo test` builds the
//! binary without optimisations, and CI machines are noisy.

use bulk_import::proto::ImportStatus;

use crate::helpers::*;
use crate::support;

/// The peak RSS the server may reach during a 200 MiB upload (issue 5's bound); a 20 MiB one
/// must stay under it as well.
const MAX_PEAK_RSS: u64 = 128 * 1024 * 1024;

backend_tests! {
    async fn a_20_mib_upload_stays_under_the_memory_bound(backend) {
        let file = support::users_file(20, 2);
        let rows = support::data_rows(&file);
        let database = TestDatabase::new(backend).await;
        let server = support::Server::start_this(&database.url).await;
        let (import, wall) = support::upload(server.channel.clone(), ACCOUNT, &file).await;
        let peak = server.peak_rss();
        server.stop();

        assert_eq!(ImportStatus::try_from(import.status), Ok(ImportStatus::CompletedSuccess));
        assert_eq!(import.rows_imported as u64, rows);
        assert!(peak > 0, "the peak RSS was read from /proc");
        let mb = support::mib(import.bytes_received as u64);
        println!(
            "{backend:?}: 20 MiB upload (unoptimised test build): {:.2} s, {:.1} MB/s, peak RSS \
             {:.1} MiB (bound {:.0} MiB)",
            wall.as_secs_f64(),
            mb / wall.as_secs_f64(),
            support::mib(peak),
            support::mib(MAX_PEAK_RSS)
        );
        let tool = match backend {
            Backend::Sqlite => support::sqlite3_import(&file).map(|t| ("sqlite3 .import", t)),
            Backend::Postgres => {
                let copy_into = TestDatabase::new(Backend::Postgres).await;
                support::psql_copy_into(&copy_into.url, &file).map(|t| ("psql \\copy", t))
            }
        };
        match tool {
            Some((name, time)) => println!(
                "{backend:?}: {name} {:.2} s, ratio service/tool {:.2} (see cargo bench for \
                 release figures)",
                time.as_secs_f64(),
                wall.as_secs_f64() / time.as_secs_f64()
            ),
            None => println!("{backend:?}: the database's own loader is not installed: no ratio"),
        }
        assert!(
            peak <= MAX_PEAK_RSS,
            "peak RSS {:.1} MiB is over the {:.0} MiB bound",
            support::mib(peak),
            support::mib(MAX_PEAK_RSS)
        );
    }
}

/// Resident memory of `server` sampled while `read` runs: the highest seen.
async fn replay_peak(
    server: &support::Server,
    events: &mut tonic::Streaming<bulk_import::proto::UserEvent>,
    count: i64,
) -> u64 {
    use futures::StreamExt;
    let mut peak = server.rss();
    for read in 0..count {
        tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
            .await
            .expect("an event in time")
            .expect("the feed goes on")
            .unwrap();
        if read % 5_000 == 0 {
            peak = peak.max(server.rss());
        }
    }
    peak.max(server.rss())
}

backend_tests! {
    async fn a_100_000_user_import_replays_in_flat_memory_beside_a_follower_that_does_not_read(
        backend
    ) {
        let (file, stats) = generate(&["--rows", "100000", "--seed", "6"]);
        let database = TestDatabase::new(backend).await;
        let server = support::Server::start_this(&database.url).await;
        let mut client = server.client();
        let messages = upload_messages(ACCOUNT, "big", "users.csv", &file, 256 * 1024, finish());
        let import = client
            .upload_import(futures::stream::iter(messages))
            .await
            .unwrap()
            .into_inner()
            .import
            .unwrap();
        assert_eq!(import.rows_imported, stats.valid);
        let follow = || bulk_import::proto::WatchUserEventsRequest::default();
        let before = server.rss();
        // One follower never reads: the server holds what the connection's window and the
        // follower's 64 queued events take, and reads nothing more for it.
        let stalled = client.clone().watch_user_events(follow()).await.unwrap();
        let mut events = client.watch_user_events(follow()).await.unwrap().into_inner();
        let peak = replay_peak(&server, &mut events, stats.valid).await;
        drop(stalled);
        server.stop();
        let grew = peak.saturating_sub(before);
        println!(
            "{backend:?}: replaying {} events: RSS {:.1} MiB before, {:.1} MiB at most during \
             (+{:.1} MiB), one follower stalled throughout",
            stats.valid,
            support::mib(before),
            support::mib(peak),
            support::mib(grew)
        );
        assert!(
            grew <= 32 * 1024 * 1024,
            "the replay grew the server by {:.1} MiB",
            support::mib(grew)
        );
    }
}
