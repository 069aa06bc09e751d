//! Command line and environment: every `serve` flag has an environment fallback, so the same
//! binary runs from a shell, a systemd unit or a Kubernetes manifest.
//!
//! The client commands take `--server`, `--account` and the connection flags the same way
//! (`BULK_IMPORT_SERVER`, `BULK_IMPORT_ACCOUNT`, `BULK_IMPORT_TOKEN`, ...), so a shell sets
//! them once and runs commands with an import id alone.
//!
//! A note for whoever edits this file: clap turns doc comments into `--help` text. The
//! `///` on a flag or a positional argument is its help, and on a `ValueEnum` variant the
//! help of that value. On an `Args` struct that a `Command` variant carries, the variant's
//! own doc wins, so those structs' docs are for rustdoc only; so is the doc of a `flatten`
//! or `subcommand` field. The docs of `Cli` and `Command` stay one paragraph, so that they
//! add no long help to the top-level `--help`, whose text `Cli`'s attributes set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod commands;
pub mod console;
pub mod duration;
pub mod limit;

pub use commands::{
    EventsArgs, GetArgs, ImportArgs, InviteArgs, ListArgs, ResumeArgs, TemplateArgs, UploadArgs,
    UsersArgs, WatchArgs,
};

use crate::import::ImportConfig;
use crate::import::retention::Retention;
use crate::store::OpenOptions;

/// The command line: `bulk-import <COMMAND> [FLAGS]`; every flag belongs to its command.
#[derive(Debug, Parser)]
#[command(
    name = "bulk-import",
    version,
    about = "Imports users into an account from CSV files",
    after_help = "Exit codes of the client commands: 0 when the import is Completed - Success or \
Completed - Nothing to Import (and for every other command that worked), 2 when it is \
Completed - Partial, 1 when it is Error - Parsing, Error - Unknown or Cancelled, and for any \
error (the server's answer, a server that cannot be reached, a file that cannot be read), 64 \
when the command line is wrong (nothing was sent)."
)]
pub struct Cli {
    /// What to do: `serve`, or one of the client commands.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands: `serve` runs the server, and each other one is a client command that `main`
/// hands to the function of the same name in `cli` (`template` alone needs no server).
// Parsed once per process: the size of `serve`'s flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (and the web console).
    Serve(ServeArgs),
    /// Upload a CSV file and wait for the import to finish.
    Upload(UploadArgs),
    /// Resume the upload of an import uploaded with --resumable whose stream broke.
    Resume(ResumeArgs),
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
    /// Invite an import's held users (`upload --hold-invitations`), or users by address.
    Invite(InviteArgs),
    /// Print the account's user event feed (`--follow` to keep following).
    Events(EventsArgs),
}

