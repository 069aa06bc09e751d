//! Opaque page tokens (AIP-158): a position plus a fingerprint of the request they belong to, so
//! that a token reused with another account or import is refused instead of silently paging
//! through the wrong list. Each list goes by what orders it, and its tokens carry their own
//! version byte, so that a token of one list is refused by another:
//!
//! - row error pages by a sequence number (version 1);
//! - the Imports list by the last import's `create_time` and `import_id` (version 2);
//! - `ListUsers` by the last user's stored address (version 3).
//!
//! A token is URL-safe base64 (no padding) of `[version][scope: 8 bytes][position]`, integers
//! big-endian. It is neither signed nor encrypted, on purpose: it grants nothing. Every call
//! checks the caller's account before it reads the token, and a position only says where the
//! next page of that list starts, so a forged token can at most page through a list its
//! caller may read anyway. The scope fingerprint is there for honest mistakes (a token kept
//! from another import, or from before a filter changed), which it turns into
//! INVALID_ARGUMENT instead of a page of the wrong list.
//!
//! The page size is not part of the scope: AIP-158 lets a client change it between pages.
//! Positions are keys, not offsets, so rows added meanwhile do not shift the next pages: no
//! row that was there is shown twice or skipped.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::domain::ArgumentError;

/// First byte of a row error token (`encode`): 17 bytes in all.
const VERSION: u8 = 1;
/// First byte of an Imports list token (`encode_cursor`).
const CURSOR_VERSION: u8 = 2;
/// First byte of a `ListUsers` token (`encode_key`).
const KEY_VERSION: u8 = 3;

