//! The import benchmark: the release server on a temporary database, files uploaded through
//! the real gRPC client in 256 KiB chunks, against the databases' own CSV loaders on the same
//! files.
//!
//! ```sh
//! cargo bench --bench import                         # 199 MiB, both backends, scaling lines
//! cargo bench --bench import -- --size-mb 50         # another size
//! cargo bench --bench import -- --backend sqlite     # one backend
//! cargo bench --bench import -- --policies-only      # dry runs, SKIP, UPDATE, re-syncs (--rounds N)
//! cargo bench --bench import -- --populated-only     # three files into one growing account
//! cargo bench --bench import -- --parse-only         # parsing and validation alone
//! cargo bench --bench import -- --resumable-only     # resumable uploads against plain ones
//! cargo bench --bench import -- --console-only       # Chromium through the console vs gRPC
//! cargo bench --bench import -- --loader-only        # vs the loader: alternating, CHECKPOINT, WAL
//! ```
//!
//! Every server run prints its own CPU time (utime + stime) per million rows beside wall time
//! and peak RSS; the parsing and validation alone are timed in this process (`parse_cost`).
//!
//! Besides the plain import, it times dry runs, SKIP and UPDATE of the same file, of a renamed
//! copy and of a re-sync file, each against plain imports in the same round
//! (`support::policies`).
//!
//! PostgreSQL runs when `BENCH_DATABASE_URL` or `TEST_DATABASE_URL` names a server (default:
//! postgres://postgres@127.0.0.1:5432/postgres, skipped when it does not answer).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

struct Options {
    size_mb: u32,
    backends: Vec<Backend>,
    scaling: bool,
    policies: bool,
    /// Only the dry run and the policies.
    policies_only: bool,
    /// Only the three files into one account.
    populated_only: bool,
    /// Only the cost of parsing and validation.
    parse_only: bool,
    /// Only uninterrupted resumable uploads against plain ones.
    resumable_only: bool,
    /// Only uploads through the web console in Chromium against gRPC ones.
    console_only: bool,
    /// Only the service against the database's own loader, order alternating.
    loader_only: bool,
    /// Rounds of the policies' comparison.
    rounds: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let backends = match value("--backend").as_deref() {
        Some("sqlite") => vec![Backend::Sqlite],
        Some("postgres") => vec![Backend::Postgres],
        _ => vec![Backend::Sqlite, Backend::Postgres],
    };
    Options {
        // 199: the generator stops once past the size, and 200 MiB is the upload limit.
        size_mb: value("--size-mb")
            .and_then(|v| v.parse().ok())
            .unwrap_or(199),
        backends,
        scaling: !args.iter().any(|a| a == "--no-scaling"),
        policies: !args.iter().any(|a| a == "--no-policies"),
        policies_only: args.iter().any(|a| a == "--policies-only"),
        populated_only: args.iter().any(|a| a == "--populated-only"),
        parse_only: args.iter().any(|a| a == "--parse-only"),
        resumable_only: args.iter().any(|a| a == "--resumable-only"),
        console_only: args.iter().any(|a| a == "--console-only"),
        loader_only: args.iter().any(|a| a == "--loader-only"),
        rounds: value("--rounds").and_then(|v| v.parse().ok()).unwrap_or(3),
    }
}

async fn fresh_database(backend: Backend, server: &str) -> FreshDatabase {
    match backend {
        Backend::Sqlite => FreshDatabase::sqlite(),
        Backend::Postgres => FreshDatabase::postgres(server, "bulk_import_bench").await,
    }
}

struct Run {
    wall: Duration,
    bytes: u64,
    rows: u64,
    peak_rss: u64,
    /// The server's CPU time (user and system) during the run.
    cpu: Duration,
}

impl Run {
    fn mb_per_s(&self) -> f64 {
        mib(self.bytes) / self.wall.as_secs_f64()
    }
}

/// Uploads each file concurrently, each into its own account, on one fresh server.
async fn measure(backend: Backend, server: &str, files: &[PathBuf]) -> Run {
    let database = fresh_database(backend, server).await;
    let app = Server::start_this(&database.url).await;
    let cpu_before = app.cpu_time();
    let start = std::time::Instant::now();
    let uploads = files.iter().enumerate().map(|(i, file)| {
        let channel = app.channel.clone();
        let file = file.clone();
        async move { upload(channel, &format!("account-{i}"), &file).await }
    });
    let results = futures::future::join_all(uploads).await;
    let wall = start.elapsed();
    let mut rows = 0;
    for (import, _) in &results {
        assert_eq!(import.status, proto_success(), "{}", import.error_message);
        rows += import.rows_imported as u64;
    }
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let peak_rss = app.peak_rss();
    let cpu = app.cpu_time().saturating_sub(cpu_before);
    app.stop();
    Run {
        wall,
        bytes,
        rows,
        peak_rss,
        cpu,
    }
}

