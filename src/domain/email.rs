//! An email address that can be invited: checked by the `email_address` crate (RFC 5322 and
//! the WHATWG rules) rather than a hand-written pattern, and normalised for uniqueness.

use std::borrow::Cow;

use email_address::{EmailAddress, Options};

use super::text::{Invisible, first_invisible};

/// RFC 5321 caps a forward path at 256 octets including the angle brackets.
pub const MAX_EMAIL_CHARS: usize = 254;

/// Display names (`Ada <ada@example.com>`) and IP literals are refused: an invitation goes to
/// a mailbox on a named domain, and a domain needs a dot (`ada@localhost` is refused).
const OPTIONS: Options = Options {
    minimum_sub_domains: 2,
    allow_domain_literal: false,
    allow_display_text: false,
    allow_long_local_parts: false,
};

/// A valid address, lower-cased: uniqueness per account ignores case, and the lower-cased form
/// is what the users table stores. Borrowed when the input is already lower case, which is
/// nearly always, so the hot path allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email<'a> {
    normalised: Cow<'a, str>,
    /// As the file has it, for messages: the user searches their sheet for this.
    as_written: &'a str,
}

/// Why an address was refused. The messages are completed by the validator with the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailError {
    Empty,
    TooLong,
    Invalid(&'static str),
    /// A character no one can see, which would make a second user of the same mailbox.
    Invisible(Invisible),
}

impl<'a> Email<'a> {
    /// `value` must already be trimmed.
    pub fn parse(value: &'a str) -> Result<Self, EmailError> {
        if value.is_empty() {
            return Err(EmailError::Empty);
        }
        // Bytes bound characters from above, so counting characters is rarely needed.
        if value.len() > MAX_EMAIL_CHARS && value.chars().count() > MAX_EMAIL_CHARS {
            return Err(EmailError::TooLong);
        }
        if let Some(invisible) = first_invisible(value) {
            return Err(EmailError::Invisible(invisible));
        }
        // RFC 5322 allows a quoted local part (`"bob"@example.com`) and comments
        // (`bob(work)@example.com`), which name the same mailbox as the plain form; identity
        // providers refuse them, and so does this service, so that one mailbox is one user.
        if value.starts_with('"') || value.contains("\"@") {
            return Err(EmailError::Invalid(
                "quoted addresses are not accepted; write it without the quotes",
            ));
        }
        if value.contains(['(', ')']) {
            return Err(EmailError::Invalid(
                "comments in parentheses are not accepted; remove them",
            ));
        }
        if let Err(e) = EmailAddress::parse_with_options(value, OPTIONS) {
            return Err(EmailError::Invalid(explain(value, e)));
        }
        let normalised = if value.bytes().any(|b| b.is_ascii_uppercase()) || !value.is_ascii() {
            let lower = value.to_lowercase();
            if lower == value {
                Cow::Borrowed(value)
            } else {
                Cow::Owned(lower)
            }
        } else {
            Cow::Borrowed(value)
        };
        Ok(Self {
            normalised,
            as_written: value,
        })
    }

    /// The normalised (lower-case) address.
    pub fn as_str(&self) -> &str {
        &self.normalised
    }

    pub fn as_written(&self) -> &'a str {
        self.as_written
    }
}

/// A short reason in plain words, for the row error message.
fn explain(value: &str, error: email_address::Error) -> &'static str {
    use email_address::Error as E;
    match error {
        E::MissingSeparator => "it has no '@'",
        E::LocalPartEmpty => "nothing comes before the '@'",
        E::DomainEmpty => "nothing comes after the '@'",
        E::LocalPartTooLong => "the part before the '@' is longer than 64 characters",
        E::DomainTooLong | E::SubDomainTooLong => "the domain is too long",
        E::DomainTooFew => "the domain has no dot (as in example.com)",
        E::SubDomainEmpty | E::DomainInvalidSeparator => "the domain has an empty part",
        E::UnsupportedDisplayName | E::MissingDisplayName | E::MissingEndBracket => {
            "it has a display name or angle brackets; keep only the address"
        }
        E::UnsupportedDomainLiteral | E::InvalidIPAddress => "IP address domains are not accepted",
        E::UnbalancedQuotes | E::InvalidComment => "it has unbalanced quotes or parentheses",
        E::InvalidCharacter if value.contains(char::is_whitespace) => "it contains a space",
        E::InvalidCharacter if value.matches('@').count() > 1 => "it has more than one '@'",
        E::InvalidCharacter => "it contains a character not allowed in an address",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_lower_cased() {
        assert_eq!(
            Email::parse("Ada.Lovelace@Example.COM").unwrap().as_str(),
            "ada.lovelace@example.com"
        );
        assert!(matches!(
            Email::parse("ada@example.com").unwrap().normalised,
            Cow::Borrowed(_)
        ));
        assert_eq!(Email::parse("Ada@x.io").unwrap().as_written(), "Ada@x.io");
        assert!(Email::parse("o'brien+tag@mail.example.io").is_ok());
        assert!(Email::parse("user@sub.corp.example.net").is_ok());
    }

    #[test]
    fn invalid_addresses_say_why() {
        let reason = |v| match Email::parse(v) {
            Err(EmailError::Invalid(r)) => r,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(reason("ada.example.com"), "it has no '@'");
        assert_eq!(reason("ada at example.com"), "it has no '@'");
        assert_eq!(reason("@example.com"), "nothing comes before the '@'");
        assert_eq!(reason("ada@"), "nothing comes after the '@'");
        assert_eq!(
            reason("ada@localhost"),
            "the domain has no dot (as in example.com)"
        );
        assert_eq!(reason("ada lovelace@example.com"), "it contains a space");
        assert_eq!(reason("a@b@example.com"), "it has more than one '@'");
        assert!(matches!(
            Email::parse("Ada <ada@example.com>"),
            Err(EmailError::Invalid(_))
        ));
        assert_eq!(Email::parse(""), Err(EmailError::Empty));
    }

    #[test]
    fn one_mailbox_has_one_spelling() {
        let reason = |v| match Email::parse(v) {
            Err(EmailError::Invalid(r)) => r,
            other => panic!("{v}: {other:?}"),
        };
        assert!(reason("\"bob\"@example.com").contains("quoted"));
        assert!(reason("bob(work)@example.com").contains("comments"));
        assert!(reason("bob@(work)example.com").contains("comments"));
        match Email::parse("bob\u{200B}@example.com") {
            Err(EmailError::Invisible(found)) => {
                assert_eq!(found.to_string(), "U+200B ZERO WIDTH SPACE at position 4")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Email::parse("bob@exa\u{200D}mple.com"),
            Err(EmailError::Invisible(_))
        ));
    }

    #[test]
    fn length_is_counted_in_characters() {
        let domain = "@example.com";
        let long = format!(
            "{}{}",
            "a".repeat(MAX_EMAIL_CHARS + 1 - domain.len()),
            domain
        );
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }
}
