//! The user event feed relayed onto NATS JetStream (`--events-nats-url`), for services that
//! already listen to a broker.
//!
//! The relay is a follower of the whole feed (`Importer::relay_feed`), every account's, that
//! publishes what it reads (`nats`) and stores its place after JetStream acknowledged it: the
//! transactional outbox's relay. At least once: a publish whose acknowledgement is lost, a
//! NATS that is down, restarted or slow, a replica that dies between a publish and storing its
//! place: each is published again from the stored place, and JetStream drops the repeats by
//! their `Nats-Msg-Id`. Nothing is lost: the feed keeps the events a relay has yet to publish
//! past `--event-retention` (`store::events`).
//!
//! One replica relays at a time: the one that holds the relay's lease (`store::relay`), taken
//! in the database for `LEASE` and kept every `KEEP` and after each batch. A replica that
//! cannot keep it (its database is away, it stalled) stops publishing `MARGIN` before the
//! lease can have run out by its own clock, and another takes it once it has; a replica that
//! stops gives it up at once. The others ask for it every `KEEP`.

mod nats;

use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::import::feed::{Cursor, FeedEvent};
use crate::import::{ImportError, Importer};
use crate::store::{LeaseStep, RelayLease};
use nats::{Broken, Publisher};
pub use nats::{STREAM, SUBJECTS, check_url, connect_options, subject};

/// How long a lease lasts when it is not kept: how long the relay can stop after its holder
/// dies without a word (kill -9, a lost node).
pub const LEASE: Duration = Duration::from_secs(15);
/// How often the holder keeps its lease while idle, and how often the others ask for it.
const KEEP: Duration = Duration::from_secs(3);
/// A holder stops publishing this long before its lease runs out by its own clock: room for
/// a slow clock and a slow database.
const MARGIN: Duration = Duration::from_secs(5);
/// The most events published before the relay's place is stored: the first alone, the rest
/// chained after it (`nats::Publisher::publish`). Batches are what the feed has ready.
const BATCH: usize = 256;
/// The longest wait between tries when NATS or the database fails.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where the relay publishes.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The NATS server (`--events-nats-url`).
    pub url: String,
    /// The stream's `max_age` when the relay creates it: the feed's retention.
    pub max_age: Option<Duration>,
}

/// Why a leadership ended.
enum Ended {
    /// The server stops: the lease was given up.
    Stopped,
    /// Another replica has the lease, or it could not be kept.
    Lost,
}

/// The lease as its holder knows it.
struct Held {
    lease: RelayLease,
    /// When to stop publishing unless it was kept since: `LEASE - MARGIN` after the keep
    /// that succeeded last began.
    until: Instant,
}

