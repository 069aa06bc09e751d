//! The running server: gRPC services, health, the database's start-up, and graceful shutdown.
//!
//! - this module: the listeners, the services and their wiring, and shutdown;
//! - `database`: the database opened, interrupted imports ended, then the upkeep;
//! - `readiness`: readiness kept in step with the database;
//! - `memory`: freed memory given back to the system, so that a flood's does not stay.
//!
//! Health follows Kubernetes' gRPC probes: `""` is liveness and answers SERVING while the
//! process runs, whatever the database does; `bulkimport.v1.ImportService` is readiness and
//! answers SERVING once migrations ran and while the database answers, NOT_SERVING otherwise and
//! from the moment shutdown starts.
//!
//! # Start-up
//!
//! [`Application::bind`] does everything that can fail because of the configuration: it binds
//! the gRPC port (and `--metrics-listen` and `--console-listen`), reads the tokens file and
//! loads the TLS files. A mistake there stops the process at once, with the reason, before
//! anything is served (but a taken *default* console port, which only turns the console off).
//! [`Application::run_until`] then serves gRPC, health and reflection *before* the database
//! is open: liveness answers, readiness says NOT_SERVING, and calls that need the database are
//! UNAVAILABLE (`NOT_READY`) until `database` has opened and migrated it and ended the
//! imports a stopped server left PROCESSING. A database that is not there yet (a PostgreSQL
//! pod still starting) is waited for, not a reason to crash-loop.
//!
//! # Shutdown
//!
//! On SIGTERM or Ctrl-C ([`shutdown_signal`]), in this order, each step for a reason:
//!
//! 1. readiness turns NOT_SERVING for good, so load balancers stop sending new calls;
//! 2. new uploads are refused (UNAVAILABLE, `SHUTTING_DOWN`), and running ones get
//!    `--shutdown-grace-seconds` to finish; those still running then end ERROR_UNKNOWN, with
//!    nothing imported, and their clients are told to upload again. Upkeep keeps running
//!    meanwhile, so that their life signs stay fresh and no other replica reaps them;
//! 3. the relay to NATS stops and gives its lease up, the upkeep stops, and tonic stops taking calls, giving open ones (watchers, reads)
//!    `DRAIN_TIMEOUT` before they are cut;
//! 4. the file watchers, the metrics listener and the web console stop (the console's uploads
//!    are uploads like the others: they had the grace period of step 2);
//! 5. last, the store is closed, which for SQLite lets go of the database file's lock, so that
//!    the next server can open it at once.

pub mod connections;
mod database;
mod memory;
mod readiness;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::auth::Authenticator;
use crate::config::ServeArgs;
use crate::config::console::{ConsoleListen, DEFAULT_CONSOLE_LISTEN};
use crate::console::Console;
use crate::grpc::auth::CheckToken;
use crate::grpc::pending::PendingRequests;
use crate::grpc::streams::StreamsWithoutToken;
use crate::grpc::{ImportServiceImpl, MAX_MESSAGE_BYTES};
use crate::import::Importer;
use crate::proto::import_service_server::ImportServiceServer;
use crate::store::StoreError;
use crate::tls::{Tls, TlsFiles};
use connections::Listener;
pub use database::MAINTENANCE_INTERVAL;
use database::start_database;
use readiness::Readiness;

/// The readiness service name, as probes ask for it.
///
/// The service's full proto name, the convention for per-service health; Kubernetes' probe
/// sets it in `grpc.service`. Liveness is `""`, which tonic-health reports SERVING from the
/// start and which this server never changes.
pub const READINESS_SERVICE: &str = "bulkimport.v1.ImportService";
/// HTTP/2 pings on idle connections, and how long an answer may take before the connection
/// is taken for dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// See [`KEEPALIVE_INTERVAL`]: a peer gone without a word is found within about 40 s, and
/// its calls end.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest header list a request may have (HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`):
/// 8 KiB, half of hyper's default; larger is refused with HTTP 431.
const MAX_HEADER_BYTES: u32 = 8 * 1024;

/// After uploads ended, how long other requests (watchers) get before the server stops.
///
/// Short, because uploads had their own grace before it: what remains are reads and
/// `WatchImport` streams, which end by themselves once their import ended, or which a client
/// can open again on another replica.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start, or stopped on its own: `main` logs it, prints it after
/// `error: `, and exits 1. A graceful shutdown is not an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port that cannot be bound: taken, privileged, or an address not on this host. For
    /// the gRPC port and the metrics port alike.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address as configured (`--listen` or `--metrics-listen`).
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A database that can never be opened: a wrong URL, a file that cannot be created, a
    /// failed migration. Errors the store calls transient are retried instead, and never end
    /// up here.
    #[error("cannot open the database: {}", .0.detail())]
    Database(#[from] StoreError),
    /// tonic's server returned an error while serving.
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The task of the gRPC server, or of the database, panicked: a bug.
    #[error("the gRPC server stopped unexpectedly: {0}")]
    Crashed(String),
    /// The reflection service could not be built from the compiled descriptor sets: a build
    /// problem, not a configuration one.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The tokens file cannot be read or is broken; the message says which entry and why.
    #[error("cannot read the auth tokens: {0}")]
    Auth(String),
    /// A TLS file cannot be read or parsed, or the key does not match the certificate.
    #[error("cannot read the TLS certificates: {0}")]
    Tls(String),
}

