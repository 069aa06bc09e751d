//! Test harness: the real server on port 0 with a fresh database (a temporary SQLite file, or a
//! new database on the `TEST_DATABASE_URL` PostgreSQL server), driven through the generated
//! tonic client (as zero-to-production's `tests/api/helpers.rs`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bulk_import::app::{Application, READINESS_SERVICE};
use bulk_import::config::duration::KeepFor;
use bulk_import::config::{LogFormat, ServeArgs};
use bulk_import::proto::import_service_client::ImportServiceClient;
use bulk_import::proto::upload_import_request::Payload;
use bulk_import::proto::{self, Import, ImportStatus, RowError};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub const ACCOUNT: &str = "acme";
pub const HEADER: &str = "email,first_name,last_name,role,job_title,external_id\n";

/// The backends every test runs against (see `backend_tests!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Defines each test twice: `name::sqlite` and `name::postgres`, the same body with the
/// backend as argument. The Postgres one is ignored, with the reason, when the tests were built
/// without `TEST_DATABASE_URL` (see `build.rs`).
macro_rules! backend_tests {
    ($($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($backend: $crate::helpers::Backend) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(postgres_tests), ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)")]
                async fn postgres() {
                    run($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}
pub(crate) use backend_tests;

/// The PostgreSQL server for tests, from `TEST_DATABASE_URL`. The tests that need it are
/// ignored when it was not set at build time; one run with `--ignored` fails here.
pub fn postgres_url() -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("TEST_DATABASE_URL is not set; point it at a PostgreSQL server"),
    }
}

/// A fresh database for one test: a temporary SQLite file, or a new database on the
/// `TEST_DATABASE_URL` server.
pub use crate::support::FreshDatabase as TestDatabase;

impl TestDatabase {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::Postgres => Self::postgres(&postgres_url(), "bulk_import_test").await,
        }
    }
}

/// Read access to a test's database, for assertions on the users table.
enum Reader {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// `/metrics`, when `metrics_listen` was set.
    pub metrics_addr: Option<SocketAddr>,
    /// The web console, when `console_listen` was set.
    pub console_addr: Option<SocketAddr>,
    pub client: ImportServiceClient<Channel>,
    pub database_url: String,
    db: Reader,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    database: Option<TestDatabase>,
}

pub fn serve_args(database_url: &str) -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.to_owned(),
        max_upload_bytes: 209_715_200,
        max_stored_row_errors: 100_000,
        shutdown_grace_seconds: 20,
        log_format: LogFormat::Text,
        sqlite_busy_timeout_ms: 30_000,
        sqlite_max_pages: None,
        file_keys_beside_from: bulk_import::store::OpenOptions::default().file_keys_beside_from,
        batch_rows: None,
        auth_tokens_file: None,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        // Generous: some tests run many uploads and watchers at once on purpose.
        max_concurrent_uploads: 64,
        max_concurrent_uploads_per_account: 64,
        upload_idle_timeout: 60,
        max_watchers: 256,
        max_watchers_per_account: 64,
        allow_empty_tokens: false,
        max_connections: 512,
        max_streams_per_connection: 128,
        max_health_watchers: 64,
        max_pending_requests_per_connection: 4,
        max_pending_requests: 1024,
        request_message_timeout: Duration::from_secs(10),
        metrics_listen: None,
        retention: KeepFor(Some(Duration::from_secs(90 * 86_400))),
        dry_run_retention: KeepFor(Some(Duration::from_secs(7 * 86_400))),
        event_retention: KeepFor(Some(Duration::from_secs(7 * 86_400))),
        retention_interval: Duration::from_secs(600),
        events_nats_url: None,
        resume_window: Duration::from_secs(86_400),
        // The console tests turn it on, on a port of their own.
        console_listen: Some(bulk_import::config::console::ConsoleListen::Off),
        console_session_ttl: Duration::from_secs(8 * 3600),
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the server on a fresh database, with `configure` applied to its arguments.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let database = TestDatabase::new(backend).await;
    let mut app = spawn_on(&database.url, configure).await;
    app.database = Some(database);
    app
}

/// Starts the server on the database at `url`, which may already hold imports.
pub async fn spawn_on(database_url: &str, configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    init_tracing();
    let mut args = serve_args(database_url);
    configure(&mut args);
    let app = Application::bind(args).await.expect("bind");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let console_addr = app.console_addr();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .expect("server");
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    wait_ready(channel.clone()).await;
    let client = ImportServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let db = if database_url.starts_with("sqlite:") {
        let path = database_url.trim_start_matches("sqlite://");
        Reader::Sqlite(
            SqlitePool::connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
                .await
                .unwrap(),
        )
    } else {
        Reader::Postgres(
            PgPoolOptions::new()
                .max_connections(2)
                .connect(database_url)
                .await
                .unwrap(),
        )
    };
    TestApp {
        addr,
        metrics_addr,
        console_addr,
        client,
        database_url: database_url.to_owned(),
        db,
        shutdown: Some(shutdown),
        server: Some(server),
        database: None,
    }
}

