//! An email address that can be invited: checked by the `email_address` crate (RFC 5322 and
//! the WHATWG rules) rather than a hand-written pattern, and normalised for uniqueness the way
//! mail systems compare addresses, so that one mailbox is one user:
//!
//! - the domain in its IDNA form (UTS #46, the `idna` crate): `bücher.example` and
//!   `xn--bcher-kva.example` are one domain;
//! - the local part in Unicode NFC: a precomposed and a decomposed `é` are one letter;
//! - then lower-cased.
//!
//! The users table stores that key; `readable` turns it back into Unicode for people.
//!
//! Almost every address in a real file is plain lower-case ASCII, and a file has millions of
//! them, so `Email::parse` first tries a one-pass byte check, and the key borrows the cell
//! when it has no capitals. Every other address, and every refusal, takes the general path,
//! which also says in plain words why an address was refused. A property test holds the two
//! paths to the same verdict on every ASCII input.

use std::borrow::Cow;

use email_address::{EmailAddress, Options};
use icu_casemap::CaseMapper;
use unicode_normalization::UnicodeNormalization;

use super::text::{Invisible, first_invisible};

/// The longest address, in characters: RFC 5321 caps a forward path at 256 octets including
/// the angle brackets, which leaves 254 for the address. Counted in characters, like every
/// cell limit of the service, so a non-ASCII address can pass with more octets than that; the
/// crate still holds the part before the '@' to 64 bytes and the domain to 254. Also the
/// `email` column's limit (`Column::max_chars`), and the number the template states.
pub const MAX_EMAIL_CHARS: usize = 254;

/// Display names (`Ada <ada@example.com>`) and IP literals are refused: an invitation goes to
/// a mailbox on a named domain, and a domain needs a dot (`ada@localhost` is refused). The
/// crate's length limits stay on: 64 bytes before the '@' (`allow_long_local_parts: false`),
/// 254 for the domain and 63 for each of its labels.
const OPTIONS: Options = Options {
    minimum_sub_domains: 2,
    allow_domain_literal: false,
    allow_display_text: false,
    allow_long_local_parts: false,
};

/// A valid address, normalised (see the module's doc): uniqueness per account compares that
/// form, and the users table stores it. Borrowed when the input is already a lower-case ASCII
/// address, which is nearly always, so the hot path allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email<'a> {
    /// The key (see the module's doc); `Owned` only when it differs from the cell.
    normalised: Cow<'a, str>,
    /// As the file has it, for messages: the user searches their sheet for this.
    as_written: &'a str,
}

/// Why an address was refused. The messages are completed by the validator with the value,
/// and each variant becomes one row error on the `email` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailError {
    /// The cell is empty: REQUIRED, since every user needs an address.
    Empty,
    /// Longer than `MAX_EMAIL_CHARS` characters: TOO_LONG.
    TooLong,
    /// Not an address this service invites, with the reason in plain words ("it has no '@'"),
    /// which the INVALID_EMAIL message quotes after the value.
    Invalid(&'static str),
    /// A character no one can see, which would make a second user of the same mailbox:
    /// INVALID_EMAIL, naming the character and its position so that it can be found.
    Invisible(Invisible),
}

/// In plain words, for an address given as a request argument (`AcceptInvitation`,
/// `SendInvitations`); a file's cells get row errors instead (`import::validator`).
impl std::fmt::Display for EmailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmailError::Empty => f.write_str("it is empty"),
            EmailError::TooLong => write!(f, "it is longer than {MAX_EMAIL_CHARS} characters"),
            EmailError::Invalid(reason) => write!(f, "not a valid address: {reason}"),
            EmailError::Invisible(invisible) => {
                write!(f, "it has an invisible character, {invisible}; retype it")
            }
        }
    }
}

impl<'a> Email<'a> {
    /// Parses a cell into an address and its key. `value` must already be trimmed
    /// (`text::trim_cell`): a space left at either end makes the address invalid.
    pub fn parse(value: &'a str) -> Result<Self, EmailError> {
        // Nearly every address in a real file is plain ASCII: checked in one pass over its
        // bytes, with the same verdict as the general path below (a property test holds the
        // two together). Anything else, and every refusal, takes the general path, which
        // also explains the refusal.
        if value.len() <= MAX_EMAIL_CHARS
            && let Some(capitals) = plain_ascii_address(value.as_bytes())
        {
            return Ok(Self::ascii(value, capitals));
        }
        Self::parse_general(value)
    }

