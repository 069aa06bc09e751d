//! Prometheus metrics: what the service did (imports by status, rows by outcome, bytes,
//! upload durations), what it does now (uploads and watchers), the database pools, and the
//! process, in the Prometheus text format at `/metrics` of `--metrics-listen`.
//!
//! `prometheus-client` rather than a global recorder: each server owns its registry, so that
//! several servers in one process (the tests) each count only their own work. The process
//! metrics come from kubert's collector, built on the same crate.
//!
//! The listener (`server`) also answers `/livez` (the process runs) and `/readyz` (readiness,
//! as the gRPC health service reports it): Kubernetes' gRPC probes cannot speak TLS, so a
//! server behind TLS is probed here.
//!
//! # The series
//!
//! | Series                                  | Type      | What it counts                  |
//! |-----------------------------------------|-----------|---------------------------------|
//! | `bulk_import_imports_total{status}`     | counter   | imports ended, by status        |
//! | `bulk_import_rows_total{outcome}`       | counter   | rows of completed imports       |
//! | `bulk_import_received_bytes_total`      | counter   | bytes of files received         |
//! | `bulk_import_upload_duration_seconds`   | histogram | an import's start to its ending |
//! | `bulk_import_active_uploads`            | gauge     | uploads running now             |
//! | `bulk_import_active_watchers`           | gauge     | `WatchImport` streams open now  |
//! | `bulk_import_db_connections{state}`     | gauge     | pool connections, by state      |
//! | `bulk_import_events_*`                  | various   | the user feed (`feed`)          |
//! | `bulk_import_uploads_waiting`, `_paused_total`, `bulk_import_resumes_total` | various | resumable uploads (`resume`) |
//! | `process_*`                             | various   | CPU, memory, descriptors        |
//!
//! Each server counts what it did itself: an import counts once, on the server that decided
//! its ending, which for an import whose server died is the replica that reaped it. Sum over
//! replicas for the service. The counters start at zero with each process, as Prometheus'
//! `rate()` expects.
//!
//! Some questions they answer: the share of imports that fail,
//! `sum(rate(bulk_import_imports_total{status=~"error_.*"}[1h])) /
//! sum(rate(bulk_import_imports_total[1h]))`; how close uploads come to their limit,
//! `max_over_time(bulk_import_active_uploads[1h])` against `--max-concurrent-uploads`.

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

use crate::domain::{Counters, ImportStatus};

mod feed;
mod resume;
mod server;

pub use feed::FeedSeries;

pub use server::bind;

/// Upload durations: 0.1 s to about 27 minutes, doubling.
const DURATION_BUCKETS: (f64, f64, u16) = (0.1, 2.0, 15);

/// The label of `bulk_import_imports_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    /// The status's name without its prefix, lower case: `completed_partial`.
    status: &'static str,
}

/// The label of `bulk_import_rows_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    /// `imported`, `failed`, `skipped` or `updated`, as the import's counters name them.
    outcome: &'static str,
}

/// The label of `bulk_import_tls_certificate_expiration_timestamp_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabel {
    /// The subject of the chain's certificate that expires first: the one to renew.
    subject: String,
}

/// The label of `bulk_import_retention_removed_rows_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    /// `row_errors` or `failed_rows`.
    table: &'static str,
}

/// The label of `bulk_import_tls_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    /// `loaded` (served from then on) or `refused` (broken or outside its validity window:
    /// the old certificate stays).
    result: &'static str,
}

/// Connections of a database pool, as the store reports them.
///
/// Each store sums its pools (SQLite has a writer pool and a reader pool).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open and lent out: a query or a transaction runs on each.
    pub in_use: u32,
    /// Connections open and waiting in the pool.
    pub idle: u32,
}

/// Reads the database pools at scrape time: the store comes after the registry.
type PoolSource = Arc<OnceLock<Box<dyn Fn() -> PoolStats + Send + Sync>>>;

