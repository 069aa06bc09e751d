//! kill -9 of the server at random moments while imports complete: the feed holds every
//! event of each import that committed, and none of an import that did not (its events were
//! written in the transaction of its ending, or not at all).
//!
//! The moments are drawn from the clock and printed, so that a failure can be run again at
//! the same ones (`CRASH_MOMENTS_MS=120,300,450,610`): the uploads of a round end within about a
//! second, so that the moments fall before, while and after they complete.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bulk_import::proto::{self, ImportStatus, UserEventType};
use futures::StreamExt;

use crate::helpers::*;
use crate::support::Server;

/// Where the server is killed in each round, in milliseconds after its uploads began.
fn moments() -> Vec<u64> {
    if let Ok(given) = std::env::var("CRASH_MOMENTS_MS") {
        return given
            .split(',')
            .map(|m| m.trim().parse().unwrap())
            .collect();
    }
    let mut state = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    ) | 1;
    (0..4)
        .map(|_| {
            // xorshift: enough to spread the moments.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            20 + state % 700
        })
        .collect()
}

backend_tests! {
    async fn kill_9_while_imports_complete_leaves_exactly_the_committed_imports_events(backend) {
        let database = TestDatabase::new(backend).await;
        let moments = moments();
        println!("CRASH_MOMENTS_MS={}", moments.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
        // Files of different sizes, so that the imports complete one after the other; each
        // round's of other users, so that a round's imports never meet the last's.
        let sizes = [300, 900, 2000, 4000];
        let files: Vec<Vec<Vec<u8>>> = (0..moments.len())
            .map(|round| {
                (0..sizes.len())
                    .map(|i| {
                        generate(&[
                            "--rows", &sizes[i].to_string(),
                            "--invalid-rate", "0.01",
                            "--seed", &(90 + i).to_string(),
                            "--start", &(round * 1_000_000 + i * 100_000).to_string(),
                        ])
                        .0
                    })
                    .collect()
            })
            .collect();
        for (round, moment) in moments.iter().enumerate() {
            let mut server = Server::start_this(&database.url).await;
            let uploads: Vec<_> = (0..sizes.len())
                .map(|i| {
                    let mut client = server.client();
                    let messages = upload_messages(
                        ACCOUNT, &format!("r{round}-{i}"), "users.csv", &files[round][i],
                        16 * 1024, finish(),
                    );
                    tokio::spawn(async move {
                        client.upload_import(futures::stream::iter(messages)).await
                    })
                })
                .collect();
            // Not a synchronisation: the random moment of the crash.
            tokio::time::sleep(Duration::from_millis(*moment)).await;
            server.kill();
            for upload in uploads {
                let _ = upload.await;
            }
        }

        // The next start ends what the crashes left PROCESSING.
        let server = Server::start_this(&database.url).await;
        let mut client = server.client();
        let imports = client
            .list_imports(proto::ListImportsRequest {
                account_id: ACCOUNT.into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .imports;
        // An upload killed before its metadata was read left no import. On PostgreSQL, the
        // imports of the last killed server may still be PROCESSING here (the reaper ends
        // them once their owner's lock is gone for its grace): they committed nothing.
        assert!(imports.len() <= moments.len() * sizes.len(), "{imports:#?}");
        let mut expected = HashMap::new();
        for import in &imports {
            let status = ImportStatus::try_from(import.status).unwrap();
            let committed = matches!(
                status,
                ImportStatus::CompletedSuccess | ImportStatus::CompletedPartial
            );
            expected.insert(
                import.import_id.clone(),
                if committed { import.rows_imported } else { 0 },
            );
            println!("{} {:?} {}", import.import_id, status, import.rows_imported);
        }
        let total: i64 = expected.values().sum();

        let mut feed = client
            .watch_user_events(proto::WatchUserEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        let mut ids = HashSet::new();
        for _ in 0..total {
            let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .expect("an event in time")
                .expect("the feed goes on")
                .unwrap();
            assert_eq!(UserEventType::try_from(event.r#type).unwrap(), UserEventType::Invited);
            assert!(ids.insert(event.event_id.clone()), "twice: {}", event.event_id);
            let email = event.user.unwrap().email;
            assert!(
                seen.entry(event.import_id).or_default().insert(email.clone()),
                "{email} invited twice"
            );
        }
        let more = tokio::time::timeout(Duration::from_millis(800), feed.next()).await;
        assert!(more.is_err(), "an event of no committed change: {more:?}");
        assert!(seen.keys().all(|id| expected.contains_key(id)), "events of no import");
        for (import_id, rows) in &expected {
            let told = seen.get(import_id).map_or(0, HashSet::len) as i64;
            assert_eq!(told, *rows, "{import_id}");
        }
    }
}