async fn wait_ready(channel: Channel) {
    let mut health = HealthClient::new(channel);
    for _ in 0..200 {
        let status = health
            .check(HealthCheckRequest {
                service: READINESS_SERVICE.into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server never became ready");
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

impl TestApp {
    /// Stops the server gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy()
    }

    /// Uploads `file` in chunks of `chunk_size` bytes with a plain finish message.
    pub async fn upload(
        &self,
        account: &str,
        import_id: &str,
        file: &[u8],
        chunk_size: usize,
    ) -> Result<Import, tonic::Status> {
        let messages = upload_messages(account, import_id, "users.csv", file, chunk_size, finish());
        self.send(messages).await
    }

    /// Uploads `file` with these options of `ImportMetadata` (`validate_only`, `on_conflict`,
    /// `retry_of_import_id`).
    pub async fn upload_with(
        &self,
        account: &str,
        import_id: &str,
        file: &[u8],
        chunk_size: usize,
        options: impl FnOnce(&mut proto::ImportMetadata),
    ) -> Result<Import, tonic::Status> {
        let mut messages =
            upload_messages(account, import_id, "users.csv", file, chunk_size, finish());
        if let Some(Payload::Metadata(metadata)) = &mut messages[0].payload {
            options(metadata);
        }
        self.send(messages).await
    }

    /// Sends these messages as one upload and returns the finished import.
    pub async fn send(
        &self,
        messages: Vec<proto::UploadImportRequest>,
    ) -> Result<Import, tonic::Status> {
        let mut client = self.client.clone();
        let response = client
            .upload_import(tokio_stream::iter(messages))
            .await?
            .into_inner();
        Ok(response.import.expect("an import"))
    }

    pub async fn get(&self, account: &str, import_id: &str) -> Result<Import, tonic::Status> {
        let mut client = self.client.clone();
        let response = client
            .get_import(proto::GetImportRequest {
                account_id: account.into(),
                import_id: import_id.into(),
                errors_page_size: 1,
                errors_page_token: String::new(),
            })
            .await?;
        Ok(response.into_inner().import.unwrap())
    }

    /// Every row error of an import, following the pages.
    pub async fn errors(&self, account: &str, import_id: &str) -> Vec<RowError> {
        import_and_errors(&mut self.client.clone(), account, import_id)
            .await
            .1
    }

    pub async fn list(&self, account: &str) -> Vec<Import> {
        let mut client = self.client.clone();
        client
            .list_imports(proto::ListImportsRequest {
                account_id: account.into(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .imports
    }

    /// Users stored for an import, read straight from the database.
    pub async fn users_of(&self, account: &str, import_id: &str) -> i64 {
        let sql = "SELECT count(*) FROM users u JOIN imports i ON i.import_key = u.import_key \
                   WHERE i.account_id = $1 AND i.import_id = $2";
        match &self.db {
            Reader::Sqlite(pool) => {
                sqlx::query_scalar(sql)
                    .bind(account)
                    .bind(import_id)
                    .fetch_one(pool)
                    .await
            }
            Reader::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(account)
                    .bind(import_id)
                    .fetch_one(pool)
                    .await
            }
        }
        .unwrap()
    }

    pub async fn user_count(&self) -> i64 {
        let sql = "SELECT count(*) FROM users";
        match &self.db {
            Reader::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Reader::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .unwrap()
    }

    /// The stored users of an account as `email|first|last|role|title|external_id`, by email.
    pub async fn users(&self, account: &str) -> Vec<String> {
        type Row = (String, String, String, String, String, Option<String>);
        // Byte order, the same on both backends whatever the collation.
        let sql = "SELECT email, first_name, last_name, role, job_title, external_id FROM users \
                   WHERE account_key = (SELECT account_key FROM accounts WHERE account_id = $1)";
        let mut rows: Vec<Row> = match &self.db {
            Reader::Sqlite(pool) => sqlx::query_as(sql).bind(account).fetch_all(pool).await,
            Reader::Postgres(pool) => sqlx::query_as(sql).bind(account).fetch_all(pool).await,
        }
        .unwrap();
        rows.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        rows.into_iter()
            .map(|(e, f, l, r, t, x)| format!("{e}|{f}|{l}|{r}|{t}|{}", x.unwrap_or_default()))
            .collect()
    }

    /// An import's status and counters as stored, read straight from the database (the
    /// server answers with live counters while it runs).
    pub async fn stored(&self, account: &str, import_id: &str) -> (String, i64, i64) {
        let sql = "SELECT status, rows_processed, rows_imported FROM imports \
                   WHERE account_id = $1 AND import_id = $2";
        match &self.db {
            Reader::Sqlite(pool) => {
                sqlx::query_as(sql)
                    .bind(account)
                    .bind(import_id)
                    .fetch_one(pool)
                    .await
            }
            Reader::Postgres(pool) => {
                sqlx::query_as(sql)
                    .bind(account)
                    .bind(import_id)
                    .fetch_one(pool)
                    .await
            }
        }
        .unwrap()
    }

    /// Runs a statement on the database directly, as another program would. Tests only: the
    /// text may be built (a table's name), never from a client's input.
    pub async fn execute(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        if self.database_url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = PgConnection::connect(&self.database_url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }

    /// The fresh database this app was started on.
    pub fn database(&self) -> &TestDatabase {
        self.database.as_ref().expect("started by spawn_app")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An import as its last page of row errors shows it, and every row error, following the
/// pages, through `client` (any server's).
pub async fn import_and_errors(
    client: &mut ImportServiceClient<Channel>,
    account: &str,
    import_id: &str,
) -> (Import, Vec<RowError>) {
    let mut token = String::new();
    let mut errors = Vec::new();
    // Bounded: a server that handed out tokens forever must fail the test, not hang it.
    for _ in 0..10_000 {
        let page = client
            .get_import(proto::GetImportRequest {
                account_id: account.into(),
                import_id: import_id.into(),
                errors_page_size: 1000,
                errors_page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        errors.extend(page.errors);
        token = page.next_errors_page_token;
        if token.is_empty() {
            return (page.import.unwrap(), errors);
        }
    }
    panic!("more than 10,000 pages of row errors");
}

pub fn finish() -> proto::UploadFinish {
    proto::UploadFinish {
        size_bytes: None,
        sha256: String::new(),
    }
}

pub fn metadata(account: &str, import_id: &str, filename: &str) -> proto::UploadImportRequest {
    proto::UploadImportRequest {
        payload: Some(Payload::Metadata(proto::ImportMetadata {
            account_id: account.into(),
            r#type: proto::ImportType::Users as i32,
            filename: filename.into(),
            import_id: import_id.into(),
            ..Default::default()
        })),
    }
}

pub fn chunk(bytes: &[u8]) -> proto::UploadImportRequest {
    proto::UploadImportRequest {
        payload: Some(Payload::Chunk(bytes.to_vec().into())),
    }
}

pub fn finish_message(finish: proto::UploadFinish) -> proto::UploadImportRequest {
    proto::UploadImportRequest {
        payload: Some(Payload::Finish(finish)),
    }
}

pub fn upload_messages(
    account: &str,
    import_id: &str,
    filename: &str,
    file: &[u8],
    chunk_size: usize,
    finish: proto::UploadFinish,
) -> Vec<proto::UploadImportRequest> {
    let mut messages = vec![metadata(account, import_id, filename)];
    messages.extend(file.chunks(chunk_size.max(1)).map(chunk));
    messages.push(finish_message(finish));
    messages
}

/// A time the server stamped on an import.
pub fn system_time(timestamp: Option<&prost_types::Timestamp>) -> std::time::SystemTime {
    std::time::SystemTime::try_from(*timestamp.expect("a timestamp")).unwrap()
}

pub fn status(import: &Import) -> ImportStatus {
    ImportStatus::try_from(import.status).unwrap()
}

/// `(row, column, code)` of each error, for exact comparisons.
pub fn codes(errors: &[RowError]) -> Vec<(i64, String, String)> {
    errors
        .iter()
        .map(|e| (e.row_number, e.column.clone(), e.code.clone()))
        .collect()
}

/// The counts `gen_users_csv.py --stats` reports.
#[derive(Debug, Clone, Copy)]
pub struct GenStats {
    pub rows: i64,
    pub valid: i64,
    pub invalid: i64,
    pub duplicates: i64,
    pub bytes: i64,
}

/// Runs the generator with `args` and `--stats`; returns the file and its counts.
pub fn generate(args: &[&str]) -> (Vec<u8>, GenStats) {
    let output = Command::new("python3")
        .arg(crate::support::generator())
        .args(args)
        .arg("--stats")
        .output()
        .expect("python3 runs the generator");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&output.stderr).unwrap();
    let field = |name: &str| {
        stats[name]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} in {stats}"))
    };
    let counts = GenStats {
        rows: field("rows"),
        valid: field("valid"),
        invalid: field("invalid"),
        duplicates: field("duplicates"),
        bytes: field("bytes"),
    };
    (output.stdout, counts)
}

/// Closes the database to new connections and drops the open ones: to the service, that is
/// the database server going away.
pub async fn take_database_away(database: &TestDatabase, away: bool) {
    let name = database.postgres_name().unwrap();
    let mut admin = PgConnection::connect(&postgres_url()).await.unwrap();
    let allow = format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {}", !away);
    sqlx::query(AssertSqlSafe(allow))
        .execute(&mut admin)
        .await
        .unwrap();
    if away {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(name)
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

pub async fn wait_readiness(app: &TestApp, wanted: ServingStatus) -> Duration {
    let start = Instant::now();
    while crate::health::check(app, READINESS_SERVICE).await != wanted {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "readiness never became {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}
