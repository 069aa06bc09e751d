//! Why a connection failed, in words that say what to change.
//!
//! tonic reports every failure below gRPC as `UNKNOWN: transport error`, and a plaintext
//! client on a TLS port as `CANCELLED`: true, and of no help. The cause is in the error's
//! chain (a rustls error inside an `io::Error` inside hyper's inside tonic's), so it is looked
//! for there, and named with the flag that fixes it.

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

use crate::config::ConnectionArgs;

/// How the client tried to connect: what a fix can point at.
pub(super) struct Attempt<'a> {
    /// The server's URL, as used.
    pub url: &'a str,
    /// Whether the connection spoke TLS.
    pub tls: bool,
    /// The flags (`--tls-ca`, `--tls-cert`).
    pub connection: &'a ConnectionArgs,
}

/// The cause of `error` and its fix, when it is one this knows; `None` for the rest, which
/// the caller shows in plain words.
pub(super) fn explain(error: &(dyn Error + 'static), attempt: &Attempt<'_>) -> Option<String> {
    if let Some(tls) = find::<rustls::Error>(error) {
        return Some(tls_failure(tls, attempt));
    }
    // An alert that arrives after the handshake (TLS 1.3 checks the client's certificate
    // then) reaches the client through h2, whose error keeps only the alert's text.
    if let Some(alert) = chain(error).find_map(|e| alert_in(&e.to_string())) {
        return Some(tls_failure(&rustls::Error::AlertReceived(alert), attempt));
    }
    if let Some(h2) = find::<h2::Error>(error)
        && h2.is_go_away()
        && h2.is_remote()
        && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
    {
        // What the server says when it has `--max-connections` open (`app::connections`).
        return Some(
            "the server has all the connections it takes open (its --max-connections); retry \
             shortly"
                .to_owned(),
        );
    }
    if closed_at_once(error) {
        return Some(match (attempt.tls, &attempt.connection.tls_cert) {
            (false, _) => "the server closed the connection without an answer; if it serves \
                           TLS, connect with https:// and --tls-ca (the CA that signed its \
                           certificate)"
                .to_owned(),
            (true, None) => "the server closed the connection after the TLS handshake; if it \
                             requires a client certificate, give --tls-cert and --tls-key"
                .to_owned(),
            (true, Some(cert)) => format!(
                "the server closed the connection after the TLS handshake; it may not accept \
                 the client certificate {} (signed by a CA it does not trust?)",
                cert.display()
            ),
        });
    }
    None
}

/// A TLS failure: the server's certificate refused here, the client's refused there, or no
/// TLS on the other side.
fn tls_failure(error: &rustls::Error, attempt: &Attempt<'_>) -> String {
    let ca = attempt
        .connection
        .tls_ca
        .as_ref()
        .map(|p| p.display().to_string());
    let cert = attempt
        .connection
        .tls_cert
        .as_ref()
        .map(|p| p.display().to_string());
    match error {
        rustls::Error::InvalidCertificate(why) => match why {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => match ca {
                Some(ca) => format!(
                    "the server's certificate is not signed by the CA in {ca}; give \
                     --tls-ca the CA that signed it"
                ),
                None => "the server's certificate is not signed by a CA this system trusts: \
                         give --tls-ca (or BULK_IMPORT_CLIENT_TLS_CA) the CA that signed it"
                    .to_owned(),
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired; its operator must renew it (or this \
                 machine's clock is ahead)"
                    .to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet; check this machine's clock".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not for the host in {}; connect with a name \
                     the certificate lists",
                    attempt.url
                )
            }
            other => format!("the server's certificate was refused ({other:?})"),
        },
        rustls::Error::AlertReceived(alert) => match (alert, cert) {
            (AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure, None) => {
                "the server requires a client certificate: give --tls-cert and --tls-key (or \
                 BULK_IMPORT_CLIENT_TLS_CERT and BULK_IMPORT_CLIENT_TLS_KEY)"
                    .to_owned()
            }
            (AlertDescription::CertificateExpired, Some(cert)) => format!(
                "the server refused the client certificate {cert}: it has expired; renew it"
            ),
            (
                AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::DecryptError
                | AlertDescription::AccessDenied,
                Some(cert),
            ) => format!(
                "the server refused the client certificate {cert}: it is not signed by a CA \
                 the server trusts (its --tls-client-ca)"
            ),
            (alert, _) => format!("the server ended the TLS handshake ({alert:?})"),
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InappropriateMessage { .. } => format!(
            "the server does not speak TLS on this port: connect with http:// {}",
            if ca.is_some() {
                "and without --tls-ca"
            } else {
                ""
            }
        )
        .trim_end()
        .to_owned(),
        other => format!("TLS failed: {other}"),
    }
}

/// The alert in rustls' words for it (`received fatal alert: CertificateRequired`), for the
/// alerts `tls_failure` explains.
fn alert_in(text: &str) -> Option<AlertDescription> {
    let (_, name) = text.split_once("received fatal alert: ")?;
    let name: String = name
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    [
        AlertDescription::CertificateRequired,
        AlertDescription::HandshakeFailure,
        AlertDescription::CertificateExpired,
        AlertDescription::UnknownCA,
        AlertDescription::BadCertificate,
        AlertDescription::CertificateUnknown,
        AlertDescription::DecryptError,
        AlertDescription::AccessDenied,
    ]
    .into_iter()
    .find(|alert| format!("{alert:?}") == name)
}

/// Why a TLS server closed the connection after the handshake, asked again on a connection of
/// its own: one that sends nothing after its handshake and reads the server's alert.
///
/// On the connection of the call, the alert races the client's request: the request fails
/// with "connection closed", and the alert (a client certificate required or refused) goes
/// to the connection's task, which does not pass it on. A second handshake with the same
/// settings that only waits and reads gets the alert every time. `None` when it gets none
/// (the server closed for another reason).
pub(super) async fn ask_again(attempt: &Attempt<'_>) -> Option<String> {
    let alert = tokio::time::timeout(ASK_AGAIN_WITHIN, alert_of_handshake(attempt))
        .await
        .ok()??;
    Some(tls_failure(&alert, attempt))
}

/// Whether the port of a plaintext connection that failed speaks TLS: a handshake gets as far
/// as the server's certificate (which it may then refuse) only with a TLS server. More certain than reading the failure, which is a reset or "connection closed"
/// or "not ready" as the race between the server's close and the call goes.
pub(super) async fn speaks_tls(attempt: &Attempt<'_>) -> bool {
    let plain = ConnectionArgs {
        tls_cert: None,
        tls_key: None,
        ..attempt.connection.clone()
    };
    let probe = Attempt {
        connection: &plain,
        ..*attempt
    };
    let shaken = tokio::time::timeout(ASK_AGAIN_WITHIN, handshake(&probe)).await;
    // A handshake that worked, or got as far as the server's certificate.
    matches!(
        shaken,
        Ok(Ok(_) | Err(Some(rustls::Error::InvalidCertificate(_))))
    )
}

/// How long `ask_again` may take.
const ASK_AGAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// A TLS handshake with the server of `attempt`, with its flags: the stream, or the rustls
/// error it failed with (`Err(None)`: it failed otherwise, or could not be tried).
async fn handshake(
    attempt: &Attempt<'_>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Option<rustls::Error>> {
    let (host, port) = host_port(attempt.url).ok_or(None)?;
    let config = client_config(attempt.connection).ok_or(None)?;
    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| None)?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|_| None)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    connector.connect(name, tcp).await.map_err(rustls_error)
}

