//! `WatchImport`: a stream per watcher, fed by a task of its own through a small bounded
//! channel (as tonic's streaming examples), which stops when the watcher goes away. An import
//! running here is followed from its live channel (`progress::follow_local`); one running on
//! another replica, or one that just ended here, through the store: woken by its change
//! notifications where it has them, polled otherwise.
//!
//! What a watcher gets: the current state at once, then a snapshot whenever the counters (or,
//! through the store, the status) moved, at most about every `WATCH_TICK`, and last the
//! terminal state, after which the stream ends. An import that ended before the call gives one
//! message. Each open stream holds one of `--max-watchers` places until its task ends.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::progress::{FollowEnd, WATCH_TICK, follow_local};
use super::{ImportError, Importer};
use crate::domain::{Import, ImportId, Scope};

/// How long a watcher of an import running elsewhere waits for a change notification before
/// reading the stored state anyway: a notification can be lost (a dropped listener connection),
/// and this bounds how stale the stream can be then.
const POLL_FALLBACK: Duration = Duration::from_secs(1);
/// Reads of the store a watcher may fail in a row (about 5 s when polled every `WATCH_TICK`)
/// before its stream ends with the error.
const WATCH_FAILURES: u32 = 20;

impl Importer {
    /// Follows an import: see `WatchImport` in the proto. The stream is fed by a task through
    /// a small bounded channel and stops when the watcher goes away.
    ///
    /// `NotFound` for an unknown import, and RESOURCE_EXHAUSTED when `--max-watchers` streams
    /// are open already; both before the stream starts. A slow watcher holds back only its own
    /// task: the upload publishes into a channel that keeps the latest value.
    pub async fn watch(
        &self,
        scope: &Scope,
        import_id: &ImportId,
    ) -> Result<ReceiverStream<Result<Import, ImportError>>, ImportError> {
        let account_id = scope.account_id();
        let import = self.find(account_id, import_id).await?;
        // Held by the feeding task: a watcher counts until its stream ends.
        let place = self.inner.watchers.admit(account_id)?;
        let counted = self.inner.metrics.watcher_started();
        Ok(self.follow(import, (place, counted)))
    }

    /// The stream of `import`'s snapshots, fed by a task of its own that holds `held` (a
    /// watcher's place and gauge) until it ends. `CancelImport` follows the import it cancels
    /// this way without a place: the cancel is asked by then, and must not be refused for
    /// want of one.
    pub(super) fn follow(
        &self,
        import: Import,
        held: impl Send + 'static,
    ) -> ReceiverStream<Result<Import, ImportError>> {
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            this.feed_watcher(import, tx).await;
            drop(held);
        });
        ReceiverStream::new(rx)
    }

    /// The watcher's task: from the live channel while the import runs here, then (or from the
    /// start, for an import running elsewhere) from the store, until the import ends or the
    /// watcher goes. Whatever the channel sent last is passed on, so that the store's reads do
    /// not repeat it.
    async fn feed_watcher(&self, import: Import, out: mpsc::Sender<Result<Import, ImportError>>) {
        if import.status.is_terminal() {
            let _ = out.send(Ok(import)).await;
            return;
        }
        let last = match self.inner.hub.subscribe(import.key) {
            Some(rx) => match follow_local(rx, &out, None).await {
                FollowEnd::Finished | FollowEnd::WatcherGone => return,
                FollowEnd::ChannelClosed(seen) => seen.map(|seen| *seen),
            },
            None => {
                if out.send(Ok(import.clone())).await.is_err() {
                    return;
                }
                Some(import.clone())
            }
        };
        self.poll_store(import, last, out).await;
    }

    /// Follows an import that runs elsewhere (another replica) or just ended here, through the
    /// store: woken by the store's change notifications when it has them (re-reading at most
    /// every `WATCH_TICK`, and at least every `POLL_FALLBACK` in case one was missed), else
    /// polled every `WATCH_TICK`.
    ///
    /// Each read goes through `find`, so it shows an ending that waits in `Endings` as well as
    /// the stored state. `NotFound` (a discarded import) ends the stream with that error; other
    /// failed reads are retried, and `WATCH_FAILURES` of them in a row end it.
    async fn poll_store(
        &self,
        import: Import,
        mut last: Option<Import>,
        out: mpsc::Sender<Result<Import, ImportError>>,
    ) {
        let mut changes = self
            .store()
            .ok()
            .and_then(|store| store.subscribe(import.key));
        let mut tick = tokio::time::interval(WATCH_TICK);
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = out.closed() => return,
                _ = tick.tick() => {}
            }
            if let Some(changes) = &mut changes {
                tokio::select! {
                    _ = out.closed() => return,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(POLL_FALLBACK) => {}
                }
            }
            let current = match self.find(&import.account_id, &import.import_id).await {
                Ok(current) => current,
                Err(e @ ImportError::NotFound { .. }) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= WATCH_FAILURES {
                        let _ = out.send(Err(e)).await;
                        return;
                    }
                    continue;
                }
            };
            failures = 0;
            let moved = last
                .as_ref()
                .is_none_or(|l| l.counters != current.counters || l.status != current.status);
            let terminal = current.status.is_terminal();
            if moved || terminal {
                if out.send(Ok(current.clone())).await.is_err() || terminal {
                    return;
                }
                last = Some(current);
            }
        }
    }
}
