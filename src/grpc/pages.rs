//! One page of each list, read the AIP-158 way for every client of the service: the gRPC
//! handlers and the web console read their pages here, so that a page token and a page size
//! mean the same on both.
//!
//! Each asks the import layer for `limit + 1` rows: the extra row says a next page exists, and
//! is dropped from the answer. Tokens are bound to their list (`page_token::scope`): a token of
//! another account, import or filter is INVALID_ARGUMENT on `field`.

use super::page_token;
use crate::domain::{Import, ImportId, InvitationState, Scope};
use crate::import::{ImportCursor, ImportError, Importer};
use crate::store::{StoredRowError, StoredUser};

/// Cuts `rows`, read with one more than `limit`, to the page, and gives the next page's token
/// (empty on the last page), made by `token` from the page's last row.
fn cut<T>(rows: &mut Vec<T>, limit: u32, token: impl FnOnce(&T) -> String) -> String {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(token).unwrap_or_default()
    } else {
        String::new()
    }
}

/// A page of the account's imports, newest first, after the position `token` holds.
pub async fn imports(
    importer: &Importer,
    scope: &Scope,
    field: &'static str,
    token: &str,
    limit: u32,
) -> Result<(Vec<Import>, String), ImportError> {
    let list = page_token::scope(&[scope.account_id().as_str()]);
    let after = page_token::decode_cursor(field, token, list)?.map(|(create_micros, import_id)| {
        ImportCursor {
            create_micros,
            import_id,
        }
    });
    let mut imports = importer.list(scope, after.as_ref(), limit + 1).await?;
    let next = cut(&mut imports, limit, |last| {
        let last = ImportCursor::after(last);
        page_token::encode_cursor(list, last.create_micros, &last.import_id)
    });
    Ok((imports, next))
}

/// An import and a page of its row errors, in file order. The token is read before the
/// import is looked up, so that a bad token is INVALID_ARGUMENT whether or not the import
/// exists.
pub async fn import_with_errors(
    importer: &Importer,
    scope: &Scope,
    import_id: &ImportId,
    field: &'static str,
    token: &str,
    limit: u32,
) -> Result<(Import, Vec<StoredRowError>, String), ImportError> {
    let list = page_token::scope(&[scope.account_id().as_str(), import_id.as_str()]);
    let after = page_token::decode(field, token, list)?;
    let import = importer.get(scope, import_id).await?;
    let mut errors = importer.row_errors(&import, after, limit + 1).await?;
    let next = cut(&mut errors, limit, |last| {
        page_token::encode(list, last.seq)
    });
    Ok((import, errors, next))
}

/// A page of the account's users by email; only those `import_id` created, and only those
/// whose invitation is in `state`, when given.
pub async fn users(
    importer: &Importer,
    scope: &Scope,
    import_id: Option<&ImportId>,
    state: Option<InvitationState>,
    token: &str,
    limit: u32,
) -> Result<(Vec<StoredUser>, String), ImportError> {
    let scope_import = import_id.map_or("", |id| id.as_str());
    // The state only when filtered by, so that tokens made before the filter existed still
    // serve.
    let list = match state {
        None => page_token::scope(&[scope.account_id().as_str(), scope_import]),
        Some(state) => {
            page_token::scope(&[scope.account_id().as_str(), scope_import, state.as_str()])
        }
    };
    let after = page_token::decode_key("page_token", token, list)?;
    let mut users = importer
        .users(scope, import_id, state, after.as_deref(), limit + 1)
        .await?;
    let next = cut(&mut users, limit, |last| {
        page_token::encode_key(list, &last.email)
    });
    Ok((users, next))
}
