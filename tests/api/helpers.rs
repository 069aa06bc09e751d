//! Test harness: the real server on port 0 with a temporary SQLite file, driven through the
//! generated tonic client (as zero-to-production's `tests/api/helpers.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulk_import::app::{Application, READINESS_SERVICE};
use bulk_import::config::{LogFormat, ServeArgs};
use bulk_import::proto::import_service_client::ImportServiceClient;
use bulk_import::proto::upload_import_request::Payload;
use bulk_import::proto::{self, Import, ImportStatus, RowError};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub const ACCOUNT: &str = "acme";
pub const HEADER: &str = "email,first_name,last_name,role,job_title,external_id\n";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: ImportServiceClient<Channel>,
    pub db_path: PathBuf,
    db: SqlitePool,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub fn serve_args(db_path: &Path) -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", db_path.display()),
        max_upload_bytes: 209_715_200,
        max_stored_row_errors: 100_000,
        shutdown_grace_seconds: 20,
        log_format: LogFormat::Text,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server on a fresh database, with `configure` applied to its arguments.
pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("bulk-import.db");
    let mut app = spawn_on(&db_path, configure).await;
    app._dir = Some(dir);
    app
}

/// Starts the server on the SQLite file `db_path`, which may already exist.
pub async fn spawn_on(db_path: &Path, configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    init_tracing();
    let mut args = serve_args(db_path);
    configure(&mut args);
    let app = Application::bind(args).await.expect("bind");
    let addr = app.local_addr();
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
    let db = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(db_path)
            .read_only(true),
    )
    .await
    .unwrap();
    TestApp {
        addr,
        client,
        db_path: db_path.to_owned(),
        db,
        shutdown: Some(shutdown),
        server: Some(server),
        _dir: None,
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
        let mut client = self.client.clone();
        let mut token = String::new();
        let mut errors = Vec::new();
        loop {
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
                return errors;
            }
        }
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
        sqlx::query_scalar(
            "SELECT count(*) FROM users u JOIN imports i ON i.import_key = u.import_key \
             WHERE i.account_id = ?1 AND i.import_id = ?2",
        )
        .bind(account)
        .bind(import_id)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    pub async fn user_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// The stored users of an account as `email|first|last|role|title|external_id`, by email.
    pub async fn users(&self, account: &str) -> Vec<String> {
        let rows: Vec<(String, String, String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT email, first_name, last_name, role, job_title, external_id FROM users \
                 WHERE account_id = ?1 ORDER BY email",
        )
        .bind(account)
        .fetch_all(&self.db)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(e, f, l, r, t, x)| format!("{e}|{f}|{l}|{r}|{t}|{}", x.unwrap_or_default()))
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
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

/// The team's generator: `../shared/bench/gen_users_csv.py` beside the repository, or the
/// vendored copy in `bench/`.
pub fn generator() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/bench/gen_users_csv.py");
    if shared.exists() {
        shared
    } else {
        root.join("bench/gen_users_csv.py")
    }
}

/// Runs the generator with `args` and `--stats`; returns the file and its counts.
pub fn generate(args: &[&str]) -> (Vec<u8>, GenStats) {
    let output = Command::new("python3")
        .arg(generator())
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