/// The host and port of a URL, the port from its scheme when it has none.
fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some((host, port))
}

/// Whether a plaintext server that closed a connection at once did so because it has all the
/// connections it takes (`--max-connections`): it says so with a GOAWAY of code
/// ENHANCE_YOUR_CALM (`app::connections`), which the failed call may not have read (hyper
/// reports only "connection closed" when the GOAWAY came before the call was sent). Asked on
/// a new HTTP/2 connection that only listens, for at most `ASK_AGAIN_WITHIN`; a server that
/// keeps it open has room now, and the answer is `false`.
pub(super) async fn at_its_limit(attempt: &Attempt<'_>) -> bool {
    let Some((host, port)) = host_port(attempt.url) else {
        return false;
    };
    let asked = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let (client, connection) = h2::client::handshake(tcp).await.ok()?;
        let ended = connection.await;
        drop(client);
        ended.err()
    };
    match tokio::time::timeout(ASK_AGAIN_WITHIN, asked).await {
        Ok(Some(error)) => {
            error.is_go_away() && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        }
        Ok(None) | Err(_) => false,
    }
}

/// The rustls error inside an `io::Error` from tokio-rustls.
fn rustls_error(error: std::io::Error) -> Option<rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

/// The rustls error a handshake with the server, and the read after it, ends with.
async fn alert_of_handshake(attempt: &Attempt<'_>) -> Option<rustls::Error> {
    use tokio::io::AsyncReadExt;
    let mut stream = match handshake(attempt).await {
        Ok(stream) => stream,
        Err(error) => return error,
    };
    let mut byte = [0u8; 1];
    stream.read(&mut byte).await.err().and_then(rustls_error)
}

