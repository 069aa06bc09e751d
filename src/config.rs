//! Command line and environment: every `serve` flag has an environment fallback, so the same
//! binary runs from a shell, a systemd unit or a Kubernetes manifest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::import::ImportConfig;
use crate::store::OpenOptions;

#[derive(Debug, Parser)]
#[command(
    name = "bulk-import",
    version,
    about = "Imports users into an account from CSV files",
    after_help = "Exit codes of the client commands: 0 when the import is Completed - Success or \
Completed - Nothing to Import (and for every other command that worked), 2 when it is \
Completed - Partial, 1 when it is Error - Parsing, Error - Unknown or Cancelled, and for any \
error (the server's answer, a server that cannot be reached, a file that cannot be read)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API.
    Serve(ServeArgs),
    /// Upload a CSV file and wait for the import to finish.
    Upload(UploadArgs),
    /// Show an import and its row errors.
    Get(GetArgs),
    /// List an account's imports, newest first.
    List(ListArgs),
    /// Follow an import's progress until it ends.
    Watch(WatchArgs),
    /// Print (or save) the CSV template.
    Template(TemplateArgs),
    /// Write an import's failed rows as a CSV to fix and upload again (`errors ID > fix.csv`).
    Errors(ImportArgs),
    /// Cancel a running import: it ends CANCELLED, with nothing imported.
    Cancel(ImportArgs),
    /// Undo an import: remove the users it created (not those updated since by another).
    Revert(ImportArgs),
    /// List an account's users, or only those one import created.
    Users(UsersArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BULK_IMPORT_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Database URL: sqlite://PATH (created when missing).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://bulk-import.db")]
    pub database_url: String,
    /// Largest accepted file, in bytes.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_UPLOAD_BYTES",
        default_value_t = 209_715_200
    )]
    pub max_upload_bytes: u64,
    /// Row errors stored per import; the counters stay exact beyond it.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_STORED_ROW_ERRORS",
        default_value_t = 100_000
    )]
    pub max_stored_row_errors: u64,
    /// On SIGTERM, how long running uploads may take to finish before they are ended.
    #[arg(long, env = "BULK_IMPORT_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// Serve Prometheus metrics at /metrics (and /livez, /readyz) on this address, for
    /// example 0.0.0.0:9090. Off when not given.
    #[arg(long, env = "BULK_IMPORT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "BULK_IMPORT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TOML file of bearer tokens scoped to accounts, read again when it changes. Without it
    /// the server runs open, and says so at start.
    #[arg(long, env = "BULK_IMPORT_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (with --tls-key). Read again when it changes.
    #[arg(long, env = "BULK_IMPORT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BULK_IMPORT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificates of the CAs whose client certificates are required (mutual TLS).
    #[arg(long, env = "BULK_IMPORT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Uploads running at once on this server; past it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "BULK_IMPORT_MAX_CONCURRENT_UPLOADS", default_value_t = 8)]
    pub max_concurrent_uploads: usize,
    /// Uploads of one account running at once on this server; past it, RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_CONCURRENT_UPLOADS_PER_ACCOUNT",
        default_value_t = 4
    )]
    pub max_concurrent_uploads_per_account: usize,
    /// An upload that sends nothing for this many seconds is ended (ERROR_UNKNOWN).
    #[arg(long, env = "BULK_IMPORT_UPLOAD_IDLE_TIMEOUT", default_value_t = 60)]
    pub upload_idle_timeout: u64,
    /// WatchImport streams open at once on this server; past it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "BULK_IMPORT_MAX_WATCHERS", default_value_t = 256)]
    pub max_watchers: usize,
    /// SQLite only: how long a write waits for a lock that another process holds, in ms.
    #[arg(
        long,
        env = "BULK_IMPORT_SQLITE_BUSY_TIMEOUT_MS",
        default_value_t = 30_000,
        hide = true
    )]
    pub sqlite_busy_timeout_ms: u64,
    /// SQLite only: the most pages the database file may have (`PRAGMA max_page_count`), past
    /// which writes fail as on a full disk. For tests of that fault.
    #[arg(long, env = "BULK_IMPORT_SQLITE_MAX_PAGES", hide = true)]
    pub sqlite_max_pages: Option<u64>,
    /// Rows per batch instead of the store's choice. For tests: no batch size may change an
    /// import's outcome.
    #[arg(long, env = "BULK_IMPORT_BATCH_ROWS", hide = true)]
    pub batch_rows: Option<usize>,
}

