//! The console's errors, and their one mapping to HTTP: a page for a person, JSON for the
//! console's script.
//!
//! The import layer's errors are those of gRPC, worded once: the message a page shows is the
//! one `grpc::error` sends (an INTERNAL one is logged there and answered with a fixed message,
//! so a page never shows SQL, paths or values), and the HTTP status follows from the error
//! in one exhaustive match, so that a new error must be given its status here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout;
use crate::import::ImportError;

/// Why a console page could not be shown.
#[derive(Debug)]
pub enum PageError {
    /// The page needs a signed-in session: the browser goes to the sign-in page, and back
    /// to `next` after it.
    SignIn {
        /// The page asked for, as a path of this console.
        next: String,
    },
    /// A state-changing request without its session's CSRF token: a form from an old page
    /// (or from another site).
    Csrf,
    /// No such page.
    Missing,
    /// A request's body that did not arrive whole, small and in time.
    Body,
    /// A loopback console asked for under another name: a page of another site whose name
    /// was rebound to this machine (DNS rebinding).
    ForeignHost,
    /// The import layer refused, as it refuses a gRPC call.
    Import(ImportError),
}

impl From<ImportError> for PageError {
    fn from(error: ImportError) -> Self {
        PageError::Import(error)
    }
}

/// Why a loopback console refuses another name.
const FOREIGN_HOST: &str = "This console listens on this machine only: open it as \
                            http://localhost:PORT/ or http://127.0.0.1:PORT/. To serve it under \
                            another name, start the server with --console-listen 0.0.0.0:PORT.";

/// Why a request's body was refused.
const BODY: &str = "the request's body did not arrive whole within 10 s, or is larger than \
                    64 KiB; send the form again";

/// The HTTP status of an import layer's error: the one mapping, exhaustive.
fn http_status(error: &ImportError) -> StatusCode {
    match error {
        ImportError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ImportError::AlreadyExists { .. } | ImportError::ResumeOffset { .. } => {
            StatusCode::CONFLICT
        }
        ImportError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ImportError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        ImportError::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
        ImportError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ImportError::Stalled(_) | ImportError::RequestStalled(_) => StatusCode::REQUEST_TIMEOUT,
        ImportError::ImportCancelled(_) | ImportError::FailedPrecondition(_) => {
            StatusCode::CONFLICT
        }
        ImportError::NotFound { .. } | ImportError::UserNotFound(_) => StatusCode::NOT_FOUND,
        // The browser went away: nobody reads this answer.
        ImportError::StreamBroke(_) | ImportError::Paused(_) => StatusCode::BAD_REQUEST,
        ImportError::NotReady | ImportError::ShuttingDown | ImportError::Unavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ImportError::Ended => StatusCode::CONFLICT,
        ImportError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status and the words of an import layer's error, as gRPC words it; a bad argument's
/// message without the field's name in front (`chunk: `), which the form does not need.
fn answer(error: ImportError) -> (StatusCode, String) {
    let status = http_status(&error);
    let message = match &error {
        ImportError::InvalidArgument(e) => e.message.clone(),
        _ => tonic::Status::from(error).message().to_owned(),
    };
    (status, message)
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            PageError::SignIn { next } => {
                let to = format!("/sign-in?next={}", super::paths::query_value(&next));
                return Redirect::to(&to).into_response();
            }
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "The form has expired",
                "This form came from a page that is too old (or from another site). Go back, \
                 reload the page, and try again."
                    .to_owned(),
            ),
            PageError::Missing => (
                StatusCode::NOT_FOUND,
                "Page not found",
                "There is no such page in the console.".to_owned(),
            ),
            PageError::ForeignHost => (
                StatusCode::MISDIRECTED_REQUEST,
                "Wrong address",
                FOREIGN_HOST.to_owned(),
            ),
            PageError::Body => (
                StatusCode::BAD_REQUEST,
                "That did not work",
                BODY.to_owned(),
            ),
            PageError::Import(error) => {
                let (status, message) = answer(error);
                let title = match status {
                    StatusCode::FORBIDDEN => "Not allowed",
                    StatusCode::NOT_FOUND => "Not found",
                    StatusCode::SERVICE_UNAVAILABLE => "Not available right now",
                    _ => "That did not work",
                };
                (status, title, message)
            }
        };
        let page = layout::bare(
            title,
            html! {
                h1 { (title) }
                p.error role="alert" { (message) }
                p { a href="/" { "Back to the console" } }
            },
        );
        (status, page).into_response()
    }
}

/// An error for the console's script (the upload and its check): JSON with the service's
/// message, which the form shows as it is.
#[derive(Debug)]
pub struct JsonError(pub PageError);

impl From<ImportError> for JsonError {
    fn from(error: ImportError) -> Self {
        JsonError(PageError::Import(error))
    }
}

impl From<PageError> for JsonError {
    fn from(error: PageError) -> Self {
        JsonError(error)
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        let (status, message) = match self.0 {
            PageError::SignIn { .. } => (
                StatusCode::UNAUTHORIZED,
                "your session has ended; sign in again, then upload the file".to_owned(),
            ),
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "this page is too old (the server restarted, or you signed out); reload it and \
                 try again"
                    .to_owned(),
            ),
            PageError::Missing => (StatusCode::NOT_FOUND, "no such page".to_owned()),
            PageError::ForeignHost => (StatusCode::MISDIRECTED_REQUEST, FOREIGN_HOST.to_owned()),
            PageError::Body => (StatusCode::BAD_REQUEST, BODY.to_owned()),
            PageError::Import(error) => answer(error),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
