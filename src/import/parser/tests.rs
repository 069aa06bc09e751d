//! Tests of `parser`.

use super::*;

/// What a test sees of a record: its row and its fields as strings, or the kind of record
/// it was instead.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Row(u64, Vec<String>),
    Skipped(u64, Oversize),
    Unterminated(u64),
    Blank(u64),
}

/// Parses `input` fed in chunks of `chunk` bytes, then finished.
fn parse_in_chunks(input: &[u8], chunk: usize, limits: Limits) -> Vec<Seen> {
    let mut parser = CsvParser::new(b',', limits);
    let mut seen = Vec::new();
    let mut on_record = |r: Record<'_>| -> Result<(), ()> {
        seen.push(match r {
            Record::Fields(f) => Seen::Row(
                f.row_number,
                f.iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            ),
            Record::Oversized { row_number, reason } => Seen::Skipped(row_number, reason),
            Record::Unterminated { row_number } => Seen::Unterminated(row_number),
            Record::Blank { row_number } => Seen::Blank(row_number),
        });
        Ok(())
    };
    for piece in input.chunks(chunk.max(1)) {
        parser.feed(piece, &mut on_record).unwrap();
    }
    parser.finish(&mut on_record).unwrap();
    seen
}

/// A record of row `n` with these fields.
fn row(n: u64, fields: &[&str]) -> Seen {
    Seen::Row(n, fields.iter().map(|s| s.to_string()).collect())
}

/// Parses `input` whole and in chunks of every size, checks that all agree, and returns
/// the records.
fn every_chunking(input: &[u8], limits: Limits) -> Vec<Seen> {
    let whole = parse_in_chunks(input, input.len(), limits);
    for chunk in 1..input.len() {
        assert_eq!(
            parse_in_chunks(input, chunk, limits),
            whole,
            "chunk size {chunk}"
        );
    }
    whole
}

/// Blank lines count, a quoted line break does not, and CRLF, LF and a lone CR each end
/// one line; a last record without a line break is still read.
#[test]
fn rows_are_numbered_as_a_spreadsheet_shows_them() {
    let input =
        b"email,name\r\n\r\na@x.io,\"Ada\r\nLovelace\"\r\n\nb@x.io,Bob\rc@x.io,\"C, \"\"Jr\"\"\"";
    assert_eq!(
        every_chunking(input, Limits::default()),
        vec![
            row(1, &["email", "name"]),
            row(3, &["a@x.io", "Ada\r\nLovelace"]),
            row(5, &["b@x.io", "Bob"]),
            row(6, &["c@x.io", "C, \"Jr\""]),
        ]
    );
}

/// A CR at the end of one chunk and its LF at the start of the next make one line break,
/// not a blank row.
#[test]
fn crlf_between_chunks_is_one_line_break() {
    let input = b"h\r\nx\r\ny\r\n";
    for chunk in 1..input.len() {
        assert_eq!(
            parse_in_chunks(input, chunk, Limits::default()),
            vec![row(1, &["h"]), row(2, &["x"]), row(3, &["y"])]
        );
    }
}

/// A record past either limit is reported on its row, and the next record is read as
/// usual.
#[test]
fn oversized_records_are_skipped_and_parsing_resumes() {
    let limits = Limits {
        max_record_bytes: 16,
        max_fields: 3,
    };
    let input = b"a,b,c\n\"0123456789abcdefghij\nklm\",x,y\n1,2,3,4\nd,e,f\n";
    assert_eq!(
        every_chunking(input, limits),
        vec![
            row(1, &["a", "b", "c"]),
            Seen::Skipped(2, Oversize::TooLong),
            Seen::Skipped(3, Oversize::TooManyFields),
            row(4, &["d", "e", "f"]),
        ]
    );
}

/// An unclosed quote is reported at the row that opened it, whether the file ends first
/// or the record limit does; a quote in the middle of a value on one line is a character.
#[test]
fn an_unclosed_quote_is_told_apart_from_a_long_value() {
    let limits = Limits {
        max_record_bytes: 64,
        max_fields: 10,
    };
    // At the end of the file, over several lines.
    assert_eq!(
        every_chunking(b"a,b\nx,\"never closed\ny,z\n", limits),
        vec![row(1, &["a", "b"]), Seen::Unterminated(2)]
    );
    // Cut short by the record limit.
    let long = format!("a,b\nx,\"{}\ny,z\n", "v".repeat(100));
    assert_eq!(
        every_chunking(long.as_bytes(), limits),
        vec![row(1, &["a", "b"]), Seen::Unterminated(2)]
    );
    // A stray quote on one line is only a character.
    assert_eq!(
        every_chunking(b"a,b\nx,5\" tall", limits),
        vec![row(1, &["a", "b"]), row(2, &["x", "5\" tall"])]
    );
    // A quoted value the file ends in, with or without a last line break.
    for end in ["", "\n", "\r\n", "\r"] {
        let file = format!("a,b\nx,\"Ann{end}");
        assert_eq!(
            every_chunking(file.as_bytes(), limits),
            vec![row(1, &["a", "b"]), Seen::Unterminated(2)],
            "{end:?}"
        );
    }
    // A closed one is a value, whatever follows.
    assert_eq!(
        every_chunking(b"a,b\nx,\"Ann\"", limits),
        vec![row(1, &["a", "b"]), row(2, &["x", "Ann"])]
    );
}

/// A row of delimiters and spaces past the limits is blank, not oversized; one character
/// of text anywhere in it, even in the part thrown away, makes it oversized.
#[test]
fn a_blank_row_is_blank_at_any_width() {
    let limits = Limits {
        max_record_bytes: 16,
        max_fields: 4,
    };
    let wide = format!("a,b\n{}\n{}\nc,d\n", ",".repeat(50), " ,".repeat(50));
    assert_eq!(
        every_chunking(wide.as_bytes(), limits),
        vec![
            row(1, &["a", "b"]),
            Seen::Blank(2),
            Seen::Blank(3),
            row(4, &["c", "d"]),
        ]
    );
    // Text anywhere in a wide row makes it a row, whichever limit it breaks.
    let text = format!("a,b\n{}x{}\n", ",".repeat(10), " ".repeat(40));
    assert_eq!(
        every_chunking(text.as_bytes(), limits),
        vec![
            row(1, &["a", "b"]),
            Seen::Skipped(2, Oversize::TooManyFields)
        ]
    );
}

/// Within the limits, a record of blank cells is returned, and says it is blank.
#[test]
fn blank_records_are_recognised() {
    let mut parser = CsvParser::new(b',', Limits::default());
    let mut blanks = Vec::new();
    parser
        .feed(
            b"a,b\n , \n,\nx,y\n",
            &mut |r: Record<'_>| -> Result<(), ()> {
                if let Record::Fields(f) = r {
                    blanks.push((f.row_number, f.is_blank()));
                }
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(blanks, vec![(1, false), (2, true), (3, true), (4, false)]);
}
