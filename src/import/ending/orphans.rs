//! Imports that no server drives any more, ended through the one owner of endings.
//!
//! - **Recovery at start** (`recover`): on a database no other server writes (SQLite, whose
//!   file this server holds locked), every import found PROCESSING was left by a server that
//!   stopped, and is ended at once.
//! - **The reaper** (`Reaper::reap`, every few seconds, PostgreSQL): an import whose server is
//!   gone is ended once its life sign (its heartbeat, which a live server renews every few
//!   seconds and with every batch) has stood still for `LOCK_GRACE` *as this server watched
//!   it*, with its owner's lock gone, or for `LEASE` with the lock held (a server that hangs).
//!
//! Why time is measured by the watcher rather than by the database's clock: a heartbeat can be
//! old for reasons other than death. The connection holding a live server's lock may drop (a
//! proxy blip, a failover) while it goes on heartbeating, and after the database itself was
//! away every heartbeat is old at once. A starting server that judged by the clock ended the
//! imports of live servers in exactly those moments. A sign that this server has seen stand
//! still, while it could see the database the whole time, can only be a server that stopped:
//! the watch starts again whenever this server loses sight of the database (a failed look, or
//! looks too far apart), and the ending is stored only if the sign is still the one judged
//! (`Guard::Abandoned`).
//!
//! So an import whose server died is ended within about `LOCK_GRACE` plus one upkeep interval
//! of the first look that saw it (about 13 s), or `LEASE` plus that when its lock is still
//! held (about 33 s).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::Cause;
use super::decide::{Disposal, decide};
use crate::domain::ImportKey;
use crate::metrics::Metrics;
use crate::store::{Guard, LifeSign, Processing, Store, StoreError};

/// How long an import's life sign must stand still, with its owner's lock gone, before it is
/// ended. A live server renews it every few seconds (`app::MAINTENANCE_INTERVAL`, 3 s).
pub const LOCK_GRACE: Duration = Duration::from_secs(10);
/// How long it must stand still while its owner's lock is held: a server that hangs, or that
/// lost the database while another still sees it.
pub const LEASE: Duration = Duration::from_secs(30);
/// Looks further apart than this do not prove that the database was in sight in between: the
/// watch starts again. More than two upkeep intervals (3 s each), so that a single missed
/// look (6 s apart) does not restart it.
pub const LOOK_GAP: Duration = Duration::from_secs(8);

/// The reaper's watch over the imports other servers run. One per server, kept across upkeep
/// rounds: its memory of what stood still since when is what the judgement rests on.
#[derive(Default)]
pub struct Reaper {
    /// Held only while a look is judged, never across the store's calls.
    watch: Mutex<Watch>,
}

/// What this server has seen of the PROCESSING imports of other servers.
#[derive(Default)]
struct Watch {
    /// Per import, the life sign it shows and since when (this server's clock) it shows it.
    sightings: HashMap<ImportKey, Sighting>,
    /// When the database was last looked at successfully.
    last_look: Option<Instant>,
}

/// One import's life sign, as last seen.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    /// The sign last seen; its heartbeat is what must stand still, and the guard of its
    /// ending carries it.
    sign: LifeSign,
    /// When this server first saw that heartbeat, by its own monotonic clock.
    since: Instant,
}

impl Reaper {
    /// Ends the imports whose server is gone (see the module's doc); `here` are the imports
    /// this server runs or holds an ending for. How many were ended.
    ///
    /// Nothing to do on an exclusive store (SQLite), which `recover` covers at start. An error
    /// reading or ending loses sight (the watch starts again) and is returned, so the upkeep
    /// logs it; an import whose guard no longer holds was not abandoned after all, and is
    /// skipped.
    pub async fn reap(
        &self,
        store: &dyn Store,
        metrics: &Metrics,
        here: &[ImportKey],
        window: Duration,
    ) -> Result<u64, StoreError> {
        if store.exclusive() {
            return Ok(0);
        }
        let found = match store.processing().await {
            Ok(found) => found,
            Err(e) => {
                self.lose_sight();
                return Err(e);
            }
        };
        let due = self.judge(Instant::now(), found, here);
        let mut ended = 0;
        for (orphan, guard) in due {
            match end(store, metrics, orphan, Cause::Abandoned, guard, window).await {
                Ok(()) => ended += 1,
                // It moved, or is being written, or ended meanwhile: not abandoned after all.
                Err(StoreError::NotProcessing) => {}
                Err(e) => {
                    self.lose_sight();
                    return Err(e);
                }
            }
        }
        Ok(ended)
    }

