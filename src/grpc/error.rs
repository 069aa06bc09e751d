//! The one mapping from the import layer's errors to gRPC statuses (AIP-193: a code, a message
//! that says what to do, and an `ErrorInfo` with a stable reason). The match is exhaustive, so
//! that a new error must be given its code here. Internal details are logged here and never
//! sent to clients.
//!
//! The code says what a client may do about it (gRPC's guide: retry the call as is, retry
//! after fixing something, or give up); the `ErrorInfo.reason` says which of this service's
//! cases it is, and is the part scripts should match on: it stays when a message's wording
//! changes. Every reason is in domain `bulkimport.v1`.
//!
//! | `ImportError`        | Code                | `ErrorInfo.reason`      | The client      |
//! |----------------------|---------------------|-------------------------|-----------------|
//! | `InvalidArgument`    | INVALID_ARGUMENT    | `INVALID_ARGUMENT`      | fixes the field |
//! | `AlreadyExists`      | ALREADY_EXISTS      | `IMPORT_ALREADY_EXISTS` | reads `status`  |
//! | `NotFound`           | NOT_FOUND           | `IMPORT_NOT_FOUND`      | checks the ids  |
//! | `Unauthenticated`    | UNAUTHENTICATED     | `UNAUTHENTICATED`       | sends a token   |
//! | `PermissionDenied`   | PERMISSION_DENIED   | `ACCOUNT_NOT_ALLOWED`   | uses another    |
//! | `LimitReached`       | RESOURCE_EXHAUSTED  | `LIMIT_REACHED`         | retries later   |
//! | `TooLarge`           | RESOURCE_EXHAUSTED  | `FILE_TOO_LARGE`        | splits the file |
//! | `Stalled`            | DEADLINE_EXCEEDED   | `UPLOAD_STALLED`        | uploads again   |
//! | `ImportCancelled`    | CANCELLED           | `IMPORT_CANCELLED`      | stops           |
//! | `StreamBroke`        | CANCELLED           | `UPLOAD_CANCELLED`      | uploads again   |
//! | `FailedPrecondition` | FAILED_PRECONDITION | `WRONG_STATE`           | waits, or stops |
//! | `NotReady`           | UNAVAILABLE         | `NOT_READY`             | retries         |
//! | `ShuttingDown`       | UNAVAILABLE         | `SHUTTING_DOWN`         | retries         |
//! | `Unavailable`        | UNAVAILABLE         | `DATABASE_UNAVAILABLE`  | retries         |
//! | `Ended`              | ABORTED             | `IMPORT_ENDED`          | uploads again   |
//! | `Internal`           | INTERNAL            | `INTERNAL`              | reports it      |
//!
//! Why some of these codes:
//!
//! - the three UNAVAILABLE cases are the ones a client may retry unchanged, and UNAVAILABLE is
//!   the code gRPC documents as transient, to retry with a backoff; the reason tells a
//!   starting server, one going away, and a database outage apart;
//! - two RESOURCE_EXHAUSTED reasons, because one passes (a server limit on uploads or
//!   watchers) and the other does not (the file itself is over `--max-upload-bytes`);
//! - an import ended by another server while this one ran it is ABORTED, gRPC's code for a
//!   conflict that a retry of the whole operation (a new upload) resolves;
//! - INTERNAL's message is fixed, so that a database error or a bug never sends SQL, paths
//!   or values to a client; the detail goes to the server's log.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert;
use crate::import::ImportError;

/// The `ErrorInfo.domain` of this service's errors: the proto package, so that a client
/// that talks to several services can tell whose reason it is (AIP-193).
pub(super) const DOMAIN: &str = "bulkimport.v1";

