//! `bulk-import upload`: the file streamed in chunks as it is read (memory stays flat), the
//! finish message with its size and SHA-256, a progress bar on a terminal, and the first row
//! errors as a table.
//!
//! Three tasks work at once during an upload:
//!
//! ```text
//!  reader (blocking thread) ──chunks──► channel (4 messages) ──► UploadImport stream
//!   read, hash, count                     backpressure: the reader waits for the network
//!  follower (terminal only) ◄── WatchImport ── rows processed, for the progress bar
//! ```
//!
//! The answer to `UploadImport` is the ended import; the command exits with its status
//! (0, 2 or 1, see `outcome`), so `bulk-import upload users.csv && next-step` runs the next
//! step only when the import completed with no failed row (or had no rows at all).

use std::io::{IsTerminal, Read};
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::connect::{Client, client};
use super::outcome::{CliError, CliResult, Outcome};
use super::{json, show};
use crate::config::UploadArgs;
use crate::domain::ImportId;
use crate::proto::{self, upload_import_request::Payload};

/// Row errors shown after an upload: a first look at what is wrong with the file; `get` and
/// `errors` give the rest.
const FIRST_ERRORS: i32 = 10;

/// Streams the file in chunks as it is read (memory stays flat), then the finish message with
/// the size and SHA-256, so the server can tell a truncated upload. On a terminal, a progress
/// bar on stderr shows the bytes sent and the rows the server processed.
///
/// `bulk-import upload users.csv [--import-id ID] [--dry-run] [--on-conflict POLICY]
/// [--retry-of ID] [--chunk-size BYTES]`. The import id is made here when not given, so that
/// the follower can find the import while it runs, and it is printed at the end. The file's
/// name (without its directory) is sent as the import's `filename`; the server wants it to
/// end in `.csv`.
///
/// Memory stays at a few chunks whatever the file's size: the reader thread reads one chunk
/// at a time and waits while 4 are queued. When the server answers early (an error), the
/// reader stops at its next chunk. A file that cannot be opened fails before the server is
/// contacted. A read that fails part way ends the stream without `finish`, so the server ends
/// the import with nothing imported, and the error printed is the server's answer to that.
///
/// After an import with failed rows, the first few are shown (`FIRST_ERRORS`), with the
/// commands that give the rest. With `--json`, the import alone, and no progress bar.
pub async fn upload(args: UploadArgs) -> CliResult {
    if args.resumable {
        return super::resume::upload(args).await;
    }
    let path = args.file.clone();
    let mut file = std::fs::File::open(&path)
        .map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut client = client(&args.target).await?;
    // Known before the upload, so that its progress can be followed.
    let metadata = metadata(&args);
    let import_id = metadata.import_id.clone();
    let bar = (!args.target.json && std::io::stderr().is_terminal()).then(|| progress_bar(size));
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(Payload::Metadata(metadata)))
        .await
        .map_err(|_| CliError::new("the upload stopped before it started"))?;
    let chunk_size = args.chunk_size.max(1);
    let sent = bar.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let mut buf = vec![0u8; chunk_size];
            let n = read_full(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            hasher.update(&buf);
            size += n as u64;
            if tx
                .blocking_send(request(Payload::Chunk(buf.into())))
                .is_err()
            {
                return Ok(());
            }
            if let Some(bar) = &sent {
                bar.inc(n as u64);
            }
        }
        let _ = tx.blocking_send(request(Payload::Finish(proto::UploadFinish {
            size_bytes: Some(size as i64),
            sha256: hex::encode(hasher.finalize()),
        })));
        Ok(())
    });
    let follower = bar.clone().map(|bar| {
        tokio::spawn(follow_rows(
            client.clone(),
            args.target.account.clone(),
            import_id.clone(),
            bar,
        ))
    });
    let response = client.upload_import(ReceiverStream::new(rx)).await;
    if let Some(follower) = follower {
        follower.abort();
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let read = reader
        .await
        .map_err(|e| CliError::new(format!("the file reader failed: {e}")))?;
    // A file that could not be read is the cause of whatever the server then said (an upload
    // without its end), so it is the error shown.
    read.map_err(|e| {
        CliError::io(
            format!("cannot read {} (nothing was imported)", path.display()),
            e,
        )
    })?;
    let import = response?.into_inner().import.unwrap_or_default();
    if args.target.json {
        json::print(&json::import(&import));
    } else {
        print_ended(&mut client, &args.target.account, &import).await;
    }
    Ok(Outcome::Ended(import.status))
}

