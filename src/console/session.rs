//! Console sessions: who a browser is, and the CSRF token of its forms.
//!
//! A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure when the browser
//! came over HTTPS), mapped in this process to what it may do and its CSRF token. It keeps the
//! *digest* of the token it signed in with, never the token, and asks the [`Authenticator`]
//! on every request who that digest is now: a token removed from the tokens file stops its
//! sessions within a second, as it stops gRPC calls.
//!
//! Every request gets a session (the middleware [`visit`] makes one when the cookie names
//! none): on a server with tokens an anonymous one, which can only sign in; on an open server
//! one that may do what any gRPC caller may. So every form, the sign-in's included, carries a
//! CSRF token bound to a session, and a state-changing request without it is refused before its
//! handler runs. Sign-in replaces the session id, so that an id planted before it is worth
//! nothing after.
//!
//! Sessions live in memory, bounded ([`MAX_SESSIONS`]): with several replicas, a browser must
//! come back to the replica it signed in on (the chart's Service sets client affinity), and a
//! restart signs everyone out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};

use super::Console;
use super::error::PageError;
use crate::auth::Authenticator;
use crate::domain::{Caller, Scope};

/// The session cookie's name.
pub const COOKIE: &str = "bulk_import_session";
/// Sessions kept at once; past it the oldest-expiring goes, so a flood of new browsers (or a
/// script that drops its cookies) costs bounded memory.
pub const MAX_SESSIONS: usize = 10_000;
/// How long a session that has not signed in lasts: long enough to fill in the sign-in form.
const ANONYMOUS_TTL: Duration = Duration::from_secs(30 * 60);
/// The most of a form body the CSRF check reads: the console's forms are a few fields.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A session id: 32 random bytes.
type SessionId = [u8; 32];

/// Who a session is.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// A server with tokens, before sign-in: may only sign in.
    Anonymous,
    /// Signed in with the token of this digest.
    Token([u8; 32]),
    /// An open server: anyone, everywhere.
    Open,
}

/// One session.
#[derive(Debug, Clone)]
struct Session {
    /// Who it is.
    who: Who,
    /// The CSRF token its pages' forms carry: random, and only in those pages (never in a
    /// cookie), so that another site can neither read nor guess it.
    csrf: String,
    /// When it ends, whatever it does meanwhile.
    expires: Instant,
}

/// Every session of this process.
pub struct Sessions {
    /// By id.
    map: Mutex<HashMap<SessionId, Session>>,
    /// How long a signed-in session lasts (`--console-session-ttl`).
    ttl: Duration,
}

impl Sessions {
    /// No session yet; signed-in sessions last `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The live session of `id`; an expired one is removed.
    fn get(&self, id: &SessionId) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// A new session for `who`, making room for it when the map is full.
    fn create(&self, who: Who) -> (SessionId, Session) {
        let ttl = match who {
            Who::Anonymous => ANONYMOUS_TTL.min(self.ttl),
            Who::Token(_) | Who::Open => self.ttl,
        };
        let session = Session {
            who,
            csrf: URL_SAFE_NO_PAD.encode(random()),
            expires: Instant::now() + ttl,
        };
        let id = random();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS
                && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(id, session.clone());
        (id, session)
    }

    /// Ends a session (sign-out, or the old id of a sign-in).
    fn remove(&self, id: &SessionId) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Cryptographically random bytes from the operating system.
fn random() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // The OS's generator does not fail on the systems this runs on; if it ever did, a session
    // must not get a guessable id, so the request fails instead.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// What the console knows of a request's browser, put in the request's extensions by
/// [`visit`]; every handler takes it.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The session's id.
    id: SessionId,
    /// The CSRF token its forms must carry.
    pub csrf: String,
    /// Who it is now; `None` before sign-in (or after its token was revoked).
    caller: Option<Caller>,
    /// The server runs without tokens: every page says so.
    pub open: bool,
    /// The peer's address, for the audit log.
    peer: Option<SocketAddr>,
}

impl Visit {
    /// The signed-in caller, or the way to the sign-in page, back to `next` after it.
    pub fn caller(&self, next: &str) -> Result<&Caller, PageError> {
        self.caller.as_ref().ok_or_else(|| PageError::SignIn {
            next: next.to_owned(),
        })
    }