/// Dry runs, SKIP and UPDATE against plain imports: `policies::compare`.
async fn policies(backend: Backend, server: &str, file: &Path, options: &Options) {
    let renamed = renamed_copy(file);
    let resync = resync_file(options.size_mb, 1);
    let files = support::policies::Files {
        same: file,
        renamed: &renamed,
        resync: &resync,
    };
    let postgres = (backend == Backend::Postgres).then_some(server);
    support::policies::compare(postgres, &files, options.rounds).await;
}

/// Uninterrupted resumable uploads of `file` against plain ones, on one server, each into an
/// empty account, three of each in turns (plain first, then resumable first, ...); the medians
/// and their ratio. What a resumable upload adds is the reader's state (a few hundred bytes)
/// stored with each batch.
async fn resumable(backend: Backend, server: &str, file: &Path, size_mb: u32) {
    let database = fresh_database(backend, server).await;
    let app = Server::start_this(&database.url).await;
    let rows = data_rows(file) as i64;
    let (mut plain, mut resumable) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for kind in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let account = format!("{}-{round}", if kind { "resumable" } else { "plain" });
            let (import, time) = upload_with(app.channel.clone(), &account, file, |m| {
                m.resumable = kind;
            })
            .await;
            assert_eq!(import.rows_imported, rows, "{}", import.error_message);
            assert_eq!(
                import.committed_bytes as u64,
                std::fs::metadata(file).unwrap().len()
            );
            if kind { &mut resumable } else { &mut plain }.push(time.as_secs_f64());
        }
    }
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[1]
    };
    let shown = |times: &[f64]| {
        times
            .iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!("  plain import, {size_mb} MiB:     {} s", shown(&plain));
    println!("  resumable upload, {size_mb} MiB: {} s", shown(&resumable));
    let (p, r) = (median(&mut plain), median(&mut resumable));
    println!(
        "  medians: plain {p:.2} s, resumable {r:.2} s, ratio resumable/plain: {:.3}",
        r / p
    );
    app.stop();
}

/// The same file uploaded by the gRPC client and by Chromium through the web console, each
/// into a fresh server of its own (so that its peak memory, VmHWM, is that upload's), three
/// of each in turns: the medians of peak RSS and of wall time, and their ratios.
async fn console(backend: Backend, server: &str, file: &Path, size_mb: u32) {
    let rows = data_rows(file) as i64;
    let (mut grpc, mut browser) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for in_browser in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let database = fresh_database(backend, server).await;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            let flags = ["--console-listen", &addr.to_string()];
            let binary = Path::new(env!("CARGO_BIN_EXE_bulk-import"));
            let app = Server::start_with(binary, &database.url, &flags, None).await;
            let (took, imported) = if in_browser {
                let wait = Duration::from_secs(900);
                support::browser::upload_in_browser(addr, "bench", file, wait).await
            } else {
                let (import, took) = upload(app.channel.clone(), "bench", file).await;
                (took, import.rows_imported)
            };
            assert_eq!(imported, rows);
            let run = (took.as_secs_f64(), mib(app.peak_rss()));
            if in_browser { &mut browser } else { &mut grpc }.push(run);
            app.stop();
        }
    }
    let median = |runs: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[1]
    };
    for (name, runs) in [("gRPC client", &grpc), ("browser, console", &browser)] {
        let shown: Vec<String> = runs
            .iter()
            .map(|(s, m)| format!("{s:.2} s {m:.0} MiB"))
            .collect();
        println!("  {name:<17} {size_mb} MiB: {}", shown.join(" / "));
    }
    let (gm, bm) = (median(&grpc, |r| r.1), median(&browser, |r| r.1));
    let (gt, bt) = (median(&grpc, |r| r.0), median(&browser, |r| r.0));
    println!(
        "  medians: peak RSS gRPC {gm:.0} MiB, browser {bm:.0} MiB, ratio browser/gRPC {:.3}; \
         time gRPC {gt:.2} s, browser {bt:.2} s, ratio {:.3}",
        bm / gm,
        bt / gt
    );
}

