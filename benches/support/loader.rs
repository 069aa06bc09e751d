//! The service against the database's own loader on the same file, made fair: three rounds
//! whose order alternates (service first, then loader first, then service first), a
//! `CHECKPOINT` before each timed step on PostgreSQL (so that neither side pays for the other's
//! dirty pages), and the WAL each side wrote (`pg_current_wal_lsn` before and after), which
//! says how much each one asks of the disk. `cargo bench --bench import -- --loader-only`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{FreshDatabase, Server, psql_copy_into, sqlite3_import, upload};

/// One timed step: its time and, on PostgreSQL, the WAL bytes it wrote.
#[derive(Debug, Clone, Copy)]
struct Step {
    time: Duration,
    wal: Option<u64>,
}

/// The first value `sql` returns on the server at `url`, as text.
fn psql_value(url: &str, sql: &str) -> Option<String> {
    let output = Command::new("psql")
        .args(["-qAt", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A checkpoint: no timed step that follows pays for the dirty pages of the one before.
pub fn checkpoint(server: &str) {
    psql_value(server, "CHECKPOINT").expect("CHECKPOINT (needs a superuser)");
}

/// A checkpoint, then the WAL position: what a timed step starts from.
fn checkpoint_then_lsn(server: &str) -> String {
    checkpoint(server);
    psql_value(server, "SELECT pg_current_wal_lsn()").expect("the WAL position")
}

/// The WAL bytes written since `from`.
fn wal_since(server: &str, from: &str) -> u64 {
    let sql = format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{from}')::bigint");
    psql_value(server, &sql)
        .and_then(|v| v.parse().ok())
        .expect("the WAL written")
}

/// The service's upload of `file` into a fresh database.
async fn service(server: Option<&str>, file: &Path) -> Step {
    let database = match server {
        Some(server) => FreshDatabase::postgres(server, "bulk_import_bench").await,
        None => FreshDatabase::sqlite(),
    };
    let app = Server::start_this(&database.url).await;
    let from = server.map(checkpoint_then_lsn);
    let (import, time) = upload(app.channel.clone(), "loader", file).await;
    assert!(import.rows_imported > 0, "{}", import.error_message);
    let wal = server.zip(from).map(|(s, f)| wal_since(s, &f));
    app.stop();
    Step { time, wal }
}

/// The loader's run of `file` into a fresh database: `psql \copy` into a table with one
/// unique index, or `sqlite3 .import` likewise. `None` when the tool is not installed.
async fn loader(server: Option<&str>, file: &Path) -> Option<Step> {
    match server {
        Some(server) => {
            let database = FreshDatabase::postgres(server, "bulk_import_bench").await;
            let from = checkpoint_then_lsn(server);
            let time = psql_copy_into(&database.url, file)?;
            Some(Step {
                time,
                wal: Some(wal_since(server, &from)),
            })
        }
        None => sqlite3_import(file).map(|time| Step { time, wal: None }),
    }
}

/// Three rounds, the order alternating; each round's times, WAL and ratio, then the medians.
/// `server` is the PostgreSQL server's URL, or `None` for SQLite.
pub async fn compare(server: Option<&str>, file: &Path) {
    let tool = if server.is_some() {
        "psql \\copy"
    } else {
        "sqlite3 .import"
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let service_first = round % 2 == 0;
        let (s, l) = if service_first {
            let s = service(server, file).await;
            (s, loader(server, file).await)
        } else {
            let l = loader(server, file).await;
            (service(server, file).await, l)
        };
        let Some(l) = l else {
            println!("  ({tool} is not installed: no comparison)");
            return;
        };
        let wal = |step: &Step| {
            step.wal
                .map_or(String::new(), |w| format!(", WAL {:.0} MiB", super::mib(w)))
        };
        println!(
            "  round {} ({} first): service {:.2} s{}, {tool} {:.2} s{}, ratio {:.2}",
            round + 1,
            if service_first { "service" } else { "loader" },
            s.time.as_secs_f64(),
            wal(&s),
            l.time.as_secs_f64(),
            wal(&l),
            s.time.as_secs_f64() / l.time.as_secs_f64()
        );
        ours.push(s);
        theirs.push(l);
    }
    let median = |steps: &[Step]| {
        let mut times: Vec<f64> = steps.iter().map(|s| s.time.as_secs_f64()).collect();
        times.sort_by(f64::total_cmp);
        times[1]
    };
    let (s, l) = (median(&ours), median(&theirs));
    let wal = |steps: &[Step]| steps.iter().filter_map(|s| s.wal).sum::<u64>() as f64;
    let wal_ratio = (server.is_some()).then(|| wal(&ours) / wal(&theirs).max(1.0));
    println!(
        "  medians: service {s:.2} s, {tool} {l:.2} s, ratio of medians {:.2}{}",
        s / l,
        wal_ratio.map_or(String::new(), |r| format!("; WAL service/{tool} {r:.2}"))
    );
}
