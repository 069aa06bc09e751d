//! Which delimiter a file uses, read from its header line: the most frequent of `,` `;` and
//! tab outside quotes, or the one an Excel `sep=` line names. Spreadsheets save "CSV" with the
//! list separator of the user's locale, so a semicolon file is as common as a comma one.
//!
//! Only the header line is looked at: it is written by the same program as the rest, and it
//! holds no user data whose commas could mislead the count. The reader holds the decoded text
//! until that line is complete (at most `reader::MAX_HEADER_LINE`), then chooses once; the
//! choice is never revised, so every chunking of a file gives the same delimiter. Blank lines
//! before the header are rows too: `blank_lines_before` counts them for an error found while
//! the header line is still held, so that it names the row a spreadsheet shows.

/// Whether `text` holds a whole first non-blank line, with its line break: the reader waits
/// for this before it chooses the delimiter. A CR as the last byte does not count yet (it may
/// be half of a CRLF).
pub(crate) fn has_first_line(text: &[u8]) -> bool {
    first_line_span(text).1
}

/// The first non-blank line of `text`, up to its line break (outside quotes) or the end.
fn first_line(text: &[u8]) -> &[u8] {
    first_line_span(text).0
}

/// How many blank lines (spreadsheet rows) come before the first non-blank line of `text`: a
/// CR, an LF and a CRLF each end one.
pub(crate) fn blank_lines_before(text: &[u8]) -> u64 {
    let mut lines = 0;
    let mut after_cr = false;
    for &b in text {
        match b {
            b'\n' if after_cr => after_cr = false,
            b'\n' => lines += 1,
            b'\r' => {
                lines += 1;
                after_cr = true;
            }
            _ => break,
        }
    }
    lines
}

/// The first non-blank line, and whether a line break ends it within `text`. Quotes are
/// followed, so that a line break inside a quoted header name does not end the line.
pub(crate) fn first_line_span(text: &[u8]) -> (&[u8], bool) {
    let start = text
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(text.len());
    let mut quoted = false;
    for (i, &b) in text[start..].iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            // A CR at the very end may be half of a CRLF: the line is complete with the next
            // byte, so that a skipped `sep=` line never leaves its LF behind.
            b'\r' if !quoted && start + i + 1 == text.len() => {
                return (&text[start..start + i], false);
            }
            b'\r' | b'\n' if !quoted => return (&text[start..start + i], true),
            _ => {}
        }
    }
    (&text[start..], false)
}

/// The delimiter the header line uses: the most frequent of `,` `;` and tab outside quotes
/// (`,` when none or on a tie), or the one an Excel `sep=;` line names. Returns it and the
/// bytes to skip (the `sep=` line, which Excel does not show as a row).
///
/// `sep=` takes any visible ASCII character, not only the three counted ones, as Excel does.
/// On a tie the order of preference is `,`, then `;`, then tab.
pub fn detect_delimiter(text: &[u8]) -> (u8, usize) {
    let line = first_line(text);
    // Only a visible character can delimit: `sep=` followed by a control character, a space,
    // a quote or a byte of a multi-byte character is not Excel's line, but the header's.
    let named = |b: u8| b.is_ascii_graphic() && b != b'"';
    if line.len() == 5 && line[..4].eq_ignore_ascii_case(b"sep=") && named(line[4]) {
        let start = line.as_ptr() as usize - text.as_ptr() as usize;
        let mut skip = start + line.len();
        if text.get(skip) == Some(&b'\r') {
            skip += 1;
        }
        if text.get(skip) == Some(&b'\n') {
            skip += 1;
        }
        return (line[4], skip);
    }
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in line {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3)
        .rev()
        .max_by_key(|&i| (counts[i], i == 0))
        .unwrap_or(0);
    let delimiter = if counts[best] == 0 {
        b','
    } else {
        [b',', b';', b'\t'][best]
    };
    (delimiter, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts on the header line only, outside quotes, after blank lines; a `sep=` line names
    /// any visible delimiter and is skipped with its line break.
    #[test]
    fn the_delimiter_comes_from_the_header_line() {
        assert_eq!(detect_delimiter(b"email,name\na;b;c;d\n"), (b',', 0));
        assert_eq!(detect_delimiter(b"email;first_name;last_name\n"), (b';', 0));
        assert_eq!(detect_delimiter(b"email\tname\tx,y\n"), (b'\t', 0));
        assert_eq!(detect_delimiter(b"\"a;b\",c\n"), (b',', 0));
        assert_eq!(detect_delimiter(b"\r\n\nemail;name"), (b';', 0));
        assert_eq!(detect_delimiter(b"email\n"), (b',', 0));
        assert_eq!(detect_delimiter(b"a,b;c\n"), (b',', 0));
        assert_eq!(detect_delimiter(b"sep=;\r\nemail;name\r\n"), (b';', 7));
        assert_eq!(detect_delimiter(b"SEP=|\nemail|name\n"), (b'|', 6));
        // No invisible or quoting delimiter: such a line is the header.
        assert_eq!(detect_delimiter(b"sep=\0\nemail,name\n"), (b',', 0));
        assert_eq!(detect_delimiter(b"sep=\"\nemail,name\n"), (b',', 0));
        assert_eq!(detect_delimiter(b"sep= \nemail;name\n"), (b',', 0));
        assert!(!has_first_line(b"sep=;\r"));
        assert!(has_first_line(b"sep=;\r\n"));
        assert!(has_first_line(b"email\rx"));
        assert_eq!(blank_lines_before(b"\r\n\n\remail\n"), 3);
        assert_eq!(blank_lines_before(b"email"), 0);
    }
}
