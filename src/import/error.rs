//! The import layer's errors, and the one mapping of the store's errors into them, so that the
//! gRPC layer sees only these and maps each to a status code.
//!
//! Every message is written for the client: it says what is wrong and what to do, and never
//! holds a secret or a database detail (`Internal` is logged by `grpc::error`, not sent). The
//! status code and `ErrorInfo` reason of each variant are in `grpc::error`; the code is named
//! below where it is not obvious.

use crate::domain::{AccountId, ArgumentError, ImportId, ImportStatus};
use crate::import::chunk::IntakeError;
use crate::store::StoreError;

/// An error of the import layer, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A field of the request, or a message of the upload, is malformed: INVALID_ARGUMENT
    /// with the field named.
    #[error("{0}")]
    InvalidArgument(#[from] ArgumentError),
    /// The id is taken: a retry of an upload that reached the server before. Says how that
    /// import ended, so that a client can tell "already done" from "already failed".
    #[error("{}", already_exists(account_id, import_id, *status))]
    AlreadyExists {
        /// The account the upload was for.
        account_id: AccountId,
        /// The id that is taken.
        import_id: ImportId,
        /// The existing import's status, when it could be read.
        status: Option<ImportStatus>,
    },
    /// No valid token: what is wrong with it, never the token itself. UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's token does not cover the account: PERMISSION_DENIED. Checked before
    /// anything else of the request, an upload's first byte included.
    #[error("this token may not act in account '{0}'; use a token whose accounts include it")]
    PermissionDenied(AccountId),
    /// A limit of the server: the message names it and says to retry later.
    /// RESOURCE_EXHAUSTED; nothing was created.
    #[error("{0}")]
    LimitReached(String),
    /// The client sent nothing for too long (`--upload-idle-timeout`): DEADLINE_EXCEEDED.
    #[error("{0}")]
    Stalled(String),
    /// A request's message did not arrive whole in time (`--request-message-timeout`):
    /// DEADLINE_EXCEEDED, before the call was served.
    #[error("{0}")]
    RequestStalled(String),
    /// `CancelImport` ended the import while it was being uploaded: what the uploading client
    /// is told (CANCELLED); the import is CANCELLED and keeps none of its users.
    #[error("{0}")]
    ImportCancelled(String),
    /// The import is not in a state that allows the request (cancel a finished import,
    /// revert a running one).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No import with this id in this account: NOT_FOUND.
    #[error("import '{import_id}' was not found in account '{account_id}'")]
    NotFound {
        /// The account looked in.
        account_id: AccountId,
        /// The id looked for.
        import_id: ImportId,
    },
    /// No user with this address in this account: NOT_FOUND.
    #[error("no user with the address '{0}' in this account")]
    UserNotFound(String),
    /// The file crossed `--max-upload-bytes`: RESOURCE_EXHAUSTED, and the import ended in
    /// ERROR_UNKNOWN.
    #[error("{0}")]
    TooLarge(String),
    /// The upload's stream broke before its finish message: the client went away, or the
    /// network failed. (Not `ImportCancelled`, which `CancelImport` causes.)
    #[error("the upload stream broke: {0}")]
    StreamBroke(String),
    /// The store is not open yet (the database is being opened or migrated): UNAVAILABLE.
    #[error("the service is starting: the database is not ready yet; retry shortly")]
    NotReady,
    /// The server takes no new upload, or ended this one when its shutdown grace ran out:
    /// UNAVAILABLE, so that the client retries.
    #[error("the server is shutting down; retry shortly")]
    ShuttingDown,
    /// The database cannot be reached or written now. The message names the cause in plain
    /// words and says what to do.
    #[error("{0}")]
    Unavailable(String),
    /// Another server ended the import while this request ran on it (it took this one for
    /// dead): ABORTED. Nothing of the upload stays.
    #[error(
        "the import was ended by another server while it ran, so nothing was imported; upload the file again"
    )]
    Ended,
    /// A resumable upload stopped before its finish message and its import waits for the
    /// client to resume it: ABORTED, the code to retry at a higher level.
    #[error("{0}")]
    Paused(String),
    /// A resume whose `resume_offset` is not the waiting import's `committed_bytes`:
    /// FAILED_PRECONDITION, naming `committed_bytes`, with nothing changed.
    #[error(
        "resume_offset {given} is not import '{import_id}''s committed_bytes, which is \
         {committed_bytes}: send the file from byte {committed_bytes}, with resume_offset \
         {committed_bytes}"
    )]
    ResumeOffset {
        /// The import.
        import_id: ImportId,
        /// Where it stands: what `resume_offset` must be.
        committed_bytes: u64,
        /// What the client sent.
        given: u64,
    },
    /// A bug or an unexpected database error: the details are logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The one mapping of the store's errors: outages and faults become `Unavailable` with their
