//! Characters a person cannot see in a spreadsheet, and text this service hands back.
//!
//! Unicode format characters (general category Cf: the byte order mark, zero-width spaces and
//! joiners, direction marks, the soft hyphen) are invisible in a cell. At the ends of a cell
//! they are trimmed like spaces: a BOM left by two Excel files joined together, or a
//! zero-width space pasted from a web page, must not make `bob@example.com` a second user.
//! Inside an address or an id they are a row error that names them, since no one could find
//! them otherwise. Inside names they stay: some scripts need joiners.
//!
//! Control characters (NUL, tabs, line breaks...) never leave the service raw: a value shown
//! in a row error has them as `\u0000` escapes, which PostgreSQL can store (it cannot store
//! NUL) and a person can read.

use std::fmt::Write;

use unicode_general_category::{GeneralCategory, get_general_category};

/// A Unicode format character (category Cf). Most of them have no glyph: the byte order
/// mark, zero-width spaces and joiners, direction marks, the soft hyphen. See the module's doc
/// for what becomes of them.
pub fn is_invisible(c: char) -> bool {
    // Every Cf character is outside ASCII: skip the table lookup for the common case.
    !c.is_ascii() && get_general_category(c) == GeneralCategory::Format
}

/// A cell without the spaces and invisible characters at its ends. Every cell goes through
/// this before it is judged. The rule is `trim_matches(white space or Cf)`; the shortcuts
/// below only skip work, and a property test holds them to the rule.
pub fn trim_cell(value: &str) -> &str {
    // Nearly every cell starts and ends with visible ASCII: neither white space nor Cf, so
    // nothing is trimmed, and the Unicode-aware `trim` need not look.
    if let (Some(first), Some(last)) = (value.as_bytes().first(), value.as_bytes().last())
        && first.is_ascii_graphic()
        && last.is_ascii_graphic()
    {
        return value;
    }
    let trimmed = value.trim();
    let bytes = trimmed.as_bytes();
    // Cf characters are not ASCII: a cell that starts and ends in ASCII is done.
    if bytes.first().is_none_or(u8::is_ascii) && bytes.last().is_none_or(u8::is_ascii) {
        return trimmed;
    }
    trimmed.trim_matches(|c: char| c.is_whitespace() || is_invisible(c))
}

/// Whether every byte is printable ASCII (space to `~`). Without an early exit, so that the
/// compiler can check many bytes per instruction. The fast paths' test for a cell that needs
/// no Unicode rule: it has no control, invisible or multi-byte character, so its length in
/// bytes is its length in characters.
pub fn printable_ascii(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &b| ok & (b' '..=b'~').contains(&b))
}

/// The first invisible character of `value`, with its 1-based position in characters
/// (Unicode scalar values). `None` at once for ASCII text: every Cf character is outside it.
pub fn first_invisible(value: &str) -> Option<Invisible> {
    if value.is_ascii() {
        return None;
    }
    value
        .chars()
        .enumerate()
        .find(|(_, c)| is_invisible(*c))
        .map(|(i, character)| Invisible {
            character,
            position: i + 1,
        })
}

/// An invisible character found in a value: what a row error names
/// (`U+200B ZERO WIDTH SPACE at position 4`), since the person cannot see it to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invisible {
    /// The character itself, shown by its code point and Unicode name (`character_name`).
    pub character: char,
    /// 1-based, in characters.
    pub position: usize,
}

impl std::fmt::Display for Invisible {
    /// `U+200B ZERO WIDTH SPACE at position 4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at position {}",
            character_name(self.character),
            self.position
        )
    }
}

/// `U+200B ZERO WIDTH SPACE`: the code point and its Unicode name. Only the code point when
/// the name table (`unicode_names2`) has no name for the character.
pub fn character_name(c: char) -> String {
    match unicode_names2::name(c) {
        Some(name) => format!("U+{:04X} {name}", u32::from(c)),
        None => format!("U+{:04X}", u32::from(c)),
    }
}

