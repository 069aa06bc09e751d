//! Identifiers that scope every request. Parsed once at the edge, so the rest of the code can
//! rely on them being well formed.

use std::fmt;

use super::ArgumentError;

/// Longest accepted `account_id`: account ids come from other services, so the rule is loose,
/// but a bound keeps indexes and log lines sane.
const MAX_ACCOUNT_ID_CHARS: usize = 128;
/// Longest accepted `import_id`: the proto's `{1,64}`, room for a generated UUID (36
/// characters) and for a client's own ids. Counted in bytes, which are characters in its
/// ASCII alphabet.
const MAX_IMPORT_ID_CHARS: usize = 64;

/// The account an import belongs to. Every query is scoped by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// The request field that refusals name.
    const FIELD: &'static str = "account_id";

    /// Accepts 1 to 128 characters (not bytes) with no surrounding space and no control
    /// character. Those are refused rather than trimmed: every query compares the id exactly, so
    /// the service never guesses which account was meant. The store parses the ids it reads
    /// back with this too, so a stored id that no longer passes is a corrupt row.
    pub fn parse(value: &str) -> Result<Self, ArgumentError> {
        if value.is_empty() {
            return Err(ArgumentError::new(Self::FIELD, "account_id is required"));
        }
        if value.chars().count() > MAX_ACCOUNT_ID_CHARS {
            return Err(ArgumentError::new(
                Self::FIELD,
                format!("account_id must be at most {MAX_ACCOUNT_ID_CHARS} characters"),
            ));
        }
        if value.trim() != value || value.chars().any(char::is_control) {
            return Err(ArgumentError::new(
                Self::FIELD,
                "account_id must not have surrounding spaces or control characters",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The id exactly as given: what queries bind and messages show.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id as given, for log fields and messages.
impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An import's id: `[A-Za-z0-9_-]{1,64}`, unique within its account. Clients may choose it so
/// that a retried upload is recognised instead of imported twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImportId(String);

impl ImportId {
    /// The request field that refusals name.
    const FIELD: &'static str = "import_id";

    /// Accepts exactly the proto's `[A-Za-z0-9_-]{1,64}`, so that an id needs no escaping in the
    /// messages and logs that show it. Whether the account already has the id is not checked
    /// here: creating the import answers ALREADY_EXISTS, which is what makes a retry safe.
    pub fn parse(value: &str) -> Result<Self, ArgumentError> {
        if value.is_empty() {
            return Err(ArgumentError::new(Self::FIELD, "import_id is required"));
        }
        let well_formed = value.len() <= MAX_IMPORT_ID_CHARS
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !well_formed {
            return Err(ArgumentError::new(
                Self::FIELD,
                format!(
                    "import_id must be 1 to {MAX_IMPORT_ID_CHARS} characters of A-Z, a-z, 0-9, '_' and '-'"
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// A fresh id for an upload whose client did not choose one. UUIDv7 sorts by creation
    /// time, which keeps ids readable in order in logs.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id exactly as given or generated.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id as given, for log fields and messages.
impl fmt::Display for ImportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_ids_follow_the_contract() {
        assert!(ImportId::parse("retry-42_A").is_ok());
        assert!(ImportId::parse(&"a".repeat(64)).is_ok());
        assert!(ImportId::parse(&"a".repeat(65)).is_err());
        assert!(ImportId::parse("").is_err());
        assert!(ImportId::parse("has space").is_err());
        assert!(ImportId::parse("dot.ted").is_err());
        assert!(ImportId::parse(ImportId::generate().as_str()).is_ok());
    }

    #[test]
    fn account_ids_are_loose_but_bounded() {
        assert!(AccountId::parse("acme").is_ok());
        assert!(AccountId::parse("org/acme:42").is_ok());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse(" acme").is_err());
        assert!(AccountId::parse("ac\nme").is_err());
        assert!(AccountId::parse(&"a".repeat(129)).is_err());
    }
}
