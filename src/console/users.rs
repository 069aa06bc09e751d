//! Users: the account's users by email, or those one import created, paged.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::Html;
use maud::html;

use super::error::PageError;
use super::layout::{self, Area};
use super::session::Visit;
use super::{Console, paths, view};
use crate::grpc::{convert, pages};

/// Users on a page.
const USERS_PAGE: u32 = 50;

/// The list's filter and position.
#[derive(Debug, serde::Deserialize)]
pub struct UsersQuery {
    /// Only the users this import created; empty for every user.
    #[serde(default)]
    import_id: String,
    /// The page's token.
    #[serde(default)]
    page_token: String,
}

/// `GET /accounts/{account}/users`: the users, with the import that created each.
pub async fn list(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Path(account): Path<String>,
    Query(query): Query<UsersQuery>,
    uri: Uri,
) -> Result<Html<String>, PageError> {
    let scope = visit.scope(&account, &uri.to_string())?;
    let import_id = match query.import_id.trim() {
        "" => None,
        id => Some(convert::import_id(id).map_err(|e| PageError::Import(e.into()))?),
    };
    let importer = &console.inner.importer;
    let (users, next) = pages::users(
        importer,
        &scope,
        import_id.as_ref(),
        None,
        &query.page_token,
        USERS_PAGE,
    )
    .await?;
    let body = html! {
        h1 { "Users" }
        form.filter method="get" action=(paths::users(&account, None)) {
            label for="import_id" { "Created by import" }
            input #import_id type="text" name="import_id" value=(query.import_id)
                placeholder="any import";
            button type="submit" { "Show" }
        }
        @if users.is_empty() {
            p.empty { @if import_id.is_some() { "This import created no user that is still here." }
                      @else { "No users yet." } }
        } @else {
            table.users {
                caption.visually-hidden { "Users, by email" }
                thead { tr {
                    th scope="col" { "Email" } th scope="col" { "First name" }
                    th scope="col" { "Last name" } th scope="col" { "Role" }
                    th scope="col" { "Job title" } th scope="col" { "External id" }
                    th scope="col" { "Invitation" } th scope="col" { "Import" }
                } }
                tbody {
                    @for user in &users {
                        tr {
                            td { (user.email) } td { (user.first_name) } td { (user.last_name) }
                            td { (user.role.as_str()) } td { (user.job_title) }
                            td { (user.external_id.as_deref().unwrap_or("")) }
                            td { (user.invitation_state.as_str()) }
                            td { a href=(paths::import(&account, &user.import_id)) {
                                (user.import_id) } }
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
        Area::Users,
        "Users",
        body,
    ))
}
