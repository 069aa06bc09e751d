//! Resumable uploads from the CLI: `bulk-import upload --resumable FILE`, which reconnects and
//! resumes by itself when the connection breaks, and `bulk-import resume --import ID FILE`,
//! which resumes a waiting import by hand.
//!
//! The file's size and SHA-256 are read once, before the first byte is sent: every attempt
//! ends with the whole file's, as a resume must. Each attempt asks the server where the
//! import stands (`GetImport`): not there yet, it starts at byte 0; waiting, it sends the file
//! from `committed_bytes`; ended, that is the answer. A broken stream, a server going away,
//! an import still held by a server that has not noticed the break yet: each is retried with
//! a backoff (backon), up to `RETRY_FOR` in all, and each resume prints where it starts.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::connect::{Client, client};
use super::outcome::{CliError, CliResult, Outcome};
use super::upload::{read_full, request};
use super::{json, show};
use crate::config::{ResumeArgs, UploadArgs};
use crate::proto::{self, upload_import_request::Payload};

/// How long, at most, the reconnecting upload keeps trying: long enough for a replica that
/// died to be taken for dead (the reaper needs about 13 to 33 s) and for a restarted server
/// to come back.
const RETRY_FOR: Duration = Duration::from_secs(180);

/// The file as every attempt ends it: its size and SHA-256, read once.
struct Whole {
    size: u64,
    sha256: String,
}

/// `upload --resumable`: the upload, resumed after every break until it ends.
pub(super) async fn upload(args: UploadArgs) -> CliResult {
    let whole = read_whole(&args.file)?;
    let mut client = client(&args.target).await?;
    let metadata = super::upload::metadata(&args);
    let attempt = || {
        let (mut client, metadata) = (client.clone(), metadata.clone());
        let (file, whole) = (&args.file, &whole);
        let chunk_size = args.chunk_size;
        async move {
            let offset = match where_it_stands(&mut client, &metadata).await? {
                Stands::Ended(import) => return Ok(*import),
                Stands::New => 0,
                Stands::Waiting(offset) => {
                    eprintln!(
                        "resuming import {} at byte {offset} of {}",
                        metadata.import_id, whole.size
                    );
                    offset
                }
            };
            send(&mut client, metadata, file, offset, whole, chunk_size).await
        }
    };
    let import = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(10))
                .with_total_delay(Some(RETRY_FOR))
                .without_max_times(),
        )
        .when(worth_resuming)
        .notify(|status, delay| {
            eprintln!(
                "the upload stopped ({}: {}); trying again in {:.1} s",
                status.code(),
                status.message(),
                delay.as_secs_f64()
            )
        })
        .await?;
    finish(&mut client, &args.target, import).await
}

/// `resume --import ID FILE`: one resume of a waiting import, with the metadata it was
/// uploaded with (read from the server), from its `committed_bytes`.
pub async fn resume(args: ResumeArgs) -> CliResult {
    let whole = read_whole(&args.file)?;
    let mut client = client(&args.target).await?;
    let import = client
        .get_import(proto::GetImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
            errors_page_size: 1,
            errors_page_token: String::new(),
        })
        .await?
        .into_inner()
        .import
        .unwrap_or_default();
    if import.resume_deadline.is_none() {
        return Err(CliError::new(format!(
            "import {} is not waiting for a resume ({}); `bulk-import get {}` shows it",
            import.import_id,
            show::outcome(&import),
            import.import_id
        )));
    }
    let metadata = proto::ImportMetadata {
        account_id: import.account_id.clone(),
        r#type: import.r#type,
        filename: import.filename.clone(),
        import_id: import.import_id.clone(),
        validate_only: import.validate_only,
        on_conflict: import.on_conflict,
        retry_of_import_id: import.retry_of_import_id.clone(),
        invitations: import.invitations,
        resumable: true,
        resume_offset: 0,
    };
    let offset = import.committed_bytes.max(0) as u64;
    eprintln!(
        "resuming import {} at byte {offset} of {}",
        import.import_id, whole.size
    );
    let chunk_size = args.chunk_size;
    let ended = send(
        &mut client,
        metadata,
        &args.file,
        offset,
        &whole,
        chunk_size,
    )
    .await?;
    finish(&mut client, &args.target, ended).await
}

