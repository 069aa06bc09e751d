//! The web console: the help page's Imports screens in a browser, served by the service itself
//! on `--console-listen` (default `127.0.0.1:8080`).
//!
//! It is one more client of the import layer, beside the gRPC handlers, and as thin: each
//! handler takes the session's [`Scope`](crate::domain::Scope), calls the [`Importer`] (the
//! same methods `grpc::service` calls, lists read by `grpc::pages`, metadata parsed by
//! `grpc::convert`, errors worded by `grpc::error`), and renders a page. No rule of imports is
//! written here.
//!
//! ```text
//!  browser ─► guard::visit ──► a page handler ─► Importer ─► (the pipeline, the store)
//!             (cookie → Visit,   imports, new_import,
//!              CSRF, headers)    users, live, sign_in
//!  browser ◄─ layout + view (maud: every value escaped) ◄──┘
//! ```
//!
//! - [`session`]: sessions, sign-in and sign-out, CSRF tokens; `guard`: the middleware in
//!   front of every route (the `Host`, the session, the CSRF check, security headers);
//! - `imports`, `new_import`, `users`, `sign_in`: the screens; `live`: an import's counters
//!   as Server-Sent Events; `layout` and `view`: the frame and shared pieces of pages;
//!   `paths`: every address, percent-encoded in one place; `error`: the one mapping to HTTP;
//!   `assets`: the stylesheet and script, compiled in; `serve`: the HTTP server and its
//!   bounds (connections, slow headers).

mod assets;
mod error;
mod guard;
mod imports;
mod layout;
mod live;
mod new_import;
mod paths;
mod serve;
pub mod session;
mod sign_in;
mod users;
mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::import::Importer;
use crate::tls::Tls;
use error::PageError;

/// The largest request body the console reads whole: forms and the check's first bytes. The
/// upload's body is streamed, never read whole, and bounded by `--max-upload-bytes`.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Live views (`live`) open at once: half the console's connections, so that pages and
/// uploads always have the other half.
pub(crate) const MAX_LIVE: usize = serve::MAX_CONNECTIONS / 2;

/// The console's shared state: cheap to clone, as axum clones it for each request.
#[derive(Clone)]
pub struct Console {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

/// What every request of the console shares.
struct Inner {
    /// The import layer, the same the gRPC handlers call.
    importer: Importer,
    /// The tokens of `--auth-tokens-file`, the same the gRPC interceptor checks.
    auth: Arc<Authenticator>,
    /// Signed-in browsers.
    sessions: session::Sessions,
    /// The console is served over TLS: cookies are `Secure`.
    secure: bool,
    /// It listens on a loopback address: only loopback names are answered (`session`).
    loopback: bool,
    /// The gRPC port's TLS, which the console serves too.
    tls: Option<Arc<Tls>>,
    /// Places of live views (`MAX_LIVE`).
    live: Arc<tokio::sync::Semaphore>,
}

impl Console {
    /// A console over `importer`, signing in with the tokens of `auth`; sessions last
    /// `session_ttl`. `listen` is where it is served: on a loopback address it answers only
    /// requests addressed to a loopback name. With `tls` (the server's), it serves HTTPS.
    pub fn new(
        importer: Importer,
        auth: Arc<Authenticator>,
        session_ttl: Duration,
        listen: std::net::SocketAddr,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                importer,
                auth,
                sessions: session::Sessions::new(session_ttl),
                secure: tls.is_some(),
                loopback: listen.ip().is_loopback(),
                tls,
                live: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE)),
            }),
        }
    }

    /// A place for one more live view, or `None` when `MAX_LIVE` are open.
    fn live_place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.live.clone().try_acquire_owned().ok()
    }

    /// Every route, behind the session middleware.
    pub fn router(&self) -> Router {
        let account = "/accounts/{account}";
        let import = "/accounts/{account}/imports/{import}";
        Router::new()
            .route("/", get(sign_in::home))
            .route("/open", get(sign_in::open))
            .route("/sign-in", get(sign_in::page).post(sign_in::submit))
            .route("/sign-out", post(sign_in::sign_out))
            .route(assets::CSS_PATH, get(assets::css))
            .route(assets::JS_PATH, get(assets::js))
            .route("/templates/users.csv", get(new_import::template_file))
            .route(&format!("{account}/imports"), get(imports::list))
            // Not under imports/: every word there may be an import's id.
            .route(
                &format!("{account}{}", paths::NEW_IMPORT),
                get(new_import::form),
            )
            .route(
                &format!("{account}{}", paths::CHECK),
                post(new_import::check),
            )
            .route(
                &format!("{account}{}", paths::UPLOAD),
                // Streamed, never read whole: the body limit is the pipeline's.
                post(new_import::upload).layer(DefaultBodyLimit::disable()),
            )
            .route(&format!("{account}/users"), get(users::list))
            .route(import, get(imports::show))
            .route(&format!("{import}/events"), get(live::events))
            .route(&format!("{import}/cancel"), post(imports::cancel))
            .route(
                &format!("{import}/revert"),
                get(imports::confirm_revert).post(imports::revert),
            )
            .route(&format!("{import}/fix-up.csv"), get(imports::fix_up))
            .fallback(|| async { PageError::Missing })
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                guard::visit,
            ))
            .with_state(self.clone())
    }

    /// Serves the console on `listener` until `shutdown` resolves; requests in flight then
    /// finish, which `app` bounds. See `serve` for the bounds on connections.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let tls = self.inner.tls.clone();
        serve::serve(self.router(), listener, shutdown, tls).await
    }
}
