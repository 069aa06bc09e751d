//! New Import: the form, the Users Import Template beside it, and the upload the form's script
//! makes.
//!
//! The browser sends the file in two requests, each through the import layer:
//!
//! 1. `…/new-import/check`, with the form's fields, the file's size and its first bytes: the
//!    metadata is parsed as gRPC parses `ImportMetadata` (`convert::new_import`, so a bad
//!    name is refused in the same words), and the size and first bytes get the door's verdict
//!    (`Importer::check_upload`): a refusal shows at once on the form, before any upload;
//! 2. `…/new-import/upload`, the whole file as the request's body, streamed into the same
//!    `Importer::upload` as a gRPC upload: metadata, then each piece of the body as it arrives
//!    (so the server holds no more of a 200 MiB file than of a gRPC upload), then the finish
//!    with the size the browser gave. The browser shows a progress bar as it sends, and the
//!    import's live counters from its events.

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use futures::{StreamExt, stream};
use maud::html;

use super::error::{JsonError, PageError};
use super::layout::{self, Area};
use super::session::Visit;
use super::{Console, paths};
use crate::domain::{ImportId, ImportType, NewImport};
use crate::grpc::convert;
use crate::import::pipeline::events::{FinishCheck, StreamError, UploadEvent};
use crate::import::template;
use crate::proto;

/// The form's address: a retry of another import when `retry_of` is set.
#[derive(Debug, serde::Deserialize)]
pub struct FormQuery {
    /// The import whose fixed file this upload is ("Import the fixed file").
    #[serde(default)]
    retry_of: String,
}

