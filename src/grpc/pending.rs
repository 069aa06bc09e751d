//! Requests whose message has not arrived: at most so many per connection, each for a short
//! time.
//!
//! A unary or server-streaming call is served once its one request message has arrived with
//! the end of the request. gRPC clients send both with the headers, but nothing makes a
//! client do so: HEADERS without END_STREAM open a stream that waits for ever, and each costs
//! the server a few kilobytes (an outside hunt grew it by 600 MB with 128 such streams on
//! each of 512 connections, with no token, since the token is checked only once the message
//! is there). So:
//!
//! - a connection has `--max-pending-requests-per-connection` places of its own for such
//!   requests, which no other connection can take, then takes from `--max-pending-requests`
//!   places that all connections share; with none left, a new request is answered at once
//!   with RESOURCE_EXHAUSTED. Own places, so that one client's pending requests never keep a
//!   light client out; shared ones, so that a client that sends many calls at once on one
//!   connection (whose requests are "pending" for the moment between their HEADERS and DATA
//!   frames, more so on a busy server) is not refused. At most `max_connections ×
//!   per_connection + shared` are held: with the defaults 512 × 4 + 1,024 = 3,072, about
//!   10 KB each with plain headers, up to about 45 KB with headers at their limit (measured);
//! - a request's message must arrive whole within `--request-message-timeout` of its headers;
//!   then the call ends with DEADLINE_EXCEEDED and gives its place back;
//! - a unary call keeps its place until the client has taken its answer (`Answering`): a
//!   client that never reads (its flow-control window at 0) would otherwise leave every answer
//!   buffered in the server, without bound.
//!
//! An upload is pending until its first message (the metadata) has arrived; reflection (a
//! bidirectional stream, capped with the health watches in `grpc::streams`) is not counted.
//! A tower layer before every service, as `grpc::streams`: it sees the request before any
//! service allocates for it, and health and reflection, not this crate's code, need no change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::import::ImportError;

/// The paths whose requests are streams for as long as the client likes, which this layer lets
/// by (reflection is capped with the health watches in `grpc::streams`).
const STREAMED: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The upload: a stream too, but its first message (the metadata, which names the account
/// and is checked with the token) is pending like any request's until it has arrived whole.
/// Past it, the upload's own limits and idle timeout hold (`--max-concurrent-uploads`,
/// `--upload-idle-timeout`). Without this, streams that never sent their metadata were
/// counted nowhere and lived a minute each: 64,000 of them took 770 MB.
const UPLOAD: &str = "/bulkimport.v1.ImportService/UploadImport";

/// The calls whose answer is a stream for as long as it lasts (or, for the upload, comes at
/// its end): their place goes once their request message arrived, since each is bounded by
/// its own limit (`--max-watchers`, `--max-health-watchers`, `--max-concurrent-uploads`) and
/// a report is fed through a small channel. Every other call holds its place until the
/// client has taken its answer.
const LONG_ANSWERS: [&str; 4] = [
    "/bulkimport.v1.ImportService/WatchImport",
    "/bulkimport.v1.ImportService/GetImportErrorReport",
    "/grpc.health.v1.Health/Watch",
    UPLOAD,
];

/// The layer: the pending requests of each connection and of the shared pool, with the limits.
#[derive(Clone)]
pub struct PendingRequests {
    counts: Arc<Mutex<Counts>>,
    limits: Limits,
}

/// How many pending requests a connection and the server hold.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Each connection's own places.
    per_connection: usize,
    /// The places that connections past their own share.
    shared: usize,
    /// How long a request's message may take.
    timeout: Duration,
}

/// The places taken.
#[derive(Default)]
struct Counts {
    /// Per connection, by the client's address (one per connection): its own places and the
    /// shared ones it holds. An entry goes once both are back to 0.
    connections: HashMap<SocketAddr, Taken>,
    /// Shared places taken, by all connections.
    shared: usize,
}

/// A connection's places.
#[derive(Default)]
struct Taken {
    own: usize,
    shared: usize,
}