/// `bulk-import serve`: where to listen, which database, the limits, the security files.
///
/// Every flag has an environment variable, for containers. The limits are per server, not
/// per deployment: 8 uploads at once (4 per account, so that one account cannot take every
/// place), 256 `WatchImport` streams, files up to 200 MiB. Past one of them a call is
/// RESOURCE_EXHAUSTED; the concurrency limits' messages name their flag. Row errors past
/// `--max-stored-row-errors` are not stored, only counted (`row_errors_omitted`).
///
/// The hidden flags are tuning and test hooks (SQLite's busy timeout, a page cap that fakes a
/// full disk, a fixed batch size), left out of `--help`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BULK_IMPORT_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Database URL: sqlite://PATH (one replica; the file is created when missing) or
    /// postgres://USER@HOST/DB (several replicas; the database must exist).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://bulk-import.db")]
    pub database_url: String,
    /// Largest accepted file, in bytes.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_UPLOAD_BYTES",
        default_value_t = 209_715_200,
        value_parser = limit::at_least_one::<u64>
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
    /// Accept a tokens file that lists no token (every call refused). Without it such a file
    /// is refused like a broken one: at start the server stops, and on a change the tokens read
    /// before stay. A file can also say `allow_empty = true`.
    #[arg(long, env = "BULK_IMPORT_ALLOW_EMPTY_TOKENS")]
    pub allow_empty_tokens: bool,
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
    #[arg(long, env = "BULK_IMPORT_MAX_CONCURRENT_UPLOADS", default_value_t = 8,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_concurrent_uploads: usize,
    /// Uploads of one account running at once on this server; past it, RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_CONCURRENT_UPLOADS_PER_ACCOUNT",
        default_value_t = 4,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_concurrent_uploads_per_account: usize,
    /// An upload that sends no byte of its file for this many seconds is ended (ERROR_UNKNOWN);
    /// empty chunks do not count.
    #[arg(long, env = "BULK_IMPORT_UPLOAD_IDLE_TIMEOUT", default_value_t = 60,
        value_parser = limit::at_least_one::<u64>
    )]
    pub upload_idle_timeout: u64,
    /// WatchImport streams open at once on this server; past it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "BULK_IMPORT_MAX_WATCHERS", default_value_t = 256,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_watchers: usize,
    /// WatchImport streams of one account open at once on this server; past it,
    /// RESOURCE_EXHAUSTED. One account cannot take every watcher's place.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_WATCHERS_PER_ACCOUNT",
        default_value_t = 64,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_watchers_per_account: usize,
    /// Connections open at once on the gRPC port; past it, a new connection is closed as soon
    /// as it is accepted (logged at most once a second).
    #[arg(long, env = "BULK_IMPORT_MAX_CONNECTIONS", default_value_t = 512,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_connections: usize,
    /// HTTP/2 streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); past
    /// it, the client's library waits or is refused.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 128,
        value_parser = limit::at_least_one::<u32>
    )]
    pub max_streams_per_connection: u32,
    /// Streams open at once that need no token: health watches (grpc.health.v1.Health/Watch)
    /// and reflection (grpcurl's describe and list); past it, RESOURCE_EXHAUSTED.
    #[arg(long, env = "BULK_IMPORT_MAX_HEALTH_WATCHERS", default_value_t = 64,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_health_watchers: usize,
    /// Requests whose message has not arrived whole yet (HEADERS without the end of the
    /// request) that each connection may hold, whatever other connections do. Past it, a
    /// connection takes from the places all share (--max-pending-requests). gRPC clients send
    /// a request's message with its headers: this bounds what a broken or hostile client
    /// holds. Uploads and reflection, whose requests are streams, are not counted.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_PENDING_REQUESTS_PER_CONNECTION",
        default_value_t = 4,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_pending_requests_per_connection: usize,
    /// Requests whose message has not arrived whole yet that connections past their own
    /// places share; past it, RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "BULK_IMPORT_MAX_PENDING_REQUESTS",
        default_value_t = 1024,
        value_parser = limit::at_least_one::<usize>
    )]
    pub max_pending_requests: usize,
    /// How long a request's message may take to arrive whole once its headers came, such as
    /// 10s; then the call ends with DEADLINE_EXCEEDED. Not uploads (`--upload-idle-timeout`)
    /// nor reflection.
    #[arg(
        long,
        env = "BULK_IMPORT_REQUEST_MESSAGE_TIMEOUT",
        default_value = "10s",
        value_parser = duration::positive
    )]
    pub request_message_timeout: Duration,
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
    /// PostgreSQL only: file keys per planned batch from which part of them are written on a
    /// second connection. For tests: no split may change an import's outcome.
    #[arg(
        long,
        env = "BULK_IMPORT_FILE_KEYS_BESIDE_FROM",
        default_value_t = OpenOptions::default().file_keys_beside_from,
        hide = true,
        value_parser = limit::at_least_one::<usize>
    )]
    pub file_keys_beside_from: usize,
    /// How long a finished import keeps its row errors and fix-up file, such as 90d; then
    /// they are removed (the import stays, with its counters). `off`: for ever.
    #[arg(
        long,
        env = "BULK_IMPORT_RETENTION",
        default_value = "90d",
        value_parser = duration::keep_for
    )]
    pub retention: duration::KeepFor,
    /// The same for dry runs, whose details matter only until the import they check: 7d by
    /// default. `off`: for ever.
    #[arg(
        long,
        env = "BULK_IMPORT_DRY_RUN_RETENTION",
        default_value = "7d",
        value_parser = duration::keep_for
    )]
    pub dry_run_retention: duration::KeepFor,
    /// How long the user event feed keeps its events (WatchUserEvents), such as 7d; then they
    /// are removed, and a follower whose cursor is older is told to start again. `off`: for
    /// ever.
    #[arg(
        long,
        env = "BULK_IMPORT_EVENT_RETENTION",
        default_value = "7d",
        value_parser = duration::keep_for
    )]
    pub event_retention: duration::KeepFor,
    /// Publishes every user event to NATS JetStream at this URL (stream BULK_IMPORT_EVENTS,
    /// created if missing), such as nats://127.0.0.1:4222. One replica publishes at a time.
    #[arg(
        long,
        env = "BULK_IMPORT_EVENTS_NATS_URL",
        value_name = "URL",
        value_parser = crate::relay::check_url
    )]
    pub events_nats_url: Option<String>,
    /// How long a resumable upload whose stream broke waits for its client to resume it, such
    /// as 24h, 90m or 3s; then its import ends ERROR_UNKNOWN with nothing imported.
    #[arg(
        long,
        env = "BULK_IMPORT_RESUME_WINDOW",
        default_value = "24h",
        value_parser = duration::positive
    )]
    pub resume_window: Duration,
    /// Serves the web console on this address, such as 0.0.0.0:8080; `off` serves none. Not
    /// given: 127.0.0.1:8080 (loopback only), or no console if that port is taken. Its sign-in
    /// takes the tokens of --auth-tokens-file; without that file it is as open as the gRPC
    /// port.
    #[arg(
        long,
        env = "BULK_IMPORT_CONSOLE_LISTEN",
        value_name = "ADDR|off",
        value_parser = console::console_listen
    )]
    pub console_listen: Option<console::ConsoleListen>,
    /// How long a console session lasts after its sign-in, such as 8h or 30m.
    #[arg(
        long,
        env = "BULK_IMPORT_CONSOLE_SESSION_TTL",
        default_value = "8h",
        value_parser = duration::positive
    )]
    pub console_session_ttl: Duration,
    /// How often the retention's clean-up runs. For tests.
    #[arg(
        long,
        env = "BULK_IMPORT_RETENTION_INTERVAL",
        default_value = "10m",
        value_parser = duration::positive,
        hide = true
    )]
    pub retention_interval: Duration,
    /// Rows per batch instead of the store's choice. For tests: no batch size may change an
    /// import's outcome.
    #[arg(long, env = "BULK_IMPORT_BATCH_ROWS", hide = true,
        value_parser = limit::at_least_one::<usize>
    )]
    pub batch_rows: Option<usize>,
}