/// `GET /accounts/{account}/new-import`: Type, Choose File, the options, Save; the template
/// on the right.
pub async fn form(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path(account): Path<String>,
    Query(query): Query<FormQuery>,
    uri: Uri,
) -> Result<Html<String>, PageError> {
    let scope = visit.scope(&account, &uri.to_string())?;
    let retry_of = match query.retry_of.as_str() {
        "" => None,
        id => {
            let id = convert::import_id(id).map_err(|e| PageError::Import(e.into()))?;
            Some(console.inner.importer.get(&scope, &id).await?)
        }
    };
    let imports = paths::imports(&account);
    let account_path = paths::account(&account);
    let template = template::template(ImportType::Users);
    let limit_mib = console.inner.importer.config().max_upload_bytes / (1024 * 1024);
    let body = html! {
        p.crumbs { a href=(imports) { "Imports" } " / New Import" }
        h1 { "New Import" }
        div.columns {
            form #new-import.card method="post" novalidate
                data-check=(format!("{account_path}{}", paths::CHECK))
                data-upload=(format!("{account_path}{}", paths::UPLOAD))
                data-imports=(imports) data-csrf=(visit.csrf) {
                @if let Some(import) = &retry_of {
                    p.note { "Importing the fixed file of " strong { (import.filename.as_str()) }
                             ": its failed rows, corrected." }
                    input type="hidden" name="retry_of" value=(import.import_id.as_str());
                }
                label for="type" { "Type" }
                select #type name="type" { option value="users" selected { "Users (CSV)" } }
                label for="file" { "File" }
                input #file type="file" name="file" accept=".csv,text/csv" required
                    aria-describedby="file-help";
                p #file-help.help { "A CSV file of at most " (limit_mib) " MiB, with the \
                                    template's columns." }
                fieldset {
                    legend { "Options" }
                    label.check { input type="checkbox" name="validate_only" value="1";
                        " Dry run: check the file, write no user" }
                    label for="on_conflict" { "A user who exists already" }
                    select #on_conflict name="on_conflict" {
                        option value="error" selected { "Report the row as an error" }
                        option value="skip" { "Leave the user as it is (skip)" }
                        option value="update" { "Update the user from the file" }
                    }
                    label for="invitations" { "Invitations" }
                    select #invitations name="invitations" {
                        option value="send" selected { "Send them once the import completes" }
                        option value="hold" { "Hold them; send later" }
                    }
                }
                p #form-error.error role="alert" hidden {}
                div #upload-progress hidden {
                    label for="progress" { "Uploading" }
                    progress #progress max="100" value="0" {}
                    p #progress-text aria-live="polite" {}
                }
                div.form-actions {
                    button.primary #save type="submit" { "Save" }
                    a.button href=(imports) { "Cancel" }
                }
                noscript { p.error { "Uploading needs JavaScript, which is off in this browser." } }
            }
            aside.card aria-labelledby="templates-title" {
                h2 #templates-title { "Imports Templates" }
                p { a.button href="/templates/users.csv" download { "Users Import Template" } }
                p.help { "A header and an example row. Keep the header; columns may come in any \
                          order, and only email is required." }
                table.columns-help {
                    caption.visually-hidden { "The template's columns" }
                    thead { tr { th scope="col" { "Column" } th scope="col" { "What it takes" } } }
                    tbody {
                        @for column in &template.columns {
                            tr {
                                td { code { (column.name) } @if column.required { " (required)" } }
                                td { (column.description) " Example: " code { (column.example) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(
        &visit,
        Some(&account),
        Area::Imports,
        "New Import",
        body,
    ))
}

/// `GET /templates/users.csv`: the Users Import Template, as `GetImportTemplate` serves it.
pub async fn template_file(Extension(visit): Extension<Visit>) -> Result<Response, PageError> {
    visit.caller("/templates/users.csv")?;
    let template = template::template(ImportType::Users);
    let mut response = template.csv.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let disposition = format!("attachment; filename=\"{}\"", template.filename);
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The form's fields, in the query of both requests.
#[derive(Debug, serde::Deserialize)]
pub struct UploadQuery {
    /// The file's name as the browser gives it.
    filename: String,
    /// The file's size in bytes.
    size: u64,
    /// The import's id: none for the check, the one the check gave for the upload.
    #[serde(default)]
    import_id: String,
    /// `1` for a dry run.
    #[serde(default)]
    validate_only: String,
    /// `error`, `skip` or `update`.
    #[serde(default)]
    on_conflict: String,
    /// `send` or `hold`.
    #[serde(default)]
    invitations: String,
    /// The import whose fixed file this is.
    #[serde(default)]
    retry_of: String,
}

impl UploadQuery {
    /// The upload's metadata, parsed as gRPC parses it: the same rules and the same words.
    fn new_import(&self, account: &str) -> Result<NewImport, JsonError> {
        let on_conflict = match self.on_conflict.as_str() {
            "" | "error" => proto::ConflictPolicy::Error as i32,
            "skip" => proto::ConflictPolicy::Skip as i32,
            "update" => proto::ConflictPolicy::Update as i32,
            // A number no policy has: refused in the service's words.
            _ => -1,
        };
        let invitations = match self.invitations.as_str() {
            "" | "send" => proto::InvitationPolicy::Send as i32,
            "hold" => proto::InvitationPolicy::Hold as i32,
            _ => -1,
        };
        let metadata = proto::ImportMetadata {
            account_id: account.to_owned(),
            import_id: self.import_id.clone(),
            r#type: proto::ImportType::Users as i32,
            filename: self.filename.clone(),
            validate_only: self.validate_only == "1",
            on_conflict,
            retry_of_import_id: self.retry_of.clone(),
            invitations,
            ..Default::default()
        };
        convert::new_import(&metadata)
            .map_err(|e| JsonError::from(crate::import::ImportError::from(e)))
    }
}

/// `POST …/new-import/check` (body: the file's first bytes): the door's verdict before the
/// upload, and the import id the upload will take, so that the page can follow it.
pub async fn check(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path(account): Path<String>,
    Query(query): Query<UploadQuery>,
    head: Bytes,
) -> Result<Json<serde_json::Value>, JsonError> {
    // The account first, as gRPC checks it, with the refusal in the audit log.
    let scope = visit.scope(&account, "/")?;
    let new = query.new_import(&account)?;
    console
        .inner
        .importer
        .check_upload(scope.caller(), &new, query.size, &head)?;
    let import_id = ImportId::generate();
    Ok(Json(serde_json::json!({
        "import_id": import_id.as_str(),
        "url": paths::import(&account, import_id.as_str()),
    })))
}

/// `POST …/new-import/upload` (body: the file): the upload, streamed into the import layer;
/// answers the ended import's address and status, or the refusal in the service's words.
pub async fn upload(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path(account): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<Json<serde_json::Value>, JsonError> {
    let caller = visit.scope(&account, "/")?.caller().clone();
    let new = query.new_import(&account)?;
    let finish = FinishCheck {
        size_bytes: Some(query.size),
        sha256: None,
    };
    let chunks = body.into_data_stream().map(|piece| {
        piece
            .map(UploadEvent::Chunk)
            .map_err(|e| StreamError::Transport(format!("the browser's upload broke: {e}")))
    });
    // The finish only once the body ended whole: after a broken piece the pipeline has
    // stopped reading, and the finish is never taken.
    let events = stream::once(async { Ok(UploadEvent::Metadata(new)) })
        .chain(chunks)
        .chain(stream::once(async move { Ok(UploadEvent::Finish(finish)) }));
    let import = console
        .inner
        .importer
        .upload(caller, Box::pin(events))
        .await?;
    Ok(Json(serde_json::json!({
        "import_id": import.import_id.as_str(),
        "status": import.status.words(),
        "url": paths::import(&account, import.import_id.as_str()),
    })))
}
