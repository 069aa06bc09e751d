//! The web console in a real browser: Debian's Chromium, headless, driven through chromedriver
//! by fantoccini, against the real server on port 0 with a temporary database.
//!
//! Without chromium and chromedriver installed when the tests were built, the browser tests are
//! ignored with the reason; `.ci/run` installs both and asks for them
//! (`BULK_IMPORT_REQUIRE_TOOLS=1`), so in CI a missing browser fails them (see `build.rs`).
//! Each test saves a screenshot of each screen it visits in
//! `target/tmp/console-screenshots/`; the README shows those of the SQLite tests
//! (`docs/console/`). The browser itself is `support::browser`, shared with the benchmark.

mod actions;
mod http;
mod journey;
mod memory;
mod security;

use std::time::{Duration, Instant};

use crate::helpers::*;

pub use crate::support::browser::{Browser, WAIT};

/// The server with its console on a port of its own, with `configure` applied.
pub async fn console_app(
    backend: Backend,
    configure: impl FnOnce(&mut bulk_import::config::ServeArgs),
) -> TestApp {
    spawn_app_with(backend, |args| {
        args.console_listen = Some(bulk_import::config::console::ConsoleListen::At(
            "127.0.0.1:0".parse().unwrap(),
        ));
        configure(args);
    })
    .await
}

/// Defines each browser test for both backends, ignored with the reason when the browser is
/// not installed (see `build.rs`).
macro_rules! browser_tests {
    ($($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($backend: $crate::helpers::Backend) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(browser_tests), ignore = "chromium and chromedriver are not installed (.ci/run installs them)")]
                async fn sqlite() {
                    run($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(all(browser_tests, postgres_tests)), ignore = "needs chromium, chromedriver and TEST_DATABASE_URL (.ci/run sets them up)")]
                async fn postgres() {
                    run($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}
pub(crate) use browser_tests;