/// Relays the feed until `stop`: takes the lease whenever it is free, and relays while it
/// holds it. Logs what fails and tries again; returns only when stopped, or for a URL that can
/// never work.
pub async fn run(importer: Importer, config: RelayConfig, stop: CancellationToken) {
    let publisher = match Publisher::connect(&config.url, config.max_age).await {
        Ok(publisher) => publisher,
        Err(error) => {
            tracing::error!(%error, "the relay to NATS cannot start");
            return;
        }
    };
    let holder = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "bulk-import".to_owned()),
        uuid::Uuid::new_v4().simple()
    );
    loop {
        let asked = Instant::now();
        match take(&importer, &holder).await {
            Ok(Some(lease)) => {
                let held = Held {
                    lease,
                    until: asked + LEASE - MARGIN,
                };
                tracing::info!(
                    %holder,
                    epoch = lease.epoch,
                    seq = lease.seq,
                    "relaying the user feed to NATS from here"
                );
                importer.metrics().feed().relay_leader(true);
                let ended = lead(&importer, &publisher, held, &stop).await;
                importer.metrics().feed().relay_leader(false);
                match ended {
                    Ended::Stopped => return,
                    Ended::Lost => tracing::warn!(%holder, "the relay's lease is lost"),
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "the relay cannot ask for its lease"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(KEEP) => {}
        }
    }
}

/// Takes the lease, if free.
async fn take(importer: &Importer, holder: &str) -> Result<Option<RelayLease>, ImportError> {
    let step = LeaseStep::Take {
        holder,
        lease: LEASE,
    };
    importer.relay_lease(step).await
}

/// Keeps the lease with the place moved to `at`; `false` when it is lost.
async fn keep(importer: &Importer, held: &mut Held, at: Cursor) -> bool {
    let asked = Instant::now();
    let mut lease = held.lease;
    (lease.seq, lease.row) = (at.seq, at.row);
    let step = LeaseStep::Keep {
        held: lease,
        lease: LEASE,
    };
    match importer.relay_lease(step).await {
        Ok(Some(kept)) => {
            *held = Held {
                lease: kept,
                until: asked + LEASE - MARGIN,
            };
            true
        }
        Ok(None) => false,
        // Kept until `until`: a database that comes back in time loses nothing.
        Err(error) => {
            tracing::warn!(%error, "the relay cannot keep its lease");
            Instant::now() < held.until
        }
    }
}

/// Relays while the lease is held.
async fn lead(
    importer: &Importer,
    publisher: &Publisher,
    mut held: Held,
    stop: &CancellationToken,
) -> Ended {
    let metrics = importer.metrics().feed().clone();
    let mut at = Cursor {
        seq: held.lease.seq,
        row: held.lease.row,
    };
    let mut backoff = Duration::ZERO;
    let mut warned_empty = false;
    let ended = 'relay: loop {
        // After a failure: wait, keeping the lease, then read the feed again from `at`.
        if !backoff.is_zero() {
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                let wake = until.min(Instant::now() + KEEP);
                tokio::select! {
                    () = stop.cancelled() => break 'relay Ended::Stopped,
                    () = tokio::time::sleep_until(wake) => {}
                }
                if !keep(importer, &mut held, at).await {
                    break 'relay Ended::Lost;
                }
            }
        }
        if !backoff.is_zero() {
            // Behind by as much as the oldest event not published, read or not.
            match importer.relay_waiting_since(at).await {
                Ok(since) => metrics.relay_waiting_since(since),
                Err(error) => tracing::debug!(%error, "the relay's lag is unknown"),
            }
        }
        backoff = (backoff * 2).clamp(Duration::from_millis(200), MAX_BACKOFF);
        match publisher.ensure_stream().await {
            Ok(kept) if kept.messages == 0 && at != Cursor::default() && !warned_empty => {
                warned_empty = true;
                tracing::warn!(
                    relayed_up_to = at.seq,
                    "the stream {STREAM} holds nothing, though the relay published events to it \
                     before: it was deleted or lost its messages (memory storage, a limit); \
                     those events are not in it (WatchUserEvents still has those it keeps)"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "the relay cannot reach its NATS stream; trying again");
                continue;
            }
        }
        let mut feed = match importer.relay_feed(at).await {
            Ok(feed) => feed,
            Err(error) => {
                tracing::warn!(%error, "the relay cannot read the feed");
                continue;
            }
        };
        loop {
            let renew_at = held.until.min(Instant::now() + KEEP);
            let first = tokio::select! {
                () = stop.cancelled() => break 'relay Ended::Stopped,
                () = tokio::time::sleep_until(renew_at) => {
                    if !keep(importer, &mut held, at).await {
                        break 'relay Ended::Lost;
                    }
                    continue;
                }
                first = feed.next() => first,
            };
            let mut batch: Vec<FeedEvent> = Vec::with_capacity(BATCH);
            match first {
                Some(Ok(event)) => batch.push(event),
                Some(Err(error)) => {
                    tracing::warn!(%error, "the relay cannot read the feed");
                    break;
                }
                None => break,
            }
            // What is ready now, up to a batch.
            let mut failed = false;
            while batch.len() < BATCH {
                match feed.next().now_or_never() {
                    Some(Some(Ok(event))) => batch.push(event),
                    Some(Some(Err(_))) | Some(None) => {
                        failed = true;
                        break;
                    }
                    None => break,
                }
            }
            metrics.relay_waiting_since(Some(batch[0].event.event_time));
            if Instant::now() >= held.until && !keep(importer, &mut held, at).await {
                break 'relay Ended::Lost;
            }
            let (mut acknowledged, published, error) = match publisher.publish(&batch).await {
                Ok(published) => (batch.len(), published, None),
                Err(Broken {
                    acknowledged,
                    published,
                    error,
                    too_large: true,
                }) => {
                    // NATS will never take it: passed over, said once, rather than holding
                    // back every account's events behind it.
                    let refused = &batch[acknowledged];
                    tracing::error!(
                        %error,
                        cursor = ?refused.cursor,
                        account_id = %refused.event.account_id,
                        "an event is larger than NATS takes (its max_payload): it is not \
                         published; followers of WatchUserEvents still get it"
                    );
                    metrics.relay_refused();
                    (acknowledged + 1, published, Some(error))
                }
                Err(Broken {
                    acknowledged,
                    published,
                    error,
                    too_large: false,
                }) => (acknowledged, published, Some(error)),
            };
            acknowledged = acknowledged.min(batch.len());
            metrics.relayed(published.stored, published.duplicates);
            if let Some(last) = acknowledged.checked_sub(1).map(|i| &batch[i]) {
                at = last.cursor;
                // Progress: a failure after it is tried again at once, not after a longer wait.
                backoff = Duration::ZERO;
                if !keep(importer, &mut held, at).await {
                    break 'relay Ended::Lost;
                }
            }
            if let Some(error) = error {
                tracing::warn!(
                    %error,
                    published = acknowledged,
                    waiting = batch.len() - acknowledged,
                    "NATS did not acknowledge every event; publishing the rest again"
                );
                break;
            }
            backoff = Duration::ZERO;
            if failed {
                break;
            }
            metrics.relay_waiting_since(None);
        }
    };
    if matches!(ended, Ended::Stopped) {
        let _ = keep(importer, &mut held, at).await;
        let step = LeaseStep::LetGo {
            epoch: held.lease.epoch,
        };
        if let Err(error) = importer.relay_lease(step).await {
            tracing::warn!(%error, "the relay cannot give up its lease");
        }
    }
    ended
}
