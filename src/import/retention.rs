//! Retention: a finished import's details (its row errors and the failed rows of its fix-up
//! file) are removed once it is older than `--retention`, a dry run's once older than
//! `--dry-run-retention`, so that the database does not grow for ever. The import itself stays
//! in the Imports list with its counters, and `details_removed_time` says what happened
//! (`GetImport`, the report and the CLI say so instead of showing nothing).
//!
//! Why these defaults (90 days, 7 for dry runs): the details exist for a person to fix a file
//! and import it again, which happens within days; a dry run's matter only until the import it
//! checks. A dry run of a plain import into an account that holds the file's users stores a row
//! error for every row, as much as the users themselves, each time it runs.
//!
//! How: every server runs [`keep`], a round each `--retention-interval` (10 minutes), that
//! finds expired imports oldest first and removes their details in steps of `STEP_ROWS`, each
//! its own short transaction, so that uploads' batches pass between them and are never held
//! up for long. On PostgreSQL a step takes the clean-up's turn first (a lock of its
//! transaction), so that one replica at a time removes; a replica that finds the turn taken
//! leaves the round to the other. After a round, SQLite gives the freed pages back to the
//! filesystem (incremental vacuum); PostgreSQL's autovacuum makes the room reusable.
//! `bulk_import_retention_*` count what was removed, and `bulk_import_database_size_bytes`
//! shows the size after each round.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use super::Importer;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How long details are kept, and how often the clean-up looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long a finished import keeps its details; `None`: for ever.
    pub imports: Option<Duration>,
    /// The same for dry runs.
    pub dry_runs: Option<Duration>,
    /// How long the user event feed keeps its events; `None`: for ever.
    pub events: Option<Duration>,
    /// The time between two rounds of the clean-up.
    pub every: Duration,
}

impl Default for Retention {
    /// The flags' defaults: 90 days, 7 for dry runs, a round every 10 minutes.
    fn default() -> Self {
        Self {
            imports: Some(Duration::from_secs(90 * 86_400)),
            dry_runs: Some(Duration::from_secs(7 * 86_400)),
            events: Some(Duration::from_secs(7 * 86_400)),
            every: Duration::from_secs(600),
        }
    }
}

/// Rows a step removes: a few milliseconds of writing, so that an upload's batch waits that
/// long at most behind it.
const STEP_ROWS: u32 = 5_000;
/// Expired imports read at a time.
const PAGE_IMPORTS: u32 = 100;

/// What a round removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Imports whose details are now all removed.
    pub imports: u64,
    /// Row errors removed.
    pub row_errors: u64,
    /// Failed rows removed.
    pub failed_rows: u64,
    /// Events of the user feed removed.
    pub events: u64,
    /// Bytes the database gave back to the filesystem.
    pub given_back: u64,
    /// The database's size after the round.
    pub size: u64,
}

/// Runs a round every `retention.every`, the first at once, for as long as the server runs
/// (`app` drops it at shutdown). A round that fails is logged and the next one tries again.
pub async fn keep(importer: Importer, retention: Retention) -> Infallible {
    let mut tick = tokio::time::interval(retention.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match importer.clean_up(&retention).await {
            Ok(round)
                if round.row_errors + round.failed_rows + round.events + round.given_back > 0 =>
            {
                tracing::info!(
                    imports = round.imports,
                    row_errors = round.row_errors,
                    failed_rows = round.failed_rows,
                    events = round.events,
                    given_back_bytes = round.given_back,
                    database_bytes = round.size,
                    "removed the details of imports and the feed's events past their retention"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the retention's clean-up failed; it runs again later")
            }
        }
    }
}

/// One round: every expired import's details removed (unless another replica has the turn),
/// the room given back, the size measured.
pub(super) async fn round(
    store: &dyn Store,
    metrics: &Metrics,
    retention: &Retention,
) -> Result<Round, StoreError> {
    let now = SystemTime::now();
    let cut =
        |keep: Option<Duration>| keep.map(|d| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    let (imports, dry_runs) = (cut(retention.imports), cut(retention.dry_runs));
    let mut round = Round::default();
    // Even with both kept for ever: a removal a stopped server left under way is finished.
    {
        'pages: loop {
            let expired = store
                .expired_details(imports, dry_runs, PAGE_IMPORTS)
                .await?;
            for &key in &expired {
                loop {
                    let Some(removed) = store.remove_details(key, STEP_ROWS).await? else {
                        // Another replica has the turn: the round is its.
                        break 'pages;
                    };
                    let ended_here = removed.done && !removed.gone_before;
                    metrics.retention_removed(removed.row_errors, removed.failed_rows, ended_here);
                    round.row_errors += removed.row_errors;
                    round.failed_rows += removed.failed_rows;
                    if ended_here {
                        round.imports += 1;
                    }
                    if removed.done {
                        break;
                    }
                    // Let others' work in between.
                    tokio::task::yield_now().await;
                }
            }
            if expired.len() < PAGE_IMPORTS as usize {
                break;
            }
        }
    }
    // The feed's old events, oldest first, a step at a time.
    if let Some(before) = cut(retention.events) {
        while let Some(removed) = store.remove_events(before, STEP_ROWS).await? {
            round.events += removed;
            if removed < u64::from(STEP_ROWS) {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if round.row_errors + round.failed_rows + round.events > 0 {
        round.given_back = store.give_back_room().await?;
    }
    round.size = store.size().await?;
    metrics.database_size(round.size);
    Ok(round)
}
