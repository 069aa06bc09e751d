//! WatchImport: live progress, then the terminal status, then the end of the stream.

use std::time::Duration;

use bulk_import::proto::{self, ImportStatus};
use futures::StreamExt;

use crate::helpers::*;
use crate::lifecycle::{open_upload, wait_for_import};

async fn watch(
    app: &TestApp,
    account: &str,
    import_id: &str,
) -> Result<tonic::Streaming<proto::WatchImportResponse>, tonic::Status> {
    let mut client = app.client.clone();
    Ok(client
        .watch_import(proto::WatchImportRequest {
            account_id: account.into(),
            import_id: import_id.into(),
        })
        .await?
        .into_inner())
}

async fn next_import(
    stream: &mut tonic::Streaming<proto::WatchImportResponse>,
) -> Option<proto::Import> {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a message in time")
        .map(|m| m.unwrap().import.unwrap())
}

backend_tests! {
    async fn a_watcher_sees_progress_before_the_upload_ends_then_the_end(backend) {
        let app = spawn_app(backend).await;
        let (file, stats) = generate(&["--rows", "40000", "--seed", "21"]);
        let pieces: Vec<&[u8]> = file.chunks(64 * 1024).collect();
        let half = pieces.len() / 2;
        let upload = open_upload(&app, ACCOUNT, "watched").await;
        for piece in &pieces[..half] {
            upload.tx.send(chunk(piece)).await.unwrap();
        }

        wait_for_import(&app, ACCOUNT, "watched").await;
        let mut stream = watch(&app, ACCOUNT, "watched").await.unwrap();
        let mut seen_running = None;
        while let Some(import) = next_import(&mut stream).await {
            assert_eq!(status(&import), ImportStatus::Processing);
            if import.rows_processed > 0 {
                seen_running = Some(import);
                break;
            }
        }
        let running = seen_running.expect("progress while the upload runs");
        assert!(running.rows_processed < stats.rows);
        assert!(running.bytes_received > 0);

        for piece in &pieces[half..] {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        upload.tx.send(finish_message(finish())).await.unwrap();
        // The stream ends after finish: that commits the import.
        drop(upload.tx);
        let finished = upload.call.await.unwrap().unwrap();

        let mut last = running;
        while let Some(import) = next_import(&mut stream).await {
            assert!(
                import.rows_processed >= last.rows_processed,
                "counters never go back"
            );
            last = import;
        }
        assert_eq!(status(&last), ImportStatus::CompletedSuccess);
        assert_eq!(last.rows_imported, stats.valid);
        assert_eq!(last, finished);
    }
}

backend_tests! {
    async fn watching_a_finished_import_sends_one_message_and_ends(backend) {
        let app = spawn_app(backend).await;
        let done = app
            .upload(ACCOUNT, "done", HEADER.as_bytes(), 10)
            .await
            .unwrap();
        let mut stream = watch(&app, ACCOUNT, "done").await.unwrap();
        assert_eq!(next_import(&mut stream).await, Some(done));
        assert_eq!(next_import(&mut stream).await, None);
    }
}

backend_tests! {
    async fn updates_come_at_least_every_500_ms_while_counters_move(backend) {
        let app = spawn_app(backend).await;
        let (file, _) = generate(&["--rows", "20000", "--seed", "22"]);
        let upload = open_upload(&app, ACCOUNT, "paced").await;
        upload.tx.send(chunk(&file[..1024])).await.unwrap();
        wait_for_import(&app, ACCOUNT, "paced").await;
        let mut stream = watch(&app, ACCOUNT, "paced").await.unwrap();
        let watcher = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            while let Some(import) = next_import(&mut stream).await {
                arrivals.push(import);
            }
            arrivals
        });
        // A slow client: a chunk every 50 ms for about two and a half seconds.
        for piece in file[1024..].chunks(file.len() / 50) {
            upload.tx.send(chunk(piece)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        upload.tx.send(finish_message(finish())).await.unwrap();
        // The stream ends after finish: that commits the import.
        drop(upload.tx);
        upload.call.await.unwrap().unwrap();
        let arrivals = watcher.await.unwrap();

        let running: Vec<_> = arrivals
            .iter()
            .filter(|i| status(i) == ImportStatus::Processing)
            .collect();
        assert!(
            running.len() >= 4,
            "{} updates while running",
            running.len()
        );
        // How far apart the updates were, by the server's own clock.
        let longest_gap = running
            .windows(2)
            .map(|w| {
                system_time(w[1].update_time.as_ref())
                    .duration_since(system_time(w[0].update_time.as_ref()))
                    .unwrap_or_default()
            })
            .max()
            .unwrap();
        // The contract is 500 ms; the slack absorbs a loaded CI machine.
        assert!(
            longest_gap < Duration::from_millis(900),
            "gap of {longest_gap:?}"
        );
        assert_eq!(
            status(arrivals.last().unwrap()),
            ImportStatus::CompletedSuccess
        );
    }
}

backend_tests! {
    async fn many_watchers_and_a_stalled_one_do_not_slow_the_upload(backend) {
        let app = spawn_app(backend).await;
        let (file, stats) = generate(&["--rows", "40000", "--seed", "23"]);
        let upload = open_upload(&app, ACCOUNT, "crowd").await;
        upload.tx.send(chunk(&file[..4096])).await.unwrap();
        wait_for_import(&app, ACCOUNT, "crowd").await;

        // One watcher never reads: its messages pile up in its own flow-control window only.
        let _stalled = watch(&app, ACCOUNT, "crowd").await.unwrap();
        let mut watchers = Vec::new();
        for _ in 0..20 {
            let mut stream = watch(&app, ACCOUNT, "crowd").await.unwrap();
            watchers.push(tokio::spawn(async move {
                let mut last = None;
                while let Some(import) = next_import(&mut stream).await {
                    last = Some(import);
                }
                last.unwrap()
            }));
        }
        for piece in file[4096..].chunks(64 * 1024) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        upload.tx.send(finish_message(finish())).await.unwrap();
        // The stream ends after finish: that commits the import.
        drop(upload.tx);
        let finished = tokio::time::timeout(Duration::from_secs(30), upload.call)
            .await
            .expect("the upload is not held back by watchers")
            .unwrap()
            .unwrap();
        assert_eq!(finished.rows_imported, stats.valid);
        for watcher in watchers {
            assert_eq!(watcher.await.unwrap(), finished);
        }
    }
}

backend_tests! {
    async fn watching_another_accounts_import_is_not_found(backend) {
        let app = spawn_app(backend).await;
        app.upload(ACCOUNT, "mine", HEADER.as_bytes(), 10)
            .await
            .unwrap();
        let status = watch(&app, "intruder", "mine").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}

/// The counters of a snapshot, in a fixed order, for comparisons.
fn counters(import: &proto::Import) -> [i64; 7] {
    [
        import.bytes_received,
        import.rows_processed,
        import.rows_imported,
        import.rows_failed,
        import.rows_skipped,
        import.rows_updated,
        import.row_errors_omitted,
    ]
}

/// Checks a sequence of snapshots of one import: each adds up (a row processed is imported,
/// failed, skipped or updated) while it runs and once it completed, and none goes back.
fn check_snapshots(source: &str, seen: &[proto::Import]) {
    for import in seen {
        let c = import;
        assert_eq!(
            c.rows_processed,
            c.rows_imported + c.rows_failed + c.rows_skipped + c.rows_updated,
            "{source}: {c:?}"
        );
    }
    for pair in seen.windows(2) {
        let (a, b) = (counters(&pair[0]), counters(&pair[1]));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x <= y),
            "{source}: counters went back: {a:?} then {b:?}"
        );
    }
}

