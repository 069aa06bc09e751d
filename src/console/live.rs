//! An import's live counters, as Server-Sent Events: the page's script moves its counters in
//! place from them, without a reload.
//!
//! Fed by the import layer's watch (`Importer::watch`, as `WatchImport`): a snapshot at once,
//! another whenever the counters move, the terminal one last, then the stream ends. The watch
//! takes one of the `--max-watchers` places while the page is open, and lets it go when the
//! browser leaves (axum drops the stream), or when the session ends or its token is revoked.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};

use super::error::PageError;
use super::session::{self, Visit};
use super::{Console, view};
use crate::domain::Import;

/// `GET …/{import}/events`: `import` events with the counters and the status, then the end.
pub async fn events(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path((account, import_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let (scope, import_id) = visit.import(&account, &import_id, &uri.to_string())?;
    // Beyond the importer's watcher places, a share of the console's connections: live views
    // can never take them all. Past it, the page says its counters stopped.
    let place = console.live_place().ok_or_else(|| {
        PageError::Import(crate::import::ImportError::LimitReached(format!(
            "{} pages already follow imports live on this console; reload later",
            super::MAX_LIVE
        )))
    })?;
    let updates = console.inner.importer.watch(&scope, &import_id).await?;
    // The session is asked again at every update: a sign-out or a revoked token ends the
    // stream (and the browser's retry meets the sign-in).
    let (guard, account) = (console.clone(), scope.account_id().clone());
    let still = move || session::still_allowed(&guard, &visit, &account);
    let updates = updates.take_while(move |_| std::future::ready(still()));
    let events = updates.map(move |update| {
        // Held while the stream lives.
        let _place = &place;
        Ok(match update {
            Ok(import) => Event::default()
                .event("import")
                .data(snapshot(&import).to_string()),
            // The page keeps what it shows, and says the live view stopped.
            Err(e) => Event::default()
                .event("failed")
                .data(tonic::Status::from(e).message()),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// What the page shows of an import, by the names of its `data-counter` cells.
fn snapshot(import: &Import) -> serde_json::Value {
    let c = &import.counters;
    serde_json::json!({
        "status": import.status.words(),
        "terminal": import.status.is_terminal(),
        "explanation": view::explanation(import.status),
        "rows_processed": c.rows_processed,
        "rows_imported": c.rows_imported,
        "rows_failed": c.rows_failed,
        "rows_skipped": c.rows_skipped,
        "rows_updated": c.rows_updated,
        "users_invited": import.users_invited,
        "bytes_received": c.bytes_received,
    })
}