impl ServeArgs {
    pub fn import_config(&self) -> ImportConfig {
        ImportConfig {
            max_upload_bytes: self.max_upload_bytes,
            max_stored_row_errors: self.max_stored_row_errors,
            batch_rows: self.batch_rows,
            max_uploads: self.max_concurrent_uploads,
            max_uploads_per_account: self.max_concurrent_uploads_per_account,
            idle_timeout: Duration::from_secs(self.upload_idle_timeout),
            max_watchers: self.max_watchers,
            ..ImportConfig::default()
        }
    }

    pub fn store_options(&self) -> OpenOptions {
        OpenOptions {
            busy_timeout: Duration::from_millis(self.sqlite_busy_timeout_ms),
            max_pages: self.sqlite_max_pages,
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// `--on-conflict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnConflict {
    /// The row fails with ALREADY_EXISTS.
    Error,
    /// The user is left as it is.
    Skip,
    /// The row's non-empty cells replace the user's values.
    Update,
}

impl OnConflict {
    pub fn proto(self) -> crate::proto::ConflictPolicy {
        match self {
            OnConflict::Error => crate::proto::ConflictPolicy::Error,
            OnConflict::Skip => crate::proto::ConflictPolicy::Skip,
            OnConflict::Update => crate::proto::ConflictPolicy::Update,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the client commands find the server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's address.
    #[arg(
        long,
        env = "BULK_IMPORT_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// The account to act in.
    #[arg(long, env = "BULK_IMPORT_ACCOUNT")]
    pub account: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the answer as JSON (field names as in the proto), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// How the client commands connect: TLS, a client certificate, a bearer token.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectionArgs {
    /// PEM certificate of the CA that signed the server's certificate: connect with TLS.
    #[arg(long, env = "BULK_IMPORT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (with --tls-key).
    #[arg(long, env = "BULK_IMPORT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BULK_IMPORT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token, for a server with a tokens file.
    #[arg(long, env = "BULK_IMPORT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    #[command(flatten)]
    pub target: ServerArgs,
    /// Your id for the import, so that a retry is recognised (default: one is made).
    #[arg(long, default_value = "")]
    pub import_id: String,
    /// Bytes per chunk message.
    #[arg(long, default_value_t = 256 * 1024)]
    pub chunk_size: usize,
    /// Check the file as an import would, writing no user.
    #[arg(long)]
    pub dry_run: bool,
    /// What happens to a row whose email already belongs to a user of the account.
    #[arg(long, value_enum, default_value_t = OnConflict::Error)]
    pub on_conflict: OnConflict,
    /// The import whose failed rows this file corrects (its error report, fixed).
    #[arg(long)]
    pub retry_of: Option<String>,
    /// The CSV file.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: ServerArgs,
    /// Row errors to show at the most.
    #[arg(long, default_value_t = 100)]
    pub errors: u32,
    pub import_id: String,
}

/// A command on one import.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub target: ServerArgs,
    pub import_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct UsersArgs {
    #[command(flatten)]
    pub target: ServerArgs,
    /// Only the users this import created.
    #[arg(long = "import")]
    pub import_id: Option<String>,
    /// Users to show at the most (all of them when not given).
    #[arg(long)]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: ServerArgs,
    #[arg(long, default_value_t = 50)]
    pub limit: i32,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub target: ServerArgs,
    pub import_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct TemplateArgs {
    /// Not needed: the template is built into the binary, the same as the server's. Accepted
    /// so that older scripts keep working.
    #[arg(long, env = "BULK_IMPORT_SERVER", hide = true)]
    pub server: Option<String>,
    /// Save to this file instead of printing.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Print the template and its columns as JSON.
    #[arg(long)]
    pub json: bool,
}
