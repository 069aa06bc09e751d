//! The console's stylesheet and script, compiled into the binary: nothing is fetched from
//! elsewhere at run time, and no build step but `cargo build` makes them.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The stylesheet's address; the version in it changes with the binary's, so a browser never
/// keeps an old one after an upgrade.
pub const CSS_PATH: &str = concat!("/assets/console-", env!("CARGO_PKG_VERSION"), ".css");
/// The script's address, versioned as [`CSS_PATH`].
pub const JS_PATH: &str = concat!("/assets/console-", env!("CARGO_PKG_VERSION"), ".js");

/// The stylesheet.
const CSS: &str = include_str!("assets/console.css");
/// The script: every behaviour of the pages, attached to their `data-` attributes (the CSP
/// allows no inline script).
const JS: &str = include_str!("assets/console.js");

/// An asset, cached by the browser for a day (its address changes with each version).
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    response
}

/// `GET /assets/console-<version>.css`.
pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

/// `GET /assets/console-<version>.js`.
pub async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}