    /// The watch starts again: whatever stood still so far may have stood still because this
    /// server could not see.
    pub fn lose_sight(&self) {
        let mut watch = self.lock();
        watch.sightings.clear();
        watch.last_look = None;
    }

    /// Notes what a look at `now` found, and returns the imports due to be ended, each with
    /// the guard its ending must meet. Imports no longer found (ended) or running `here` are
    /// dropped from the watch; a new heartbeat starts an import's watch again. Pure apart from
    /// the watch, and given `now`, so that the tests can play looks at any pace.
    fn judge(
        &self,
        now: Instant,
        found: Vec<Processing>,
        here: &[ImportKey],
    ) -> Vec<(Processing, Guard)> {
        let here: HashSet<ImportKey> = here.iter().copied().collect();
        let mut watch = self.lock();
        if watch
            .last_look
            .is_none_or(|last| now.duration_since(last) > LOOK_GAP)
        {
            watch.sightings.clear();
        }
        watch.last_look = Some(now);
        let mut seen = HashMap::with_capacity(found.len());
        let mut due = Vec::new();
        for orphan in found {
            let key = orphan.import.key;
            // An import that waits for its client has no server to judge: `expire` ends it at
            // its deadline.
            if here.contains(&key) || orphan.import.waiting() {
                continue;
            }
            let sighting = match watch.sightings.get(&key) {
                Some(s) if s.sign.heartbeat == orphan.sign.heartbeat => Sighting {
                    // The lock may come and go; the heartbeat is what must stand still.
                    sign: orphan.sign,
                    since: s.since,
                },
                _ => Sighting {
                    sign: orphan.sign,
                    since: now,
                },
            };
            seen.insert(key, sighting);
            let still = now.duration_since(sighting.since);
            let allowed = if orphan.sign.owner_alive {
                LEASE
            } else {
                LOCK_GRACE
            };
            if still >= allowed {
                due.push((orphan, Guard::Abandoned(sighting.sign)));
            }
        }
        watch.sightings = seen;
        due
    }

