//! The user event feed's series: events written, events relayed to NATS, and how far the
//! relay is behind.
//!
//! | Series                                          | Type    | What it tells                   |
//! |-------------------------------------------------|---------|---------------------------------|
//! | `bulk_import_events_written_total`              | counter | events this server committed    |
//! | `bulk_import_events_relayed_total{result}`      | counter | publishes JetStream acknowledged|
//! | `bulk_import_events_relay_lag_seconds`          | gauge   | age of the oldest event waiting |
//! | `bulk_import_events_relay_leader`               | gauge   | 1 on the replica that relays    |
//!
//! `result` is `stored`, `duplicate` when JetStream had the event already (by its
//! `Nats-Msg-Id`: a publish repeated after a lost acknowledgement or a change of leader), or
//! `refused` for an event NATS will never take (larger than its `max_payload`), passed over.
//! The lag is 0 while the relay has published everything it has read, and on a replica that
//! does not relay; alert on `max(bulk_import_events_relay_lag_seconds) > 60`, and on
//! `sum(bulk_import_events_relay_leader) != 1` for long when a relay is configured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Reads the store's count of events written, at scrape time.
type WrittenSource = OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>;

/// The label of `bulk_import_events_relayed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    /// `stored` or `duplicate`.
    result: &'static str,
}

/// The feed's series, shared by the store's reader, the relay and the registry.
#[derive(Clone)]
pub struct FeedSeries {
    relayed: Family<ResultLabel, Counter>,
    state: Arc<State>,
}

/// What the collector reads at each scrape.
#[derive(Default)]
struct State {
    /// The store's count, once it is open.
    written: WrittenSource,
    /// The time of the oldest event the relay has read and not yet seen acknowledged.
    waiting_since: Mutex<Option<SystemTime>>,
    /// This replica holds the relay's lease.
    leader: AtomicBool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedState")
    }
}

impl FeedSeries {
    /// Registers the series under `registry` (the `bulk_import` prefix).
    pub(super) fn register(registry: &mut Registry) -> Self {
        let series = Self {
            relayed: Family::default(),
            state: Arc::default(),
        };
        registry.register(
            "events_relayed",
            "User events published to NATS JetStream, by result: stored, duplicate (JetStream \
             had it already, by its Nats-Msg-Id), or refused (larger than NATS takes: passed over)",
            series.relayed.clone(),
        );
        registry.register_collector(Box::new(Scraped(series.state.clone())));
        series
    }

    /// The store's count of events written, read at each scrape from now on.
    pub fn watch_written(&self, read: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.state.written.set(Box::new(read));
    }

    /// JetStream acknowledged `stored` new events and `duplicates` it had already.
    pub fn relayed(&self, stored: u64, duplicates: u64) {
        let count = |result| self.relayed.get_or_create(&ResultLabel { result });
        count("stored").inc_by(stored);
        count("duplicate").inc_by(duplicates);
    }

    /// NATS refused an event for good (larger than its `max_payload`): passed over.
    pub fn relay_refused(&self) {
        self.relayed
            .get_or_create(&ResultLabel { result: "refused" })
            .inc();
    }

    /// The oldest event read and not yet acknowledged, or `None` when the relay is caught up.
    pub fn relay_waiting_since(&self, since: Option<SystemTime>) {
        *self
            .state
            .waiting_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = since;
    }

    /// Whether this replica holds the relay's lease.
    pub fn relay_leader(&self, leader: bool) {
        self.state.leader.store(leader, Ordering::Relaxed);
        if !leader {
            self.relay_waiting_since(None);
        }
    }
}

/// The series computed at scrape time.
#[derive(Debug)]
struct Scraped(Arc<State>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        if let Some(read) = state.written.get() {
            let counter = ConstCounter::new(read());
            counter.encode(encoder.encode_descriptor(
                "events_written",
                "User events this server committed to the feed (an import's invitations count \
                 one per user)",
                None,
                counter.metric_type(),
            )?)?;
        }
        let since = *state
            .waiting_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let lag = since.map_or(0.0, |t| {
            SystemTime::now()
                .duration_since(t)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        let gauge = ConstGauge::new(lag);
        gauge.encode(encoder.encode_descriptor(
            "events_relay_lag_seconds",
            "Age of the oldest user event the relay has read and NATS has not acknowledged; 0 \
             when caught up, and on a replica that does not relay",
            None,
            gauge.metric_type(),
        )?)?;
        let leader = ConstGauge::new(i64::from(state.leader.load(Ordering::Relaxed)));
        leader.encode(encoder.encode_descriptor(
            "events_relay_leader",
            "1 while this replica holds the relay's lease and publishes the feed to NATS",
            None,
            leader.metric_type(),
        )?)?;
        Ok(())
    }
}
