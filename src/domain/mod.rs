//! The service's vocabulary, free of gRPC and SQL: parse, don't validate. Each type here can
//! only hold a valid value, so code that receives one needs no second check.

pub mod batch;
pub mod caller;
pub mod email;
pub mod ids;
pub mod import;
pub mod row_error;
pub mod text;
pub mod user;

pub use batch::UserBatch;
pub use caller::Caller;
pub use email::Email;
pub use ids::{AccountId, ImportId};
pub use import::{
    ConflictPolicy, Counters, Filename, Import, ImportKey, ImportStatus, ImportType, NewImport,
    TextEncoding, TextFormat,
};
pub use row_error::{ErrorCode, RowError};
pub use user::{Column, FailedRow, NewUser, Role};

/// A request argument that was refused, with the field it concerns: the API layer turns it
/// into INVALID_ARGUMENT naming that field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ArgumentError {
    pub field: &'static str,
    pub message: String,
}

impl ArgumentError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The message, naming the field once: as the client is told it and the import stores it.
    pub fn described(&self) -> String {
        if self.message.starts_with(self.field) {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}