impl PendingRequests {
    /// Each connection has `per_connection` places of its own (at least 1), which no other
    /// connection can take, then `shared` places that all share; each request holds one for
    /// at most `timeout`.
    pub fn new(per_connection: usize, shared: usize, timeout: Duration) -> Self {
        Self {
            counts: Arc::default(),
            limits: Limits {
                per_connection: per_connection.max(1),
                shared,
                timeout,
            },
        }
    }

    /// A place for a request of `peer`'s connection: one of its own, else a shared one, else
    /// `None`.
    fn take(&self, peer: Option<SocketAddr>) -> Option<Place> {
        let Some(peer) = peer else {
            // No address (not served from a socket): only the timeout applies.
            return Some(Place { held: None });
        };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let room = counts.shared < self.limits.shared;
        let taken = counts.connections.entry(peer).or_default();
        let shared = if taken.own < self.limits.per_connection {
            taken.own += 1;
            false
        } else if room {
            taken.shared += 1;
            counts.shared += 1;
            true
        } else {
            if taken.own + taken.shared == 0 {
                counts.connections.remove(&peer);
            }
            return None;
        };
        Some(Place {
            held: Some(Held {
                peer,
                shared,
                counts: self.counts.clone(),
            }),
        })
    }
}

/// A pending request's place, given back when dropped.
struct Place {
    held: Option<Held>,
}

/// Whose place it is.
struct Held {
    peer: SocketAddr,
    shared: bool,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let mut counts = held.counts.lock().unwrap_or_else(|e| e.into_inner());
        let counts = &mut *counts;
        if held.shared {
            counts.shared -= 1;
        }
        if let Some(taken) = counts.connections.get_mut(&held.peer) {
            if held.shared {
                taken.shared -= 1;
            } else {
                taken.own -= 1;
            }
            if taken.own + taken.shared == 0 {
                counts.connections.remove(&held.peer);
            }
        }
    }
}

impl<S> Layer<S> for PendingRequests {
    type Service = Pending<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pending {
            inner,
            limit: self.clone(),
        }
    }
}

/// A service whose requests hold a place on their connection until their message arrived.
#[derive(Clone)]
pub struct Pending<S> {
    inner: S,
    limit: PendingRequests,
}

impl<S, B> Service<http::Request<B>> for Pending<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if STREAMED.contains(&path) {
            return Box::pin(self.inner.call(request.map(Body::new)));
        }
        // A unary call's place is held until the client has taken its answer too.
        let answered = !LONG_ANSWERS.contains(&path);
        let Some(place) = self.limit.take(peer(&request)) else {
            let Limits {
                per_connection,
                shared,
                ..
            } = self.limit.limits;
            let refused = Status::from(ImportError::LimitReached(format!(
                "too many pending calls (whose message has not arrived, or whose answer was \
                 not read): this connection has its {per_connection} \
                 (--max-pending-requests-per-connection) and the server's {shared} shared ones \
                 are taken (--max-pending-requests); send each request's message with its \
                 headers and read the answers, or retry shortly"
            )));
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        let place = Arc::new(place);
        let held = answered.then(|| place.clone());
        let timeout = self.limit.limits.timeout;
        let first = (request.uri().path() == UPLOAD).then(FirstMessage::default);
        let request = request.map(|body| {
            Body::new(Arriving {
                body: Body::new(body),
                place: Some(place),
                due: Box::pin(tokio::time::sleep(timeout)),
                timeout,
                first,
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match held {
                Some(place) => response.map(|body| {
                    Body::new(Answering {
                        body,
                        place: Some(place),
                    })
                }),
                None => response,
            })
        })
    }
}

/// A unary call's answer, holding the call's place until the client has taken all of it.
///
/// A client that opens its flow-control window to nothing and never reads leaves every
/// answer buffered in the server: 64,000 such calls took 650 MB to 1.6 GB, for ever. Held to
/// its place, an answer nobody reads keeps the others out instead, and the memory stays
/// within the places' bound.
struct Answering {
    body: Body,
    place: Option<Arc<Place>>,
}

