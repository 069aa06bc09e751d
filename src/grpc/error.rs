//! The one mapping from the import layer's errors to gRPC statuses (AIP-193: a code, a message
//! that says what to do, and an `ErrorInfo` with a stable reason). The match is exhaustive, so
//! that a new error must be given its code here. Internal details are logged here and never
//! sent to clients.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert;
use crate::import::ImportError;

/// The `ErrorInfo.domain` of this service's errors.
pub(super) const DOMAIN: &str = "bulkimport.v1";

impl From<ImportError> for Status {
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
            ImportError::NotFound { .. } => (Code::NotFound, "IMPORT_NOT_FOUND"),
            ImportError::PermissionDenied(_) => (Code::PermissionDenied, "ACCOUNT_NOT_ALLOWED"),
            ImportError::LimitReached(_) => (Code::ResourceExhausted, "LIMIT_REACHED"),
            ImportError::Stalled(_) => (Code::DeadlineExceeded, "UPLOAD_STALLED"),
            ImportError::ImportCancelled(_) => (Code::Cancelled, "IMPORT_CANCELLED"),
            ImportError::FailedPrecondition(_) => (Code::FailedPrecondition, "WRONG_STATE"),
            ImportError::TooLarge(_) => (Code::ResourceExhausted, "FILE_TOO_LARGE"),
            ImportError::Cancelled(_) => (Code::Cancelled, "UPLOAD_CANCELLED"),
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

impl From<crate::domain::ArgumentError> for Status {
    fn from(error: crate::domain::ArgumentError) -> Self {
        ImportError::from(error).into()
    }
}
