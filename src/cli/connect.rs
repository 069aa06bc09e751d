//! How the client reaches the server: the URL (a bare `host:port` is taken too), TLS when a
//! CA is given or the URL is `https://`, a client certificate when one is given, the bearer
//! token on every call, and how long it waits (`--connect-timeout`, `--timeout`).
//!
//! Every flag has an environment variable (`BULK_IMPORT_SERVER`, `BULK_IMPORT_TOKEN`,
//! `BULK_IMPORT_CLIENT_TLS_*`; see `config::ConnectionArgs`), so a shell sets them once. A
//! connection that fails is one line that names the URL and how to point the client
//! elsewhere; nothing is retried, since a person or a script is there to try again.
//!
//! The trust store is the `--tls-ca` certificates when given, else the system's (an
//! `https://` server with a certificate of a public CA needs no flag).

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::deadline::Deadline;
use super::diagnose;
use super::outcome::{CliError, code_name, plain};
use crate::config::duration::shown;
use crate::config::{ConnectionArgs, ServerArgs};
use crate::proto::import_service_client::ImportServiceClient;

/// The generated client, with the bearer token and `--timeout` on every call.
///
/// Cheap to clone (the channel is shared): `upload` clones it to follow the rows with
/// `WatchImport` on the same connection while the file streams.
pub type Client = ImportServiceClient<InterceptedService<Deadline, Bearer>>;

/// Puts `authorization: Bearer <token>` on every call, when there is a token.
///
/// The header value is parsed once, here, rather than on every call. Without a token no
/// header is sent, which an open server accepts and a server with a tokens file answers
/// with UNAUTHENTICATED, saying how to send one. Public because the tests build clients of
/// their own with it.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// `None` when the token is not printable ASCII, which no token of a tokens file is.
    pub fn new(token: Option<&str>) -> Option<Self> {
        match token {
            Some(token) => format!("Bearer {token}")
                .parse()
                .ok()
                .map(|v| Self(Some(v))),
            None => Some(Self(None)),
        }
    }
}

impl Interceptor for Bearer {
    /// Adds the header; never refuses a call.
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The URL for `--server`: as given when it has a scheme; `127.0.0.1:50051` (what people
/// type, and what the server prints) gets `https://` when TLS flags are given, `http://`
/// otherwise.
fn url(server: &str, connection: &ConnectionArgs) -> String {
    let server = server.trim();
    if server.contains("://") {
        server.to_owned()
    } else if connection.tls_ca.is_some() || connection.tls_cert.is_some() {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    }
}

/// Refuses a `--server` that is not `http(s)://host:port` with nothing else: a missing port
/// (which would mean 80 or 443, never this service's), a port out of range, a path, user
/// information, a stray space. A usage error (64), naming what to write.
fn check_server(server: &str, url: &str) -> Result<(), CliError> {
    let refuse = |why: &str| {
        Err(CliError::usage(format!(
            "--server '{server}' {why}: give host:port, http://host:port or https://host:port, \
             such as 127.0.0.1:50051 or https://imports.example:50051"
        )))
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return refuse("is not a gRPC address");
    }
    if server.trim() != server || server.is_empty() {
        return refuse("has spaces around it");
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return refuse("is not an address");
    };
    let authority = uri.authority().map_or("", |a| a.as_str());
    if authority.contains('@') {
        return refuse("holds user information");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return refuse("has a path");
    }
    match uri.port_u16() {
        None => refuse("has no port"),
        Some(0) => refuse("has port 0"),
        Some(_) => Ok(()),
    }
}

/// Connects to `server`: with TLS when a CA is given or the URL is `https://`, with a client
/// certificate when one is given, and with the bearer token when there is one.
///
/// Connects at once, rather than at the first call, and asks the server's health service
/// (which needs no token) whether it answers, all within `--connect-timeout`: so that an
/// unreachable server, a TLS mismatch or a port that accepts and never answers is one clear
/// error here (`cannot reach URL: ...`, with the flag that fixes it; see `diagnose`) before
/// any data is sent. With `https://` and no `--tls-ca` the system's trust store is used (a
/// server behind an Ingress with a public certificate). A client certificate is sent when both `--tls-cert` and
/// `--tls-key` are given (clap refuses one without the other).
///
/// Every call then has `--timeout` to be answered (see `deadline`), and HTTP/2 keepalive
/// pings find a server that died under a long stream within 40 s. Answers are decoded up to
/// 64 MiB instead of tonic's 4 MiB default, so that the client does not refuse a large page
/// the server chose to send.
pub async fn connect(server: &str, connection: &ConnectionArgs) -> Result<Client, CliError> {
    let bearer = Bearer::new(connection.token.as_deref())
        .ok_or_else(|| CliError::usage("the token must be printable ASCII (--token)"))?;
    let url = url(server, connection);
    check_server(server, &url)?;
    if url.starts_with("http://") && (connection.tls_ca.is_some() || connection.tls_cert.is_some())
    {
        // tonic would connect in plaintext and send the token in the clear.
        return Err(CliError::usage(format!(
            "--server '{server}' is plaintext (http://), but TLS flags are given (--tls-ca, \
             --tls-cert, or BULK_IMPORT_CLIENT_TLS_*): use https://, or drop them"
        )));
    }
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| {
        CliError::usage(format!(
            "--server '{server}' is not an address ({}); give one like 127.0.0.1:50051 or \
             https://imports.example:50051",
            plain(&e)
        ))
    })?;
    let tls = connection.tls_ca.is_some() || url.starts_with("https://");
    if tls {
        endpoint = endpoint
            .tls_config(tls_config(connection)?)
            .map_err(|e| CliError::new(format!("TLS: {}", plain(&e))))?;
    }
    let endpoint = endpoint
        .connect_timeout(connection.connect_timeout)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    let attempt = diagnose::Attempt {
        url: &url,
        tls,
        connection,
    };
    let unreachable = |why: String| CliError::new(format!("cannot reach {url}: {why}"));
    let within = connection.connect_timeout;
    let no_answer = || {
        unreachable(format!(
            "no answer within {} (--connect-timeout); is the address right, and is it a \
             bulk-import server?",
            shown(within)
        ))
    };
    let channel = tokio::time::timeout(within, async {
        let channel = endpoint.connect().await.map_err(|e| {
            unreachable(diagnose::explain(&e, &attempt).unwrap_or_else(|| {
                format!(
                    "{}; is the server running? (--server or BULK_IMPORT_SERVER)",
                    plain(&e)
                )
            }))
        })?;
        answers(channel.clone(), &attempt)
            .await
            .map_err(unreachable)?;
        Ok::<_, CliError>(channel)
    })
    .await
    .map_err(|_| no_answer())??;
    Ok(
        ImportServiceClient::with_interceptor(Deadline::new(channel, connection.timeout), bearer)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// HTTP/2 keepalive: a ping after this long without a frame, and this long for its answer.
/// The server pings at the same pace.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// The TLS settings the flags ask for: the CA to trust, and the client certificate.
fn tls_config(connection: &ConnectionArgs) -> Result<ClientTlsConfig, CliError> {
    use rustls_pki_types::pem::PemObject;
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| CliError::io(format!("cannot read {}", path.display()), e))
    };
    let mut tls = ClientTlsConfig::new();
    match &connection.tls_ca {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(holding_pem(ca, read(ca)?)?)),
        // A server with a certificate of a public CA (behind an Ingress, say): the system's
        // trust store.
        None => tls = tls.with_native_roots(),
    }
    if let (Some(cert), Some(key)) = (&connection.tls_cert, &connection.tls_key) {
        let key_pem = read(key)?;
        if rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
            return Err(CliError::new(format!(
                "--tls-key {} holds no private key in PEM (-----BEGIN PRIVATE KEY-----); give \
                 the key of --tls-cert",
                key.display()
            )));
        }
        tls = tls.identity(Identity::from_pem(holding_pem(cert, read(cert)?)?, key_pem));
    }
    Ok(tls)
}