/// The ended import for people: its outcome, its id, its message, and its first row errors.
pub(super) async fn print_ended(client: &mut Client, account: &str, import: &proto::Import) {
    println!("{}", show::outcome(import));
    println!("import_id: {}", import.import_id);
    if !import.error_message.is_empty() {
        println!("{}", import.error_message);
    }
    // The import has ended whatever happens here: a failure to show its errors is said, and
    // the exit code stays the import's.
    if import.rows_failed > 0
        && let Err(e) = print_first_errors(client, account, import).await
    {
        eprintln!(
            "warning: the row errors could not be shown ({e}); `bulk-import get {}` shows them",
            import.import_id
        );
    }
}

/// A bar of the file's bytes (`size`, 0 when its metadata could not be read), with rate and
/// ETA; the message slot is where `follow_rows` writes the rows processed. Ticks on its own,
/// so the spinner moves while the server is busy and no byte is sent.
fn progress_bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec}, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Shows the rows the server has processed, from `WatchImport`, once the import exists.
///
/// The metadata message and this watch race: until the server has created the import,
/// `WatchImport` is NOT_FOUND, so it is asked again every 200 ms. Any other error (a token
/// without the account, a server at its `--max-watchers`) just leaves the bar without rows:
/// the upload is what matters, and its own answer reports real problems. `upload` aborts
/// this task as soon as the upload is answered.
async fn follow_rows(mut client: Client, account: String, import_id: String, bar: ProgressBar) {
    loop {
        let watch = client
            .watch_import(proto::WatchImportRequest {
                account_id: account.clone(),
                import_id: import_id.clone(),
            })
            .await;
        match watch {
            Ok(updates) => {
                let mut updates = updates.into_inner();
                while let Some(Ok(update)) = updates.next().await {
                    let import = update.import.unwrap_or_default();
                    bar.set_message(format!("{} rows", show::count(import.rows_processed)));
                }
                return;
            }
            // Not created yet: the metadata is on its way.
            Err(status) if status.code() == tonic::Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return,
        }
    }
}

/// The first row errors of an import as a table, and where to find the rest.
///
/// One `GetImport` page of `FIRST_ERRORS`; when there is a next page, a line with the exact
/// `get` and `errors` commands to run. Its own RPC can fail after the upload worked; the
/// caller then warns and keeps the import's exit code.
async fn print_first_errors(
    client: &mut Client,
    account: &str,
    import: &proto::Import,
) -> Result<(), CliError> {
    let page = client
        .get_import(proto::GetImportRequest {
            account_id: account.to_owned(),
            import_id: import.import_id.clone(),
            errors_page_size: FIRST_ERRORS,
            errors_page_token: String::new(),
        })
        .await?
        .into_inner();
    if !page.errors.is_empty() {
        println!();
        println!("{}", show::row_errors(&page.errors));
    }
    if !page.next_errors_page_token.is_empty() || import.row_errors_omitted > 0 {
        println!(
            "... more: `bulk-import get --account {account} {}`, or the rows to fix: \
             `bulk-import errors --account {account} {} > fix.csv`",
            import.import_id, import.import_id
        );
    }
    if let Some(note) = show::omitted(import) {
        println!("{note}");
    }
    Ok(())
}

/// Fills `buf` from `file` unless the file ends first, and returns how much it read (0 at the
/// end).
///
/// A single `read` may return less than asked (a pipe, a network file system); filling the
/// buffer keeps every chunk at `--chunk-size` but the last, instead of sending many small
/// messages.
pub(super) fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The upload's metadata as the command line gives it, for a plain and a resumable upload
/// alike: the file's name without its directory, and the import id given, or a fresh one
/// (known before the upload, so that its progress can be followed).
pub(super) fn metadata(args: &UploadArgs) -> proto::ImportMetadata {
    let import_id = match args.import_id.as_str() {
        "" => ImportId::generate().to_string(),
        id => id.to_owned(),
    };
    proto::ImportMetadata {
        account_id: args.target.account.clone(),
        r#type: proto::ImportType::Users as i32,
        filename: args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        import_id,
        validate_only: args.dry_run,
        on_conflict: args.on_conflict.proto() as i32,
        retry_of_import_id: args.retry_of.clone().unwrap_or_default(),
        invitations: if args.hold_invitations {
            proto::InvitationPolicy::Hold
        } else {
            proto::InvitationPolicy::Send
        } as i32,
        resumable: args.resumable,
        resume_offset: 0,
    }
}

/// One message of the upload stream: the proto wraps each payload in a `oneof`.
pub(super) fn request(payload: Payload) -> proto::UploadImportRequest {
    proto::UploadImportRequest {
        payload: Some(payload),
    }
}