    /// An address `plain_ascii_address` accepted, or an ASCII one the crate accepted.
    fn ascii(value: &'a str, capitals: bool) -> Self {
        debug_assert!(value.is_ascii() && !punycode(value.as_bytes()));
        let normalised = if capitals {
            Cow::Owned(value.to_ascii_lowercase())
        } else {
            Cow::Borrowed(value)
        };
        Self {
            normalised,
            as_written: value,
        }
    }

    /// Every rule, through the `email_address` crate: the reference the fast path must agree
    /// with, and the path that explains refusals. The service's own refusals come first:
    /// invisible characters, whatever the crate would make of them, then quoted local parts
    /// and comments, which RFC 5322 allows.
    fn parse_general(value: &'a str) -> Result<Self, EmailError> {
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
        if value.is_ascii() && !punycode(value.as_bytes()) {
            let capitals = value.bytes().any(|b| b.is_ascii_uppercase());
            return Ok(Self::ascii(value, capitals));
        }
        let key = mailbox_key(value)?;
        let normalised = if key == value {
            Cow::Borrowed(value)
        } else {
            Cow::Owned(key)
        };
        Ok(Self {
            normalised,
            as_written: value,
        })
    }

    /// The key: the normalised address (see the module's doc), as the users table stores it
    /// and as uniqueness compares it.
    pub fn as_str(&self) -> &str {
        &self.normalised
    }

    /// The address as the cell has it, trimmed: what row errors quote, since that is the
    /// spelling the person can search their sheet for.
    pub fn as_written(&self) -> &'a str {
        self.as_written
    }
}

