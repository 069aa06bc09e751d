//! Resumable uploads' series.
//!
//! | Series                                   | Type    | What it tells                          |
//! |------------------------------------------|---------|----------------------------------------|
//! | `bulk_import_uploads_waiting`            | gauge   | imports waiting for a resume now       |
//! | `bulk_import_uploads_paused_total`       | counter | resumable uploads that stopped to wait |
//! | `bulk_import_resumes_total{outcome}`     | counter | resumes asked, by how they were met    |
//!
//! `outcome` is `resumed`, or why a resume was refused: `wrong_offset`, `changed_metadata`,
//! `running` (on another stream), `ended`, `not_found`, `not_resumable`. The gauge is counted
//! by each replica's upkeep over the whole database (so take the `max`, not the `sum`); a
//! waiting import holds no memory anywhere, only its row.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label of `bulk_import_resumes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The series, registered once per registry.
#[derive(Clone, Debug)]
pub(super) struct ResumeSeries {
    waiting: Gauge,
    paused: Counter,
    resumes: Family<OutcomeLabel, Counter>,
}

impl ResumeSeries {
    /// Registers the series under `registry` (the `bulk_import` prefix).
    pub(super) fn register(registry: &mut Registry) -> Self {
        let series = Self {
            waiting: Gauge::default(),
            paused: Counter::default(),
            resumes: Family::default(),
        };
        registry.register(
            "uploads_waiting",
            "Imports of resumable uploads waiting for their client to resume them, as this \
             replica's last upkeep counted them in the database",
            series.waiting.clone(),
        );
        registry.register(
            "uploads_paused",
            "Resumable uploads whose stream broke (or whose server stopped) before their finish \
             message, left waiting for their client",
            series.paused.clone(),
        );
        registry.register(
            "resumes",
            "Resumes asked, by outcome: resumed, or refused (wrong_offset, changed_metadata, \
             running, ended, not_found, not_resumable)",
            series.resumes.clone(),
        );
        series
    }

    pub(super) fn waiting(&self, imports: u64) {
        self.waiting.set(imports as i64);
    }

    pub(super) fn paused(&self) {
        self.paused.inc();
    }

    pub(super) fn resume(&self, outcome: &'static str) {
        self.resumes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