/// `pem`, read from `path`, once it is known to hold a certificate: a file without one (empty,
/// DER, the wrong file) is named here, rather than failing the handshake with a reason that
/// does not point at it.
fn holding_pem(path: &std::path::Path, pem: Vec<u8>) -> Result<Vec<u8>, CliError> {
    use rustls_pki_types::pem::PemObject;
    match rustls_pki_types::CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(_)) => Ok(pem),
        Some(Err(_)) | None => Err(CliError::new(format!(
            "{} holds no certificate in PEM (-----BEGIN CERTIFICATE-----); give the PEM file \
             of the certificate",
            path.display()
        ))),
    }
}

/// Whether the server answers a call: its health check, which needs no token. Any answer
/// from the server will do (even UNIMPLEMENTED); what fails is a connection that breaks
/// (a TLS alert after the handshake, as for a missing client certificate, comes here) or
/// never answers (the caller's timeout).
async fn answers(channel: Channel, attempt: &diagnose::Attempt<'_>) -> Result<(), String> {
    let check = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    let status = match check {
        Ok(_) => return Ok(()),
        Err(status) => status,
    };
    // A status of the server's own (no cause below gRPC): it answered.
    let Some(cause) = std::error::Error::source(&status) else {
        return Ok(());
    };
    let (said, closed) = (
        diagnose::explain(cause, attempt),
        diagnose::closed_at_once(cause),
    );
    let fallback = format!(
        "the connection failed ({}: {})",
        code_name(status.code()),
        plain(cause)
    );
    // Closed right after a TLS handshake: the server refused something, and its alert may
    // have been lost in the race with the call; ask on a connection that only listens.
    if attempt.tls
        && closed
        && let Some(why) = diagnose::ask_again(attempt).await
    {
        return Err(why);
    }
    if !attempt.tls && diagnose::speaks_tls(attempt).await {
        return Err(
            "the server speaks TLS on this port: connect with https:// and --tls-ca \
                    (the CA that signed its certificate)"
                .to_owned(),
        );
    }
    if !attempt.tls && closed && diagnose::at_its_limit(attempt).await {
        return Err(
            "the server has all the connections it takes open (its --max-connections); retry \
             shortly"
                .to_owned(),
        );
    }
    if !attempt.tls && closed {
        // Closed before a word, and not a TLS server.
        return Err(
            "the server closed the connection without an answer: it may be stopping, or not \
             be a gRPC server; retry shortly, or check --server"
                .to_owned(),
        );
    }
    Err(said.unwrap_or(fallback))
}

/// The client for a command's `--server` and connection flags.
///
/// The one way the commands connect, so that every command takes the same flags.
pub(super) async fn client(target: &ServerArgs) -> Result<Client, CliError> {
    connect(&target.server, &target.connection).await
}
