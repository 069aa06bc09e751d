//! What a resumable upload adds to the pipeline: a resumed upload's reader, from the state its
//! last stored batch left, and the state each batch is stored with.

use super::writer::CommittedAt;
use super::{ImportConfig, Upload};
use crate::import::checkpoint::Checkpoint;
use crate::import::ending::Cause;
use crate::import::reader::FileReader;
use crate::store::Claimed;

/// The reader of an upload: a resume reads on from where the upload stopped; a first upload
/// (or a resume of one that stored no batch) from byte 0. `None` for a stored state that
/// cannot be read back.
pub(super) fn reader(config: &ImportConfig, resumed: Option<&Claimed>) -> Option<FileReader> {
    let limits = config.record_limits;
    match resumed.and_then(|c| c.state.as_deref()) {
        None => Some(FileReader::new(config.max_upload_bytes, limits)),
        Some(state) => Checkpoint::decode(state)
            .and_then(|c| FileReader::resume(config.max_upload_bytes, limits, &c)),
    }
}

impl Upload<'_> {
    /// Where the file stands once the batch being sent is stored: the end of its last row
    /// and, for a resumable upload, the reader's state there. A resumable upload whose reader
    /// had no state at a batch's end (it cannot happen: every batch has rows, so the header was
    /// read) stops rather than store a place that disagrees with its rows.
    pub(super) fn committed(&self) -> Result<CommittedAt, Cause> {
        if !self.resumable {
            let (bytes, rows) = self.reader.committed().unwrap_or_default();
            return Ok(CommittedAt {
                bytes,
                rows,
                state: None,
            });
        }
        match self.reader.checkpoint() {
            Some(checkpoint) => Ok(CommittedAt {
                bytes: checkpoint.offset,
                rows: checkpoint.rows,
                state: Some(checkpoint.encode()),
            }),
            None => Err(Cause::Panicked(
                "a resumable upload's batch ended where the reader had no state".into(),
            )),
        }
    }
}