/// Bytes allowed in an unquoted local part and a domain label: RFC 5322's `atext`, in ASCII.
const ATEXT: [bool; 128] = {
    let mut table = [false; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'/'
                    | b'='
                    | b'?'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'{'
                    | b'|'
                    | b'}'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// Whether `b` is `atext`. Bytes past ASCII are not: a non-ASCII address is left to the
/// general path.
fn is_atext(b: u8) -> bool {
    ATEXT.get(usize::from(b)).copied().unwrap_or(false)
}

/// Whether `value` is an ASCII address that `email_address` accepts under `OPTIONS` and that
/// needs no IDNA work, in one pass over its bytes: a dot-atom local part of at most 64 bytes,
/// an '@', and at least two domain labels of at most 63 bytes, each starting and ending with
/// a letter or digit, and no `xn--` anywhere. `Some(capitals)` says whether it has capital
/// letters; `None` means "ask the general path", not "invalid". The limits are the crate's,
/// in bytes (with 254 for the whole domain), and the property test
/// `fast_path_agrees_with_the_general_path` holds this to the crate's verdict.
fn plain_ascii_address(value: &[u8]) -> Option<bool> {
    // An `xn--` ends at `i`, in any case: the general path gives such an address its IDNA key.
    let punycode_at = |i: usize| {
        i >= 3 && value[i - 1] == b'-' && value[i - 3..i - 1].eq_ignore_ascii_case(b"xn")
    };
    let mut capitals = false;
    // The local part. Starting "after a dot" refuses a leading dot and an empty part.
    let mut prev = b'.';
    let mut i = 0;
    loop {
        let &b = value.get(i)?;
        if b == b'@' {
            break;
        }
        if b == b'.' {
            if prev == b'.' {
                return None;
            }
        } else if !is_atext(b) || (b == b'-' && punycode_at(i)) {
            return None;
        }
        capitals |= b.is_ascii_uppercase();
        prev = b;
        i += 1;
    }
    if i > 64 || prev == b'.' || value.len() - (i + 1) > 254 {
        return None;
    }
    // The domain, label by label; a second '@' is not atext, so the crate's split at the last
    // '@' and this one at the first agree whenever this says `Some`.
    let mut labels = 0;
    let mut label_len = 0;
    prev = b'.';
    for (j, &b) in value.iter().enumerate().skip(i + 1) {
        if b == b'.' {
            if label_len == 0 || label_len > 63 || !prev.is_ascii_alphanumeric() {
                return None;
            }
            labels += 1;
            label_len = 0;
        } else {
            if !is_atext(b)
                || (label_len == 0 && !b.is_ascii_alphanumeric())
                || (b == b'-' && punycode_at(j))
            {
                return None;
            }
            capitals |= b.is_ascii_uppercase();
            label_len += 1;
        }
        prev = b;
    }
    if label_len == 0 || label_len > 63 || !prev.is_ascii_alphanumeric() {
        return None;
    }
    labels += 1;
    (labels >= OPTIONS.minimum_sub_domains).then_some(capitals)
}

/// Whether an `xn--` (any case) appears: such an address takes the IDNA path, so that
/// `xn--bcher-kva.example` and `bücher.example` get one key, and so that a malformed `xn--`
/// label is refused as IDNA refuses it (`a@XN--ZZ.com`). It looks at the local part too: a
/// false alarm there only costs the general path, which gives the same key.
fn punycode(value: &[u8]) -> bool {
    value
        .windows(4)
        .any(|w| w[2] == b'-' && w[3] == b'-' && w[..2].eq_ignore_ascii_case(b"xn"))
}

/// The key of an address outside the plain ASCII case: the local part in NFC, the domain in
/// its IDNA ASCII form, both lower-cased. The address has been checked, so it has an '@'.
///
/// Only the domain goes through IDNA (UTS #46, as `idna::domain_to_ascii` applies it), which
/// also folds its case and compatibility forms and refuses a name that is not a valid
/// international domain. The local part is the receiving mail server's, which IDNA does not
/// cover: it is put in NFC, so that a precomposed and a decomposed letter are one, and
/// lower-cased, since uniqueness in an account ignores case.
fn mailbox_key(value: &str) -> Result<String, EmailError> {
    let (local, domain) = value.rsplit_once('@').unwrap_or((value, ""));
    let domain = idna::domain_to_ascii(domain).map_err(|_| {
        EmailError::Invalid(
            "the domain is not a valid international domain name (IDNA); check its spelling",
        )
    })?;
    let local = fold_local(local);
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// A local part's key: its canonical caseless form (Unicode's `NFD(toCasefold(NFD(x)))`, kept
/// in NFC). Full case folding, not lower-casing: lower-casing knows a final sigma, so `ΣΣ` and
/// `σσ` were two keys while `ΣΣ` and `σς` were one; folding maps Σ, σ and ς alike, and ẞ and ß
/// to `ss`, the Kelvin sign to `k`. The decomposition first makes a precomposed and a
/// decomposed letter fold alike. The one rule for local parts, whichever backend stores it.
pub fn fold_local(local: &str) -> String {
    let decomposed: String = local.nfd().collect();
    CaseMapper::new().fold_string(&decomposed).nfc().collect()
}

/// The key a stored address has today, when it differs: addresses stored before domains were
/// kept in their IDNA form and local parts in NFC, for the start-up migration of old rows.
/// `None` when it is already the key, or no longer parses (it is then left as it is).
/// `store::rekey` runs it over the users table once, at start-up.
pub fn rekeyed(stored: &str) -> Option<String> {
    let email = Email::parse(stored).ok()?;
    (email.as_str() != stored).then(|| email.as_str().to_owned())
}

/// A stored (normalised) address as a person reads it: the domain in Unicode, the local part
/// as stored (lower case, NFC). ListUsers shows addresses this way. A domain that does not
/// convert back is shown as stored.
pub fn readable(stored: &str) -> String {
    match stored.rsplit_once('@') {
        Some((local, domain)) if domain.contains("xn--") => {
            let (unicode, result) = idna::domain_to_unicode(domain);
            match result {
                Ok(()) => format!("{local}@{unicode}"),
                Err(_) => stored.to_owned(),
            }
        }
        _ => stored.to_owned(),
    }
}

/// A short reason in plain words, for the row error message. Several of the crate's errors
/// share one reason: the person needs to know what to change, not which rule of the grammar
/// failed. `value` tells apart the causes the crate reports as one `InvalidCharacter`.
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
    fn one_mailbox_has_one_key_whatever_its_unicode_form() {
        let key = |v| Email::parse(v).unwrap().as_str().to_owned();
        assert_eq!(key("anna@bücher.example"), "anna@xn--bcher-kva.example");
        assert_eq!(
            key("anna@xn--bcher-kva.example"),
            "anna@xn--bcher-kva.example"
        );
        assert_eq!(key("Anna@BÜCHER.example"), "anna@xn--bcher-kva.example");
        // Precomposed U+00E9, and e + U+0301.
        assert_eq!(key("jos\u{e9}@example.com"), key("jose\u{301}@example.com"));
        assert_eq!(key("JOSE\u{301}@example.com"), "jos\u{e9}@example.com");
        assert_eq!(
            readable("anna@xn--bcher-kva.example"),
            "anna@bücher.example"
        );
        assert_eq!(readable("ada@example.com"), "ada@example.com");
        assert_eq!(
            rekeyed("anna@bücher.example").as_deref(),
            Some("anna@xn--bcher-kva.example")
        );
        assert_eq!(rekeyed("ada@example.com"), None);
        assert_eq!(key("ΑΝΝΑΣ@x.gr"), "αννασ@x.gr");
        assert!(matches!(
            Email::parse("a@XN--ZZ.com"),
            Err(EmailError::Invalid(_))
        ));
        // The ASCII hot path borrows.
        assert!(matches!(
            Email::parse("ada@x.io").unwrap().normalised,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn local_parts_are_case_folded_not_lower_cased() {
        let key = |v| Email::parse(v).unwrap().as_str().to_owned();
        // Lower-casing knows a final sigma, so these were two users and one, by turns.
        assert_eq!(key("ΣΣ@x.gr"), key("σσ@x.gr"));
        assert_eq!(key("ΣΣ@x.gr"), key("σς@x.gr"));
        assert_eq!(key("σς@x.gr"), "σσ@x.gr");
        // Full folding: ẞ, ß and ss are one local part; the Kelvin sign is k; İ is i + a dot.
        assert_eq!(key("STRAẞE@x.de"), "strasse@x.de");
        assert_eq!(key("straße@x.de"), "strasse@x.de");
        assert_eq!(key("\u{212A}im@x.io"), "kim@x.io");
        assert_eq!(key("\u{130}pek@x.tr"), key("i\u{307}pek@x.tr"));
        // Domains keep non-transitional IDNA: faß.de and fass.de are two domains.
        assert_ne!(key("a@faß.de"), key("a@fass.de"));
        assert_eq!(key("a@FASS.de"), "a@fass.de");
        // A decomposed letter folds as its precomposed form does.
        assert_eq!(key("JOSE\u{301}@x.io"), key("jos\u{c9}@x.io"));
        assert_eq!(
            rekeyed("σς@x.gr").as_deref(),
            Some("σσ@x.gr"),
            "an address stored under the old rule gets today's key"
        );
    }

    proptest::proptest! {
        /// Folding is a key: applying it again changes nothing, and case never matters. (Not
        /// for the dotless ı, which default folding keeps apart from I and i, as Unicode does
        /// outside Turkic locales.)
        #[test]
        fn folding_is_idempotent_and_ignores_case(local in "[a-zA-ZßẞσςΣİKk\\u{212A}\\u{301}éÉ]{1,12}") {
            let once = fold_local(&local);
            proptest::prop_assert_eq!(fold_local(&once), once.clone());
            proptest::prop_assert_eq!(fold_local(&local.to_uppercase()), once.clone());
            proptest::prop_assert_eq!(fold_local(&local.to_lowercase()), once);
        }
    }

    /// Address-like ASCII: the characters where the rules differ (dots, '@', quotes, brackets,
    /// spaces, hyphens, specials), in the places where they matter.
    fn ascii_address() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let part = r#"[a-zA-Z0-9._+!#$%&'*/=?^`{|}~"()<>\\ \[\]:,;@-]{0,12}"#;
        let label = prop_oneof![
            "[a-zA-Z0-9]{1,8}",
            "[a-zA-Z0-9-]{0,8}",
            "[xX][nN]--[a-z0-9-]{0,6}",
            "[a-z0-9]{60,66}",
            Just(String::new()),
        ];
        let domain = proptest::collection::vec(label, 0..5).prop_map(|l| l.join("."));
        prop_oneof![
            proptest::string::string_regex("[ -~]{0,40}").unwrap(),
            (part, domain.clone()).prop_map(|(l, d)| format!("{l}@{d}")),
            ("[a-zA-Z0-9._%+-]{0,70}", domain).prop_map(|(l, d)| format!("{l}@{d}")),
            (part, part).prop_map(|(l, d)| format!("{l}@{d}")),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(10_000))]

        /// The ASCII fast path gives the general path's verdict, key and reason, on every
        /// ASCII input.
        #[test]
        fn fast_path_agrees_with_the_general_path(value in ascii_address()) {
            proptest::prop_assert_eq!(Email::parse(&value), Email::parse_general(&value));
            if plain_ascii_address(value.as_bytes()).is_some() {
                proptest::prop_assert!(EmailAddress::parse_with_options(&value, OPTIONS).is_ok());
            }
        }
    }

    #[test]
    fn fast_path_takes_the_common_addresses() {
        for v in [
            "ada@example.com",
            "Ada.Lovelace+tag@Mail.Example.co.uk",
            "o'brien@x.io",
            "a_b-c@sub-1.example.net",
        ] {
            assert!(plain_ascii_address(v.as_bytes()).is_some(), "{v}");
        }
        for v in [
            "\"a\"@x.io",
            "a..b@x.io",
            ".a@x.io",
            "a.@x.io",
            "a@-x.io",
            "a@x-.io",
            "a@x..io",
            "a@localhost",
            "a b@x.io",
            "a@[127.0.0.1]",
            "a@xn--bcher-kva.example",
            "XN--a@b.io",
            "a@b.c@d.io",
        ] {
            assert!(plain_ascii_address(v.as_bytes()).is_none(), "{v}");
        }
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
