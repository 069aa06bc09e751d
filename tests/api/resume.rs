//! Resumable uploads (`ImportMetadata.resumable`), through a TCP proxy the test controls that
//! cuts connections at random byte offsets (inside HTTP/2 frames, chunks, rows and
//! characters), several times in one upload: the resumed import must equal the same file
//! uploaded whole, on both backends, after a cut, a restart, a kill -9, or with the resume on
//! another replica. The cut points are printed, and `RESUME_CUTS=1200,5000,900` replays them.

use std::time::{Duration, Instant};

use bulk_import::proto::{self, ImportStatus, upload_import_request::Payload};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cli::bulk_import;
use crate::helpers::*;
use crate::proxy::Proxy;

pub(crate) type Client = proto::import_service_client::ImportServiceClient<Channel>;

/// The fewest client bytes before a cut: a connection cut within its first frames may end
/// before the server read the upload's metadata, and then there is nothing to resume.
const MIN_CUT: u64 = 16 * 1024;

/// How many times a cut upload is tried before a run is said not to have resumed at all: a cut
/// may still come before the server read the metadata (its frames were in, the connection's
/// error came first), and the upload then starts afresh, as it should.
pub(crate) const ATTEMPTS: usize = 4;

/// `count` cut points, each at most `max` bytes into its connection (and past its first
/// requests), from `RESUME_CUTS` when set; printed so that a failure can be replayed.
pub(crate) fn cuts(count: usize, max: u64) -> Vec<u64> {
    let cuts: Vec<u64> = match std::env::var("RESUME_CUTS") {
        Ok(given) => given
            .split(',')
            .map(|c| c.trim().parse().unwrap())
            .collect(),
        Err(_) => {
            let mut state = u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos(),
            ) | 1;
            (0..count)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    MIN_CUT + state % max.saturating_sub(MIN_CUT).max(1)
                })
                .collect()
        }
    };
    println!(
        "RESUME_CUTS={}",
        cuts.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    cuts
}

/// What an import came to, as a client sees it: its status and counters, every row error, and
/// the account's users (the account holds only this import's).
#[derive(Debug, PartialEq)]
pub(crate) struct Came {
    pub(crate) import: (i32, i64, i64, i64, i64, i64, i64, String, String, String),
    pub(crate) errors: Vec<(i64, String, String, String)>,
    pub(crate) users: Vec<(String, String, String, i32, String, String)>,
}

