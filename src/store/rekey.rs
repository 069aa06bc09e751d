//! Email keys of stored users brought to today's form, once, when a server first starts on a
//! database that has rows from before domains were keyed in IDNA form and local parts in NFC
//! (`domain::email`). Until then `anna@bücher.example` and `anna@xn--bcher-kva.example` could
//! be two users; after it they are one key, and new rows are compared against that key.
//!
//! Only addresses with a non-ASCII character can change. When two old rows now have one key,
//! the older keeps it and the other is left as it was, with a warning that names both: one of
//! them has to be removed by a person, who knows which is the real one.

/// Its name in `data_migrations`.
pub(crate) const NAME: &str = "email_keys_idna_nfc";

/// What the migration did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rekeyed {
    pub changed: u64,
    /// Rows whose new key another row already had.
    pub clashes: u64,
}

impl Rekeyed {
    pub(crate) fn log(&self) {
        if self.changed > 0 || self.clashes > 0 {
            tracing::info!(
                changed = self.changed,
                clashes = self.clashes,
                "email keys brought to their IDNA and NFC form"
            );
        }
    }
}

/// Logs a row that could not take its new key.
pub(crate) fn clash(account_id: &str, old: &str, new: &str) {
    tracing::warn!(
        account_id,
        email = old,
        key = new,
        "two users are one mailbox; this one keeps its old key: remove one of them"
    );
}
