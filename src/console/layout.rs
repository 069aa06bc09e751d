//! The frame of every console page: the head (the console's own stylesheet and script, nothing
//! from elsewhere), the side bar with the Imports and Users areas of the account, who is
//! signed in, and the warning of an open server.
//!
//! Pages are maud templates: every value put in one is escaped, so a file name, a cell value
//! or a message shows as text whatever it holds; only `PreEscaped` (not used with data)
//! would write markup.

use axum::response::Html;
use maud::{DOCTYPE, Markup, html};

use super::paths;
use super::session::Visit;

/// Which area of the side bar a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// The Imports list, an import, New Import.
    Imports,
    /// The Users list.
    Users,
    /// No account's area (the account picker, sign-in).
    None,
}

/// The document around `body`: title, stylesheet, script.
fn document(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · bulk-import" }
                    link rel="stylesheet" href=(super::assets::CSS_PATH);
                    script src=(super::assets::JS_PATH) defer {}
                }
                body { (body) }
            }
        }
        .into_string(),
    )
}

/// A page without the side bar: sign-in, errors.
pub fn bare(title: &str, body: Markup) -> Html<String> {
    document(
        title,
        html! {
            main.bare { (body) }
        },
    )
}

/// A page of an account: the side bar with its areas, the banner of an open server, and
/// `body`.
pub fn page(
    visit: &Visit,
    account: Option<&str>,
    area: Area,
    title: &str,
    body: Markup,
) -> Html<String> {
    document(
        title,
        html! {
            a.skip href="#main" { "Skip to the content" }
            div.frame {
                nav.sidebar aria-label="Console" {
                    p.brand { a href="/" { "bulk-import" } }
                    @if let Some(account) = account {
                        p.account { "Account " strong { (account) } }
                        ul {
                            li { a href=(paths::imports(account))
                                aria-current=[(area == Area::Imports).then_some("page")]
                                { "Imports" } }
                            li { a href=(paths::users(account, None))
                                aria-current=[(area == Area::Users).then_some("page")]
                                { "Users" } }
                        }
                    }
                    p { a href="/" { "Switch account" } }
                    @if let Some(caller) = visit.signed_in() {
                        @if !visit.open {
                            p.who { "Signed in as " strong { (caller.name()) } }
                            form method="post" action="/sign-out" {
                                input type="hidden" name="csrf" value=(visit.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main {
                    @if visit.open {
                        p.banner role="note" {
                            "This console is open: the server runs without "
                            code { "--auth-tokens-file" }
                            ", so anyone who reaches it may import into any account, as on its \
                             gRPC port."
                        }
                    }
                    (body)
                }
            }
        },
    )
}