/// `file` with the first names changed (the same users otherwise), cached beside it.
fn renamed_copy(file: &Path) -> PathBuf {
    let path = file.with_extension("renamed.csv");
    if path.exists() {
        return path;
    }
    let partial = tempfile::NamedTempFile::new_in(path.parent().unwrap()).unwrap();
    let mut reader = csv::Reader::from_path(file).unwrap();
    let mut writer = csv::Writer::from_writer(partial.reopen().unwrap());
    writer.write_record(reader.headers().unwrap()).unwrap();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).unwrap() {
        let renamed: Vec<String> = record
            .iter()
            .enumerate()
            // Reversed: a changed name of the same length, the file stays under the limit.
            .map(|(i, cell)| {
                if i == 1 {
                    cell.chars().rev().collect()
                } else {
                    cell.to_owned()
                }
            })
            .collect();
        writer.write_record(&renamed).unwrap();
    }
    writer.flush().unwrap();
    partial.persist(&path).unwrap();
    path
}

fn proto_success() -> i32 {
    bulk_import::proto::ImportStatus::CompletedSuccess as i32
}

fn postgres_server() -> Option<String> {
    let url = std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    psql_admin(&url, "SELECT 1").then_some(url)
}

async fn tool(backend: Backend, server: &str, file: &Path) -> Option<(&'static str, Duration)> {
    match backend {
        Backend::Sqlite => sqlite3_import(file).map(|t| ("sqlite3 .import", t)),
        Backend::Postgres => {
            let database = fresh_database(backend, server).await;
            psql_copy_into(&database.url, file).map(|t| ("psql \\copy", t))
        }
    }
}

fn print_run(label: &str, run: &Run) {
    println!(
        "  {label:<28} {:>8.2} s {:>8.1} MB/s {:>10.0} rows/s   peak RSS {:>6.1} MiB   \
         server CPU {:>6.2} s ({:.2} s per million rows)",
        run.wall.as_secs_f64(),
        run.mb_per_s(),
        run.rows as f64 / run.wall.as_secs_f64(),
        mib(run.peak_rss),
        run.cpu.as_secs_f64(),
        per_million(run.cpu, run.rows)
    );
}

fn per_million(time: Duration, rows: u64) -> f64 {
    time.as_secs_f64() * 1e6 / rows.max(1) as f64
}