    /// The caller, if signed in: for the pages that show differently to one.
    pub fn signed_in(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// The caller's right to act in `account` (as typed in the address), checked as gRPC
    /// checks it: a bad id is INVALID_ARGUMENT, an account the token does not cover
    /// PERMISSION_DENIED, logged in the audit log.
    pub fn scope(&self, account: &str, next: &str) -> Result<Scope, PageError> {
        let caller = self.caller(next)?;
        let account =
            crate::grpc::convert::account_id(account).map_err(|e| PageError::Import(e.into()))?;
        caller.scope(account).map_err(|account| {
            crate::audit::denied(caller.name(), account.as_str(), "console", self.peer);
            PageError::Import(crate::import::ImportError::PermissionDenied(account))
        })
    }
}

/// The console's middleware, around every route: finds or makes the session, refuses a
/// state-changing request without the session's CSRF token, and adds the security headers
/// to every answer.
pub async fn visit(State(console): State<Console>, mut request: Request, next: Next) -> Response {
    let sessions = &console.inner.sessions;
    let auth = &console.inner.auth;
    let found = session_id(request.headers()).and_then(|id| Some((id, sessions.get(&id)?)));
    let (id, session, new) = match found {
        Some((id, session)) => (id, session, false),
        None => {
            let who = if auth.is_open() {
                Who::Open
            } else {
                Who::Anonymous
            };
            let (id, session) = sessions.create(who);
            (id, session, true)
        }
    };
    let caller = resolve(auth, session.who);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let secure = console.inner.secure || forwarded_https(request.headers());
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        match csrf_of(request).await {
            Ok((token, rebuilt)) if token.as_deref() == Some(session.csrf.as_str()) => {
                request = rebuilt;
            }
            Ok(_) | Err(_) => {
                let mut response = PageError::Csrf.into_response();
                secure_headers(response.headers_mut());
                return response;
            }
        }
    }
    request.extensions_mut().insert(Visit {
        id,
        csrf: session.csrf.clone(),
        caller,
        open: auth.is_open(),
        peer,
    });
    request.extensions_mut().insert(Secure(secure));
    let mut response = next.run(request).await;
    if new && !response.headers().contains_key(header::SET_COOKIE) {
        set_cookie(
            response.headers_mut(),
            &id,
            console.inner.sessions.ttl,
            secure,
        );
    }
    secure_headers(response.headers_mut());
    response
}

/// Whether the browser came over HTTPS: the session cookie is then `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

/// Who a session is now: an open server's anyone, the current holder of its token's digest,
/// or nobody.
fn resolve(auth: &Authenticator, who: Who) -> Option<Caller> {
    match who {
        Who::Open => Some(Caller::open()),
        Who::Token(digest) => auth.caller_of(&digest),
        Who::Anonymous => None,
    }
}

/// A TLS-terminating proxy in front (an ingress) says the browser used HTTPS. Believing it can
/// only make the cookie stricter.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The session id the request's cookie names, if well formed.
fn session_id(headers: &HeaderMap) -> Option<SessionId> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c.value()).ok())
        .and_then(|bytes| bytes.try_into().ok())
}

/// The CSRF token a state-changing request carries: the `x-csrf-token` header (the console's
/// script sends it), else the `csrf` field of a form, whose body is read (it is small) and put
/// back for the handler.
async fn csrf_of(request: Request) -> Result<(Option<String>, Request), axum::Error> {
    if let Some(token) = request.headers().get("x-csrf-token") {
        let token = token.to_str().ok().map(str::to_owned);
        return Ok((token, request));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok((None, request));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await?;
    let token = csrf_field(&bytes);
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

/// Signs a session in with `token`: a new session id for the token's digest, the old one
/// ended. `None` for a token the file does not list.
pub fn sign_in(console: &Console, visit: &Visit, token: &str) -> Option<(Caller, SessionCookie)> {
    let (digest, caller) = console.inner.auth.sign_in(token)?;
    let sessions = &console.inner.sessions;
    sessions.remove(&visit.id);
    let (id, _) = sessions.create(Who::Token(digest));
    Some((caller, SessionCookie(id)))
}

/// Ends a session: its id is forgotten, and a new anonymous one takes its place.
pub fn sign_out(console: &Console, visit: &Visit) -> SessionCookie {
    let sessions = &console.inner.sessions;
    sessions.remove(&visit.id);
    let who = if console.inner.auth.is_open() {
        Who::Open
    } else {
        Who::Anonymous
    };
    SessionCookie(sessions.create(who).0)
}

/// A new session's id, for its cookie.
pub struct SessionCookie(SessionId);

impl SessionCookie {
    /// Sets the cookie on `response`.
    pub fn set(&self, console: &Console, secure: Secure, response: &mut Response) {
        set_cookie(
            response.headers_mut(),
            &self.0,
            console.inner.sessions.ttl,
            secure.0,
        );
    }
}

/// The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
/// sends it), `Secure` over HTTPS, and gone when the session ends.
fn set_cookie(headers: &mut HeaderMap, id: &SessionId, ttl: Duration, secure: bool) {
    let cookie = Cookie::build((COOKIE, URL_SAFE_NO_PAD.encode(id)))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
        .build();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        headers.insert(header::SET_COOKIE, value);
    }
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
