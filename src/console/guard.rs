//! The guard in front of every console route: the `Host` a loopback console answers, the
//! session of the browser, the CSRF token of every state-changing request (and its body read
//! whole, small and in time), and the security headers of every answer.
//!
//! On a loopback address the console answers only requests addressed to a loopback name
//! (`localhost`, `127.0.0.1`, `[::1]`): a page of another site whose name an attacker rebinds
//! to 127.0.0.1 (DNS rebinding) gets a refusal, not an open server's console.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Console;
use super::error::{JsonError, PageError};
use super::session::{Secure, Visit, random, session_id, set_cookie};
use crate::domain::Caller;

/// How long a request's body (a form, the check's first bytes) may take to arrive whole.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The console's middleware, around every route: refuses a request addressed to another name
/// on a loopback console, finds the session, refuses a state-changing request without the
/// browser's CSRF token, and adds the security headers to every answer.
pub async fn visit(State(console): State<Console>, mut request: Request, next: Next) -> Response {
    let sessions = &console.inner.sessions;
    let auth = &console.inner.auth;
    if console.inner.loopback && !loopback_host(request.headers()) {
        let mut response = PageError::ForeignHost.into_response();
        secure_headers(response.headers_mut());
        return response;
    }
    let secure = console.inner.secure || forwarded_https(request.headers());
    let (id, new) = match session_id(request.headers(), secure) {
        Some(id) => (id, false),
        None => (random(), true),
    };
    let caller = match sessions.get(&id) {
        Some(session) => auth.caller_of(&session.digest),
        None if auth.is_open() => Some(Caller::open()),
        None => None,
    };
    let csrf = sessions.csrf(&id);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // The console's script sends its token in a header, and reads JSON answers.
    let scripted = request.headers().contains_key("x-csrf-token");
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let refuse = |refusal: PageError| {
            let mut response = if scripted {
                JsonError(refusal).into_response()
            } else {
                refusal.into_response()
            };
            secure_headers(response.headers_mut());
            response
        };
        request = match csrf_of(request).await {
            Ok((Some(token), rebuilt)) if same(&token, &csrf) => rebuilt,
            Ok(_) => return refuse(PageError::Csrf),
            Err(error) => return refuse(error),
        };
    }
    // Assets are cached, and must carry no cookie.
    let asset = request.uri().path().starts_with("/assets/");
    request.extensions_mut().insert(Visit {
        id,
        csrf,
        caller,
        open: auth.is_open(),
        peer,
    });
    request.extensions_mut().insert(Secure(secure));
    let mut response = next.run(request).await;
    if new && !asset && !response.headers().contains_key(header::SET_COOKIE) {
        set_cookie(response.headers_mut(), &id, None, secure);
    }
    secure_headers(response.headers_mut());
    response
}

/// Compares two tokens in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether the request is addressed to a loopback name: `localhost` (or a name under it), a
/// 127.0.0.0/8 address or `[::1]`, with any port.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A TLS-terminating proxy in front (an ingress) says the browser used HTTPS. Believing it can
/// only make the cookie stricter.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The CSRF token a state-changing request carries: the `x-csrf-token` header (the console's
/// script sends it), else the `csrf` field of a form. Every body but the upload's is read here,
/// whole, small and in time (`MAX_BODY_BYTES`, `BODY_TIMEOUT`), and put back for the handler:
/// a client that sends headers and then trickles or withholds its body is answered within
/// the timeout rather than holding a connection. The upload's body is streamed to the
/// pipeline, whose idle timeout bounds it.
async fn csrf_of(request: Request) -> Result<(Option<String>, Request), PageError> {
    let header = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if request.uri().path().ends_with(super::paths::UPLOAD) {
        return Ok((header, request));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, super::MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) | Err(_) => return Err(PageError::Body),
    };
    let token = header.or_else(|| is_form.then(|| csrf_field(&bytes)).flatten());
    Ok((
        token,
        Request::from_parts(parts, axum::body::Body::from(bytes)),
    ))
}

/// The `csrf` field of a URL-encoded form.
fn csrf_field(body: &[u8]) -> Option<String> {
    /// The one field read; the handler reads the rest.
    #[derive(serde::Deserialize)]
    struct Field {
        /// The form's CSRF token.
        csrf: Option<String>,
    }
    serde_urlencoded::from_bytes::<Field>(body)
        .ok()
        .and_then(|f| f.csrf)
}

/// The headers of every answer: a Content-Security-Policy that allows the console's own
/// script and style only (no inline script, no other origin, no framing), no MIME sniffing,
/// no referrer to other sites, and no caching of pages that show an account's data.
fn secure_headers(headers: &mut HeaderMap) {
    const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn only_loopback_names_are_loopback() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            loopback_host(&headers)
        };
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "a.localhost",
            "127.0.0.1:1",
            "[::1]:80",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::ffff:1.2.3.4]",
        ] {
            assert!(!host(bad), "{bad}");
        }
    }
}
