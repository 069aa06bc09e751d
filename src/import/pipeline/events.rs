//! An upload's messages as the pipeline sees them: the transport layer turns each gRPC message
//! into an event, or into the reason it could not.

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::domain::{ArgumentError, NewImport};
use crate::import::ImportError;

/// One message of an upload, as the transport layer decoded it.
#[derive(Debug)]
pub enum UploadEvent {
    Metadata(NewImport),
    Chunk(Bytes),
    Finish(FinishCheck),
}

impl UploadEvent {
    pub(super) fn name(&self) -> &'static str {
        match self {
            UploadEvent::Metadata(_) => "metadata",
            UploadEvent::Chunk(_) => "chunk",
            UploadEvent::Finish(_) => "finish",
        }
    }
}

/// What the client says the whole file was, checked when it finishes.
#[derive(Debug, Clone, Default)]
pub struct FinishCheck {
    pub size_bytes: Option<u64>,
    pub sha256: Option<[u8; 32]>,
}

/// A message the transport could not turn into an event.
#[derive(Debug)]
pub enum StreamError {
    /// The message was malformed (a bad field).
    Invalid(ArgumentError),
    /// The stream broke.
    Transport(String),
}

/// Reads the first message, which must be the metadata. Before it, there is no import to
/// end: a bad start is only an answer to the client.
pub(super) async fn metadata<S>(events: &mut S) -> Result<NewImport, ImportError>
where
    S: Stream<Item = Result<UploadEvent, StreamError>> + Unpin,
{
    match events.next().await {
        Some(Ok(UploadEvent::Metadata(new))) => Ok(new),
        Some(Ok(other)) => Err(ArgumentError::new(
            "metadata",
            format!(
                "the first message of an upload must be metadata; got {}",
                other.name()
            ),
        )
        .into()),
        Some(Err(StreamError::Invalid(e))) => Err(e.into()),
        Some(Err(StreamError::Transport(e))) => Err(ImportError::Cancelled(e)),
        None => Err(
            ArgumentError::new("metadata", "the upload ended before its metadata message").into(),
        ),
    }
}