/// A server with its ports bound and its files read, not serving yet.
///
/// Two steps, [`bind`](Self::bind) then [`run_until`](Self::run_until), so that a caller
/// learns the addresses (port 0 picks a free one, as the tests do) before serving starts, and
/// so that configuration errors come out of `bind` before anything runs.
pub struct Application {
    /// The gRPC port.
    listener: TcpListener,
    /// `--metrics-listen`, bound with the rest so that its address is known too.
    metrics_listener: Option<TcpListener>,
    /// `--console-listen`, unless it is `off`.
    console_listener: Option<TcpListener>,
    /// The flags, for what `run_until` starts: the database URL, the grace period.
    args: ServeArgs,
    /// Without its store until `database` has opened it.
    importer: Importer,
    /// The tokens, shared by the interceptor and the file watcher.
    auth: Arc<Authenticator>,
    /// `None` for plaintext.
    tls: Option<Arc<Tls>>,
}

impl Application {
    /// Binds the listener (port 0 picks a free port), so the address is known before serving.
    ///
    /// Also reads the tokens file and the TLS files, and binds the metrics port: every check
    /// of the configuration that does not need the database, so that a mistake ends the
    /// process here with [`StartError`], before anything is served. The database is not
    /// touched.
    pub async fn bind(args: ServeArgs) -> Result<Self, StartError> {
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: args.listen,
                    source,
                })?;
        let auth = match &args.auth_tokens_file {
            Some(path) => {
                Authenticator::from_file(path, args.allow_empty_tokens).map_err(StartError::Auth)?
            }
            None => Authenticator::open(),
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(
                Tls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: args.tls_client_ca.clone(),
                })
                .map_err(StartError::Tls)?,
            ),
            _ => None,
        };
        let metrics_listener = match args.metrics_listen {
            Some(addr) => Some(
                crate::metrics::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let console_listener = match args.console_listen {
            Some(ConsoleListen::At(addr)) => Some(TcpListener::bind(addr).await.map_err(
                |source| StartError::Listen {
                    addr,
                    source: std::io::Error::new(
                        source.kind(),
                        format!("{source} (the web console; --console-listen off turns it off)"),
                    ),
                },
            )?),
            Some(ConsoleListen::Off) => None,
            None => match TcpListener::bind(DEFAULT_CONSOLE_LISTEN).await {
                Ok(listener) => Some(listener),
                Err(error) => {
                    tracing::warn!(
                        addr = %DEFAULT_CONSOLE_LISTEN, %error,
                        "the web console is off: its default address cannot be bound (another \
                         server on this machine?); --console-listen ADDR serves it elsewhere, \
                         --console-listen off silences this"
                    );
                    None
                }
            },
        };
        let importer = Importer::new(args.import_config());
        Ok(Self {
            listener,
            metrics_listener,
            console_listener,
            args,
            importer,
            auth: Arc::new(auth),
            tls,
        })
    }

    /// Where gRPC is served: the bound address, with the real port when `--listen` asked for
    /// port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where the web console is served, unless `--console-listen off`.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: readiness turns
    /// NOT_SERVING, running uploads get the grace period to finish, and those still running
    /// then end in ERROR_UNKNOWN before the process stops.
    ///
    /// The module's header gives the order of start-up and shutdown, and why. Returns `Ok`
    /// after a graceful shutdown. Returns an error at once, without the graceful steps, when
    /// the database can never be opened (nothing has run then) or when the gRPC server fails;
    /// imports that were running are then ended at the next start, or by another replica.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(READINESS_SERVICE, ServingStatus::NotServing)
            .await;
        // The service, health, and the google.rpc error details the errors carry, so that any
        // client (grpcurl) can decode every message and detail it gets.
        let described = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = described().build_v1()?;
        let reflection_v1alpha = described().build_v1alpha()?;
        let service = InterceptedService::new(
            ImportServiceServer::new(ImportServiceImpl::new(self.importer.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            CheckToken(self.auth.clone()),
        );
        if self.auth.is_open() {
            tracing::warn!(
                "no --auth-tokens-file: the server runs open, and anyone who reaches it may \
                 import into any account"
            );
        }
        let watchers = [
            tokio::spawn(self.auth.clone().watch()),
            tokio::spawn(memory::give_back()),
            tokio::spawn(match self.tls.clone() {
                Some(tls) => {
                    futures::future::Either::Left(tls.watch(self.importer.metrics().clone()))
                }
                None => futures::future::Either::Right(std::future::ready(())),
            }),
        ];

        let addr = self.local_addr();
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            // Dead peers (a client gone without a word, a half-open connection) are found.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            // Bounded everywhere: streams per connection here, connections in `connections`,
            // the streams that need no token in `grpc::streams`, requests whose message has not
            // arrived in `grpc::pending`.
            .max_concurrent_streams(Some(self.args.max_streams_per_connection.max(1)))
            // A request's headers: a token and a few metadata entries need far less. Each
            // pending request keeps its headers, so this bounds what thousands of them cost.
            .http2_max_header_list_size(MAX_HEADER_BYTES)
            .layer(StreamsWithoutToken::new(self.args.max_health_watchers))
            .layer(PendingRequests::new(
                self.args.max_pending_requests_per_connection,
                self.args.max_pending_requests,
                self.args.request_message_timeout,
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service);
        let stopped = async {
            let _ = server_stopped.await;
        };
        let listener = Listener::new(self.listener, self.args.max_connections);
        let mut server = match self.tls.clone() {
            Some(tls) => {
                tokio::spawn(router.serve_with_incoming_shutdown(listener.tls(tls), stopped))
            }
            None => {
                tokio::spawn(router.serve_with_incoming_shutdown(listener.plaintext(), stopped))
            }
        };
        tracing::info!(%addr, tls = self.tls.is_some(), "serving gRPC");
        let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
        let metrics_server = self.metrics_listener.map(|listener| {
            let addr = listener
                .local_addr()
                .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
            tracing::info!(
                %addr,
                "serving metrics at /metrics, probes at /livez and /readyz"
            );
            let metrics = self.importer.metrics().clone();
            tokio::spawn(async move {
                let stopped = async {
                    let _ = metrics_stopped.await;
                };
                if let Err(error) = metrics.serve(listener, stopped).await {
                    tracing::error!(%error, "the metrics listener failed");
                }
            })
        });
        let (stop_console, console_stopped) = oneshot::channel::<()>();
        let console_server = self.console_listener.map(|listener| {
            let addr = listener
                .local_addr()
                .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            tracing::info!(
                url = format!("{scheme}://{addr}/"),
                signin = !self.auth.is_open(),
                "serving the web console"
            );
            let listen = listener.local_addr().unwrap_or(DEFAULT_CONSOLE_LISTEN);
            let console = Console::new(
                self.importer.clone(),
                self.auth.clone(),
                self.args.console_session_ttl,
                listen,
                self.tls.clone(),
            );
            tokio::spawn(async move {
                let stopped = async {
                    let _ = console_stopped.await;
                };
                if let Err(error) = console.serve(listener, stopped).await {
                    tracing::error!(%error, "the web console failed");
                }
            })
        });

        // Readiness and upkeep run until the uploads ended: during the grace period, leases
        // must be kept and endings stored, while readiness says NOT_SERVING.
        let readiness = Readiness {
            reporter: reporter.clone(),
            stopping: Arc::new(tokio::sync::Mutex::new(false)),
            metrics: self.importer.metrics().clone(),
        };
        let relay_stop = tokio_util::sync::CancellationToken::new();
        let relay_tasks = tokio_util::task::TaskTracker::new();
        let relay = self.args.relay().map(|config| database::Relay {
            config,
            stop: relay_stop.clone(),
            tasks: relay_tasks.clone(),
        });
        let mut database = tokio::spawn(start_database(
            self.args.database_url.clone(),
            self.args.store_options(),
            self.importer.clone(),
            readiness.clone(),
            self.args.retention(),
            relay,
        ));
        tokio::pin!(shutdown);
        tokio::select! {
            result = &mut database => {
                // Only a database that cannot be opened at all ends up here.
                let _ = stop_server.send(());
                let _ = (&mut server).await;
                return match result {
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(StartError::Crashed(e.to_string())),
                };
            }
            result = &mut server => {
                return match result {
                    Ok(served) => served.map_err(StartError::from),
                    Err(e) => Err(StartError::Crashed(e.to_string())),
                };
            }
            () = &mut shutdown => {}
        }

        tracing::info!("shutting down");
        readiness.stop().await;
        self.importer.shutdown(self.args.shutdown_grace()).await;
        // The relay has published what the uploads' endings wrote; it gives its lease up for
        // another replica to take at once.
        relay_stop.cancel();
        relay_tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, relay_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("the relay did not stop within the drain timeout");
        }
        database.abort();
        let _ = stop_server.send(());
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("requests still open after the drain timeout; closing them");
            server.abort();
        }
        let _ = database.await;
        for watcher in watchers {
            watcher.abort();
        }
        let _ = stop_metrics.send(());
        let _ = stop_console.send(());
        if let Some(console_server) = console_server {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, console_server).await;
        }
        if let Some(metrics_server) = metrics_server {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, metrics_server).await;
        }
        // Last: the database (and, for SQLite, its file) is free for the next server.
        self.importer.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
///
/// If the SIGTERM handler cannot be installed, only Ctrl-C works, rather than the server
/// failing to start; on other platforms than Unix, only Ctrl-C exists. A second signal during
/// shutdown does nothing more: the shutdown is already bounded by its timeouts.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