pub(crate) async fn came_to(client: &mut Client, account: &str, import_id: &str) -> Came {
    let (import, errors) = import_and_errors(client, account, import_id).await;
    let errors = errors
        .into_iter()
        .map(|e| (e.row_number, e.column, e.code, e.message))
        .collect();
    let mut users = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_users(proto::ListUsersRequest {
                account_id: account.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        users.extend(page.users.into_iter().map(|u| {
            (
                u.email,
                u.first_name,
                u.last_name,
                u.role,
                u.job_title,
                u.external_id,
            )
        }));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Came {
        import: (
            import.status,
            import.rows_processed,
            import.rows_imported,
            import.rows_failed,
            import.rows_skipped,
            import.rows_updated,
            import.bytes_received,
            import.encoding,
            import.delimiter,
            import.error_message,
        ),
        errors,
        users,
    }
}

/// Uploads `file` whole, plainly, into `account`.
pub(crate) async fn whole(client: &mut Client, account: &str, file: &[u8]) -> proto::Import {
    let messages = upload_messages(account, "whole", "users.csv", file, 64 * 1024, finish());
    client
        .upload_import(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
        .import
        .unwrap()
}

/// Writes `file` where the CLI can read it.
pub(crate) fn on_disk(file: &[u8]) -> tempfile::NamedTempFile {
    let mut path = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    std::io::Write::write_all(&mut path, file).unwrap();
    path
}

/// The exit code the CLI gives for an import that ended so.
pub(crate) fn exit_code(status: i32) -> i32 {
    match ImportStatus::try_from(status).unwrap() {
        ImportStatus::CompletedSuccess | ImportStatus::CompletedNothingToImport => 0,
        ImportStatus::CompletedPartial => 2,
        _ => 1,
    }
}

/// A Users file in UTF-16LE with its mark, with what a cut can fall inside: characters of two
/// and four bytes, quoted values with line breaks and doubled quotes, CRLF, invalid rows and
/// duplicates in the file.
fn unicode_file(rows: usize) -> Vec<u8> {
    let mut text = String::from(HEADER.trim_end());
    text.push_str("\r\n");
    for i in 0..rows {
        let email = match i % 17 {
            5 => "not an email".to_owned(),
            // The address of the row before, in capitals: DUPLICATE_IN_FILE.
            9 => format!("ZOË{}@EXÄMPLE.COM", i - 1),
            _ => format!("zoë{i}@exämple.com"),
        };
        let title = match i % 7 {
            3 => "\"Head of\r\nthings, \"\"the\"\" best\"".to_owned(),
            _ => "Ingénieur 😀".to_owned(),
        };
        text.push_str(&format!("{email},Zoë {i},日本,member,{title},ext-{i}\r\n"));
    }
    let mut file = vec![0xFF, 0xFE];
    file.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    file
}

/// Polls `import_id` until `done` says so, for at most `within`.
pub(crate) async fn until(
    client: &mut Client,
    account: &str,
    import_id: &str,
    within: Duration,
    done: impl Fn(&proto::Import) -> bool,
) -> proto::Import {
    let start = Instant::now();
    loop {
        let found = client
            .get_import(proto::GetImportRequest {
                account_id: account.into(),
                import_id: import_id.into(),
                errors_page_size: 1,
                errors_page_token: String::new(),
            })
            .await;
        let last = match found {
            Ok(found) => {
                let import = found.into_inner().import.unwrap();
                if done(&import) {
                    return import;
                }
                format!("{import:?}")
            }
            Err(status) => format!("{status:?}"),
        };
        assert!(
            start.elapsed() < within,
            "{import_id} did not get there in {within:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn waiting(import: &proto::Import) -> bool {
    import.status == ImportStatus::Processing as i32 && import.resume_deadline.is_some()
}

/// The resumable upload's first message.
pub(crate) fn resumable(import_id: &str, offset: u64) -> proto::UploadImportRequest {
    let mut message = metadata(ACCOUNT, import_id, "users.csv");
    if let Some(Payload::Metadata(m)) = &mut message.payload {
        m.resumable = true;
        m.resume_offset = offset as i64;
    }
    message
}

/// An upload of these messages, answered.
pub(crate) async fn send(
    client: &mut Client,
    messages: Vec<proto::UploadImportRequest>,
) -> Result<proto::Import, tonic::Status> {
    client
        .upload_import(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner().import.unwrap())
}

/// A resumable upload of the first half of `file` whose client goes away without `finish`:
/// the import waits. The client's answer.
pub(crate) async fn stop_half_way(
    client: &mut Client,
    import_id: &str,
    file: &[u8],
) -> tonic::Status {
    let mut messages = vec![resumable(import_id, 0)];
    messages.extend(file[..file.len() / 2].chunks(4000).map(chunk));
    send(client, messages).await.unwrap_err()
}

/// A resume of `import_id` at `offset`: the metadata, the file from there, the whole file's
/// finish message.
pub(crate) fn the_rest(
    import_id: &str,
    file: &[u8],
    offset: u64,
) -> Vec<proto::UploadImportRequest> {
    let mut messages = vec![resumable(import_id, offset)];
    messages.extend(file[offset as usize..].chunks(4000).map(chunk));
    messages.push(finish_of(file));
    messages
}

/// The finish message of a whole file.
pub(crate) fn finish_of(file: &[u8]) -> proto::UploadImportRequest {
    use sha2::Digest;
    finish_message(proto::UploadFinish {
        size_bytes: Some(file.len() as i64),
        sha256: hex::encode(sha2::Sha256::digest(file)),
    })
}

backend_tests! {
    async fn an_upload_cut_anywhere_and_resumed_equals_the_whole_upload(backend) {
        let mut app = spawn_app_with(backend, |a| a.batch_rows = Some(300)).await;
        let mut client = app.client.clone();
        for (name, file) in [
            ("generated", generate(&["--rows", "4000", "--invalid-rate", "0.03",
                "--dup-rate", "0.01", "--seed", "22", "--crlf"]).0),
            ("utf16", unicode_file(2500)),
        ] {
            let expected = {
                whole(&mut client, &format!("whole-{name}"), &file).await;
                came_to(&mut client, &format!("whole-{name}"), "whole").await
            };
            let path = on_disk(&file);
            let mut resumed_once = false;
            for attempt in 0..ATTEMPTS {
                let proxy = Proxy::start(app.addr).await;
                proxy.cut_after(&cuts(3, file.len() as u64 / 3));
                let account = format!("resumed-{name}-{attempt}");
                let ran = bulk_import(None, "upload", &[
                    "--server", &proxy.url(), "--account", &account,
                    "--resumable", "--import-id", "r", "--chunk-size", "7001",
                    path.path().to_str().unwrap(),
                ]).await;
                assert_eq!(proxy.cuts_made(), 3, "{name}: {}", ran.err);
                assert_eq!(ran.code, exit_code(expected.import.0), "{name}: {}{}", ran.out, ran.err);
                let resumed = came_to(&mut client, &account, "r").await;
                assert_eq!(resumed, expected, "{name}");
                let import = app.get(&account, "r").await.unwrap();
                assert_eq!(import.committed_bytes, file.len() as i64, "{name}");
                assert!(import.resumable && import.resume_deadline.is_none(), "{name}");
                if ran.err.contains("resuming import r at byte") {
                    resumed_once = true;
                    break;
                }
            }
            assert!(resumed_once, "{name}: no cut fell after the import existed");
        }
        app.stop().await;
    }

    async fn a_waiting_import_refuses_wrong_resumes_and_changes_nothing(backend) {
        let mut app = spawn_app_with(backend, |a| a.batch_rows = Some(100)).await;
        let mut client = app.client.clone();
        let (file, _) = generate(&["--rows", "1500", "--invalid-rate", "0.02", "--seed", "23"]);
        let expected = {
            whole(&mut client, "whole", &file).await;
            came_to(&mut client, "whole", "whole").await
        };
        // The client goes away after 60% of the file, without its finish message.
        let part = &file[..file.len() * 6 / 10];
        let mut messages = vec![resumable("r", 0)];
        messages.extend(part.chunks(4000).map(chunk));
        let stopped = send(&mut client, messages).await.unwrap_err();
        assert_eq!(stopped.code(), tonic::Code::Aborted, "{stopped:?}");
        assert!(stopped.message().contains("committed_bytes"), "{}", stopped.message());
        let at = app.get(ACCOUNT, "r").await.unwrap();
        assert!(waiting(&at), "{at:?}");
        let committed = at.committed_bytes as u64;
        assert!(committed > 0 && committed <= part.len() as u64, "{committed}");
        assert_eq!(at.bytes_received, at.committed_bytes);
        assert!(app.users_of(ACCOUNT, "r").await > 0);

        // A wrong offset, either way: FAILED_PRECONDITION naming committed_bytes.
        for offset in [committed + 1, committed - 1, 0] {
            let mut messages = vec![resumable("r", offset)];
            messages.extend(file[offset as usize..].chunks(4000).map(chunk));
            messages.push(finish_of(&file));
            let refused = send(&mut client, messages).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
            assert!(
                refused.message().contains(&format!("committed_bytes, which is {committed}")),
                "{}",
                refused.message()
            );
        }
        // Changed metadata: INVALID_ARGUMENT naming the field.
        for (field, change) in [
            ("filename", Box::new(|m: &mut proto::ImportMetadata| m.filename = "other.csv".into())
                as Box<dyn Fn(&mut proto::ImportMetadata)>),
            ("on_conflict", Box::new(|m: &mut proto::ImportMetadata| {
                m.on_conflict = proto::ConflictPolicy::Skip as i32
            })),
            ("validate_only", Box::new(|m: &mut proto::ImportMetadata| m.validate_only = true)),
            ("invitations", Box::new(|m: &mut proto::ImportMetadata| {
                m.invitations = proto::InvitationPolicy::Hold as i32
            })),
        ] {
            let mut first = resumable("r", committed);
            if let Some(Payload::Metadata(m)) = &mut first.payload {
                change(m);
            }
            let refused = send(&mut client, vec![first, finish_of(&file)]).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{field}: {refused:?}");
            assert!(refused.message().starts_with(field), "{field}: {}", refused.message());
        }
        // A plain upload of the same id: ALREADY_EXISTS, as any retry.
        let plain = send(&mut client, vec![metadata(ACCOUNT, "r", "users.csv")]).await.unwrap_err();
        assert_eq!(plain.code(), tonic::Code::AlreadyExists);
        // Nothing of that changed the import.
        let still = app.get(ACCOUNT, "r").await.unwrap();
        assert!(waiting(&still));
        assert_eq!(still.committed_bytes, at.committed_bytes);
        assert_eq!(still.rows_processed, at.rows_processed);

        // A resume that holds its stream open, and a second one meanwhile: FAILED_PRECONDITION.
        let (tx, rx) = mpsc::channel(8);
        tx.send(resumable("r", committed)).await.unwrap();
        let mut first_client = client.clone();
        let first = tokio::spawn(async move {
            first_client.upload_import(ReceiverStream::new(rx)).await
        });
        until(&mut client, ACCOUNT, "r", Duration::from_secs(10), |i| !waiting(i)).await;
        let second = send(&mut client, vec![resumable("r", committed), finish_of(&file)])
            .await
            .unwrap_err();
        assert_eq!(second.code(), tonic::Code::FailedPrecondition, "{second:?}");
        assert!(second.message().contains("another stream"), "{}", second.message());
        for piece in file[committed as usize..].chunks(3000) {
            tx.send(chunk(piece)).await.unwrap();
        }
        tx.send(finish_of(&file)).await.unwrap();
        drop(tx);
        let done = first.await.unwrap().unwrap().into_inner().import.unwrap();
        assert_eq!(done.status, expected.import.0);
        let resumed = came_to(&mut client, ACCOUNT, "r").await;
        assert_eq!(resumed, expected);
        // Once ended: ALREADY_EXISTS with its status, and nothing imported twice.
        let again = send(&mut client, vec![resumable("r", committed), finish_of(&file)])
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
        assert_eq!(came_to(&mut client, ACCOUNT, "r").await, expected);
        app.stop().await;
    }

    async fn a_waiting_import_is_cancelled_at_once_and_ends_when_its_window_passes(backend) {
        let mut app = spawn_app_with(backend, |a| {
            a.batch_rows = Some(100);
            a.resume_window = Duration::from_secs(2);
        })
        .await;
        let mut client = app.client.clone();
        let (file, _) = generate(&["--rows", "800", "--seed", "24"]);
        for id in ["cancelled", "expired"] {
            stop_half_way(&mut client, id, &file).await;
            assert!(waiting(&app.get(ACCOUNT, id).await.unwrap()));
        }
        let cancelled = client
            .cancel_import(proto::CancelImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "cancelled".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .import
            .unwrap();
        assert_eq!(cancelled.status, ImportStatus::Cancelled as i32);
        assert_eq!(app.users_of(ACCOUNT, "cancelled").await, 0);
        let expired = until(&mut client, ACCOUNT, "expired", Duration::from_secs(20), |i| {
            i.status != ImportStatus::Processing as i32
        })
        .await;
        assert_eq!(expired.status, ImportStatus::ErrorUnknown as i32);
        assert_eq!(
            expired.error_message,
            "the upload was not resumed within 2 s, so nothing was imported; upload the file again"
        );
        assert_eq!((expired.rows_imported, expired.resume_deadline), (0, None));
        assert_eq!(app.users_of(ACCOUNT, "expired").await, 0);
        for (id, status) in [("cancelled", "CANCELLED"), ("expired", "ERROR_UNKNOWN")] {
            let committed = app.get(ACCOUNT, id).await.unwrap().committed_bytes as usize;
            let messages = the_rest(id, &file, committed as u64);
            let refused = send(&mut client, messages).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{id}");
            assert!(refused.message().contains(status), "{id}: {}", refused.message());
        }
        app.stop().await;
    }
}

backend_tests! {
    async fn of_twenty_resumes_at_once_one_runs_and_nothing_is_imported_twice(backend) {
        let mut app = spawn_app_with(backend, |a| a.batch_rows = Some(100)).await;
        let mut client = app.client.clone();
        let (file, _) = generate(&["--rows", "1200", "--invalid-rate", "0.02", "--seed", "28"]);
        let expected = {
            whole(&mut client, "whole", &file).await;
            came_to(&mut client, "whole", "whole").await
        };
        stop_half_way(&mut client, "r", &file).await;
        let committed = app.get(ACCOUNT, "r").await.unwrap().committed_bytes as usize;
        assert!(committed > 0);
        let resumes: Vec<_> = (0..20)
            .map(|_| {
                let mut client = client.clone();
                let messages = the_rest("r", &file, committed as u64);
                tokio::spawn(async move { send(&mut client, messages).await })
            })
            .collect();
        let mut ran = 0;
        for resume in resumes {
            match resume.await.unwrap() {
                Ok(import) => {
                    ran += 1;
                    assert_eq!(import.status, expected.import.0);
                }
                Err(status) => assert!(
                    matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists
                    ),
                    "{status:?}"
                ),
            }
        }
        assert_eq!(ran, 1);
        assert_eq!(came_to(&mut client, ACCOUNT, "r").await, expected);
        app.stop().await;
    }
}

/// `bulk-import get` shows where a waiting import stands, and `bulk-import resume` resumes it
/// with the metadata the server keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_waiting_import_and_resumes_it_by_hand() {
    let mut app = spawn_app_with(Backend::Sqlite, |a| a.batch_rows = Some(100)).await;
    let mut client = app.client.clone();
    let (file, _) = generate(&["--rows", "900", "--invalid-rate", "0.02", "--seed", "29"]);
    let expected = {
        whole(&mut client, "whole", &file).await;
        came_to(&mut client, "whole", "whole").await
    };
    stop_half_way(&mut client, "r", &file).await;
    let committed = app.get(ACCOUNT, "r").await.unwrap().committed_bytes;
    let server = format!("http://{}", app.addr);
    let shown = bulk_import(Some(&server), "get", &["r"]).await;
    assert!(
        shown.out.contains("waiting:     for its client"),
        "{}",
        shown.out
    );
    assert!(
        shown.out.contains("bulk-import resume --import r FILE"),
        "{}",
        shown.out
    );
    let path = on_disk(&file);
    let ran = bulk_import(
        Some(&server),
        "resume",
        &["--import", "r", path.path().to_str().unwrap()],
    )
    .await;
    assert!(
        ran.err.contains(&format!(
            "resuming import r at byte {committed} of {}",
            file.len()
        )),
        "{}",
        ran.err
    );
    assert_eq!(
        ran.code,
        exit_code(expected.import.0),
        "{}{}",
        ran.out,
        ran.err
    );
    assert_eq!(came_to(&mut client, ACCOUNT, "r").await, expected);
    // Once it ended there is nothing to resume: said, exit 1.
    let again = bulk_import(
        Some(&server),
        "resume",
        &["--import", "r", path.path().to_str().unwrap()],
    )
    .await;
    assert_eq!(again.code, 1);
    assert!(
        again.err.contains("is not waiting for a resume"),
        "{}",
        again.err
    );
    app.stop().await;
}

backend_tests! {
    async fn a_watcher_sees_an_import_wait_then_complete_once_resumed(backend) {
        let mut app = spawn_app_with(backend, |a| a.batch_rows = Some(100)).await;
        let mut client = app.client.clone();
        let (file, _) = generate(&["--rows", "600", "--seed", "30"]);
        stop_half_way(&mut client, "r", &file).await;
        let committed = app.get(ACCOUNT, "r").await.unwrap().committed_bytes as usize;
        let mut watch = client
            .watch_import(proto::WatchImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "r".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap().import.unwrap();
        assert!(waiting(&first), "{first:?}");
        assert_eq!(first.committed_bytes as usize, committed);
        let messages = the_rest("r", &file, committed as u64);
        let done = send(&mut client, messages).await.unwrap();
        let mut last = first;
        while let Some(update) = tokio::time::timeout(Duration::from_secs(20), watch.message())
            .await
            .expect("the watch ends in time")
            .unwrap()
        {
            let import = update.import.unwrap();
            assert!(import.committed_bytes >= last.committed_bytes, "it never goes back");
            last = import;
        }
        assert_eq!(last.status, done.status);
        assert_eq!(last.committed_bytes, file.len() as i64);
        assert_eq!(last.resume_deadline, None);
        app.stop().await;
    }
}