    /// The watch, even after a panic elsewhere poisoned the lock.
    fn lock(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// At start, on a database no other server writes: ends every import found PROCESSING, left
/// by a server that stopped. How many. Runs before the importer gets the store
/// (`app::database`), so no upload of this server can be among them; on a shared store it
/// does nothing, since the imports may be running elsewhere.
pub async fn recover(
    store: &dyn Store,
    metrics: &Metrics,
    window: Duration,
) -> Result<u64, StoreError> {
    if !store.exclusive() {
        // Other servers may be running them: the reaper judges them instead.
        return Ok(0);
    }
    let mut ended = 0;
    for orphan in store.processing().await? {
        if orphan.import.waiting() {
            // It waits for its client, not for a server: `expire` judges it.
            continue;
        }
        match end(
            store,
            metrics,
            orphan,
            Cause::Interrupted,
            Guard::Processing,
            window,
        )
        .await
        {
            Ok(()) => ended += 1,
            Err(StoreError::NotProcessing) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ended)
}

/// Ends the imports that waited for their client past their deadline (`--resume-window`),
/// on every backend, each through the one owner of endings; how many. One that a resume took
/// meanwhile is left to it (`Guard::Waiting` checks the deadline again as it stores).
pub async fn expire(
    store: &dyn Store,
    metrics: &Metrics,
    window: Duration,
) -> Result<u64, StoreError> {
    let now = SystemTime::now();
    let mut ended = 0;
    let mut waiting = 0;
    let mut failed = None;
    for orphan in store.processing().await? {
        let Some(deadline) = orphan.import.resume_deadline else {
            continue;
        };
        waiting += 1;
        if deadline > now {
            continue;
        }
        let guard = Guard::Waiting { expired: true };
        let key = orphan.import.key;
        match end(
            store,
            metrics,
            orphan,
            Cause::NotResumed(window),
            guard,
            window,
        )
        .await
        {
            Ok(()) => {
                ended += 1;
                waiting -= 1;
            }
            Err(StoreError::NotProcessing) => {}
            // One that cannot be ended now is tried again at the next round; the others end.
            Err(e) => {
                tracing::warn!(
                    import_key = key,
                    error = e.detail(),
                    "cannot end an expired wait yet"
                );
                failed.get_or_insert(e);
            }
        }
    }
    metrics.uploads_waiting(waiting);
    failed.map_or(Ok(ended), Err)
}

/// Ends one orphan for `cause`, if `guard` still holds; counted on this server. The ending is
/// decided from the counters the import last stored, and a discard is stored as its
/// conclusion: only the upload that created an import may remove it. A resumable upload's
/// import is made to wait for its client instead, for `window`. The duration in the metrics
/// is the import's whole life, from its creation.
async fn end(
    store: &dyn Store,
    metrics: &Metrics,
    orphan: Processing,
    cause: Cause,
    guard: Guard,
    window: Duration,
) -> Result<(), StoreError> {
    end_import(store, metrics, orphan.import, cause, guard, window)
        .await
        .map(|_| ())
}

/// Ends an import that waits for its client, for `cause` (a cancel): under
/// `Guard::Waiting`, so that a resume that took it meanwhile keeps it (`NotProcessing`).
pub async fn end_waiting(
    store: &dyn Store,
    metrics: &Metrics,
    import: crate::domain::Import,
    cause: Cause,
) -> Result<crate::domain::Import, StoreError> {
    let guard = Guard::Waiting { expired: false };
    end_import(store, metrics, import, cause, guard, Duration::ZERO).await
}

/// `end`, for an import as stored: the ended (or waiting) import.
async fn end_import(
    store: &dyn Store,
    metrics: &Metrics,
    import: crate::domain::Import,
    cause: Cause,
    guard: Guard,
    window: Duration,
) -> Result<crate::domain::Import, StoreError> {
    let kind = cause.kind();
    let decision = decide(cause, &import, import.counters, import.format);
    let conclusion = match decision.disposal {
        Disposal::Conclude(conclusion) | Disposal::Discard(conclusion) => conclusion,
        Disposal::Wait(_) => {
            let waiting = store.park_import(import.key, window, guard).await?;
            tracing::warn!(
                account_id = %waiting.account_id, import_id = %waiting.import_id,
                committed_bytes = waiting.committed_bytes,
                "a resumable upload's server is gone; its import waits for its client"
            );
            metrics.upload_paused();
            return Ok(waiting);
        }
    };
    let ended = store
        .conclude_import(import.key, &conclusion, guard)
        .await?;
    tracing::warn!(
        account_id = %ended.account_id, import_id = %ended.import_id,
        status = ended.status.as_str(), cause = kind, "ended an import no upload drives"
    );
    let lived = SystemTime::now()
        .duration_since(import.create_time)
        .unwrap_or_default();
    metrics.import_ended(
        conclusion.status(),
        &conclusion.counters(),
        import.validate_only,
        lived,
    );
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AccountId, ConflictPolicy, Counters, Filename, Import, ImportId, ImportStatus, ImportType,
    };

    /// Import `key` as `Store::processing` finds it, with this life sign.
    fn processing(key: ImportKey, heartbeat: i64, owner_alive: bool) -> Processing {
        Processing {
            import: Import {
                key,
                account_id: AccountId::parse("acme").unwrap(),
                import_id: ImportId::parse(&format!("i{key}")).unwrap(),
                kind: ImportType::Users,
                filename: Filename::parse("users.csv").unwrap(),
                created_by: String::new(),
                validate_only: false,
                on_conflict: ConflictPolicy::Error,
                retry_of: None,
                status: ImportStatus::Processing,
                counters: Counters::default(),
                format: None,
                error_message: String::new(),
                create_time: SystemTime::UNIX_EPOCH,
                update_time: SystemTime::UNIX_EPOCH,
                complete_time: None,
                revert_time: None,
                details_removed_time: None,
                invitations: Default::default(),
                users_invited: 0,
                resumable: false,
                committed_bytes: 0,
                resume_deadline: None,
                revert_note: String::new(),
            },
            sign: LifeSign {
                heartbeat: Some(heartbeat),
                owner_alive,
            },
        }
    }

    /// Looks every 3 s, as the upkeep does, and returns the keys due at each look.
    fn looks(reaper: &Reaper, start: Instant, found: &[Vec<Processing>]) -> Vec<Vec<ImportKey>> {
        found
            .iter()
            .enumerate()
            .map(|(i, found)| {
                let at = start + Duration::from_secs(3 * i as u64);
                reaper
                    .judge(at, found.clone(), &[])
                    .into_iter()
                    .map(|(p, _)| p.import.key)
                    .collect()
            })
            .collect()
    }

    /// A heartbeat that stands still with its lock gone is due after `LOCK_GRACE`.
    #[test]
    fn a_dead_server_s_import_is_due_once_its_sign_stood_still_for_the_grace() {
        let reaper = Reaper::default();
        let still = vec![processing(1, 100, false)];
        let due = looks(&reaper, Instant::now(), &vec![still; 5]);
        // Seen at 0 s; due at the first look at least 10 s later (12 s).
        assert_eq!(due, vec![vec![], vec![], vec![], vec![], vec![1]]);
    }

    /// A lost lock alone proves nothing: a heartbeat that moves keeps the import alive.
    #[test]
    fn a_live_server_whose_lock_dropped_keeps_its_imports_while_it_heartbeats() {
        let reaper = Reaper::default();
        let found: Vec<Vec<Processing>> = (0..20)
            .map(|i| vec![processing(1, 100 + i, false)])
            .collect();
        let due = looks(&reaper, Instant::now(), &found);
        assert!(due.iter().all(Vec::is_empty), "{due:?}");
    }

    /// With the lock held, a heartbeat that stands still is due only after `LEASE`.
    #[test]
    fn a_held_lock_gives_the_longer_lease() {
        let reaper = Reaper::default();
        let still = vec![processing(1, 100, true)];
        let due = looks(&reaper, Instant::now(), &vec![still; 12]);
        let first = due.iter().position(|keys| !keys.is_empty());
        // Seen at 0 s; due at the first look at least 30 s later (30 s).
        assert_eq!(first, Some(10));
    }

    /// Looks more than `LOOK_GAP` apart, or a failed look, start the watch again.
    #[test]
    fn the_watch_starts_again_after_losing_sight_of_the_database() {
        let start = Instant::now();
        let reaper = Reaper::default();
        let still = || vec![processing(1, 100, false)];
        let due = |at: u64| {
            reaper
                .judge(start + Duration::from_secs(at), still(), &[])
                .len()
        };
        assert_eq!(due(0), 0);
        // A gap between looks (the database was away): what stood still meanwhile proves
        // nothing, and the watch starts again at 60 s.
        assert_eq!(due(60), 0);
        assert_eq!(due(66), 0);
        assert_eq!(due(72), 1);
        // A failed look loses sight too.
        reaper.lose_sight();
        assert_eq!(due(75), 0);
        assert_eq!(due(81), 0);
        assert_eq!(due(84), 0);
        assert_eq!(due(85), 1);
    }

    /// This server's own imports are never judged, however still their sign.
    #[test]
    fn imports_running_here_are_never_due() {
        let reaper = Reaper::default();
        let start = Instant::now();
        for i in 0..10 {
            let at = start + Duration::from_secs(3 * i);
            assert!(
                reaper
                    .judge(at, vec![processing(7, 1, false)], &[7])
                    .is_empty()
            );
        }
    }

    /// The ending's guard is the very sign judged, so that a heartbeat renewed in between
    /// makes the ending fail rather than end a live import.
    #[test]
    fn the_guard_carries_the_sign_that_stood_still() {
        let reaper = Reaper::default();
        let start = Instant::now();
        reaper.judge(start, vec![processing(1, 42, false)], &[]);
        let due = reaper.judge(
            start + Duration::from_secs(6),
            vec![processing(1, 42, false)],
            &[],
        );
        assert!(due.is_empty());
        let due = reaper.judge(
            start + Duration::from_secs(12),
            vec![processing(1, 42, false)],
            &[],
        );
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].1,
            Guard::Abandoned(LifeSign {
                heartbeat: Some(42),
                owner_alive: false
            })
        );
    }
}
