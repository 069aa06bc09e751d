//! The metrics listener: `/metrics` in the Prometheus (OpenMetrics) text format, `/livez` and
//! `/readyz`, on axum (tonic's own router), until the server stops.
//!
//! Plain HTTP, without TLS or tokens, on its own port (`--metrics-listen`, off by default):
//! it tells nothing about accounts or imports beyond counts, and Prometheus and the kubelet
//! reach it without credentials. Keep the port inside the cluster.
//!
//! | Path       | Answer                                                        |
//! |------------|---------------------------------------------------------------|
//! | `/metrics` | 200, the metrics in the OpenMetrics text format               |
//! | `/livez`   | 200 `ok` while the process runs: nothing else is checked      |
//! | `/readyz`  | 200 `ready` or 503 `not ready`, as the gRPC readiness service |
//!
//! `/livez` checks nothing on purpose: a database outage makes the pod unready, not dead,
//! because a restart would not bring the database back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;

use super::Metrics;

impl Metrics {
    /// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `stop` resolves.
    ///
    /// `app` spawns it with the listener `bind` made at start, and resolves `stop` last in
    /// shutdown, so that `/readyz` keeps answering 503 while uploads finish. Then requests
    /// in flight are finished (axum's graceful shutdown); `app` waits for that at most its
    /// drain timeout. An error is an I/O error of the listener, which `app` logs; gRPC goes
    /// on without metrics.
    pub async fn serve(
        self,
        listener: TcpListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::http::{StatusCode, header};
        use axum::routing::get;
        let metrics = self.clone();
        let ready = self.clone();
        let router = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let body = metrics.render();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                    }
                }),
            )
            .route("/livez", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let ok = ready.inner.ready.load(Ordering::Relaxed);
                    async move {
                        match ok {
                            true => (StatusCode::OK, "ready\n"),
                            false => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                        }
                    }
                }),
            );
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
    }
}

/// Binds the metrics listener (port 0 picks a free one).
///
/// Separate from [`Metrics::serve`] so that `Application::bind` can fail on a taken port at
/// start, with the gRPC port, and tests learn the address before serving.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