backend_tests! {
    /// In every snapshot GetImport, WatchImport and ListImports give, while an import runs and
    /// once it completed, rows_processed = imported + failed + skipped + updated, and no
    /// counter goes back. Under SKIP and UPDATE too, over an account that holds some users.
    async fn the_counters_add_up_in_every_snapshot(backend) {
        let app = spawn_app_with(backend, |args| args.batch_rows = Some(500)).await;
        let (base, _) = generate(&["--rows", "3000", "--seed", "61"]);
        app.upload(ACCOUNT, "base", &base, 1 << 16).await.unwrap();
        let (file, stats) = generate(&["--rows", "9000", "--seed", "61", "--changed-rate", "0.3"]);
        for (id, policy) in [
            ("error", proto::ConflictPolicy::Error),
            ("skip", proto::ConflictPolicy::Skip),
            ("update", proto::ConflictPolicy::Update),
        ] {
            let upload = crate::lifecycle::open_upload_with(&app, ACCOUNT, id, |m| {
                m.on_conflict = policy as i32;
            })
            .await;
            wait_for_import(&app, ACCOUNT, id).await;
            let mut stream = watch(&app, ACCOUNT, id).await.unwrap();
            let watcher = tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(import) = next_import(&mut stream).await {
                    seen.push(import);
                }
                seen
            });
            let (mut got, mut listed) = (Vec::new(), Vec::new());
            for piece in file.chunks(16 * 1024) {
                upload.tx.send(chunk(piece)).await.unwrap();
                got.push(app.get(ACCOUNT, id).await.unwrap());
                let list = app.list(ACCOUNT).await;
                listed.push(list.into_iter().find(|i| i.import_id == id).unwrap());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            upload.tx.send(finish_message(finish())).await.unwrap();
            drop(upload.tx);
            let done = upload.call.await.unwrap().unwrap();
            assert_eq!(done.rows_processed, stats.rows, "{id}");
            got.push(app.get(ACCOUNT, id).await.unwrap());
            let watched = tokio::time::timeout(Duration::from_secs(30), watcher)
                .await
                .expect("the watch ends")
                .unwrap();
            assert!(watched.len() > 2, "{id}: {} updates watched", watched.len());
            assert!(
                got.iter().any(|i| status(i) == ImportStatus::Processing && i.rows_processed > 0),
                "{id}: progress was seen while it ran"
            );
            check_snapshots(&format!("{id} GetImport"), &got);
            check_snapshots(&format!("{id} WatchImport"), &watched);
            check_snapshots(&format!("{id} ListImports"), &listed);
            assert_eq!(counters(watched.last().unwrap()), counters(&done), "{id}");
        }
    }
}

backend_tests! {
    /// One account cannot take every watcher's place: past --max-watchers-per-account its
    /// next WatchImport is RESOURCE_EXHAUSTED naming the flag, while another account watches.
    async fn one_account_cannot_take_every_watcher(backend) {
        let app = spawn_app_with(backend, |args| args.max_watchers_per_account = 2).await;
        for account in [ACCOUNT, "other"] {
            let _upload = open_upload(&app, account, "running").await;
            wait_for_import(&app, account, "running").await;
            std::mem::forget(_upload);
        }
        let held = [
            watch(&app, ACCOUNT, "running").await.unwrap(),
            watch(&app, ACCOUNT, "running").await.unwrap(),
        ];
        let refused = watch(&app, ACCOUNT, "running").await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("--max-watchers-per-account"), "{}", refused.message());
        watch(&app, "other", "running").await.unwrap();
        drop(held);
    }
}
