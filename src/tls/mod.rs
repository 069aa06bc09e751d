//! TLS and mutual TLS with rustls, with the certificates read again when their files change.
//!
//! Kubernetes (cert-manager, a mounted Secret) replaces certificate files in place before they
//! expire, so the server cannot load them once: every second it compares the files with what
//! it loaded, and a new version becomes the configuration of the connections accepted from then
//! on (open ones keep theirs). A broken new version keeps the old one, and the log says why.
//!
//! tonic's own TLS takes its configuration once, so the server accepts TCP connections itself,
//! does the handshake (`app::connections`), and hands tonic the TLS streams.
//!
//! A certificate outside its validity window is refused like a broken file: at start the
//! server does not start, on reload the old one stays (see [`validity`]). One that ends within
//! 14 days is warned about, at load and once a day after.
//!
//! `app` loads [`Tls`] at start (a server does not start with broken files), spawns its
//! `watch`, and serves from `app::connections::Listener::tls`. Only the gRPC port speaks TLS; the metrics
//! listener stays plaintext, which is why it also answers the probes (see `metrics`).

pub mod validity;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;
use validity::Window;

/// How often the certificate files are looked at.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// How often a certificate that ends soon is warned about again while it is served.
const WARN_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The files of the server's TLS configuration.
///
/// Paths, not contents: they are read at start and read again on every change (see
/// [`Tls::watch`]). From `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM private key of the first certificate of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The bytes of all the files, one after the other: what the watcher compares to tell a
    /// change, without parsing anything.
    fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut all = std::fs::read(&self.cert)?;
        all.extend(std::fs::read(&self.key)?);
        if let Some(ca) = &self.client_ca {
            all.extend(std::fs::read(ca)?);
        }
        Ok(all)
    }

    /// The rustls configuration these files give.
    ///
    /// rustls' safe defaults (TLS 1.2 and 1.3, the ring provider), ALPN `h2` only. With a
    /// client CA, every client must present a certificate it signed; without, none is asked.
    /// A key that does not match the certificate is refused here (rustls compares them), not
    /// at the first handshake, and so is a chain outside its validity window at `now`. Errors
    /// name the file they come from.
    fn load(&self, now: i64) -> Result<Loaded, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", self.cert.display()));
        }
        let window = Window::of(&certs)
            .and_then(|window| window.usable_at(now).map(|()| window))
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
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
        Ok(Loaded {
            config: Arc::new(config),
            window,
        })
    }
}

/// A configuration and the validity window of its certificate chain.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    window: Window,
}

/// The current TLS configuration, kept in step with its files.
///
/// Shared (`Arc`) by the watcher, which swaps the configuration, and the accept loop, which
/// takes the current one for each connection.
pub struct Tls {
    /// Where the configuration comes from.
    files: TlsFiles,
    /// The configuration new connections get. Each handshake clones the `Arc`, so a swap
    /// never waits for handshakes in progress, and those finish with the configuration they
    /// started with.
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The window of the served chain: the watcher warns from it as the end nears.
    window: RwLock<Window>,
}

impl Tls {
    /// Loads the files; a server does not start with broken ones.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let now = validity::now();
        let loaded = files.load(now)?;
        loaded.window.warn_if_ending(now);
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(loaded.config),
            window: RwLock::new(loaded.window),
        }))
    }

    /// The validity window of the served chain.
    pub fn window(&self) -> Window {
        self.window
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration for the next connection. A poisoned lock is used as it is: the
    /// value inside is a whole `Arc` either way.
    pub(crate) fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again whenever they change, for as long as the server runs.
    ///
    /// Compares the bytes of the three files each `RELOAD_INTERVAL`. A version that does not
    /// load (say a new certificate beside the old key, while the files are being replaced, or
    /// an expired certificate) is logged and kept as seen, so it is tried again at the next
    /// change rather than every second; the working configuration stays meanwhile. A served
    /// chain that ends within 14 days is warned about once a day, and one that has ended is
    /// logged as an error once. Each attempt and the served chain's end are in `metrics`.
    /// `app` aborts it at shutdown.
    pub async fn watch(self: Arc<Self>, metrics: Metrics) {
        let mut last = self.files.read().ok();
        let served = self.window();
        metrics.tls_served(&served.ends_first, served.not_after);
        let mut warned = tokio::time::Instant::now();
        let mut told_expired = false;
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = validity::now();
            self.warn_as_the_end_nears(now, &mut warned, &mut told_expired);
            let Ok(files) = self.files.read() else {
                // Between the kubelet's swaps a file may be away for a moment.
                continue;
            };
            if last.as_deref() == Some(files.as_slice()) {
                continue;
            }
            // Tried again at the next change either way; a half-written pair may be complete
            // by then.
            last = Some(files);
            match self.files.load(now) {
                Ok(loaded) => {
                    tracing::info!(cert = %self.files.cert.display(), "read the TLS certificates again");
                    loaded.window.warn_if_ending(now);
                    metrics.tls_reloaded(true);
                    metrics.tls_served(&loaded.window.ends_first, loaded.window.not_after);
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded.config;
                    *self.window.write().unwrap_or_else(|e| e.into_inner()) = loaded.window;
                    warned = tokio::time::Instant::now();
                    told_expired = false;
                }
                Err(reason) => {
                    metrics.tls_reloaded(false);
                    tracing::error!(%reason, "the new TLS certificates cannot be served; keeping the old ones");
                }
            }
        }
    }

    /// The daily warning while the served chain nears its end, and one error once it has
    /// ended (the server keeps serving it: the files are the operator's to replace).
    fn warn_as_the_end_nears(
        &self,
        now: i64,
        warned: &mut tokio::time::Instant,
        told_expired: &mut bool,
    ) {
        let window = self.window();
        if now > window.not_after {
            if !*told_expired {
                *told_expired = true;
                tracing::error!(
                    reason = %window.usable_at(now).unwrap_err(),
                    "the served TLS certificate has expired"
                );
            }
        } else if warned.elapsed() >= WARN_INTERVAL {
            *warned = tokio::time::Instant::now();
            window.warn_if_ending(now);
        }
    }
}
