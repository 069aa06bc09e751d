//! The way in: the account picker, sign-in with a token, sign-out.

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};

use super::error::PageError;
use super::layout::{self, Area};
use super::session::{self, Secure, Visit};
use super::{Console, paths};

/// `GET /`: the caller's accounts (or a field to name one, for a token of every account);
/// straight to the Imports list of a token's only account.
pub async fn home(Extension(visit): Extension<Visit>) -> Result<Response, PageError> {
    let caller = visit.caller("/")?;
    let accounts = caller.accounts();
    if let Some([only]) = accounts.as_deref() {
        return Ok(Redirect::to(&paths::imports(only)).into_response());
    }
    let body = html! {
        h1 { "Choose an account" }
        @if let Some(accounts) = &accounts {
            ul.accounts {
                @for account in accounts {
                    li { a href=(paths::imports(account)) { (account) } }
                }
            }
        } @else {
            form.card method="get" action="/open" {
                label for="account" { "Account id" }
                input #account type="text" name="account" required autofocus;
                button.primary type="submit" { "Open" }
            }
        }
    };
    Ok(layout::page(&visit, None, Area::None, "Accounts", body).into_response())
}

/// The account picker's field.
#[derive(Debug, serde::Deserialize)]
pub struct OpenQuery {
    /// As typed.
    account: String,
}

/// `GET /open?account=…`: the Imports list of the account typed in.
pub async fn open(Query(query): Query<OpenQuery>) -> Redirect {
    Redirect::to(&paths::imports(query.account.trim()))
}

/// Where to go after sign-in.
#[derive(Debug, serde::Deserialize)]
pub struct NextQuery {
    /// A path of this console.
    #[serde(default)]
    next: String,
}

/// The sign-in form, with a message when a token was refused.
fn form(visit: &Visit, next: &str, refused: Option<&str>) -> Html<String> {
    let body: Markup = html! {
        h1 { "Sign in to bulk-import" }
        form.card method="post" action="/sign-in" {
            input type="hidden" name="csrf" value=(visit.csrf);
            input type="hidden" name="next" value=(paths::local(next));
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="current-password" required
                autofocus aria-describedby="token-help";
            p #token-help.help { "The bearer token you were given for this service." }
            @if let Some(message) = refused {
                p #sign-in-error.error role="alert" { (message) }
            }
            button.primary type="submit" { "Sign in" }
        }
    };
    layout::bare("Sign in", body)
}

/// `GET /sign-in`: the form; an open server has nobody to sign in, and goes home.
pub async fn page(Extension(visit): Extension<Visit>, Query(query): Query<NextQuery>) -> Response {
    if visit.open {
        return Redirect::to("/").into_response();
    }
    form(&visit, &query.next, None).into_response()
}

/// The sign-in form's fields.
#[derive(Debug, serde::Deserialize)]
pub struct SignIn {
    /// The token, as typed.
    token: String,
    /// Where to go after.
    #[serde(default)]
    next: String,
}

/// `POST /sign-in`: a new session for a token the tokens file lists, then back to `next`;
/// otherwise the form again, saying so (and the audit log says it too).
pub async fn submit(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Extension(secure): Extension<Secure>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Form(fields): Form<SignIn>,
) -> Response {
    match session::sign_in(&console, &fields.token) {
        Some((caller, cookie)) => {
            tracing::info!(token = caller.name(), %peer, "console sign-in");
            let mut response = Redirect::to(paths::local(&fields.next)).into_response();
            cookie.set(&console, secure, &mut response);
            response
        }
        None => {
            crate::audit::unauthenticated(
                Some(peer),
                "console sign-in with a token that is not valid",
            );
            let message = "That token is not valid for this server. Check it, or ask for a token \
                           of this server.";
            (
                StatusCode::UNAUTHORIZED,
                form(&visit, &fields.next, Some(message)),
            )
                .into_response()
        }
    }
}

/// `POST /sign-out`: ends the session, back to the sign-in page.
pub async fn sign_out(
    State(console): State<Console>,
    Extension(visit): Extension<Visit>,
    Extension(secure): Extension<Secure>,
) -> Response {
    let cookie = session::sign_out(&console, &visit);
    let mut response = Redirect::to("/sign-in").into_response();
    cookie.set(&console, secure, &mut response);
    response
}