/// Every error a handler returns goes through here (handlers use `?` on `ImportError`), so
/// every status a handler, the token check or a stream item sends carries an `ErrorInfo`.
impl From<ImportError> for Status {
    /// INVALID_ARGUMENT gets a `BadRequest` field violation besides its `ErrorInfo`, so that
    /// a client can tell which field without parsing the message; ALREADY_EXISTS gets the
    /// existing import in its metadata (`account_id`, `import_id`, and `status` when it could
    /// be read); INTERNAL is logged at error level and answered with a fixed message. The rest
    /// send `error`'s own message.
    fn from(error: ImportError) -> Self {
        let (code, reason) = match &error {
            ImportError::InvalidArgument(e) => {
                let mut details = ErrorDetails::with_bad_request_violation(e.field, &e.message);
                details.set_error_info("INVALID_ARGUMENT", DOMAIN, []);
                // The message names the field, once.
                let message = e.described();
                return Status::with_error_details(Code::InvalidArgument, message, details);
            }
            ImportError::AlreadyExists {
                account_id,
                import_id,
                status,
            } => {
                // The existing import's status, for clients that retry by import id.
                let mut metadata = std::collections::HashMap::from([
                    ("account_id".to_owned(), account_id.to_string()),
                    ("import_id".to_owned(), import_id.to_string()),
                ]);
                if let Some(status) = status {
                    let name = convert::status(*status).as_str_name().to_owned();
                    metadata.insert("status".to_owned(), name);
                }
                return Status::with_error_details(
                    Code::AlreadyExists,
                    error.to_string(),
                    ErrorDetails::with_error_info("IMPORT_ALREADY_EXISTS", DOMAIN, metadata),
                );
            }
            ImportError::ResumeOffset {
                committed_bytes, ..
            } => {
                // Where to resume from, for a client that does not parse the message.
                let metadata = [("committed_bytes".to_owned(), committed_bytes.to_string())];
                return Status::with_error_details(
                    Code::FailedPrecondition,
                    error.to_string(),
                    ErrorDetails::with_error_info("RESUME_OFFSET_MISMATCH", DOMAIN, metadata),
                );
            }
            ImportError::Paused(_) => (Code::Aborted, "UPLOAD_PAUSED"),
            ImportError::NotFound { .. } => (Code::NotFound, "IMPORT_NOT_FOUND"),
            ImportError::UserNotFound(_) => (Code::NotFound, "USER_NOT_FOUND"),
            ImportError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            ImportError::PermissionDenied(_) => (Code::PermissionDenied, "ACCOUNT_NOT_ALLOWED"),
            ImportError::LimitReached(_) => (Code::ResourceExhausted, "LIMIT_REACHED"),
            ImportError::Stalled(_) => (Code::DeadlineExceeded, "UPLOAD_STALLED"),
            ImportError::RequestStalled(_) => (Code::DeadlineExceeded, "REQUEST_STALLED"),
            ImportError::ImportCancelled(_) => (Code::Cancelled, "IMPORT_CANCELLED"),
            ImportError::FailedPrecondition(_) => (Code::FailedPrecondition, "WRONG_STATE"),
            ImportError::TooLarge(_) => (Code::ResourceExhausted, "FILE_TOO_LARGE"),
            ImportError::StreamBroke(_) => (Code::Cancelled, "UPLOAD_CANCELLED"),
            ImportError::NotReady => (Code::Unavailable, "NOT_READY"),
            ImportError::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
            ImportError::Unavailable(_) => (Code::Unavailable, "DATABASE_UNAVAILABLE"),
            ImportError::Ended => (Code::Aborted, "IMPORT_ENDED"),
            ImportError::Internal(detail) => {
                tracing::error!(error = detail.as_str(), "internal error");
                return Status::with_error_details(
                    Code::Internal,
                    "internal error; the details are in the server's log",
                    ErrorDetails::with_error_info("INTERNAL", DOMAIN, []),
                );
            }
        };
        Status::with_error_details(
            code,
            error.to_string(),
            ErrorDetails::with_error_info(reason, DOMAIN, []),
        )
    }
}

/// A bad argument found by the gRPC layer itself (a malformed id, page token or page size):
/// the same INVALID_ARGUMENT as the import layer's, so that `?` works on `convert` and
/// `page_token` results in the handlers.
impl From<crate::domain::ArgumentError> for Status {
    fn from(error: crate::domain::ArgumentError) -> Self {
        ImportError::from(error).into()
    }
}
