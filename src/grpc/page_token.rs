//! Opaque page tokens (AIP-158): a position plus a fingerprint of the request they belong to, so
//! that a token reused with another account or import is refused instead of silently paging
//! through the wrong list. Row error pages go by a sequence number (version 1); the Imports
//! list by the last import's `create_time` and `import_id` (version 2), its order.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::domain::ArgumentError;

const VERSION: u8 = 1;
const CURSOR_VERSION: u8 = 2;
const KEY_VERSION: u8 = 3;

/// A fingerprint of what a list is scoped to.
pub fn scope(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

pub fn encode(scope: u64, position: u64) -> String {
    let mut raw = [0u8; 17];
    raw[0] = VERSION;
    raw[1..9].copy_from_slice(&scope.to_be_bytes());
    raw[9..].copy_from_slice(&position.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position in `token`, `None` for an empty token (the first page).
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
pub fn encode_cursor(scope: u64, create_micros: i64, import_id: &str) -> String {
    let mut raw = Vec::with_capacity(17 + import_id.len());
    raw.push(CURSOR_VERSION);
    raw.extend_from_slice(&scope.to_be_bytes());
    raw.extend_from_slice(&create_micros.to_be_bytes());
    raw.extend_from_slice(import_id.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position in an Imports list `token`: `create_time` in microseconds and `import_id`;
/// `None` for an empty token (the first page).
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

fn invalid(field: &'static str) -> ArgumentError {
    ArgumentError::new(
        field,
        "the page token is not valid for this request; pass the token of the previous \
         response unchanged, with the same other arguments, or none for the first page",
    )
}

/// A token for a list ordered by a text key (the users, by email): after `key`.
pub fn encode_key(scope: u64, key: &str) -> String {
    let mut raw = Vec::with_capacity(9 + key.len());
    raw.push(KEY_VERSION);
    raw.extend_from_slice(&scope.to_be_bytes());
    raw.extend_from_slice(key.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The key in a token of `encode_key`; `None` for an empty token (the first page).
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
