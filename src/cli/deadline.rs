//! A bound on how long a call waits for the server's answer (`--timeout`).
//!
//! A server that accepts the connection and then never answers (a hung process, a proxy that
//! holds the connection, the wrong port) would keep a command waiting for ever. Each call but
//! `UploadImport` gets until `--timeout` for the server to answer, that is for the response's
//! headers: a unary answer arrives with them, and a stream (`WatchImport`, the report) starts
//! with them and then runs as long as it needs (a dead peer is found by HTTP/2 keepalive
//! pings). `UploadImport` answers only when the whole file is in and the import has ended, so
//! it is bounded by the server's idle rule and the keepalive instead.
//!
//! No `grpc-timeout` header is sent: the server would end a `WatchImport` stream at the
//! deadline, which is not what the flag means.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;

use crate::config::duration::shown;

/// The channel, with `--timeout` on every call but the upload.
///
/// Cheap to clone, as the channel is.
#[derive(Clone)]
pub struct Deadline {
    /// Where calls go.
    inner: Channel,
    /// How long the server has to answer a call (`--timeout`).
    answer_within: Duration,
}

impl Deadline {
    /// Calls over `inner`, each answered within `answer_within` or ended DEADLINE_EXCEEDED.
    pub fn new(inner: Channel, answer_within: Duration) -> Self {
        Self {
            inner,
            answer_within,
        }
    }
}

/// What a call's answer is, once it comes.
type Answer = Result<http::Response<Body>, Box<dyn std::error::Error + Send + Sync>>;

impl Service<http::Request<Body>> for Deadline {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    /// The call, bounded unless it is the upload. Past the bound the error is a
    /// `tonic::Status`, which tonic hands to the command as it is.
    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let unbounded = request.uri().path().ends_with("/UploadImport");
        let within = self.answer_within;
        let call = self.inner.call(request);
        Box::pin(async move {
            if unbounded {
                return call.await.map_err(Into::into);
            }
            match tokio::time::timeout(within, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => {
                    let status = tonic::Status::deadline_exceeded(format!(
                        "the server did not answer within {} (--timeout); it may be \
                         overloaded, or this is not a bulk-import server",
                        shown(within)
                    ));
                    // Boxed as itself (not `.into()`, which would box the box), so that tonic
                    // finds the status and hands it over unchanged.
                    Err(Box::new(status) as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}
