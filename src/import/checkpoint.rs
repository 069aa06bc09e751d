//! Where a resumable upload goes on from: the reader's state at the end of the last row a
//! stored batch holds, kept with that batch (in its transaction), so that any replica can read
//! on from there once the client sends the rest of the file.
//!
//! At a row's end the reader needs little: the byte offset (`Import.committed_bytes`), the
//! SHA-256 of the bytes before it (the hash's state, not a digest, so that the finish message's
//! check still covers every byte of the file), how the text decodes from there, the delimiter,
//! the header's columns, the row count and whether an LF may still complete a CR. Rows before
//! it keep their say through the store (duplicates are found by its unique indexes), so no
//! value of any row is kept here: a checkpoint is a few hundred bytes whatever the file.

use serde::{Deserialize, Serialize};

use super::decoder::Decoding;
use super::parser::Mark;
use super::validator::StoredHeader;
use crate::domain::TextEncoding;

/// The reader's state at a row's end. Built by `FileReader::checkpoint`, read back by
/// `FileReader::resume`; stored as JSON text, which an operator can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The offset in the file just after the row: `Import.committed_bytes`, where the client
    /// sends the file from when it resumes.
    pub offset: u64,
    /// Spreadsheet rows up to the offset: a user of the import from a later row was written
    /// by a batch whose record did not commit, and goes when the import is resumed.
    pub rows: u64,
    /// The state of the SHA-256 over the bytes before the offset, in hex.
    pub(super) sha256: String,
    /// The byte order mark the file starts with.
    pub(super) bom: Option<TextEncoding>,
    /// How the text decodes from the offset on.
    pub(super) decoding: Decoding,
    /// The delimiter found in the header line.
    pub(super) delimiter: u8,
    /// The header's columns.
    pub(super) header: StoredHeader,
    /// Bytes of text the parser had read, and whether the row ended with a CR.
    pub(super) text_end: u64,
    pub(super) after_cr: bool,
}

impl Checkpoint {
    /// As stored.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored checkpoint; `None` for text that is not one.
    pub fn decode(stored: &str) -> Option<Self> {
        serde_json::from_str(stored).ok()
    }

    /// The parser's mark at the offset.
    pub(super) fn mark(&self) -> Mark {
        Mark {
            end: self.text_end,
            rows_before: self.rows,
            after_cr: self.after_cr,
        }
    }
}
