//! A cap on the long-lived streams that need no token: health watches
//! (`grpc.health.v1.Health/Watch`, which a probe may hold open) and reflection
//! (`ServerReflectionInfo`, grpcurl's `list` and `describe`).
//!
//! Every other long-lived stream is a token holder's and has its own cap (`--max-watchers`,
//! `--max-concurrent-uploads`), checked once its token is. These two are anyone's: without a
//! cap, thousands of them on a few connections grew the server by a hundred megabytes in
//! seconds. Past `--max-health-watchers` open at once, a new one is answered at once with
//! RESOURCE_EXHAUSTED (through the one error mapping, with its `ErrorInfo`); health watches
//! and reflection streams are counted apart, each up to the limit, so that one kind cannot
//! keep the other out; a place is held
//! until the stream's response ends, however it ends (the client goes away, the server stops).
//!
//! A tower layer in front of every service, so that it sees the request before the service
//! allocates anything for it, and so that health and reflection, which are not this crate's
//! code, need no change.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::import::ImportError;

/// The health watch, counted on its own.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
/// The reflection streams, counted together.
const REFLECTION: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The layer: a count of health watches and one of reflection streams, each with the limit.
/// Two counts, so that reflection streams held open (they need no token either) cannot take
/// the places of the health watches that gRPC clients' health checking relies on.
#[derive(Clone)]
pub struct StreamsWithoutToken {
    health: Arc<Semaphore>,
    reflection: Arc<Semaphore>,
    max: usize,
}

impl StreamsWithoutToken {
    /// At most `max` (at least 1) health watches, and as many reflection streams, at once.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            health: Arc::new(Semaphore::new(max)),
            reflection: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<S> Layer<S> for StreamsWithoutToken {
    type Service = Counting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counting {
            inner,
            limit: self.clone(),
        }
    }
}

/// A service whose counted streams hold a place while they are open.
#[derive(Clone)]
pub struct Counting<S> {
    inner: S,
    limit: StreamsWithoutToken,
}

impl<S, B> Service<http::Request<B>> for Counting<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
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
        let (places, what, instead) = if path == HEALTH_WATCH {
            (
                &self.limit.health,
                "health watches",
                "use a health Check instead of Watch, or retry later",
            )
        } else if REFLECTION.contains(&path) {
            (&self.limit.reflection, "reflection streams", "retry later")
        } else {
            return Box::pin(self.inner.call(request));
        };
        let place = match places.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                let refused = Status::from(ImportError::LimitReached(format!(
                    "this server already has {} {what} open, its limit \
                     (--max-health-watchers, for each of health watches and reflection); \
                     {instead}",
                    self.limit.max
                )));
                return Box::pin(std::future::ready(Ok(refused.into_http())));
            }
        };
        // The clone that was made ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| {
                Body::new(Holding {
                    body,
                    _place: place,
                })
            }))
        })
    }
}

/// A response body that holds its stream's place until it is dropped.
struct Holding {
    body: Body,
    _place: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
