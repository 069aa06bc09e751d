//! An upload's messages as the pipeline sees them: the transport layer turns each gRPC message
//! into an event, or into the reason it could not.
//!
//! An upload is one metadata message, then any number of chunks, then one finish message,
//! after which the stream must end. The order is checked by the pipeline, not here: these types
//! only carry the messages, so that the pipeline can be driven without gRPC (the fuzz target
//! `import_model` does).

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::domain::{ArgumentError, NewImport};
use crate::import::ImportError;

/// One message of an upload, as the transport layer decoded it.
#[derive(Debug)]
pub enum UploadEvent {
    /// The first message: the import to create, its file name, policy and id.
    Metadata(NewImport),
    /// The next bytes of the file, cut wherever the client cut them.
    Chunk(Bytes),
    /// The file is complete: what the client says it was.
    Finish(FinishCheck),
}

impl UploadEvent {
    /// The message's name in the proto, for messages that say which came out of order.
    pub(super) fn name(&self) -> &'static str {
        match self {
            UploadEvent::Metadata(_) => "metadata",
            UploadEvent::Chunk(_) => "chunk",
            UploadEvent::Finish(_) => "finish",
        }
    }
}

/// What the client says the whole file was, checked when it finishes.
///
/// Each check is optional: one the client leaves out is not made. A mismatch ends the import
/// in ERROR_UNKNOWN with nothing imported, before the last bytes are read.
#[derive(Debug, Clone, Default)]
pub struct FinishCheck {
    /// The file's size in bytes, against every byte received.
    pub size_bytes: Option<u64>,
    /// The file's SHA-256, against the SHA-256 of every byte received (its byte order mark
    /// included).
    pub sha256: Option<[u8; 32]>,
}

/// A message the transport could not turn into an event.
#[derive(Debug)]
pub enum StreamError {
    /// The message was malformed: a bad field, no payload, or a message larger than the
    /// server decodes (tonic's limit, reported as a bad `chunk`).
    Invalid(ArgumentError),
    /// The stream broke: the client went away, or the network failed. The detail is
    /// tonic's message.
    Transport(String),
    /// The first message did not arrive whole in time (`--request-message-timeout`, checked by
    /// `grpc::pending` before the upload had its metadata): DEADLINE_EXCEEDED.
    Stalled(String),
}

/// Reads the first message, which must be the metadata. Before it, there is no import to
/// end: a bad start is only an answer to the client. A stream that ends or starts with another
/// message is INVALID_ARGUMENT; one that breaks is `StreamBroke`.
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
        Some(Err(StreamError::Transport(e))) => Err(ImportError::StreamBroke(e)),
        Some(Err(StreamError::Stalled(e))) => Err(ImportError::RequestStalled(e)),
        None => Err(
            ArgumentError::new("metadata", "the upload ended before its metadata message").into(),
        ),
    }
}
