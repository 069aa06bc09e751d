//! TLS and mutual TLS with rustls, with the certificates read again when their files change.
//!
//! Kubernetes (cert-manager, a mounted Secret) replaces certificate files in place before they
//! expire, so the server cannot load them once: every second it compares the files with what
//! it loaded, and a new version becomes the configuration of the connections accepted from then
//! on (open ones keep theirs). A broken new version keeps the old one, and the log says why.
//!
//! tonic's own TLS takes its configuration once, so the server accepts TCP connections itself,
//! does the handshake here, and hands tonic the TLS streams.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How often the certificate files are looked at.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// TLS handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// A client that opens a connection and does not finish its handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of the server's TLS configuration.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut all = std::fs::read(&self.cert)?;
        all.extend(std::fs::read(&self.key)?);
        if let Some(ca) = &self.client_ca {
            all.extend(std::fs::read(ca)?);
        }
        Ok(all)
    }

    /// The rustls configuration these files give.
    fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?
                {
                    let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))?;
        // gRPC is HTTP/2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The current TLS configuration, kept in step with its files.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Loads the files; a server does not start with broken ones.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let config = files.load()?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(config),
        }))
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again whenever they change, for as long as the server runs.
    pub async fn watch(self: Arc<Self>) {
        let mut last = self.files.read().ok();
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(now) = self.files.read() else {
                // Between the kubelet's swaps a file may be away for a moment.
                continue;
            };
            if last.as_deref() == Some(now.as_slice()) {
                continue;
            }
            match self.files.load() {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "read the TLS certificates again");
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                    last = Some(now);
                }
                // Tried again at the next change; a half-written pair may be complete by then.
                Err(reason) => {
                    tracing::error!(%reason, "the new TLS certificates are broken; keeping the old ones");
                    last = Some(now);
                }
            }
        }
    }

    /// TLS connections from `listener`, each with the configuration current when it came. A
    /// client that fails its handshake (plaintext on a TLS port, no or a wrong client
    /// certificate) is dropped, and the server goes on. Ends when `listener` fails.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(16);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                // A flood of connections that never finish their handshake waits here, rather
                // than holding a task and a socket each.
                let permit = tokio::select! {
                    _ = tx.closed() => return,
                    permit = handshakes.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                // Out of file descriptors and the like: wait, do not spin.
                let accept = (|| listener.accept())
                    .retry(
                        ConstantBuilder::default()
                            .with_delay(Duration::from_millis(100))
                            .without_max_times(),
                    )
                    .notify(|e, _| tracing::warn!(error = %e, "cannot accept a connection"));
                // The server stopped: let go of the port, even with no client coming.
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = accept => accepted,
                };
                let Ok((tcp, peer)) = accepted else {
                    return;
                };
                let acceptor = TlsAcceptor::from(self.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
