//! Re-imports against first imports: a dry run, SKIP and UPDATE of the same file, of a renamed
//! copy and of a re-sync file, each as a ratio to a plain import of the same file in the same
//! round, three rounds, then each row's median and range. `cargo bench --bench import --
//! --policies-only [--rounds N]`.
//!
//! A round is one fresh database and one server. Its plain imports fill the accounts the
//! policies then meet (three of them: the scenarios that change an account each get their own),
//! and the ratio of a row is its time over the median of the round's plain imports. On
//! PostgreSQL a `CHECKPOINT` runs before each timed step, so that no step pays for the dirty
//! pages of the one before (`loader`).
//!
//! Peak RSS is that of each planned import alone: the server's high-water mark is reset
//! (`/proc/PID/clear_refs`) before each step. Then 8 planned imports at once (dry runs of the
//! re-sync file under UPDATE, each into its own empty account) on a fresh server.

use std::path::Path;
use std::time::Duration;

use bulk_import::proto::{ConflictPolicy, ImportMetadata, ImportStatus};

use super::loader::checkpoint;
use super::{FreshDatabase, Server, data_rows, mib, upload_with};

/// One scenario of a round.
struct Scenario {
    label: &'static str,
    /// The account it goes into: `filled` (every user of the file, its values unchanged until
    /// the last scenario), `resync-skip` and `resync-update` (likewise, one scenario each),
    /// or `empty`.
    account: &'static str,
    file: Which,
    dry_run: bool,
    policy: ConflictPolicy,
    /// The target in the issue, as a ratio to the plain import (shown beside the figures).
    target: f64,
}

/// Which of the three files a scenario uploads.
#[derive(Clone, Copy)]
enum Which {
    /// The file the plain imports load.
    Same,
    /// The same users, every first name changed.
    Renamed,
    /// The same seed with 5% changed and 5% new users (`--changed-rate 0.05 --new-rate 0.05`).
    Resync,
}

const SCENARIOS: [Scenario; 8] = [
    Scenario {
        label: "dry run, empty account",
        account: "empty",
        file: Which::Same,
        dry_run: true,
        policy: ConflictPolicy::Error,
        target: 0.6,
    },
    Scenario {
        label: "dry run (UPDATE), every user exists",
        account: "filled",
        file: Which::Same,
        dry_run: true,
        policy: ConflictPolicy::Update,
        target: 0.8,
    },
    Scenario {
        label: "SKIP, every user exists",
        account: "filled",
        file: Which::Same,
        dry_run: false,
        policy: ConflictPolicy::Skip,
        target: 1.2,
    },
    Scenario {
        label: "UPDATE, same values",
        account: "filled",
        file: Which::Same,
        dry_run: false,
        policy: ConflictPolicy::Update,
        target: 1.2,
    },
    Scenario {
        label: "UPDATE, every first name changed",
        account: "filled",
        file: Which::Renamed,
        dry_run: false,
        policy: ConflictPolicy::Update,
        target: 2.0,
    },
    Scenario {
        label: "re-sync (5% changed, 5% new), SKIP",
        account: "resync-skip",
        file: Which::Resync,
        dry_run: false,
        policy: ConflictPolicy::Skip,
        target: 1.2,
    },
    Scenario {
        label: "re-sync (5% changed, 5% new), UPDATE",
        account: "resync-update",
        file: Which::Resync,
        dry_run: false,
        policy: ConflictPolicy::Update,
        target: 1.3,
    },
    Scenario {
        label: "dry run (UPDATE) of the re-sync",
        account: "resync-update",
        file: Which::Resync,
        dry_run: true,
        policy: ConflictPolicy::Update,
        target: 0.8,
    },
];

/// The accounts the plain imports fill, in this order, each round.
const FILLED: [&str; 3] = ["filled", "resync-skip", "resync-update"];

/// The files of a run.
pub struct Files<'a> {
    pub same: &'a Path,
    pub renamed: &'a Path,
    pub resync: &'a Path,
}

impl Files<'_> {
    fn get(&self, which: Which) -> &Path {
        match which {
            Which::Same => self.same,
            Which::Renamed => self.renamed,
            Which::Resync => self.resync,
        }
    }
}

/// One timed step: wall time, and the server's peak RSS during it.
#[derive(Clone, Copy)]
struct Step {
    time: Duration,
    peak: u64,
}