impl http_body::Body for Answering {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.place = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The client's address, which names its connection while it is open.
fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// A request body that holds its place until it ends, and ends with DEADLINE_EXCEEDED when
/// it is not whole by its due time.
struct Arriving {
    body: Body,
    /// Let go once the request ended (or failed, or was dropped); a unary call's answer
    /// holds the place further (`Answering`).
    place: Option<Arc<Place>>,
    due: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    /// For an upload: how far its first message has come. The place goes, and the deadline
    /// with it, once that message is whole.
    first: Option<FirstMessage>,
}

/// How much of a stream's first gRPC message has arrived: its 5-byte prefix (a compression
/// flag and the length, big-endian), then that many bytes.
#[derive(Debug, Clone, Copy, Default)]
struct FirstMessage {
    prefix: [u8; 5],
    /// Bytes seen so far, prefix included.
    seen: usize,
}

impl FirstMessage {
    /// Counts `data`; whether the first message is now whole.
    fn arrived(&mut self, mut data: &[u8]) -> bool {
        while self.seen < 5
            && let Some((&byte, rest)) = data.split_first()
        {
            self.prefix[self.seen] = byte;
            self.seen += 1;
            data = rest;
        }
        if self.seen < 5 {
            return false;
        }
        self.seen = self.seen.saturating_add(data.len());
        let length = u32::from_be_bytes([
            self.prefix[1],
            self.prefix[2],
            self.prefix[3],
            self.prefix[4],
        ]);
        self.seen >= 5 + length as usize
    }
}

impl http_body::Body for Arriving {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let whole = match (&mut this.first, frame.data_ref()) {
                    (Some(first), Some(data)) => first.arrived(data),
                    _ => false,
                };
                if whole || this.body.is_end_stream() {
                    this.place = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(ended) => {
                this.place = None;
                Poll::Ready(ended)
            }
            // Past its due time once: the error is given, and nothing more is awaited.
            Poll::Pending if this.place.is_none() => Poll::Pending,
            Poll::Pending => match this.due.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.place = None;
                    let stalled = ImportError::RequestStalled(format!(
                        "the request's message did not arrive whole within {:?} of its \
                         headers (--request-message-timeout); send it with them and end the \
                         request, as gRPC clients do",
                        this.timeout
                    ));
                    Poll::Ready(Some(Err(Status::from(stalled))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn a_connection_has_its_own_places_then_shares_the_rest() {
        let pending = PendingRequests::new(2, 3, Duration::from_secs(10));
        let first: Vec<_> = (0..5).map(|_| pending.take(peer(1))).collect();
        assert!(first.iter().all(Option::is_some), "2 own, 3 shared");
        assert!(pending.take(peer(1)).is_none(), "none left for it");
        // Another connection still has its own, though nothing is left to share.
        let second = [pending.take(peer(2)), pending.take(peer(2))];
        assert!(second.iter().all(Option::is_some));
        assert!(pending.take(peer(2)).is_none());
        // A shared place given back is anyone's again.
        drop(first);
        let counts = pending.counts.lock().unwrap();
        assert_eq!(counts.shared, 0);
        assert_eq!(
            counts.connections.len(),
            1,
            "only the second connection holds places"
        );
        drop(counts);
        assert!(pending.take(peer(2)).is_some());
        drop(second);
        let counts = pending.counts.lock().unwrap();
        assert_eq!((counts.shared, counts.connections.len()), (0, 0));
    }

    #[test]
    fn an_upload_s_first_message_is_whole_once_its_length_has_come() {
        // A 3-byte message after its prefix, cut everywhere.
        let message = [0u8, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0];
        for cut in 0..message.len() {
            let mut first = FirstMessage::default();
            let (a, b) = message[..8].split_at(cut.min(8));
            let whole = first.arrived(a) | first.arrived(b);
            assert!(whole, "cut at {cut}");
        }
        let mut first = FirstMessage::default();
        assert!(!first.arrived(&message[..7]));
        assert!(!first.arrived(&[]));
        assert!(first.arrived(&message[7..]));
    }

    #[test]
    fn a_request_without_an_address_only_has_its_timeout() {
        let pending = PendingRequests::new(1, 1, Duration::from_secs(10));
        let places: Vec<_> = (0..10).map(|_| pending.take(None)).collect();
        assert!(places.iter().all(Option::is_some));
    }
}
