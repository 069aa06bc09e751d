//! Live progress of running imports, for `WatchImport` and `GetImport`.
//!
//! A running upload publishes its `Import` into a `tokio::sync::watch` channel, which keeps
//! only the latest value: the upload never waits for a watcher, and each watcher samples the
//! channel at its own pace, so a slow watcher cannot slow an upload. The hub maps the imports
//! running in this process to their channels; an import running elsewhere (another replica)
//! is followed through the store instead.
//!
//! An entry lives from the import's creation to its ending: `conclude` publishes the stored
//! ending and removes it, `forget` removes it without a final value (the import was discarded,
//! ended by another server, or its ending waits in `Endings`). Either way the channel closes
//! once the upload's task lets go of its [`Live`], and a watcher still on it goes on through
//! the store. The hub's keys are also the imports whose life sign this server renews.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use super::ImportError;
use crate::domain::{Counters, Import, ImportKey, TextFormat};

/// How often a watcher looks for moved counters: twice per promised 500 ms, so that a change
/// is sent at most about 250 ms after it happened.
pub const WATCH_TICK: Duration = Duration::from_millis(250);

/// The live views of the imports running in this process. Cheap to clone; one per
/// `Importer`.
#[derive(Clone, Default)]
pub struct ProgressHub {
    /// By import, its publishing side. The lock is held only for a map operation.
    running: Arc<Mutex<HashMap<ImportKey, Live>>>,
}

/// The publishing side of one running import, fed by the upload's tally.
///
/// Holds the whole `Import`, not only its counters, so that a watcher or `GetImport` gets a
/// complete answer from it without reading the store.
#[derive(Clone)]
pub struct Live {
    /// Shared by the hub and the tally; the channel closes when both let go.
    tx: Arc<watch::Sender<Import>>,
}

impl ProgressHub {
    /// Registers a running import; watchers can follow it until `conclude`.
    pub fn start(&self, import: Import) -> Live {
        let key = import.key;
        let (tx, _) = watch::channel(import);
        let live = Live { tx: Arc::new(tx) };
        self.lock().insert(key, live.clone());
        live
    }

    /// Publishes the import's final state, then forgets it: watchers read the terminal status
    /// from their channel, later ones from the store.
    pub fn conclude(&self, import: Import) {
        if let Some(live) = self.lock().remove(&import.key) {
            live.tx.send_replace(import);
        }
    }

    /// Forgets an import without a final value: one that was refused and removed, one that
    /// another server ended, or one whose ending waits to be stored. Readers then get it from
    /// the store (with its pending ending laid over it).
    pub fn forget(&self, key: ImportKey) {
        self.lock().remove(&key);
    }

    /// The imports running in this process, whose leases the store keeps.
    pub fn running(&self) -> Vec<ImportKey> {
        self.lock().keys().copied().collect()
    }

    /// A receiver on the live view of an import running here; `None` when it does not run
    /// here (or no longer).
    pub fn subscribe(&self, key: ImportKey) -> Option<watch::Receiver<Import>> {
        self.lock().get(&key).map(|live| live.tx.subscribe())
    }

    /// The latest snapshot of an import running here, fresher than the stored counters.
    pub fn snapshot(&self, key: ImportKey) -> Option<Import> {
        self.lock().get(&key).map(|live| live.tx.borrow().clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, Live>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Live {
    /// Publishes the upload's counters, text format and committed bytes, as its tally has
    /// them. Watchers are woken only when something changed, and `update_time` moves with it.
    pub fn publish(&self, counters: Counters, format: Option<TextFormat>, committed_bytes: u64) {
        self.tx.send_if_modified(|import| {
            if import.counters == counters
                && import.format == format
                && import.committed_bytes == committed_bytes
            {
                return false;
            }
            import.counters = counters;
            import.format = format;
            import.committed_bytes = committed_bytes;
            import.update_time = SystemTime::now();
            true
        });
    }
}

/// Feeds one watcher from a local channel: the current snapshot at once, then one whenever
/// the counters moved (sampled every `WATCH_TICK`), then the terminal one. Returns when the
/// import ended, the channel closed (the caller then reads the final state from the store), or
/// the watcher went away. `last` is what this watcher was sent already, if anything, so that
/// it is not sent again.
///
/// Each send is the latest state, never a queue of old ones. The tick is delayed rather than
/// caught up after a slow send, so a watcher that fell behind is not then sent snapshots faster
/// than one per tick.
pub async fn follow_local(
    mut rx: watch::Receiver<Import>,
    out: &mpsc::Sender<Result<Import, ImportError>>,
    mut last: Option<Import>,
) -> FollowEnd {
    let mut tick = tokio::time::interval(WATCH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = rx.borrow_and_update().clone();
        let moved = last.as_ref().is_none_or(|l| l.counters != current.counters);
        if current.status.is_terminal() {
            return match out.send(Ok(current)).await {
                Ok(()) => FollowEnd::Finished,
                Err(_) => FollowEnd::WatcherGone,
            };
        }
        if moved {
            if out.send(Ok(current.clone())).await.is_err() {
                return FollowEnd::WatcherGone;
            }
            last = Some(current);
        }
        tokio::select! {
            _ = out.closed() => return FollowEnd::WatcherGone,
            changed = rx.changed() => {
                if changed.is_err() {
                    return FollowEnd::ChannelClosed(last.map(Box::new));
                }
                // Terminal statuses go out at once; counters wait for the next tick.
                if !rx.borrow().status.is_terminal() {
                    tokio::select! {
                        _ = out.closed() => return FollowEnd::WatcherGone,
                        _ = tick.tick() => {}
                    }
                }
            }
        }
    }
}

/// Why `follow_local` returned.
#[derive(Debug)]
pub enum FollowEnd {
    /// The terminal snapshot was sent: the stream is complete.
    Finished,
    /// The watcher's stream was dropped: nothing more to do.
    WatcherGone,
    /// The import left this process without a terminal value on the channel; the last
    /// snapshot sent, if any.
    ChannelClosed(Option<Box<Import>>),
}
