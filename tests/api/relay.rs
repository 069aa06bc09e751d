//! The relay of the user feed onto NATS JetStream (`--events-nats-url`): every event of the
//! feed in the stream `BULK_IMPORT_EVENTS`, once (by `Nats-Msg-Id`), in the feed's order, on
//! its account's subject; nothing lost while NATS is down; one replica relaying at a time.
//!
//! Each test starts a `nats-server` of its own on a free port, with its own store directory,
//! so that it can stop and start it; the machine's NATS is left to the others. Without
//! `nats-server` the tests are ignored, with the reason; CI (`BULK_IMPORT_REQUIRE_TOOLS=1`)
//! runs them and a missing server fails them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bulk_import::proto::{self, InvitationPolicy};

use crate::helpers::*;

mod harness;
pub use harness::{Nats, feed, same_events, series, stream_messages};

async fn upload_users(app: &TestApp, account: &str, id: &str, file: &[u8]) -> proto::Import {
    app.upload(account, id, file, 16 * 1024).await.unwrap()
}

/// `backend_tests!`, with the tests ignored (with the reason) where `nats-server` is missing.
macro_rules! nats_backend_tests {
    ($(async fn $name:ident($backend:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($backend: $crate::helpers::Backend) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(nats_tests), ignore = "nats-server is not installed (.ci/run installs it)")]
                async fn sqlite() {
                    run($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(postgres_tests), ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)")]
                #[cfg_attr(not(nats_tests), ignore = "nats-server is not installed (.ci/run installs it)")]
                async fn postgres() {
                    run($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

nats_backend_tests! {
    async fn the_relay_publishes_every_event_once_in_order_on_its_accounts_subject(backend) {
        let nats = Nats::start();
        let app = spawn_app_with(backend, |args| {
            args.events_nats_url = Some(nats.url());
            args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let mut client = app.client.clone();
        // 1,500 invited at once (several batches), held users sent later, a resend, an
        // acceptance, an update and a revert, in two accounts, one whose id NATS could not
        // take as a subject token as it is.
        let (file, stats) = generate(&["--rows", "1500", "--seed", "71"]);
        assert_eq!(upload_users(&app, ACCOUNT, "many", &file).await.rows_imported, stats.valid);
        let odd = "team.b *>";
        let held = format!("{HEADER}ann@example.com,Ann,,,,\nbob@example.com,Bob,,,,\n");
        let mut metadata = metadata(odd, "held", "held.csv");
        if let Some(proto::upload_import_request::Payload::Metadata(m)) = &mut metadata.payload {
            m.invitations = InvitationPolicy::Hold as i32;
        }
        let mut messages = vec![metadata];
        messages.push(chunk(held.as_bytes()));
        messages.push(finish_message(finish()));
        let import = client
            .upload_import(futures::stream::iter(messages))
            .await
            .unwrap()
            .into_inner()
            .import
            .unwrap();
        assert_eq!(import.rows_imported, 2);
        client
            .send_invitations(proto::SendInvitationsRequest {
                account_id: odd.into(),
                import_id: "held".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        client
            .send_invitations(proto::SendInvitationsRequest {
                account_id: odd.into(),
                emails: vec!["ann@example.com".into()],
                resend: true,
                ..Default::default()
            })
            .await
            .unwrap();
        client
            .accept_invitation(proto::AcceptInvitationRequest {
                account_id: odd.into(),
                email: "ann@example.com".into(),
            })
            .await
            .unwrap();
        client
            .revert_import(proto::RevertImportRequest {
                account_id: odd.into(),
                import_id: "held".into(),
            })
            .await
            .unwrap();
        // 1,500 + 2 invited + 1 resent + 1 accepted + 1 removed (Ann accepted: kept).
        let total = stats.valid as usize + 5;
        let events = feed(&mut client, total).await;
        let relayed = stream_messages(&nats.url(), total as u64, Duration::from_secs(60)).await;
        same_events(&relayed, &events);
        assert!(relayed.iter().any(|m| m.subject
            == "bulk_import.events.team%2Eb%20%2A%3E.invitation_accepted"));

        let metrics = app.metrics_addr.unwrap();
        assert_eq!(series(metrics, "bulk_import_events_written_total").await, total as f64);
        assert_eq!(
            series(metrics, "bulk_import_events_relayed_total{result=\"stored\"}").await,
            total as f64
        );
        assert_eq!(
            series(metrics, "bulk_import_events_relayed_total{result=\"duplicate\"}").await,
            0.0
        );
        assert_eq!(series(metrics, "bulk_import_events_relay_leader").await, 1.0);
    }

    async fn nats_killed_mid_stream_and_started_again_loses_nothing_and_stores_nothing_twice(
        backend
    ) {
        let mut nats = Nats::start();
        let url = nats.url();
        let app = spawn_app_with(backend, |args| {
            args.events_nats_url = Some(url.clone());
            args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let metrics = app.metrics_addr.unwrap();
        let (first, first_stats) = generate(&["--rows", "3000", "--seed", "72"]);
        upload_users(&app, ACCOUNT, "before", &first).await;
        // NATS goes away while the relay publishes the first import's invitations.
        let started = Instant::now();
        while series(metrics, "bulk_import_events_relayed_total{result=\"stored\"}").await < 1.0 {
            assert!(started.elapsed() < Duration::from_secs(20), "the relay never published");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        nats.kill();
        let (second, second_stats) =
            generate(&["--rows", "2000", "--seed", "73", "--start", "500000"]);
        upload_users(&app, ACCOUNT, "while-down", &second).await;
        // The relay waits, and says how far behind it is.
        let waiting = Instant::now();
        while series(metrics, "bulk_import_events_relay_lag_seconds").await < 1.0 {
            assert!(waiting.elapsed() < Duration::from_secs(20), "no lag while NATS is down");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        nats.start_again();
        let total = (first_stats.valid + second_stats.valid) as usize;
        // Quick bounces while it publishes again, with publishes in flight: what the client
        // held may reach NATS after what the relay sent again.
        let stored = "bulk_import_events_relayed_total{result=\"stored\"}";
        for _ in 0..3 {
            let before = series(metrics, stored).await;
            let started = Instant::now();
            while series(metrics, stored).await <= before && before < total as f64 {
                assert!(started.elapsed() < Duration::from_secs(30), "the relay is stuck");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            nats.kill();
            nats.start_again();
        }
        let relayed = stream_messages(&url, total as u64, Duration::from_secs(90)).await;
        let mut client = app.client.clone();
        same_events(&relayed, &feed(&mut client, total).await);
        let caught_up = Instant::now();
        while series(metrics, "bulk_import_events_relay_lag_seconds").await > 0.0 {
            assert!(caught_up.elapsed() < Duration::from_secs(20), "the lag stays");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every event was stored once (the stream says so above). Those NATS stored but whose
        // acknowledgement died with it were published again and counted as duplicates.
        let stored = series(metrics, stored).await;
        let again = series(metrics, "bulk_import_events_relayed_total{result=\"duplicate\"}").await;
        assert!(stored <= total as f64 && stored + again >= total as f64, "{stored} + {again}");
    }

    async fn the_feed_keeps_what_the_relay_has_not_published_past_the_retention(backend) {
        // NATS is down all along, and the feed's events expire at once.
        let mut nats = Nats::start();
        nats.kill();
        let database = TestDatabase::new(backend).await;
        let mut maker = spawn_on(&database.url, |args| {
            args.events_nats_url = Some(nats.url());
            args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let file = format!("{HEADER}ada@example.com,Ada,,,,\ngrace@example.com,Grace,,,,\n");
        upload_users(&maker, ACCOUNT, "waiting", file.as_bytes()).await;
        let metrics = maker.metrics_addr.unwrap();
        let started = Instant::now();
        while series(metrics, "bulk_import_events_relay_leader").await < 1.0 {
            assert!(started.elapsed() < Duration::from_secs(20), "the relay never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Behind, though it could read nothing yet: NATS was never there.
        while series(metrics, "bulk_import_events_relay_lag_seconds").await < 1.0 {
            assert!(started.elapsed() < Duration::from_secs(20), "no lag while NATS is away");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A restart gives the lease up: the relay still counts as one that ran lately.
        maker.stop().await;
        let app = spawn_on(&database.url, |args| {
            args.events_nats_url = Some(nats.url());
            args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            args.event_retention =
                bulk_import::config::duration::KeepFor(Some(Duration::from_millis(1)));
            args.retention_interval = Duration::from_millis(50);
        })
        .await;
        // A round of the clean-up has run since (it measures the database at its end).
        let metrics = app.metrics_addr.unwrap();
        let started = Instant::now();
        while series(metrics, "bulk_import_database_size_bytes").await == 0.0 {
            assert!(started.elapsed() < Duration::from_secs(20), "no clean-up ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut client = app.client.clone();
        let kept = feed(&mut client, 2).await;
        nats.start_again();
        let relayed = stream_messages(&nats.url(), 2, Duration::from_secs(60)).await;
        same_events(&relayed, &kept);
        // Published, they go as the retention says, once the relay is past their commit (a
        // place within a commit's invitations keeps that commit's row).
        client
            .accept_invitation(proto::AcceptInvitationRequest {
                account_id: ACCOUNT.into(),
                email: "ada@example.com".into(),
            })
            .await
            .unwrap();
        stream_messages(&nats.url(), 3, Duration::from_secs(30)).await;
        let started = Instant::now();
        loop {
            let answer = client
                .watch_user_events(proto::WatchUserEventsRequest {
                    after_cursor: kept[0].cursor.clone(),
                    ..Default::default()
                })
                .await;
            if answer.is_err_and(|s| s.code() == tonic::Code::FailedPrecondition) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the events stayed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn the_relay_goes_on_from_its_stored_place_after_a_restart(backend) {
        let nats = Nats::start();
        let database = TestDatabase::new(backend).await;
        let with_relay = |args: &mut bulk_import::config::ServeArgs| {
            args.events_nats_url = Some(nats.url());
            args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        };
        let mut app = spawn_on(&database.url, with_relay).await;
        let (file, stats) = generate(&["--rows", "400", "--seed", "74"]);
        upload_users(&app, ACCOUNT, "first", &file).await;
        stream_messages(&nats.url(), stats.valid as u64, Duration::from_secs(30)).await;
        app.stop().await;

        // A restart takes the lease at once (the stopped server gave it up) and publishes
        // only what is new.
        let app = spawn_on(&database.url, with_relay).await;
        let (more, more_stats) = generate(&["--rows", "300", "--seed", "75", "--start", "9000"]);
        upload_users(&app, ACCOUNT, "second", &more).await;
        let total = (stats.valid + more_stats.valid) as u64;
        let relayed = stream_messages(&nats.url(), total, Duration::from_secs(30)).await;
        let mut client = app.client.clone();
        same_events(&relayed, &feed(&mut client, total as usize).await);
        let metrics = app.metrics_addr.unwrap();
        assert_eq!(
            series(metrics, "bulk_import_events_relayed_total{result=\"stored\"}").await,
            more_stats.valid as f64
        );
    }
}

/// A replica of the real binary with the relay and `/metrics` on.
async fn replica(database_url: &str, nats: &Nats) -> (crate::support::Server, SocketAddr) {
    let metrics: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = crate::support::Server::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulk-import")),
        database_url,
        &[
            "--events-nats-url",
            &nats.url(),
            "--metrics-listen",
            &metrics.to_string(),
        ],
        None,
    )
    .await;
    (server, metrics)
}

/// Uploads `file` through `server`; the import.
async fn upload_to(server: &crate::support::Server, id: &str, file: &[u8]) -> proto::Import {
    let messages = upload_messages(ACCOUNT, id, "users.csv", file, 16 * 1024, finish());
    server
        .client()
        .upload_import(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
        .import
        .unwrap()
}

/// Waits (30 s at most) until exactly one of `replicas` says it relays; its index.
async fn the_leader(replicas: &[SocketAddr]) -> usize {
    let started = Instant::now();
    loop {
        let mut leaders = Vec::new();
        for (i, metrics) in replicas.iter().enumerate() {
            if series(*metrics, "bulk_import_events_relay_leader").await == 1.0 {
                leaders.push(i);
            }
        }
        assert!(
            leaders.len() <= 1,
            "two replicas relay at once: {leaders:?}"
        );
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replica took the relay"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
#[cfg_attr(
    not(nats_tests),
    ignore = "nats-server is not installed (.ci/run installs it)"
)]
async fn two_replicas_relay_one_at_a_time_and_the_survivor_takes_over_from_a_killed_leader() {
    let nats = Nats::start();
    let database = TestDatabase::new(Backend::Postgres).await;
    let (first, first_metrics) = replica(&database.url, &nats).await;
    let (second, second_metrics) = replica(&database.url, &nats).await;
    let mut replicas = [Some(first), Some(second)];
    let metrics = [first_metrics, second_metrics];
    let leader = the_leader(&metrics).await;

    // Both replicas commit imports; one publishes everything, the other nothing.
    let (a, a_stats) = generate(&["--rows", "1200", "--seed", "81"]);
    let (b, b_stats) = generate(&["--rows", "1200", "--seed", "82", "--start", "700000"]);
    let (on_first, on_second) = (replicas[0].as_ref().unwrap(), replicas[1].as_ref().unwrap());
    let (one, two) = tokio::join!(
        upload_to(on_first, "on-first", &a),
        upload_to(on_second, "on-second", &b)
    );
    assert_eq!(
        (one.rows_imported, two.rows_imported),
        (a_stats.valid, b_stats.valid)
    );
    let total = (a_stats.valid + b_stats.valid) as u64;
    stream_messages(&nats.url(), total, Duration::from_secs(60)).await;
    let stored = "bulk_import_events_relayed_total{result=\"stored\"}";
    let duplicate = "bulk_import_events_relayed_total{result=\"duplicate\"}";
    let follower = 1 - leader;
    assert_eq!(series(metrics[leader], stored).await, total as f64);
    assert_eq!(series(metrics[follower], stored).await, 0.0);
    assert_eq!(series(metrics[follower], duplicate).await, 0.0);
    assert_eq!(the_leader(&metrics).await, leader);

    // The leader dies without a word; the other takes over once its lease ran out, and
    // relays what it commits.
    replicas[leader].as_mut().unwrap().kill();
    replicas[leader] = None;
    let survivor = replicas[follower].as_ref().unwrap();
    let (c, c_stats) = generate(&["--rows", "500", "--seed", "83", "--start", "900000"]);
    assert_eq!(
        upload_to(survivor, "after", &c).await.rows_imported,
        c_stats.valid
    );
    let total = total + c_stats.valid as u64;
    let relayed = stream_messages(&nats.url(), total, Duration::from_secs(60)).await;
    assert_eq!(the_leader(&metrics[follower..=follower]).await, 0);
    let mut client = survivor.client();
    same_events(&relayed, &feed(&mut client, total as usize).await);

    // A replica stopped gracefully gives the lease up: a new one relays at once, not after the
    // 15 s a killed one's lease runs.
    let (newcomer, newcomer_metrics) = replica(&database.url, &nats).await;
    replicas[follower].take().unwrap().stop();
    let stopped = Instant::now();
    assert_eq!(the_leader(&[newcomer_metrics]).await, 0);
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "the lease was not given up: {:?}",
        stopped.elapsed()
    );
    let (d, d_stats) = generate(&["--rows", "100", "--seed", "86", "--start", "950000"]);
    upload_to(&newcomer, "last", &d).await;
    let total = total + d_stats.valid as u64;
    let relayed = stream_messages(&nats.url(), total, Duration::from_secs(60)).await;
    let mut client = newcomer.client();
    same_events(&relayed, &feed(&mut client, total as usize).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(nats_tests),
    ignore = "nats-server is not installed (.ci/run installs it)"
)]
async fn the_relay_signs_in_with_the_credentials_of_its_url() {
    let nats = Nats::start_with("authorization { user: relay, password: s3cret }");
    let url = nats.url().replace("nats://", "nats://relay:s3cret@");
    let app = spawn_app_with(Backend::Sqlite, |args| {
        args.events_nats_url = Some(url.clone())
    })
    .await;
    let file = format!("{HEADER}ada@example.com,Ada,,,,\n");
    upload_users(&app, ACCOUNT, "signed-in", file.as_bytes()).await;
    let relayed = stream_messages(&url, 1, Duration::from_secs(30)).await;
    let mut client = app.client.clone();
    same_events(&relayed, &feed(&mut client, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(nats_tests),
    ignore = "nats-server is not installed (.ci/run installs it)"
)]
async fn an_event_larger_than_nats_takes_is_passed_over_and_the_rest_go_on() {
    // With this limit, `close` (838 bytes of JSON, 957 with its headers) fits only without the
    // `Nats-Expected-Last-Msg-Id` header (47 bytes) that chains an event to the one before it
    // in a batch; `big` (about 1,400 bytes, 3 bytes a character) never fits.
    let nats = Nats::start_with("max_payload: 980");
    let app = spawn_app_with(Backend::Sqlite, |args| {
        args.events_nats_url = Some(nats.url());
        args.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let x = "x".repeat(100);
    let euro = "€".repeat(100);
    let file = format!(
        "{HEADER}ada@example.com,Ada,,,,\nclose@example.com,{x},{x},,{x},\n\
         big@example.com,{euro},{euro},,{euro},\ngrace@example.com,Grace,,,,\n"
    );
    upload_users(&app, ACCOUNT, "with-a-big-one", file.as_bytes()).await;
    let mut client = app.client.clone();
    let mut events = feed(&mut client, 4).await;
    let relayed = stream_messages(&nats.url(), 3, Duration::from_secs(30)).await;
    let big = events.remove(2);
    assert_eq!(big.user.unwrap().email, "big@example.com");
    // `close` is published whether it was the first of its batch or not.
    same_events(&relayed, &events);
    let metrics = app.metrics_addr.unwrap();
    assert_eq!(
        series(
            metrics,
            "bulk_import_events_relayed_total{result=\"refused\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(nats_tests),
    ignore = "nats-server is not installed (.ci/run installs it)"
)]
async fn a_killed_sqlite_server_relays_again_at_once_when_it_comes_back() {
    let nats = Nats::start();
    let database = TestDatabase::new(Backend::Sqlite).await;
    let (mut server, _) = replica(&database.url, &nats).await;
    let (file, stats) = generate(&["--rows", "200", "--seed", "84"]);
    upload_to(&server, "before", &file).await;
    stream_messages(&nats.url(), stats.valid as u64, Duration::from_secs(30)).await;
    server.kill();
    // The killed server's lease runs for 15 s more; the one server on the file takes it at
    // once.
    let (server, metrics) = replica(&database.url, &nats).await;
    let started = Instant::now();
    while series(metrics, "bulk_import_events_relay_leader").await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the relay waited for its own predecessor's lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (more, more_stats) = generate(&["--rows", "100", "--seed", "85", "--start", "40000"]);
    upload_to(&server, "after", &more).await;
    let total = (stats.valid + more_stats.valid) as u64;
    let relayed = stream_messages(&nats.url(), total, Duration::from_secs(30)).await;
    let mut client = server.client();
    same_events(&relayed, &feed(&mut client, total as usize).await);
}
