//! What the benchmark (`benches/import.rs`) and its small CI version (`tests/api/memory.rs`)
//! share: a server process with its peak memory, an upload through the real gRPC client, and
//! the databases' own loaders run on the same file for comparison.

#![allow(dead_code)]

pub mod browser;
pub mod loader;
pub mod policies;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulk_import::proto::import_service_client::ImportServiceClient;
use bulk_import::proto::upload_import_request::Payload;
use bulk_import::proto::{self, ImportMetadata, UploadFinish, UploadImportRequest};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A fresh, empty database: a SQLite file in a temporary directory, or a new database on a
/// PostgreSQL server, dropped afterwards.
pub struct FreshDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The server's URL and the database's name.
    postgres: Option<(String, String)>,
}

static POSTGRES_DATABASES: AtomicUsize = AtomicUsize::new(0);
static STALE_DROPPED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

impl FreshDatabase {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bulk-import.db").display());
        Self {
            url,
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A new database named `{prefix}_{pid}_{n}` on the server `server`. The first call of a
    /// process also drops the databases of this prefix that earlier, interrupted runs left.
    pub async fn postgres(server: &str, prefix: &str) -> Self {
        let mut admin = PgConnection::connect(server)
            .await
            .expect("the PostgreSQL server answers");
        let own = format!("{prefix}_{}_", std::process::id());
        STALE_DROPPED
            .get_or_init(|| async {
                let mut admin = PgConnection::connect(server).await.unwrap();
                let stale: Vec<String> = sqlx::query_scalar(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, $1) \
                     AND NOT starts_with(datname, $2)",
                )
                .bind(format!("{prefix}_"))
                .bind(&own)
                .fetch_all(&mut admin)
                .await
                .unwrap();
                for name in stale {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await;
                }
            })
            .await;
        let name = format!("{own}{}", POSTGRES_DATABASES.fetch_add(1, Ordering::SeqCst));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = url::Url::parse(server).unwrap();
        url.set_path(&name);
        Self {
            url: url.to_string(),
            _dir: None,
            postgres: Some((server.to_owned(), name)),
        }
    }

    /// The database's name on the Postgres server.
    pub fn postgres_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|(_, name)| name.as_str())
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if let Some((server, name)) = self.postgres.take() {
            // Drop is not async: a thread with its own runtime drops the database.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(mut admin) = PgConnection::connect(&server).await {
                        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        let _ = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await;
                    }
                });
            })
            .join();
        }
    }
}

/// Chunk size of the uploads, as a typical client sends them.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The team's generator beside the repository, or the vendored copy.
pub fn generator() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/bench/gen_users_csv.py");
    if shared.exists() {
        shared
    } else {
        root.join("bench/gen_users_csv.py")
    }
}

/// A generated Users file of about `size_mb` MiB (all rows valid), cached under
/// `target/bench-data`.
pub fn users_file(size_mb: u32, seed: u32) -> PathBuf {
    users_file_from(size_mb, seed, 0)
}

/// `users_file` whose users are numbered from `start`: files with ranges that do not overlap
/// hold different users (the generator's `--start`), for accounts that already hold some.
pub fn users_file_from(size_mb: u32, seed: u32, start: u64) -> PathBuf {
    let name = match start {
        0 => format!("users-{size_mb}mb-seed{seed}.csv"),
        start => format!("users-{size_mb}mb-seed{seed}-from{start}.csv"),
    };
    generated(
        &name,
        &[
            "--size-mb",
            &size_mb.to_string(),
            "--seed",
            &seed.to_string(),
            "--start",
            &start.to_string(),
        ],
    )
}

/// The re-sync of `users_file(size_mb, seed)`: the same users, 5% of them with another first
/// name and 5% replaced by new users (the generator's `--changed-rate 0.05 --new-rate 0.05`).
pub fn resync_file(size_mb: u32, seed: u32) -> PathBuf {
    let name = format!("users-{size_mb}mb-seed{seed}-resync.csv");
    generated(
        &name,
        &[
            "--size-mb",
            &size_mb.to_string(),
            "--seed",
            &seed.to_string(),
            "--changed-rate",
            "0.05",
            "--new-rate",
            "0.05",
        ],
    )
}

/// The generator's output for `args`, cached under `target/bench-data` as `name`.
fn generated(name: &str, args: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if !path.exists() {
        // Written aside, then renamed: tests running at once may generate the same file.
        let partial = tempfile::NamedTempFile::new_in(&dir).unwrap();
        let out = partial.reopen().unwrap();
        let status = Command::new("python3")
            .arg(generator())
            .args(args)
            .stdout(out)
            .status()
            .expect("python3 runs the generator");
        assert!(status.success());
        partial.persist(&path).unwrap();
    }
    path
}

pub fn data_rows(file: &Path) -> u64 {
    let mut count = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut f = std::fs::File::open(file).unwrap();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        count += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    count.saturating_sub(1)
}

/// The server binary, serving on a free port.
pub struct Server {
    child: Child,
    pub channel: Channel,
    /// `http://127.0.0.1:PORT`, for more connections.
    pub url: String,
}

impl Server {
    /// The binary under test or bench.
    pub async fn start_this(database_url: &str) -> Self {
        Self::start(Path::new(env!("CARGO_BIN_EXE_bulk-import")), database_url).await
    }

    pub async fn start(binary: &Path, database_url: &str) -> Self {
        Self::start_with(binary, database_url, &[], None).await
    }