impl ServeArgs {
    /// The import layer's settings from these flags; what no flag sets (the parser's record
    /// limits) keeps `ImportConfig`'s default.
    pub fn import_config(&self) -> ImportConfig {
        ImportConfig {
            max_upload_bytes: self.max_upload_bytes,
            max_stored_row_errors: self.max_stored_row_errors,
            batch_rows: self.batch_rows,
            max_uploads: self.max_concurrent_uploads,
            max_uploads_per_account: self.max_concurrent_uploads_per_account,
            idle_timeout: Duration::from_secs(self.upload_idle_timeout),
            max_watchers: self.max_watchers,
            max_watchers_per_account: self.max_watchers_per_account,
            resume_window: self.resume_window,
            ..ImportConfig::default()
        }
    }

    /// How the store opens the database: the SQLite-only settings, and PostgreSQL's split of a
    /// planned batch's file keys.
    pub fn store_options(&self) -> OpenOptions {
        OpenOptions {
            busy_timeout: Duration::from_millis(self.sqlite_busy_timeout_ms),
            max_pages: self.sqlite_max_pages,
            file_keys_beside_from: self.file_keys_beside_from,
        }
    }

    /// How long finished imports keep their details, and how often the clean-up runs.
    pub fn retention(&self) -> Retention {
        Retention {
            imports: self.retention.0,
            dry_runs: self.dry_run_retention.0,
            events: self.event_retention.0,
            every: self.retention_interval,
        }
    }

    /// The relay of the feed to NATS, when `--events-nats-url` asks for one.
    pub fn relay(&self) -> Option<crate::relay::RelayConfig> {
        self.events_nats_url
            .clone()
            .map(|url| crate::relay::RelayConfig {
                url,
                max_age: self.event_retention.0,
            })
    }

    /// How long shutdown waits for running uploads before it ends them (ERROR_UNKNOWN).
    ///
    /// The pod's termination grace must be longer (the Helm chart refuses otherwise), or the
    /// kubelet kills the process before it has ended and stored those uploads; the next start,
    /// or another replica, then ends them instead.
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
    /// The flag's value as `ImportMetadata.on_conflict`. Never UNSPECIFIED: the flag's
    /// default, `error`, is sent explicitly.
    pub fn proto(self) -> crate::proto::ConflictPolicy {
        match self {
            OnConflict::Error => crate::proto::ConflictPolicy::Error,
            OnConflict::Skip => crate::proto::ConflictPolicy::Skip,
            OnConflict::Update => crate::proto::ConflictPolicy::Update,
        }
    }
}

