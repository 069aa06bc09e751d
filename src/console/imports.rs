//! The Imports list, an import's page, and what a person does to an import: cancel it while it
//! runs, revert it (after a confirmation), download its fix-up file.
//!
//! Each handler is a few lines, as the gRPC ones: the session's scope, the import layer, the
//! page. The words of statuses are the help page's (`ImportStatus::words`).

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::StreamExt;
use maud::{Markup, html};

use super::error::PageError;
use super::layout::{self, Area};
use super::session::Visit;
use super::{Console, paths, view};
use crate::domain::{Import, ImportStatus};
use crate::grpc::pages;

/// Imports on a page of the list.
const IMPORTS_PAGE: u32 = 25;
/// Row errors on a page of an import.
const ERRORS_PAGE: u32 = 50;

/// A list page's position.
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    /// The token of the page, from the previous page's "Next page" link.
    #[serde(default)]
    page_token: String,
}

/// `GET /accounts/{account}/imports`: the Imports list, newest first, with New Import at the
/// top right.
pub async fn list(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path(account): Path<String>,
    Query(query): Query<PageQuery>,
    uri: Uri,
) -> Result<Html<String>, PageError> {
    let scope = visit.scope(&account, &uri.to_string())?;
    let importer = &console.inner.importer;
    let (imports, next) = pages::imports(
        importer,
        &scope,
        "page_token",
        &query.page_token,
        IMPORTS_PAGE,
    )
    .await?;
    let body = html! {
        div.heading {
            h1 { "Imports" }
            a.button.primary href=(paths::new_import(&account)) { "New Import" }
        }
        @if imports.is_empty() && query.page_token.is_empty() {
            p.empty { "No imports yet. Choose " strong { "New Import" } " to invite users from a CSV file." }
        } @else {
            table.imports {
                caption.visually-hidden { "Imports, newest first" }
                thead { tr {
                    th scope="col" { "File name" } th scope="col" { "Type" }
                    th scope="col" { "Status" } th scope="col" class="num" { "Imported" }
                    th scope="col" class="num" { "Failed" } th scope="col" { "Created" }
                    th scope="col" { "Created by" }
                } }
                tbody {
                    @for import in &imports {
                        tr {
                            td { a href=(paths::import(&account, import.import_id.as_str())) {
                                (import.filename.as_str()) } }
                            td { (view::type_words(import)) }
                            td { (view::status_badge(import.status)) }
                            td.num { (import.counters.rows_imported) }
                            td.num { (import.counters.rows_failed) }
                            td { (view::when(import.create_time)) }
                            td { (view::by(&import.created_by)) }
                        }
                    }
                }
            }
        }
        (view::next_page(&uri, &next))
    };
    Ok(layout::page(
        &visit,
        Some(&account),
        Area::Imports,
        "Imports",
        body,
    ))
}

/// An import's page position: which page of its row errors.
#[derive(Debug, serde::Deserialize)]
pub struct ErrorsQuery {
    /// The token of the errors page.
    #[serde(default)]
    errors_page_token: String,
}

/// `GET /accounts/{account}/imports/{import}`: the import's status and what it means, its
/// counters (live while it runs), its actions, and its Errors section.
pub async fn show(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path((account, import_id)): Path<(String, String)>,
    Query(query): Query<ErrorsQuery>,
    uri: Uri,
) -> Result<Html<String>, PageError> {
    let (scope, import_id) = visit.import(&account, &import_id, &uri.to_string())?;
    let importer = &console.inner.importer;
    let (import, errors, next) = pages::import_with_errors(
        importer,
        &scope,
        &import_id,
        "errors_page_token",
        &query.errors_page_token,
        ERRORS_PAGE,
    )
    .await?;
    let here = paths::import(&account, import_id.as_str());
    let body = html! {
        p.crumbs { a href=(paths::imports(&account)) { "Imports" } " / " (import.filename.as_str()) }
        div.heading {
            h1 { (import.filename.as_str()) }
            (actions(&visit, &account, &import, &here))
        }
        (view::summary(&import, &format!("{here}/events")))
        section.errors aria-labelledby="errors-title" {
            h2 #errors-title { "Errors" }
            (view::errors_table(&import, &errors))
            (view::next_page_with(&uri, "errors_page_token", &next))
        }
    };
    Ok(layout::page(
        &visit,
        Some(&account),
        Area::Imports,
        import.filename.as_str(),
        body,
    ))
}

