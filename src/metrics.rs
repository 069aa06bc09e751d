//! Prometheus metrics: what the service did (imports by status, rows by outcome, bytes,
//! upload durations), what it does now (uploads and watchers), the database pools, and the
//! process, in the Prometheus text format at `/metrics` of `--metrics-listen`.
//!
//! `prometheus-client` rather than a global recorder: each server owns its registry, so that
//! several servers in one process (the tests) each count only their own work. The process
//! metrics come from kubert's collector, built on the same crate.
//!
//! The listener also answers `/livez` (the process runs) and `/readyz` (readiness, as the
//! gRPC health service reports it): Kubernetes' gRPC probes cannot speak TLS, so a server
//! behind TLS is probed here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::domain::{Counters, ImportStatus};

/// Upload durations: 0.1 s to about 27 minutes, doubling.
const DURATION_BUCKETS: (f64, f64, u16) = (0.1, 2.0, 15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    /// The status's name without its prefix, lower case: `completed_partial`.
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Connections of a database pool, as the store reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
}

/// Reads the database pools at scrape time: the store comes after the registry.
type PoolSource = Arc<OnceLock<Box<dyn Fn() -> PoolStats + Send + Sync>>>;

/// The service's metrics: cheap to clone, shared by the pipeline, the handlers and the
/// listener.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    imports: Family<StatusLabel, Counter>,
    rows: Family<OutcomeLabel, Counter>,
    received_bytes: Counter,
    upload_duration: Histogram,
    active_uploads: Gauge,
    active_watchers: Gauge,
    pools: PoolSource,
    /// Readiness as the health service reports it, for `/readyz`.
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let imports = Family::<StatusLabel, Counter>::default();
        let rows = Family::<OutcomeLabel, Counter>::default();
        let received_bytes = Counter::default();
        let (start, factor, count) = DURATION_BUCKETS;
        let upload_duration = Histogram::new(exponential_buckets(start, factor, count));
        let active_uploads = Gauge::default();
        let active_watchers = Gauge::default();
        let pools: PoolSource = Arc::default();
        {
            let ours = registry.sub_registry_with_prefix("bulk_import");
            ours.register(
                "imports",
                "Imports ended, by terminal status",
                imports.clone(),
            );
            ours.register(
                "rows",
                "Rows of completed imports, by outcome: imported, failed, skipped, updated \
                 (dry runs are not counted)",
                rows.clone(),
            );
            ours.register_with_unit(
                "received",
                "Bytes of files received",
                Unit::Bytes,
                received_bytes.clone(),
            );
            ours.register_with_unit(
                "upload_duration",
                "Time from an upload's metadata to its import's end",
                Unit::Seconds,
                upload_duration.clone(),
            );
            ours.register(
                "active_uploads",
                "Uploads running now",
                active_uploads.clone(),
            );
            ours.register(
                "active_watchers",
                "WatchImport streams open now",
                active_watchers.clone(),
            );
            ours.register_collector(Box::new(Pools(pools.clone())));
        }
        if let Err(error) =
            kubert_prometheus_process::register(registry.sub_registry_with_prefix("process"))
        {
            tracing::warn!(%error, "no process metrics");
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                imports,
                rows,
                received_bytes,
                upload_duration,
                active_uploads,
                active_watchers,
                pools,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// The database pools to report, once the store is open.
    pub fn watch_pools(&self, read: impl Fn() -> PoolStats + Send + Sync + 'static) {
        let _ = self.inner.pools.set(Box::new(read));
    }

    /// An import ended with `status` after `duration`; its rows count when it completed, and
    /// was not a dry run.
    pub fn import_ended(
        &self,
        status: ImportStatus,
        counters: &Counters,
        validate_only: bool,
        duration: Duration,
    ) {
        let status_name = status.as_str();
        self.inner
            .imports
            .get_or_create(&StatusLabel {
                status: status_label(status_name),
            })
            .inc();
        self.inner.upload_duration.observe(duration.as_secs_f64());
        if status.is_completed() && !validate_only {
            for (outcome, n) in [
                ("imported", counters.rows_imported),
                ("failed", counters.rows_failed),
                ("skipped", counters.rows_skipped),
                ("updated", counters.rows_updated),
            ] {
                self.inner
                    .rows
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(n);
            }
        }
    }

    pub fn received(&self, bytes: u64) {
        self.inner.received_bytes.inc_by(bytes);
    }

    /// Counts an upload while the guard lives.
    pub fn upload_started(&self) -> ActiveGuard {
        ActiveGuard::new(self.inner.active_uploads.clone())
    }

    /// Counts a watcher while the guard lives.
    pub fn watcher_started(&self) -> ActiveGuard {
        ActiveGuard::new(self.inner.active_watchers.clone())
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }

    /// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `stop` resolves.
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
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// `COMPLETED_PARTIAL` → `completed_partial`, for the stable statuses; the names are
/// static, so that a label costs no allocation.
fn status_label(stored: &'static str) -> &'static str {
    match stored {
        "PROCESSING" => "processing",
        "COMPLETED_SUCCESS" => "completed_success",
        "COMPLETED_PARTIAL" => "completed_partial",
        "COMPLETED_NOTHING_TO_IMPORT" => "completed_nothing_to_import",
        "ERROR_PARSING" => "error_parsing",
        "ERROR_UNKNOWN" => "error_unknown",
        "CANCELLED" => "cancelled",
        _ => "unknown",
    }
}

/// Decrements its gauge when dropped: an upload or a watcher that ends in any way.
pub struct ActiveGuard(Gauge);

impl ActiveGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `bulk_import_db_connections{state}`: read from the store at each scrape.
struct Pools(PoolSource);

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

impl Collector for Pools {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(read) = self.0.get() else {
            return Ok(());
        };
        let stats = read();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "db_connections",
            "Database connections of the store's pools, in use and idle",
            None,
            gauge.metric_type(),
        )?;
        for (state, n) in [("in_use", stats.in_use), ("idle", stats.idle)] {
            let label = StateLabel { state };
            ConstGauge::new(i64::from(n)).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_moves_its_series() {
        let metrics = Metrics::new();
        let counters = Counters {
            rows_imported: 7,
            rows_failed: 2,
            rows_updated: 1,
            ..Counters::default()
        };
        metrics.import_ended(
            ImportStatus::CompletedPartial,
            &counters,
            false,
            Duration::from_millis(300),
        );
        metrics.import_ended(ImportStatus::Cancelled, &counters, false, Duration::ZERO);
        metrics.received(1234);
        let active = metrics.upload_started();
        let text = metrics.render();
        for line in [
            "bulk_import_imports_total{status=\"completed_partial\"} 1",
            "bulk_import_imports_total{status=\"cancelled\"} 1",
            "bulk_import_rows_total{outcome=\"imported\"} 7",
            "bulk_import_rows_total{outcome=\"failed\"} 2",
            "bulk_import_rows_total{outcome=\"updated\"} 1",
            "bulk_import_received_bytes_total 1234",
            "bulk_import_upload_duration_seconds_count 2",
            "bulk_import_active_uploads 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        drop(active);
        assert!(metrics.render().contains("bulk_import_active_uploads 0"));
        for status in ImportStatus::ALL {
            assert_ne!(status_label(status.as_str()), "unknown");
        }
    }
}
