//! The console's HTTP/1.1 server: hyper's, with the bounds a browser-facing port needs and
//! axum's `serve` does not set.
//!
//! - a request's headers must arrive within [`HEADER_TIMEOUT`]: a client that trickles them
//!   (slowloris) is closed, rather than holding its connection for ever; a body, within
//!   `guard::BODY_TIMEOUT` (but the upload's, which the pipeline's idle timeout bounds); a
//!   client that stops reading its answers is cut after [`WRITE_TIMEOUT`];
//! - at most [`MAX_CONNECTIONS`] connections at once: past it, new ones wait in the kernel's
//!   queue until one closes, so that a flood costs bounded memory and never reaches the gRPC
//!   port's own limits;
//! - on shutdown, open connections finish the request they serve (hyper's graceful shutdown),
//!   which `app` bounds.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

use crate::tls::Tls;

/// How long a request's headers may take to arrive whole.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write may wait for the client to read: past it, the connection is cut. Live
/// counters write at least every 15 s, so a browser that follows an import reads well within.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once. A browser opens about six; a page that follows a running
/// import holds one more.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `router` on `listener` until `shutdown` resolves, then lets the open connections
/// finish their requests. With `tls`, over TLS with the gRPC port's certificates (reloaded with
/// them, and with its client CA when it asks for client certificates), speaking HTTP/1.1.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    tls: Option<Arc<Tls>>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // a pause, then the next one.
                    tracing::debug!(%error, "the console could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let one = One {
            router: router.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        match &tls {
            None => {
                tokio::spawn(async move {
                    one.serve(stream).await;
                    drop(slot);
                });
            }
            Some(tls) => {
                let mut config = (*tls.current()).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                tokio::spawn(async move {
                    // The handshake within the header timeout, as the headers would be.
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => one.serve(stream).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "a console TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "a console TLS handshake timed out"),
                    }
                    drop(slot);
                });
            }
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// What serving one connection needs.
struct One {
    /// The console's routes.
    router: Router,
    /// hyper's settings: the header timeout.
    builder: http1::Builder,
    /// Graceful shutdown's hold on the connection.
    watcher: Watcher,
    /// Who it is, for the audit log (`ConnectInfo`).
    peer: SocketAddr,
}

impl One {
    /// Serves the connection `stream` until it closes.
    async fn serve<IO>(self, stream: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (router, peer) = (self.router, self.peer);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            let mut router = router.clone();
            async move { router.call(request).await }
        });
        // A client that stops reading its answers is cut once a write has waited this long.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let io = TokioIo::new(Box::pin(stream));
        let connection = self
            .watcher
            .watch(self.builder.serve_connection(io, service));
        if let Err(error) = connection.await {
            tracing::debug!(%error, %peer, "a console connection ended with an error");
        }
    }
}
