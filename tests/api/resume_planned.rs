//! A planned import (a dry run, SKIP) whose upload stops half way and is resumed judges its rows
//! as the same file uploaded whole: the rows after the resume still see the values the rows
//! before it took. The upload that began the import also kept them in memory (a filter that
//! lets most lookups be skipped, `SeenValues`); the resumed upload has not seen them, and notes
//! them from the store before its first batch: a value it missed would be taken for new.

use bulk_import::proto::{self, ImportStatus, upload_import_request::Payload};

use crate::helpers::*;
use crate::resume::{Came, came_to, finish_of, send, until};

/// The first message of an upload of `import_id` into `account` with these options, resumable
/// from `offset`.
pub(crate) fn first(
    account: &str,
    import_id: &str,
    offset: u64,
    options: &dyn Fn(&mut proto::ImportMetadata),
) -> proto::UploadImportRequest {
    let mut message = metadata(account, import_id, "users.csv");
    if let Some(Payload::Metadata(m)) = &mut message.payload {
        m.resumable = true;
        m.resume_offset = offset as i64;
        options(m);
    }
    message
}

/// `file` uploaded whole with these options: what it came to.
async fn whole(
    app: &TestApp,
    account: &str,
    file: &[u8],
    options: &dyn Fn(&mut proto::ImportMetadata),
) -> Came {
    let mut client = app.client.clone();
    let mut messages = vec![first(account, "r", 0, options)];
    messages.extend(file.chunks(64 * 1024).map(chunk));
    messages.push(finish_of(file));
    send(&mut client, messages).await.unwrap();
    came_to(&mut client, account, "r").await
}

/// The first half of `file` as a resumable upload with these options, whose client then goes
/// away; then, once the import waits, the rest from its committed bytes. What it came to, and
/// the rows processed before the resume.
async fn cut_and_resumed(
    app: &TestApp,
    account: &str,
    file: &[u8],
    options: &dyn Fn(&mut proto::ImportMetadata),
) -> (Came, i64) {
    let mut client = app.client.clone();
    let mut messages = vec![first(account, "r", 0, options)];
    messages.extend(file[..file.len() / 2].chunks(4000).map(chunk));
    send(&mut client, messages).await.unwrap_err();
    let waiting = until(
        &mut client,
        account,
        "r",
        std::time::Duration::from_secs(30),
        |i| i.resume_deadline.is_some(),
    )
    .await;
    let offset = waiting.committed_bytes as u64;
    let mut messages = vec![first(account, "r", offset, options)];
    messages.extend(file[offset as usize..].chunks(4000).map(chunk));
    messages.push(finish_of(file));
    let done = send(&mut client, messages).await.unwrap();
    assert_ne!(done.status, ImportStatus::Processing as i32);
    (
        came_to(&mut client, account, "r").await,
        waiting.rows_processed,
    )
}

backend_tests! {
    async fn a_resumed_planned_import_judges_its_rows_as_a_whole_upload(backend) {
        // Small batches: the first half commits many of them before the client goes.
        let app = spawn_app_with(backend, |a| a.batch_rows = Some(50)).await;
        let (file, stats) = generate(&["--rows", "1200", "--invalid-rate", "0.02",
            "--dup-rate", "0.05", "--seed", "41"]);
        assert!(stats.duplicates > 20, "{stats:?}");
        // The first 400 rows, already users of the SKIP accounts: their rows are skipped, so
        // only the import's file keys say they were taken.
        let head: Vec<u8> = file.split_inclusive(|&b| b == b'\n').take(401).flatten().copied()
            .collect();
        let dry = |m: &mut proto::ImportMetadata| m.validate_only = true;
        let skip = |m: &mut proto::ImportMetadata| {
            m.on_conflict = proto::ConflictPolicy::Skip as i32
        };
        for (name, options) in [
            ("dry-run", &dry as &dyn Fn(&mut proto::ImportMetadata)),
            ("skip", &skip),
        ] {
            let (whole_account, resumed_account) = (format!("whole-{name}"), format!("cut-{name}"));
            if name == "skip" {
                for account in [&whole_account, &resumed_account] {
                    let first = app.upload(account, "head", &head, 1 << 20).await.unwrap();
                    assert!(first.rows_imported > 300, "{first:?}");
                }
            }
            let expected = whole(&app, &whole_account, &file, options).await;
            let duplicates = expected.errors.iter().filter(|e| e.2 == "DUPLICATE_IN_FILE").count();
            assert_eq!(duplicates as i64, stats.duplicates, "{name}");
            let (resumed, rows_before) = cut_and_resumed(&app, &resumed_account, &file, options)
                .await;
            assert!(rows_before > 100, "{name}: the resume came after {rows_before} rows");
            assert_eq!(resumed, expected, "{name}");
            // A duplicate after the cut names a row before it.
            assert!(
                expected.errors.iter().any(|e| e.2 == "DUPLICATE_IN_FILE"
                    && e.0 > rows_before + 1),
                "{name}: no duplicate after the cut"
            );
        }
    }
}