    /// The server with more flags, its log (stdout) written to `log` when given, at debug
    /// level there.
    pub async fn start_with(
        binary: &Path,
        database_url: &str,
        flags: &[&str],
        log: Option<&Path>,
    ) -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let (level, stdout) = match log {
            Some(path) => (
                "debug".to_owned(),
                Stdio::from(std::fs::File::create(path).unwrap()),
            ),
            None => (
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
                Stdio::null(),
            ),
        };
        let child = Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url])
            .args(flags)
            // Many servers run at once: no console on the default port (a flag turns it on).
            .env("BULK_IMPORT_CONSOLE_LISTEN", "off")
            .env("RUST_LOG", level)
            .stdout(stdout)
            .spawn()
            .expect("the server binary starts");
        let url = format!("http://127.0.0.1:{port}");
        let channel = Channel::from_shared(url.clone()).unwrap().connect_lazy();
        let mut health = HealthClient::new(channel.clone());
        let start = Instant::now();
        loop {
            let ready = health
                .check(HealthCheckRequest {
                    service: "bulkimport.v1.ImportService".into(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the server never got ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            channel,
            url,
        }
    }

    /// CPU time the server used so far, user and system (utime and stime of /proc/PID/stat).
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the command name in parentheses, which may hold spaces: fields 3 onwards.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15, that is 11 and 12 after the name.
        // SAFETY: sysconf only reads a system setting.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / per_second)
    }

    /// Resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Starts the peak resident memory (VmHWM) afresh from the current one, so that the next
    /// `peak_rss` is that of what runs in between (`clear_refs`, Linux 4.0 and later).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("the server's peak RSS can be reset");
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    pub fn client(&self) -> ImportServiceClient<Channel> {
        ImportServiceClient::new(self.channel.clone())
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait: the server shuts down gracefully.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads `file` the way a client does: read as it streams, in `CHUNK_BYTES` chunks, with the
/// size and SHA-256 in the finish message. Returns the finished import and the wall time.
pub async fn upload(channel: Channel, account: &str, file: &Path) -> (proto::Import, Duration) {
    upload_with(channel, account, file, |_| {}).await
}

/// `upload` with these options of `ImportMetadata` (a dry run, a conflict policy).
pub async fn upload_with(
    channel: Channel,
    account: &str,
    file: &Path,
    options: impl FnOnce(&mut ImportMetadata),
) -> (proto::Import, Duration) {
    let mut client = ImportServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let start = Instant::now();
    let path = file.to_owned();
    let mut metadata = ImportMetadata {
        account_id: account.to_owned(),
        r#type: proto::ImportType::Users as i32,
        filename: "users.csv".into(),
        import_id: String::new(),
        ..Default::default()
    };
    options(&mut metadata);
    let metadata = UploadImportRequest {
        payload: Some(Payload::Metadata(metadata)),
    };
    tx.send(metadata).await.unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(path).unwrap();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut filled = 0;
            while filled < buf.len() {
                match f.read(&mut buf[filled..]).unwrap() {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            hasher.update(&buf);
            size += filled as u64;
            let chunk = UploadImportRequest {
                payload: Some(Payload::Chunk(buf.into())),
            };
            if tx.blocking_send(chunk).is_err() {
                return;
            }
        }
        let finish = UploadImportRequest {
            payload: Some(Payload::Finish(UploadFinish {
                size_bytes: Some(size as i64),
                sha256: hex::encode(hasher.finalize()),
            })),
        };
        let _ = tx.blocking_send(finish);
    });
    let response = client.upload_import(ReceiverStream::new(rx)).await;
    reader.await.unwrap();
    let import = response
        .expect("the upload succeeds")
        .into_inner()
        .import
        .unwrap();
    (import, start.elapsed())
}

/// `sqlite3 .import` of `file` into a table with a case-insensitive unique index on email, with
/// the CLI's default settings. `None` when the sqlite3 CLI is not installed.
pub fn sqlite3_import(file: &Path) -> Option<Duration> {
    let dir = tempfile::tempdir().unwrap();
    sqlite3_import_into(&dir.path().join("import.db"), file)
}

/// `sqlite3_import` into the database file `db`, whose table grows with each file.
pub fn sqlite3_import_into(db: &Path, file: &Path) -> Option<Duration> {
    let script = format!(
        "CREATE TABLE IF NOT EXISTS users (email TEXT, first_name TEXT, last_name TEXT, \
         role TEXT, job_title TEXT, external_id TEXT);\n\
         CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (email COLLATE NOCASE);\n\
         .mode csv\n\
         .import --skip 1 {} users\n",
        file.display()
    );
    let start = Instant::now();
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    use std::io::Write;
    child.stdin.take()?.write_all(script.as_bytes()).ok()?;
    let status = child.wait().ok()?;
    status.success().then(|| start.elapsed())
}

/// `psql \copy` of `file` into a table with a case-insensitive unique index on email, in the
/// database at `database_url`: made on the first call, growing with each file (a fresh
/// database gives the one-file figure). `None` when psql is not installed.
pub fn psql_copy_into(database_url: &str, file: &Path) -> Option<Duration> {
    let create = "CREATE TABLE IF NOT EXISTS users (email text, first_name text, \
                  last_name text, role text, job_title text, external_id text); \
                  CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (lower(email));";
    let ok = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", database_url, "-c", create])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let copy = format!("\\copy users FROM '{}' CSV HEADER", file.display());
    let start = Instant::now();
    let ok = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", database_url, "-c", &copy])
        .stdout(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| start.elapsed())
}

/// Runs SQL on the Postgres server (as the admin database), for creating and dropping
/// benchmark databases.
pub fn psql_admin(server_url: &str, sql: &str) -> bool {
    Command::new("psql")
        .args(["-q", server_url, "-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
