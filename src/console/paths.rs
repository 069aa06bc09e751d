//! The console's addresses, built in one place: every account id and import id that goes into
//! a path or a query is percent-encoded here, so that an id with `/`, `?` or `<` in it stays
//! one segment (account ids may hold any printable character).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What stays as it is in a path segment or a query value: letters, digits, `-._~`.
const KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value`, encoded for a query string or a path segment.
pub fn query_value(value: &str) -> String {
    utf8_percent_encode(value, KEPT).to_string()
}

/// The account's pages start here.
pub fn account(account: &str) -> String {
    format!("/accounts/{}", query_value(account))
}

/// The Imports list.
pub fn imports(account_id: &str) -> String {
    format!("{}/imports", account(account_id))
}

/// One import's page.
pub fn import(account_id: &str, import_id: &str) -> String {
    format!("{}/{}", imports(account_id), query_value(import_id))
}

/// Under an account: the New Import form (not under imports/, where every word may be an
/// import's id), its check, and its upload, whose body the guard leaves to the pipeline.
pub const NEW_IMPORT: &str = "/new-import";
/// See [`NEW_IMPORT`].
pub const CHECK: &str = "/new-import/check";
/// See [`NEW_IMPORT`].
pub const UPLOAD: &str = "/new-import/upload";

/// The New Import form.
pub fn new_import(account_id: &str) -> String {
    format!("{}{NEW_IMPORT}", account(account_id))
}

/// The Users list, of one import when given.
pub fn users(account_id: &str, import_id: Option<&str>) -> String {
    match import_id {
        None => format!("{}/users", account(account_id)),
        Some(id) => format!(
            "{}/users?import_id={}",
            account(account_id),
            query_value(id)
        ),
    }
}

/// A path of this console to go back to after sign-in: one that starts with a single `/` and
/// holds only printable ASCII without spaces or backslashes, so that `next` can never send the
/// browser to another site (browsers drop tabs and read `\\` as `/`) nor break a header.
pub fn local(next: &str) -> &str {
    let printable = next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    let ok = printable && next.starts_with('/') && !next.starts_with("//");
    if ok { next } else { "/" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_one_segment() {
        assert_eq!(account("a/b?c"), "/accounts/a%2Fb%3Fc");
        assert_eq!(import("acme", "x-1_2"), "/accounts/acme/imports/x-1_2");
        assert_eq!(local("//evil.example/x"), "/");
        assert_eq!(local("https://evil.example"), "/");
        assert_eq!(local("/\\evil.example"), "/");
        assert_eq!(local("/\t/evil.example/x"), "/");
        assert_eq!(local("/a\nb"), "/");
        assert_eq!(local("/accounts/acme/imports"), "/accounts/acme/imports");
    }
}