/// rustls' client settings for the flags, as tonic builds them: the `--tls-ca` roots (else the
/// system's), the client certificate, HTTP/2 by ALPN. `None` when a file does not read (the connection
/// itself would have said so first).
fn client_config(connection: &ConnectionArgs) -> Option<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &connection.tls_ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca).ok()? {
                roots.add(cert.ok()?).ok()?;
            }
        }
        // As the connection itself: the system's trust store (what does not load is left out).
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let mut config = match (&connection.tls_cert, &connection.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .ok()?
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_file(key).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(config)
}

/// Whether the server closed the connection before it answered anything, the way a TLS
/// server does when a plaintext client speaks to it, or when it refuses a client certificate.
///
/// "not ready" too: when the close comes before the call was sent, the call fails with
/// tonic's "connection was not ready" (seen under load on a server that requires a client
/// certificate), not with the close itself.
pub(super) fn closed_at_once(error: &(dyn Error + 'static)) -> bool {
    chain(error).any(|e| {
        let text = e.to_string();
        text.contains("connection closed")
            || text.contains("connection was not ready")
            || text.contains("connection reset")
            || text.contains("broken pipe")
            || text.contains("frame with invalid size")
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            })
    })
}

/// The first `T` in `error`'s chain, looking inside `io::Error`s too (whose `source` skips
/// the error they wrap, where rustls' errors are).
fn find<'a, T: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    chain(error).find_map(|e| e.downcast_ref::<T>())
}

/// `error` and its sources, an `io::Error`'s wrapped error included.
fn chain<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn Error + 'static))
                .or_else(|| current.source()),
            None => current.source(),
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(connection: &ConnectionArgs) -> Attempt<'_> {
        Attempt {
            url: "https://imports.example:50051",
            tls: true,
            connection,
        }
    }

    /// A rustls error as the client meets it: in an `io::Error`, under another error.
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn wrapped(tls: rustls::Error) -> Outer {
        Outer(std::io::Error::new(std::io::ErrorKind::InvalidData, tls))
    }

    #[test]
    fn a_call_the_close_beat_counts_as_closed_at_once() {
        // What tonic says when the server closed the connection before the call was sent.
        let not_ready = Outer(std::io::Error::other("connection was not ready"));
        assert!(closed_at_once(&not_ready));
        let refused = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!closed_at_once(&refused));
    }

    #[test]
    fn tls_failures_name_their_fix() {
        let none = ConnectionArgs::default();
        let with = ConnectionArgs {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("me.pem".into()),
            tls_key: Some("me.key".into()),
            ..ConnectionArgs::default()
        };
        let say = |e: rustls::Error, c: &ConnectionArgs| explain(&wrapped(e), &attempt(c)).unwrap();
        let unknown = || rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(say(unknown(), &none).contains("give --tls-ca"));
        assert!(say(unknown(), &with).contains("not signed by the CA in ca.pem"));
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(say(expired, &with).contains("has expired"));
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(say(required, &none).contains("requires a client certificate: give --tls-cert"));
        let unknown_ca = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        assert!(say(unknown_ca, &with).contains("refused the client certificate me.pem"));
        let plaintext = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(
            say(plaintext, &with),
            "the server does not speak TLS on this port: connect with http:// and without --tls-ca"
        );
        // After the handshake the alert comes as text only.
        let late = std::io::Error::other("received fatal alert: CertificateRequired");
        assert!(
            explain(&late, &attempt(&none))
                .unwrap()
                .contains("requires a client certificate")
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(explain(&io, &attempt(&none)), None);
    }
}