/// A cell as a spreadsheet should show it, never run it: a cell that starts with `=`, `+`,
/// `-`, `@`, a tab or a CR is a formula to Excel and LibreOffice (OWASP's "CSV injection"), so
/// it gets a leading `'`, which makes the cell text. Every CSV this service hands to a person
/// goes through here: the error report and the template. `read_cell` drops the `'` again when
/// such a file comes back as an upload, so that the cell imports exactly as the original did.
///
/// A cell that is blank once trimmed (a lone tab, say) is no formula and stays as it is: with
/// a `'` it would come back as a cell holding `'`.
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') if !trim_cell(cell).is_empty() => {
            std::borrow::Cow::Owned(format!("'{cell}"))
        }
        _ => std::borrow::Cow::Borrowed(cell),
    }
}

/// The value an import reads from a cell: trimmed (`trim_cell`), without the `'` an error
/// report put before a formula character (`without_formula_guard`), trimmed again, since what
/// followed the `'` may be a tab or a CR that the first trim could not reach, and so on until
/// nothing changes. So a cell imports the same whether it comes from the person's file or
/// from the error report that quoted it (`spreadsheet_safe`), whatever the cell: the report
/// quotes the cell as it was, and reading it back first undoes the quote, then reads on as
/// the original reading did. The property tests in `import::report` check it.
pub fn read_cell(raw: &str) -> &str {
    let mut value = trim_cell(raw);
    loop {
        let unquoted = without_formula_guard(value);
        if unquoted.len() == value.len() {
            return value;
        }
        value = trim_cell(unquoted);
    }
}

/// A cell as an import reads it back: the `'` that `spreadsheet_safe` put before a formula
/// character is dropped, so that a value survives a round trip through an error report.
/// The validator applies it to every cell. A cell that really starts with `'` and one of
/// those characters loses its `'` too; any other leading `'` stays.
pub fn without_formula_guard(cell: &str) -> &str {
    match cell.as_bytes() {
        [b'\'', b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r', ..] => &cell[1..],
        _ => cell,
    }
}

/// `value` with its control characters written as `\u0000` escapes. Borrowed when it has none.
/// Control characters are category Cc (`char::is_control`): C0, DEL and C1. Each is written
/// as four lower-case hex digits, the form JSON uses, so that the value stays on one line,
/// a person can read it, and PostgreSQL can store it.
pub fn escape_controls(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_control() {
            let _ = write!(escaped, "\\u{:04x}", u32::from(c));
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_trimmed_at_the_ends_like_spaces() {
        assert_eq!(trim_cell("\u{FEFF}bob@example.com"), "bob@example.com");
        assert_eq!(
            trim_cell(" \u{200B}bob@example.com\u{200F} "),
            "bob@example.com"
        );
        assert_eq!(trim_cell("\u{00AD}\u{2060}"), "");
        assert_eq!(trim_cell("  plain  "), "plain");
        // Inside, they stay for the validator to judge.
        assert_eq!(trim_cell("bo\u{200B}b"), "bo\u{200B}b");
    }

    proptest::proptest! {
        /// The shortcuts (visible ASCII ends, then `trim`) trim exactly what the rule says:
        /// white space and Cf characters at both ends.
        #[test]
        fn trimming_follows_the_rule(
            value in "[ \t\r\x0b\x0c\x1c\x1fa~\u{85}\u{a0}\u{ad}\u{200b}\u{2060}\u{feff}é]{0,8}"
        ) {
            let rule = value.trim_matches(|c: char| c.is_whitespace() || is_invisible(c));
            proptest::prop_assert_eq!(trim_cell(&value), rule);
        }
    }

    #[test]
    fn an_invisible_character_is_named_with_its_position() {
        let found = first_invisible("bob\u{200B}@example.com").unwrap();
        assert_eq!(found.to_string(), "U+200B ZERO WIDTH SPACE at position 4");
        assert_eq!(first_invisible("zoë@example.com"), None);
        assert_eq!(
            character_name('\u{200F}'),
            "U+200F RIGHT-TO-LEFT MARK".to_owned()
        );
    }

    #[test]
    fn cells_that_would_be_formulas_are_made_text() {
        for formula in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_safe(formula), format!("'{formula}"));
        }
        assert_eq!(spreadsheet_safe("ada@example.com"), "ada@example.com");
        assert_eq!(spreadsheet_safe(""), "");
        for value in ["=1+1", "-3", "@x", "'quoted", "plain", "'"] {
            assert_eq!(without_formula_guard(&spreadsheet_safe(value)), value);
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("Na\0me"), "Na\\u0000me");
        assert_eq!(escape_controls("a\tb\u{85}"), "a\\u0009b\\u0085");
        assert!(matches!(
            escape_controls("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