/// What a person can do with the import now: cancel it while it runs; once it ended, download
/// its fix-up file, import the fixed file as a retry, see its users, revert it.
fn actions(visit: &Visit, account: &str, import: &Import, here: &str) -> Markup {
    let id = import.import_id.as_str();
    html! {
        div.actions {
            @if import.status == ImportStatus::Processing {
                form method="post" action=(format!("{here}/cancel")) {
                    input type="hidden" name="csrf" value=(visit.csrf);
                    button.danger type="submit" { "Cancel import" }
                }
            } @else {
                @if import.counters.rows_failed > 0 && import.details_removed_time.is_none() {
                    a.button href=(format!("{here}/fix-up.csv")) download {
                        "Download the fix-up file" }
                    a.button href=(format!("{}?retry_of={}", paths::new_import(account),
                        paths::query_value(id))) { "Import the fixed file" }
                }
                @if import.counters.rows_imported > 0 && !import.validate_only {
                    a.button href=(paths::users(account, Some(id))) { "Users it created" }
                }
                @if import.revert_time.is_none() && !import.validate_only
                    && import.status.is_completed() {
                    a.button.danger href=(format!("{here}/revert")) { "Revert…" }
                }
            }
        }
    }
}

/// `POST …/{import}/cancel`: cancels the running import, then shows it.
pub async fn cancel(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path((account, import_id)): Path<(String, String)>,
) -> Result<Redirect, PageError> {
    let (scope, id) = visit.import(&account, &import_id, &paths::import(&account, &import_id))?;
    console.inner.importer.cancel(&scope, &id).await?;
    Ok(Redirect::to(&paths::import(&account, id.as_str())))
}

/// `GET …/{import}/revert`: the confirmation, which says what a revert removes and keeps.
pub async fn confirm_revert(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path((account, import_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Html<String>, PageError> {
    let (scope, id) = visit.import(&account, &import_id, &uri.to_string())?;
    let import = console.inner.importer.get(&scope, &id).await?;
    let here = paths::import(&account, id.as_str());
    let body = html! {
        h1 { "Revert " (import.filename.as_str()) "?" }
        p { "This removes the " strong { (import.counters.rows_imported) } " users this import \
             created, except those another import has updated since. Updates it made to users \
             who existed before are not undone. This cannot be undone." }
        form method="post" action=(format!("{here}/revert")) {
            input type="hidden" name="csrf" value=(visit.csrf);
            button.danger type="submit" { "Revert the import" }
            " "
            a.button href=(here) { "Keep it" }
        }
    };
    Ok(layout::page(
        &visit,
        Some(&account),
        Area::Imports,
        "Revert",
        body,
    ))
}

/// `POST …/{import}/revert`: reverts, then shows the import with its revert note.
pub async fn revert(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path((account, import_id)): Path<(String, String)>,
) -> Result<Redirect, PageError> {
    let (scope, id) = visit.import(&account, &import_id, &paths::import(&account, &import_id))?;
    console.inner.importer.revert(&scope, &id).await?;
    Ok(Redirect::to(&paths::import(&account, id.as_str())))
}

/// `GET …/{import}/fix-up.csv`: the failed rows as a CSV file to fix, streamed from the
/// database as `GetImportErrorReport` streams it.
pub async fn fix_up(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path((account, import_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, PageError> {
    let (scope, id) = visit.import(&account, &import_id, &uri.to_string())?;
    let import = console.inner.importer.get(&scope, &id).await?;
    let chunks = console.inner.importer.error_report(&scope, &id).await?;
    let body = Body::from_stream(chunks.map(|chunk| chunk.map_err(std::io::Error::other)));
    let name = format!(
        "attachment; filename=\"{}\"",
        view::fix_up_name(import.filename.as_str())
    );
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
