//! The running server: gRPC services, health, the database's start-up, and graceful shutdown.
//!
//! Health follows Kubernetes' gRPC probes: `""` is liveness and answers SERVING while the
//! process runs, whatever the database does; `bulkimport.v1.ImportService` is readiness and
//! answers SERVING once migrations ran and while the database answers, NOT_SERVING otherwise and
//! from the moment shutdown starts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use backon::{ExponentialBuilder, Retryable};

use tonic::service::interceptor::InterceptedService;

use crate::auth::Authenticator;
use crate::config::ServeArgs;
use crate::grpc::auth::CheckToken;
use crate::grpc::{ImportServiceImpl, MAX_MESSAGE_BYTES};
use crate::import::{INTERRUPTED, Importer};
use crate::proto::import_service_server::ImportServiceServer;
use crate::store::{self, OpenOptions, StoreError};
use crate::tls::{Tls, TlsFiles};

/// The readiness service name, as probes ask for it.
pub const READINESS_SERVICE: &str = "bulkimport.v1.ImportService";
/// How often readiness checks that the database answers and can be written...
const READINESS_INTERVAL: Duration = Duration::from_secs(5);
/// ...and how often while it does not, so that the service is back soon after the database.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// How often leases are renewed and imports of dead replicas ended: well within the lease.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3);
/// A readiness check that takes longer fails: the write probe after a fault writes 16 MiB.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on idle connections, and how long an answer may take before the connection
/// is taken for dead.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After uploads ended, how long other requests (watchers) get before the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the database: {}", .0.detail())]
    Database(#[from] StoreError),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the gRPC server stopped unexpectedly: {0}")]
    Crashed(String),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot read the auth tokens: {0}")]
    Auth(String),
    #[error("cannot read the TLS certificates: {0}")]
    Tls(String),
}

pub struct Application {
    listener: TcpListener,
    /// `--metrics-listen`, bound with the rest so that its address is known too.
    metrics_listener: Option<TcpListener>,
    args: ServeArgs,
    importer: Importer,
    auth: Arc<Authenticator>,
    /// `None` for plaintext.
    tls: Option<Arc<Tls>>,
}