/// The service's metrics: cheap to clone, shared by the pipeline, the handlers and the
/// listener.
///
/// The `Importer` creates it (`Importer::metrics`), so every server has its own registry.
/// Updates are atomic operations on shared counters: an upload counts its bytes per chunk
/// without any lock.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The registry and handles to each of its series; the handles share their values with the
/// registry, which renders them.
struct Inner {
    /// Everything `/metrics` shows: the service's series under `bulk_import_`, the process's
    /// under `process_`.
    registry: Registry,
    /// `bulk_import_imports_total{status}`.
    imports: Family<StatusLabel, Counter>,
    /// `bulk_import_rows_total{outcome}`.
    rows: Family<OutcomeLabel, Counter>,
    /// `bulk_import_received_bytes_total`.
    received_bytes: Counter,
    /// `bulk_import_upload_duration_seconds`.
    upload_duration: Histogram,
    /// `bulk_import_active_uploads`.
    active_uploads: Gauge,
    /// `bulk_import_active_watchers`.
    active_watchers: Gauge,
    /// `bulk_import_tls_certificate_expiration_timestamp_seconds{subject}`: one series, of
    /// the served chain; none without TLS (a 0 would read as long expired).
    tls_expiration: Family<SubjectLabel, Gauge>,
    /// `bulk_import_tls_reloads_total{result}`.
    tls_reloads: Family<ResultLabel, Counter>,
    /// `bulk_import_retention_removed_rows_total{table}`.
    retention_rows: Family<TableLabel, Counter>,
    /// `bulk_import_retention_imports_total`.
    retention_imports: Counter,
    /// `bulk_import_database_size_bytes`, after each round of the clean-up.
    database_size: Gauge,
    /// `bulk_import_db_connections`, read at scrape time.
    pools: PoolSource,
    /// The user event feed's series (`feed`).
    feed: FeedSeries,
    /// Resumable uploads' series (`resume`).
    resume: resume::ResumeSeries,
    /// Readiness as the health service reports it, for `/readyz`.
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series registered. The process metrics are left out, with
    /// a warning, if kubert cannot register them.
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
        let tls_expiration = Family::<SubjectLabel, Gauge>::default();
        let retention_rows = Family::<TableLabel, Counter>::default();
        let retention_imports = Counter::default();
        let database_size = Gauge::default();
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        let feed;
        let resume;
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
            ours.register(
                "retention_removed_rows",
                "Rows of finished imports' details removed past their retention, by table: \
                 row_errors, failed_rows",
                retention_rows.clone(),
            );
            ours.register(
                "retention_imports",
                "Imports whose details (row errors, fix-up file) were removed past their retention",
                retention_imports.clone(),
            );
            ours.register_with_unit(
                "database_size",
                "The database's size, measured after each round of the retention's clean-up",
                Unit::Bytes,
                database_size.clone(),
            );
            feed = FeedSeries::register(ours);
            resume = resume::ResumeSeries::register(ours);
        }
        let tls = registry.sub_registry_with_prefix("bulk_import_tls");
        tls.register_with_unit(
            "certificate_expiration_timestamp",
            "When the served certificate chain expires, in Unix seconds (alert well before: \
             the server warns 14 days ahead)",
            Unit::Seconds,
            tls_expiration.clone(),
        );
        tls.register(
            "reloads",
            "Changed certificate files read again, by result: loaded, or refused (broken or \
             outside their validity window; the old ones stay served)",
            tls_reloads.clone(),
        );
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
                tls_expiration,
                tls_reloads,
                retention_rows,
                retention_imports,
                database_size,
                pools,
                feed,
                resume,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// A certificate chain is served from now on; its certificate `subject` expires first,
    /// at `not_after` (Unix seconds). Replaces the series of the chain served before.
    pub fn tls_served(&self, subject: &str, not_after: i64) {
        self.inner.tls_expiration.clear();
        self.inner
            .tls_expiration
            .get_or_create(&SubjectLabel {
                subject: subject.to_owned(),
            })
            .set(not_after);
    }

    /// Changed certificate files were read again: `loaded` (served from now on, see
    /// [`Metrics::tls_served`]) or refused (the old ones stay).
    pub fn tls_reloaded(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "refused" };
        self.inner
            .tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// A step of the retention removed these rows; `done`: the import's details are all gone.
    pub fn retention_removed(&self, row_errors: u64, failed_rows: u64, done: bool) {
        let rows = |table| {
            self.inner
                .retention_rows
                .get_or_create(&TableLabel { table })
        };
        rows("row_errors").inc_by(row_errors);
        rows("failed_rows").inc_by(failed_rows);
        if done {
            self.inner.retention_imports.inc();
        }
    }

    /// The user event feed's series: events written and relayed, the relay's lag.
    pub fn feed(&self) -> &FeedSeries {
        &self.inner.feed
    }

    /// Imports waiting for a resume, as the upkeep just counted them.
    pub fn uploads_waiting(&self, imports: u64) {
        self.inner.resume.waiting(imports);
    }

    /// A resumable upload stopped before its finish message; its import waits.
    pub fn upload_paused(&self) {
        self.inner.resume.paused();
    }

    /// A resume was asked: `resumed`, or why it was refused (see `resume`).
    pub fn resume_asked(&self, outcome: &'static str) {
        self.inner.resume.resume(outcome);
    }

    /// The database's size in bytes, as last measured.
    pub fn database_size(&self, bytes: u64) {
        self.inner.database_size.set(bytes as i64);
    }

    /// The database pools to report, once the store is open.
    ///
    /// `Importer::set_store` calls it; a second call is ignored (the store is set once).
    /// Until then, `bulk_import_db_connections` is absent from `/metrics`.
    pub fn watch_pools(&self, read: impl Fn() -> PoolStats + Send + Sync + 'static) {
        let _ = self.inner.pools.set(Box::new(read));
    }

    /// An import ended with `status` after `duration`; its rows count when it completed, and
    /// was not a dry run.
    ///
    /// Called once per import, where its ending is decided for good: `ending::settle`, or
    /// `ending::orphans` for an import whose server is gone (with the time since the import
    /// was created).
    /// A failed import adds no rows, since nothing of it stays; a dry run's rows would count
    /// users that were never written.
    pub fn import_ended(
        &self,
        status: ImportStatus,
        counters: &Counters,
        validate_only: bool,
        duration: Duration,
    ) {
        self.inner
            .imports
            .get_or_create(&StatusLabel {
                status: status_label(status),
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

    /// Bytes of a chunk as the pipeline receives it, before any check: a file that is later
    /// refused or fails still counts, since the server did receive it.
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

    /// What `/readyz` answers: `app`'s readiness sets it with the gRPC health status, so that
    /// the two probes agree. Relaxed ordering is enough: it is a flag read on its own.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    ///
    /// Rendered on each scrape; reading the pools happens here too.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}

/// `CompletedPartial` → `completed_partial`; the names are static, so that a label costs no
/// allocation.
fn status_label(status: ImportStatus) -> &'static str {
    match status {
        ImportStatus::Processing => "processing",
        ImportStatus::CompletedSuccess => "completed_success",
        ImportStatus::CompletedPartial => "completed_partial",
        ImportStatus::CompletedNothingToImport => "completed_nothing_to_import",
        ImportStatus::ErrorParsing => "error_parsing",
        ImportStatus::ErrorUnknown => "error_unknown",
        ImportStatus::Cancelled => "cancelled",
    }
}

/// Decrements its gauge when dropped: an upload or a watcher that ends in any way.
///
/// A guard rather than `inc`/`dec` calls, so that no early return, error or panic in the
/// upload's task can leave the gauge counting an upload that is gone.
pub struct ActiveGuard(Gauge);

impl ActiveGuard {
    /// Counts one more on `gauge`, until the guard is dropped.
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
///
/// A collector rather than a gauge kept up to date, because the pool knows its own numbers
/// at any moment: nothing needs to run between scrapes.
struct Pools(PoolSource);

/// By hand: `Collector` requires `Debug`, and the pool reader, a closure, has none.
impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools")
    }
}

/// The label of `bulk_import_db_connections`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    /// `in_use` or `idle`.
    state: &'static str,
}

impl Collector for Pools {
    /// Writes the two pool gauges, or nothing before the store is open.
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
            assert_eq!(status_label(status), status.as_str().to_lowercase());
        }
    }
}