/// plain words, an import that ended under a write becomes `Ended`, and bugs become `Internal`.
impl From<StoreError> for ImportError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable { outage, .. } => {
                ImportError::Unavailable(format!("{outage}; retry shortly"))
            }
            StoreError::Fault { fault, .. } => ImportError::Unavailable(format!(
                "{fault}; retry once the service reports ready again"
            )),
            StoreError::Conflict(_) => ImportError::Unavailable(
                "the database kept aborting this write in favour of another import's; retry \
                 shortly"
                    .to_owned(),
            ),
            StoreError::NotProcessing => ImportError::Ended,
            StoreError::StillRunning => ImportError::FailedPrecondition(
                "the import is still running; wait for it to end, or cancel it".to_owned(),
            ),
            StoreError::BeingUpdated(import_id) => ImportError::FailedPrecondition(format!(
                "import '{import_id}', still running, is updating some of this import's users; \
                 revert once it has ended"
            )),
            e @ StoreError::FileKeysLost(_) => ImportError::FailedPrecondition(format!(
                "{e}; upload the whole file again as a new import"
            )),
            // The callers that can meet a taken id handle it with its context.
            StoreError::AlreadyExists => {
                ImportError::Internal("unexpected uniqueness violation".to_owned())
            }
            e @ (StoreError::Config(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_)
            | StoreError::Database(_)) => ImportError::Internal(e.detail()),
        }
    }
}

/// The one reply to a file refused at the door, whoever asks: the upload that meets it in its
/// bytes (`ending::decide`), and the console's check before it sends a byte
/// (`Importer::check_upload`). Not CSV is the `chunk`'s fault; too large is `TooLarge`.
impl From<IntakeError> for ImportError {
    fn from(error: IntakeError) -> Self {
        match error {
            e @ IntakeError::NotCsv { .. } => ArgumentError::new("chunk", e.to_string()).into(),
            e @ IntakeError::TooLarge { .. } => ImportError::TooLarge(e.to_string()),
        }
    }
}

/// The message of `AlreadyExists`: what the existing import's status means for a client that
/// retried, and what it should do next.
fn already_exists(
    account_id: &AccountId,
    import_id: &ImportId,
    status: Option<ImportStatus>,
) -> String {
    let head = format!("import '{import_id}' already exists in account '{account_id}'");
    match status {
        None => format!("{head}; look it up with GetImport"),
        Some(ImportStatus::Processing) => format!(
            "{head} and is still running; follow it with WatchImport, and if it fails, upload \
             the file again with a new import_id"
        ),
        Some(
            status @ (ImportStatus::CompletedSuccess
            | ImportStatus::CompletedPartial
            | ImportStatus::CompletedNothingToImport),
        ) => format!(
            "{head} and completed ({}): the file was imported, nothing more to do",
            status.as_str()
        ),
        Some(
            status @ (ImportStatus::ErrorParsing
            | ImportStatus::ErrorUnknown
            | ImportStatus::Cancelled),
        ) => format!(
            "{head} and ended in {}, with nothing imported; to import the file, upload it again \
             with a new import_id",
            status.as_str()
        ),
    }
}