/// Uploads `file` with these options, timed, after a checkpoint on PostgreSQL and with the
/// server's peak RSS reset.
async fn step(
    app: &Server,
    server: Option<&str>,
    account: &str,
    file: &Path,
    options: impl FnOnce(&mut ImportMetadata),
) -> (bulk_import::proto::Import, Step) {
    if let Some(server) = server {
        checkpoint(server);
    }
    app.reset_peak_rss();
    let (import, time) = upload_with(app.channel.clone(), account, file, options).await;
    let peak = app.peak_rss();
    (import, Step { time, peak })
}

/// `rounds` rounds of the scenarios on the backend (`server`: PostgreSQL's URL, or `None` for
/// SQLite), then the medians and ranges; then 8 planned imports at once.
pub async fn compare(server: Option<&str>, files: &Files<'_>, rounds: usize) {
    let rows = data_rows(files.same) as i64;
    let mut plain: Vec<Vec<Step>> = Vec::new();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); SCENARIOS.len()];
    let mut times: Vec<Vec<Step>> = vec![Vec::new(); SCENARIOS.len()];
    for round in 0..rounds {
        let database = fresh(server).await;
        let app = Server::start_this(&database.url).await;
        let mut round_plain = Vec::new();
        for account in FILLED {
            let (import, step) = step(&app, server, account, files.same, |_| {}).await;
            assert_eq!(import.rows_imported, rows, "{}", import.error_message);
            round_plain.push(step);
        }
        let base = median(&round_plain.iter().map(|s| secs(s.time)).collect::<Vec<_>>());
        for (i, scenario) in SCENARIOS.iter().enumerate() {
            let file = files.get(scenario.file);
            let (import, step) = step(&app, server, scenario.account, file, |m| {
                m.validate_only = scenario.dry_run;
                m.on_conflict = scenario.policy as i32;
            })
            .await;
            assert_eq!(
                import.status,
                ImportStatus::CompletedSuccess as i32,
                "{}: {}",
                scenario.label,
                import.error_message
            );
            assert_eq!(
                import.rows_imported + import.rows_skipped + import.rows_updated,
                data_rows(file) as i64,
                "{}",
                scenario.label
            );
            ratios[i].push(secs(step.time) / base);
            times[i].push(step);
        }
        println!(
            "  round {}: plain {} s",
            round + 1,
            shown(&round_plain.iter().map(|s| secs(s.time)).collect::<Vec<_>>())
        );
        plain.push(round_plain);
        app.stop();
    }
    let all_plain: Vec<Step> = plain.concat();
    let plain_secs: Vec<f64> = all_plain.iter().map(|s| secs(s.time)).collect();
    println!(
        "  {:<40} median {:>6.2} s  range {:.2} - {:.2} s  peak RSS {:.0} MiB",
        "plain import",
        median(&plain_secs),
        min(&plain_secs),
        max(&plain_secs),
        mib(all_plain.iter().map(|s| s.peak).max().unwrap_or(0))
    );
    for (i, scenario) in SCENARIOS.iter().enumerate() {
        let t: Vec<f64> = times[i].iter().map(|s| secs(s.time)).collect();
        println!(
            "  {:<40} median {:>6.2} s  ratio x{:.2} (x{:.2} - x{:.2}; runs {})  target x{:.1}  \
             peak RSS {:.0} MiB",
            scenario.label,
            median(&t),
            median(&ratios[i]),
            min(&ratios[i]),
            max(&ratios[i]),
            shown(&ratios[i]),
            scenario.target,
            mib(times[i].iter().map(|s| s.peak).max().unwrap_or(0))
        );
    }
    at_once(server, files.resync).await;
}

/// 8 dry runs under UPDATE of `file` at once, each into its own empty account, on a fresh
/// server: its peak RSS and the wall time.
async fn at_once(server: Option<&str>, file: &Path) {
    let database = fresh(server).await;
    let app = Server::start_this(&database.url).await;
    let start = std::time::Instant::now();
    let uploads = (0..8).map(|i| {
        let channel = app.channel.clone();
        async move {
            upload_with(channel, &format!("at-once-{i}"), file, |m| {
                m.validate_only = true;
                m.on_conflict = ConflictPolicy::Update as i32;
            })
            .await
        }
    });
    for (import, _) in futures::future::join_all(uploads).await {
        assert_eq!(
            import.status,
            ImportStatus::CompletedSuccess as i32,
            "{}",
            import.error_message
        );
    }
    println!(
        "  8 planned imports at once (dry runs, UPDATE): {:.2} s, peak RSS {:.0} MiB (target 128)",
        secs(start.elapsed()),
        mib(app.peak_rss())
    );
    app.stop();
}

async fn fresh(server: Option<&str>) -> FreshDatabase {
    match server {
        Some(server) => FreshDatabase::postgres(server, "bulk_import_bench").await,
        None => FreshDatabase::sqlite(),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn shown(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}