/// Where an import stands for the next attempt.
enum Stands {
    /// Not created yet: the first upload.
    New,
    /// Waiting for a resume from this offset.
    Waiting(u64),
    /// Ended: the answer.
    Ended(Box<proto::Import>),
}

/// `GetImport`: not found is a first upload; PROCESSING without a deadline is still held by a
/// server that has not noticed the break (FAILED_PRECONDITION, retried).
async fn where_it_stands(
    client: &mut Client,
    metadata: &proto::ImportMetadata,
) -> Result<Stands, tonic::Status> {
    let found = client
        .get_import(proto::GetImportRequest {
            account_id: metadata.account_id.clone(),
            import_id: metadata.import_id.clone(),
            errors_page_size: 1,
            errors_page_token: String::new(),
        })
        .await;
    let import = match found {
        Ok(response) => response.into_inner().import.unwrap_or_default(),
        Err(status) if status.code() == Code::NotFound => return Ok(Stands::New),
        Err(status) => return Err(status),
    };
    if import.status != proto::ImportStatus::Processing as i32 {
        if import.filename != metadata.filename {
            // Another file's import: the id is taken, as for any upload.
            return Err(tonic::Status::already_exists(format!(
                "import '{}' already exists in account '{}', uploaded from {}, and ended; \
                 upload this file with another --import-id",
                import.import_id, import.account_id, import.filename
            )));
        }
        return Ok(Stands::Ended(Box::new(import)));
    }
    match import.resume_deadline {
        Some(_) => Ok(Stands::Waiting(import.committed_bytes.max(0) as u64)),
        None => Err(tonic::Status::failed_precondition(
            "the import is still held by the server whose stream broke; waiting for it to let go",
        )),
    }
}

/// Whether an attempt's failure may pass: the stream or the server went away, the import
/// is still held elsewhere, or it moved on meanwhile. A refusal of the file or the request
/// (a bad argument, no permission, a file too large) is final.
fn worth_resuming(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::FailedPrecondition
            | Code::Internal
    )
}

/// One attempt: the metadata with `resume_offset`, the file from `offset` in chunks, and the
/// finish message with the whole file's size and SHA-256. The ended import, or why the
/// stream stopped.
async fn send(
    client: &mut Client,
    mut metadata: proto::ImportMetadata,
    path: &Path,
    offset: u64,
    whole: &Whole,
    chunk_size: usize,
) -> Result<proto::Import, tonic::Status> {
    let mut file = std::fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::Start(offset)).map(|_| f))
        .map_err(|e| tonic::Status::invalid_argument(format!("cannot read the file: {e}")))?;
    metadata.resume_offset = offset as i64;
    let (tx, rx) = mpsc::channel(4);
    let _ = tx.send(request(Payload::Metadata(metadata))).await;
    let finish = proto::UploadFinish {
        size_bytes: Some(whole.size as i64),
        sha256: whole.sha256.clone(),
    };
    let chunk_size = chunk_size.max(1);
    let reader = tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; chunk_size];
            let n = match read_full(&mut file, &mut buf) {
                Ok(n) => n,
                // The stream ends without its finish: the import waits, and the next
                // attempt reads again.
                Err(_) => return,
            };
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if tx
                .blocking_send(request(Payload::Chunk(buf.into())))
                .is_err()
            {
                return;
            }
        }
        let _ = tx.blocking_send(request(Payload::Finish(finish)));
    });
    let answer = client.upload_import(ReceiverStream::new(rx)).await;
    reader.abort();
    Ok(answer?.into_inner().import.unwrap_or_default())
}

/// The file's size and SHA-256, read once (a file that cannot be read fails before the server
/// is asked anything).
fn read_whole(path: &Path) -> Result<Whole, CliError> {
    let cannot = |e| CliError::io(format!("cannot read {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(cannot)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Whole {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Prints the ended import as `upload` does, and exits with its status.
async fn finish(
    client: &mut Client,
    target: &crate::config::ServerArgs,
    import: proto::Import,
) -> CliResult {
    if target.json {
        json::print(&json::import(&import));
    } else {
        super::upload::print_ended(client, &target.account, &import).await;
    }
    Ok(Outcome::Ended(import.status))
}