/// `--log-format`: how `serve` writes its log lines to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people (coloured on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
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
    /// TLS, client certificate and token.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the answer as JSON (field names as in the proto), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// How the client commands connect: TLS, a client certificate, a bearer token.
///
/// The client's TLS variables are `BULK_IMPORT_CLIENT_TLS_*`, apart from the server's
/// `BULK_IMPORT_TLS_*`: a shell (or a pod) that runs `serve` with its own certificate can run
/// the client commands beside it without presenting the server's certificate as a client's.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// PEM certificate of the CA that signed the server's certificate: connect with TLS.
    #[arg(long, env = "BULK_IMPORT_CLIENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (with --tls-key).
    #[arg(long, env = "BULK_IMPORT_CLIENT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BULK_IMPORT_CLIENT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token, for a server with a tokens file.
    #[arg(long, env = "BULK_IMPORT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long to wait for the server to accept the connection and answer (the TLS
    /// handshake included), such as 10s or 1m.
    #[arg(
        long,
        env = "BULK_IMPORT_CONNECT_TIMEOUT",
        default_value = "10s",
        value_parser = duration::positive
    )]
    pub connect_timeout: Duration,
    /// How long a call waits for the server's answer, such as 60s or 5m. Not the upload's
    /// stream nor `watch`, which run as long as the import does (a dead server is found by
    /// HTTP/2 keepalive pings within 40 s).
    #[arg(
        long,
        env = "BULK_IMPORT_TIMEOUT",
        default_value = "60s",
        value_parser = duration::positive
    )]
    pub timeout: Duration,
}

impl Default for ConnectionArgs {
    /// What the flags' defaults give: no TLS, no token, 10 s to connect, 60 s per call.
    fn default() -> Self {
        Self {
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            token: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bulk-import").chain(args.iter().copied()))
    }

    #[test]
    fn zero_limits_are_refused_at_start() {
        for flag in [
            "--max-upload-bytes",
            "--max-concurrent-uploads",
            "--max-concurrent-uploads-per-account",
            "--upload-idle-timeout",
            "--max-watchers",
            "--max-watchers-per-account",
            "--max-connections",
            "--max-streams-per-connection",
            "--max-health-watchers",
        ] {
            let error = parse(&["serve", flag, "0"]).unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
            assert!(error.contains("must be at least 1"), "{error}");
            assert!(parse(&["serve", flag, "1"]).is_ok(), "{flag}");
        }
        // Storing no row error (only counting them) is a choice, not a mistake.
        assert!(parse(&["serve", "--max-stored-row-errors", "0"]).is_ok());
    }

    #[test]
    fn a_nats_url_is_checked_when_read() {
        let Command::Serve(serve) = parse(&["serve"]).unwrap().command else {
            panic!("not serve");
        };
        assert!(serve.relay().is_none());
        let Command::Serve(serve) = parse(&["serve", "--events-nats-url", "127.0.0.1:4222"])
            .unwrap()
            .command
        else {
            panic!("not serve");
        };
        assert_eq!(serve.relay().unwrap().url, "127.0.0.1:4222");
        for bad in ["ftp://host", "http://a b", "nats://:x"] {
            let error = parse(&["serve", "--events-nats-url", bad]).unwrap_err();
            assert!(
                error.to_string().contains("nats://127.0.0.1:4222"),
                "{error}"
            );
        }
    }

    #[test]
    fn retention_is_90_days_7_for_dry_runs_or_off() {
        let Command::Serve(serve) = parse(&["serve"]).unwrap().command else {
            panic!("not serve");
        };
        assert_eq!(serve.retention(), Retention::default());
        let Command::Serve(serve) =
            parse(&["serve", "--retention", "off", "--dry-run-retention", "36h"])
                .unwrap()
                .command
        else {
            panic!("not serve");
        };
        assert_eq!(serve.retention().imports, None);
        assert_eq!(
            serve.retention().dry_runs,
            Some(Duration::from_secs(36 * 3600))
        );
        assert!(parse(&["serve", "--retention", "0d"]).is_err());
    }

    #[test]
    fn the_connection_defaults_are_the_flags_defaults() {
        let Command::List(list) = parse(&["list", "--account", "a"]).unwrap().command else {
            panic!("not list");
        };
        let (flags, default) = (list.target.connection, ConnectionArgs::default());
        assert_eq!(flags.connect_timeout, default.connect_timeout);
        assert_eq!(flags.timeout, default.timeout);
        assert_eq!(list.limit, 50);
    }
}