impl Application {
    /// Binds the listener (port 0 picks a free port), so the address is known before serving.
    pub async fn bind(args: ServeArgs) -> Result<Self, StartError> {
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: args.listen,
                    source,
                })?;
        let auth = match &args.auth_tokens_file {
            Some(path) => Authenticator::from_file(path).map_err(StartError::Auth)?,
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
        let importer = Importer::new(args.import_config());
        Ok(Self {
            listener,
            metrics_listener,
            args,
            importer,
            auth: Arc::new(auth),
            tls,
        })
    }

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

    /// Serves until `shutdown` resolves, then shuts down gracefully: readiness turns
    /// NOT_SERVING, running uploads get the grace period to finish, and those still running
    /// then end in ERROR_UNKNOWN before the process stops.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(READINESS_SERVICE, ServingStatus::NotServing)
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
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
            tokio::spawn(match self.tls.clone() {
                Some(tls) => futures::future::Either::Left(tls.watch()),
                None => futures::future::Either::Right(std::future::ready(())),
            }),
        ];

        let addr = self.local_addr();
        let (stop_server, server_stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            // Dead peers (a client gone without a word, a half-open connection) are found.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service);
        let stopped = async {
            let _ = server_stopped.await;
        };
        let mut server = match self.tls.clone() {
            Some(tls) => tokio::spawn(
                router.serve_with_incoming_shutdown(tls.incoming(self.listener), stopped),
            ),
            None => tokio::spawn(
                router.serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), stopped),
            ),
        };
        tracing::info!(%addr, tls = self.tls.is_some(), "serving gRPC");
        let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
        let metrics_server = self.metrics_listener.map(|listener| {
            let addr = listener.local_addr().ok();
            tracing::info!(
                ?addr,
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

        // Readiness and upkeep run until the uploads ended: during the grace period, leases
        // must be kept and endings stored, while readiness says NOT_SERVING.
        let readiness = Readiness {
            reporter: reporter.clone(),
            stopping: Arc::new(tokio::sync::Mutex::new(false)),
            metrics: self.importer.metrics().clone(),
        };
        let mut database = tokio::spawn(start_database(
            self.args.database_url.clone(),
            self.args.store_options(),
            self.importer.clone(),
            readiness.clone(),
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
        if let Some(metrics_server) = metrics_server {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, metrics_server).await;
        }
        // Last: the database (and, for SQLite, its file) is free for the next server.
        self.importer.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens and migrates the database, ends imports a previous run left PROCESSING, then keeps
/// readiness in step with the database and runs the periodic upkeep. Returns only if the
/// database cannot be opened for good (a wrong URL, a file that cannot be created, a failed
/// migration); an error the store calls transient (a PostgreSQL server still starting) is
/// retried until it goes, while readiness says NOT_SERVING.
async fn start_database(
    url: String,
    options: OpenOptions,
    importer: Importer,
    readiness: Readiness,
) -> Result<std::convert::Infallible, StoreError> {
    let open = || async {
        let store = store::open(&url, options).await?;
        let ended = store.recover_interrupted(INTERRUPTED).await?;
        if ended > 0 {
            tracing::warn!(imports = ended, "ended imports interrupted by a stop");
        }
        Ok::<_, StoreError>(store)
    };
    let store = open
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .without_max_times(),
        )
        .when(StoreError::is_transient)
        .notify(|e, delay| {
            tracing::warn!(
                error = e.detail(),
                ?delay,
                "the database is not ready; retrying"
            )
        })
        .await?;
    importer.set_store(store);
    let upkeep = async {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = importer.maintain().await {
                tracing::warn!(error = %e, "upkeep failed; retrying");
            }
        }
    };
    tokio::select! {
        never = readiness_loop(importer.clone(), readiness) => never,
        never = upkeep => never,
    }
}

/// The readiness status, which shutdown turns NOT_SERVING for good.
#[derive(Clone)]
struct Readiness {
    reporter: HealthReporter,
    /// Set by shutdown; the lock orders a check of the database against it.
    stopping: Arc<tokio::sync::Mutex<bool>>,
    /// `/readyz` of the metrics listener says the same.
    metrics: crate::metrics::Metrics,
}

impl Readiness {
    /// Reports whether the database answers, unless shutdown started.
    async fn set(&self, serving: bool) {
        let stopping = self.stopping.lock().await;
        if *stopping {
            return;
        }
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.metrics.set_ready(serving);
        self.reporter
            .set_service_status(READINESS_SERVICE, status)
            .await;
    }

    async fn stop(&self) {
        let mut stopping = self.stopping.lock().await;
        *stopping = true;
        self.metrics.set_ready(false);
        self.reporter
            .set_service_status(READINESS_SERVICE, ServingStatus::NotServing)
            .await;
    }
}

/// Keeps readiness in step with the database: SERVING while it answers and can be written.
async fn readiness_loop(
    importer: Importer,
    readiness: Readiness,
) -> Result<std::convert::Infallible, StoreError> {
    let mut serving = None;
    loop {
        let checked = tokio::time::timeout(CHECK_TIMEOUT, importer.ready()).await;
        let ok = matches!(checked, Ok(Ok(())));
        if serving != Some(ok) {
            match checked {
                Ok(Ok(())) => tracing::info!("ready: the database answers and can be written"),
                Ok(Err(e)) => tracing::warn!(reason = %e, "not ready"),
                Err(_) => tracing::warn!("not ready: the database does not answer in time"),
            }
            readiness.set(ok).await;
            serving = Some(ok);
        }
        let interval = if ok {
            READINESS_INTERVAL
        } else {
            RECOVERY_INTERVAL
        };
        tokio::time::sleep(interval).await;
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
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
