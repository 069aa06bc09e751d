//! The service's vocabulary, free of gRPC and SQL: parse, don't validate. Each type here can
//! only hold a valid value, so code that receives one needs no second check.
//!
//! Two kinds of input are parsed here, and they fail differently:
//!
//! - request arguments (`AccountId`, `ImportId`, `Filename`): a bad one refuses the whole
//!   request with an [`ArgumentError`], which the API layer turns into INVALID_ARGUMENT;
//! - the cells of a file (`Email`, `Role`, `user::parse_text`): a bad one fails its row only,
//!   with a [`RowError`] for the person who uploaded the file, and the other rows go on.
//!
//! Values read back from the database are parsed again by the store (the `from_stored`
//! functions and the `parse` of the ids), so that a corrupt row is an error, never a value
//! that breaks these types' promises.

pub mod batch;
pub mod caller;
pub mod email;
pub mod ids;
pub mod import;
pub mod invitation;
pub mod row_error;
pub mod text;
pub mod user;

pub use batch::UserBatch;
pub use caller::{Caller, Scope};
pub use email::Email;
pub use ids::{AccountId, ImportId};
pub use import::{
    ConflictPolicy, Counters, Filename, Import, ImportKey, ImportStatus, ImportType, NewImport,
    TextEncoding, TextFormat,
};
pub use invitation::{InvitationPolicy, InvitationState, UserEventKind};
pub use row_error::{ErrorCode, RowError};
pub use user::{Column, FailedRow, NewUser, Role};

/// A request argument that was refused, with the field it concerns: the API layer turns it
/// into INVALID_ARGUMENT naming that field, with a `BadRequest` field violation beside it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ArgumentError {
    /// The request field, as the proto names it (`account_id`, `finish.sha256`): the field of the
    /// `BadRequest` violation, for clients that point at the input.
    pub field: &'static str,
    /// What is wrong and what to send instead, for a person. It may or may not start with the
    /// field's name: see `described`.
    pub message: String,
}

impl ArgumentError {
    /// A refusal of `field`. Write `message` for the person who reads it: what is wrong, then
    /// what to send instead.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The message, naming the field once: as the client is told it and the import stores it.
    /// `Display` gives the bare message; the gRPC status carries this one, and so does the
    /// error message of an import that ends on a malformed upload.
    pub fn described(&self) -> String {
        if self.message.starts_with(self.field) {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}