/// Parsing and validation alone, as an upload runs them (chunks of `CHUNK_BYTES` into the
/// reader, rows into batches), in this process on one core: CPU time per row.
fn parse_cost(file: &Path) -> (u64, Duration) {
    use bulk_import::domain::{FailedRow, NewUser, UserBatch};
    use bulk_import::import::parser::Limits;
    use bulk_import::import::reader::{FileReader, RowSink};
    use std::io::Read;

    struct Batches {
        batch: UserBatch,
        rows: u64,
    }
    impl RowSink for Batches {
        fn user(&mut self, row_number: u64, user: &NewUser<'_>) {
            self.batch.push_user(row_number, user);
            self.rows += 1;
            if self.batch.rows >= 32_768 {
                self.batch = UserBatch::with_capacity(32_768);
            }
        }
        fn failed(&mut self, row: FailedRow<'_>) {
            self.batch.push_failed_row(row);
            self.rows += 1;
        }
    }
    let mut sink = Batches {
        batch: UserBatch::with_capacity(32_768),
        rows: 0,
    };
    let mut reader = FileReader::new(u64::MAX, Limits::default());
    // Read beforehand: the server gets its chunks from gRPC messages, not from a file, and
    // reading is no part of parsing and validation.
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let cpu_before = thread_cpu();
    for chunk in bytes.chunks(CHUNK_BYTES) {
        reader.push(chunk, &mut sink).unwrap();
    }
    reader.finish(&mut sink).unwrap();
    (sink.rows, thread_cpu().saturating_sub(cpu_before))
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Three files of other users, one after another into one account, against each database's
/// loader loading the same files into one growing table, file by file in the same run.
async fn populated(backend: Backend, server: &str, size_mb: u32) {
    // The generator's rows are about 80 bytes: 3 million per 199 MiB file is more than one.
    let files: Vec<PathBuf> = (0..3u64)
        .map(|i| users_file_from(size_mb, 11 + i as u32, i * 3_000_000))
        .collect();
    println!(
        "  populated account: {} files of {size_mb} MiB into one account, each loader into one \
         growing table",
        files.len()
    );
    let database = fresh_database(backend, server).await;
    let app = Server::start_this(&database.url).await;
    let loader_db = tempfile::tempdir().unwrap();
    let loader_pg = match backend {
        Backend::Postgres => Some(fresh_database(backend, server).await),
        Backend::Sqlite => None,
    };
    for (i, file) in files.iter().enumerate() {
        let rows = data_rows(file);
        let cpu_before = app.cpu_time();
        let (import, wall) = upload(app.channel.clone(), "populated", file).await;
        let cpu = app.cpu_time().saturating_sub(cpu_before);
        assert_eq!(import.status, proto_success(), "{}", import.error_message);
        assert_eq!(import.rows_imported as u64, rows);
        let loader = match &loader_pg {
            Some(db) => psql_copy_into(&db.url, file).map(|t| ("psql \\copy", t)),
            None => sqlite3_import_into(&loader_db.path().join("loader.db"), file)
                .map(|t| ("sqlite3 .import", t)),
        };
        let ratio = match loader {
            Some((name, time)) => format!(
                "{name} {:.2} s, ratio {:.2}",
                time.as_secs_f64(),
                wall.as_secs_f64() / time.as_secs_f64()
            ),
            None => "(no loader installed: no ratio)".to_owned(),
        };
        println!(
            "    file {}: service {:>6.2} s, server CPU {:>6.2} s ({:.2} s per million rows); {ratio}",
            i + 1,
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            per_million(cpu, rows)
        );
    }
    println!("    peak RSS {:.1} MiB", mib(app.peak_rss()));
    app.stop();
}

#[tokio::main]
async fn main() {
    let options = options();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("bulk-import benchmark: {cores} cores, release build, 256 KiB chunks");
    let big = users_file(options.size_mb, 1);
    let big_rows = data_rows(&big);
    println!(
        "file: {} ({:.1} MiB, {big_rows} rows, all valid)",
        big.display(),
        mib(std::fs::metadata(&big).unwrap().len())
    );
    // Three passes, and their median: one pass of a few seconds moves by a third on a shared
    // machine.
    let mut per_row: Vec<f64> = (0..3)
        .map(|_| {
            let (rows, cpu) = parse_cost(&big);
            cpu.as_secs_f64() * 1e6 / rows.max(1) as f64
        })
        .collect();
    let passes = per_row
        .iter()
        .map(|us| format!("{us:.3}"))
        .collect::<Vec<_>>()
        .join(" / ");
    per_row.sort_by(f64::total_cmp);
    println!(
        "parsing and validation alone, one core: {passes} µs per row, median {:.3} µs per row",
        per_row[1]
    );
    if options.parse_only {
        return;
    }
    let postgres = postgres_server();
    for &backend in &options.backends {
        let server = match backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => match &postgres {
                Some(url) => url.clone(),
                None => {
                    println!("\n{}: skipped, no server answers", backend.name());
                    continue;
                }
            },
        };
        println!("\n{}", backend.name());
        if options.resumable_only {
            resumable(backend, &server, &big, options.size_mb).await;
            continue;
        }
        if options.loader_only {
            let postgres = (backend == Backend::Postgres).then_some(server.as_str());
            support::loader::compare(postgres, &big).await;
            continue;
        }
        if options.console_only {
            console(backend, &server, &big, options.size_mb).await;
            continue;
        }
        if options.populated_only {
            populated(backend, &server, options.size_mb).await;
            continue;
        }
        if options.policies || options.policies_only {
            policies(backend, &server, &big, &options).await;
        }
        if options.policies_only {
            continue;
        }
        resumable(backend, &server, &big, options.size_mb).await;
        let run = measure(backend, &server, std::slice::from_ref(&big)).await;
        assert_eq!(run.rows, big_rows);
        print_run(&format!("service, {} MiB", options.size_mb), &run);
        match tool(backend, &server, &big).await {
            Some((name, time)) => println!(
                "  {name:<28} {:>8.2} s    ratio service/tool: {:.2}",
                time.as_secs_f64(),
                run.wall.as_secs_f64() / time.as_secs_f64()
            ),
            None => println!("  (the database's own loader is not installed: no ratio)"),
        }
        if !options.scaling {
            continue;
        }
        let tenth = options.size_mb.div_ceil(10).max(1);
        let small = users_file(tenth, 2);
        let small_run = measure(backend, &server, &[small]).await;
        print_run(&format!("service, {tenth} MiB"), &small_run);
        println!(
            "  scaling {tenth} -> {} MiB: time x{:.2}, peak RSS x{:.2}",
            options.size_mb,
            run.wall.as_secs_f64() / small_run.wall.as_secs_f64(),
            run.peak_rss as f64 / small_run.peak_rss as f64
        );
        let eighth = options.size_mb.div_ceil(8).max(1);
        let part = users_file(eighth, 3);
        let parts = vec![part; 8];
        let concurrent = measure(backend, &server, &parts).await;
        print_run(&format!("service, 8 x {eighth} MiB at once"), &concurrent);
        println!(
            "  8 concurrent uploads: aggregate throughput x{:.2} of one upload",
            concurrent.mb_per_s() / run.mb_per_s()
        );
        populated(backend, &server, options.size_mb).await;
    }
}