/// A fingerprint of what a list is scoped to.
///
/// The handlers pass the arguments that choose the list, in a fixed order: the account, then
/// the import (row errors), or the import filter, `""` for none (`ListUsers`). The first 8
/// bytes of a SHA-256 over the parts, each followed by a NUL byte, so that `["ab", "c"]` and
/// `["a", "bc"]` differ; no account or import id can hold a NUL. 64 bits are plenty to tell a
/// mistake, which is all a scope is for (see the module's header).
pub fn scope(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A token for a list ordered by a sequence number (an import's row errors, by the `seq` of
/// the last one on the page): the next page starts after `position`.
pub fn encode(scope: u64, position: u64) -> String {
    let mut raw = [0u8; 17];
    raw[0] = VERSION;
    raw[1..9].copy_from_slice(&scope.to_be_bytes());
    raw[9..].copy_from_slice(&position.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position in `token`, `None` for an empty token (the first page).
///
/// INVALID_ARGUMENT on `field` for a token that is not base64, not 17 bytes, of another
/// version (another list's token) or of another scope; the message says to pass the previous
/// response's token unchanged.
pub fn decode(field: &'static str, token: &str, scope: u64) -> Result<Option<u64>, ArgumentError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || invalid(field);
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw: [u8; 17] = raw.try_into().map_err(|_| invalid())?;
    let token_scope = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
    if raw[0] != VERSION || token_scope != scope {
        return Err(invalid());
    }
    Ok(Some(u64::from_be_bytes(
        raw[9..].try_into().expect("8 bytes"),
    )))
}

/// A token for the Imports list: after the import at `create_micros`, `import_id`.
///
/// Both parts, because imports are listed newest first by `create_time`, which two imports
/// can share: the id breaks the tie, so that no import is skipped or shown twice at a page
/// boundary.
pub fn encode_cursor(scope: u64, create_micros: i64, import_id: &str) -> String {
    let mut raw = Vec::with_capacity(17 + import_id.len());
    raw.push(CURSOR_VERSION);
    raw.extend_from_slice(&scope.to_be_bytes());
    raw.extend_from_slice(&create_micros.to_be_bytes());
    raw.extend_from_slice(import_id.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position in an Imports list `token`: `create_time` in microseconds and `import_id`;
/// `None` for an empty token (the first page). The same INVALID_ARGUMENT as [`decode`] for a
/// token that is not one of this list's.
pub fn decode_cursor(
    field: &'static str,
    token: &str,
    scope: u64,
) -> Result<Option<(i64, String)>, ArgumentError> {
    if token.is_empty() {
        return Ok(None);
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid(field))?;
    if raw.len() < 17 || raw[0] != CURSOR_VERSION {
        return Err(invalid(field));
    }
    let token_scope = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
    if token_scope != scope {
        return Err(invalid(field));
    }
    let micros = i64::from_be_bytes(raw[9..17].try_into().expect("8 bytes"));
    let import_id = String::from_utf8(raw[17..].to_vec()).map_err(|_| invalid(field))?;
    Ok(Some((micros, import_id)))
}

/// The one refusal of every bad token, whatever is wrong with it: a token is opaque, so the
/// client can only be told what to send instead.
fn invalid(field: &'static str) -> ArgumentError {
    ArgumentError::new(
        field,
        "the page token is not valid for this request; pass the token of the previous \
         response unchanged, with the same other arguments, or none for the first page",
    )
}

/// A token for a list ordered by a text key (the users, by email): after `key`.
///
/// The key is the stored (normalised) address, the one the store orders by, which may differ
/// from the address `ListUsers` shows.
pub fn encode_key(scope: u64, key: &str) -> String {
    let mut raw = Vec::with_capacity(9 + key.len());
    raw.push(KEY_VERSION);
    raw.extend_from_slice(&scope.to_be_bytes());
    raw.extend_from_slice(key.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The key in a token of `encode_key`; `None` for an empty token (the first page). The same
/// INVALID_ARGUMENT as [`decode`] for a token that is not one of this list's.
pub fn decode_key(
    field: &'static str,
    token: &str,
    scope: u64,
) -> Result<Option<String>, ArgumentError> {
    if token.is_empty() {
        return Ok(None);
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid(field))?;
    if raw.len() < 9 || raw[0] != KEY_VERSION {
        return Err(invalid(field));
    }
    let token_scope = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
    if token_scope != scope {
        return Err(invalid(field));
    }
    String::from_utf8(raw[9..].to_vec())
        .map(Some)
        .map_err(|_| invalid(field))
}

/// AIP-158 page sizes: 0 means the default, larger values are coerced to the maximum.
///
/// Negative sizes are INVALID_ARGUMENT on `field`. The handlers ask the import layer for one
/// row more than the size: that row, dropped from the answer, is how they know whether a
/// next page token is due, without a count query.
pub fn page_size(
    field: &'static str,
    requested: i32,
    default: u32,
    max: u32,
) -> Result<u32, ArgumentError> {
    match requested {
        n if n < 0 => Err(ArgumentError::new(field, "must not be negative")),
        0 => Ok(default),
        n => Ok((n as u32).min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_within_their_scope_only() {
        let s = scope(&["acme", "import-1"]);
        let token = encode(s, 42);
        assert_eq!(decode("page_token", &token, s), Ok(Some(42)));
        assert_eq!(decode("page_token", "", s), Ok(None));
        assert!(decode("page_token", &token, scope(&["acme", "import-2"])).is_err());
        assert!(decode("page_token", "not a token", s).is_err());
        assert_ne!(scope(&["ab", "c"]), scope(&["a", "bc"]));
    }

    #[test]
    fn list_cursors_round_trip_within_their_scope_only() {
        let s = scope(&["acme"]);
        let token = encode_cursor(s, 1_700_000_000_123_456, "march-import");
        assert_eq!(
            decode_cursor("page_token", &token, s),
            Ok(Some((1_700_000_000_123_456, "march-import".to_owned())))
        );
        assert!(decode_cursor("page_token", &token, scope(&["other"])).is_err());
        // A row error token is no list token.
        assert!(decode_cursor("page_token", &encode(s, 42), s).is_err());
    }

    #[test]
    fn page_sizes_follow_aip_158() {
        assert_eq!(page_size("page_size", 0, 50, 1000), Ok(50));
        assert_eq!(page_size("page_size", 7, 50, 1000), Ok(7));
        assert_eq!(page_size("page_size", 5000, 50, 1000), Ok(1000));
        assert!(page_size("page_size", -1, 50, 1000).is_err());
    }
}
