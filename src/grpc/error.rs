//! The one mapping from the import layer's errors to gRPC statuses (AIP-193: a code, a message
//! that says what to do, and an `ErrorInfo` with a stable reason). The match is exhaustive, so
//! that a new error must be given its code here. Internal details are logged here and never
//! sent to clients.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::import::ImportError;

/// The `ErrorInfo.domain` of this service's errors.
const DOMAIN: &str = "bulkimport.v1";

impl From<ImportError> for Status {
    fn from(error: ImportError) -> Self {
        let (code, reason) = match &error {
            ImportError::InvalidArgument(e) => {
                let mut details = ErrorDetails::with_bad_request_violation(e.field, &e.message);
                details.set_error_info("INVALID_ARGUMENT", DOMAIN, []);
                // The message names the field, once.
                let message = if e.message.starts_with(e.field) {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                };
                return Status::with_error_details(Code::InvalidArgument, message, details);
            }
            ImportError::AlreadyExists { .. } => (Code::AlreadyExists, "IMPORT_ALREADY_EXISTS"),
            ImportError::NotFound { .. } => (Code::NotFound, "IMPORT_NOT_FOUND"),
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
