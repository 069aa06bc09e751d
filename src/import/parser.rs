//! Incremental CSV framing: bytes cut anywhere in, records with their spreadsheet row numbers
//! out.
//!
//! `csv_core` does the quoting rules and keeps its state between calls, so a record may span
//! any number of chunks (a cut inside quotes, inside a multi-byte character or between CR and
//! LF changes nothing). This module adds what a streaming importer needs on top:
//!
//! - row numbers as a spreadsheet shows them: every record and every blank line is a row, a
//!   record with a quoted line break is still one row;
//! - bounded memory: a record longer than `max_record_bytes` or with more than `max_fields`
//!   fields is reported and skipped without being buffered, and parsing resumes at its end;
//! - a quote that is never closed is told apart from a long value: it swallows the rest of the
//!   file (or a megabyte of it), and no row after it could be trusted.

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

/// Bounds that keep one record from taking unbounded memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_record_bytes: usize,
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_fields: 1000,
        }
    }
}

/// Why a record was skipped instead of returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    TooLong,
    TooManyFields,
}

/// One record of the file.
#[derive(Debug)]
pub enum Record<'a> {
    Fields(Fields<'a>),
    /// The record broke a limit; its content was discarded as it streamed by.
    Oversized {
        row_number: u64,
        reason: Oversize,
    },
    /// A quoted value opened at this row is never closed: it ran to the end of the file, or
    /// past the record limit, so parsing cannot resume at a row boundary.
    Unterminated {
        row_number: u64,
    },
    /// A record past a limit whose every field is empty or white space: a blank row of a wide
    /// sheet (`,,,,` a thousand times), skipped like any blank row.
    Blank {
        row_number: u64,
    },
}

/// The unescaped fields of one record, borrowed from the parser.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub row_number: u64,
    bytes: &'a [u8],
    ends: &'a [usize],
}

impl<'a> Fields<'a> {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        self.bytes.get(cell(self.ends, index)?)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The record's cells as text, when the whole record is UTF-8: one check per record
    /// rather than one per cell.
    pub fn text(&self) -> Option<TextFields<'a>> {
        let text = std::str::from_utf8(self.bytes).ok()?;
        Some(TextFields {
            text,
            ends: self.ends,
        })
    }

    /// A record whose cells are all empty or white space: a blank row of the sheet, which
    /// Excel writes as `,,,,,`.
    pub fn is_blank(&self) -> bool {
        is_blank(self.bytes)
    }
}

/// `Fields` of a record that is all UTF-8.
#[derive(Debug, Clone, Copy)]
pub struct TextFields<'a> {
    text: &'a str,
    ends: &'a [usize],
}

impl<'a> TextFields<'a> {
    /// `None` when the cell is missing, or (in theory) would cut a character: the caller then
    /// checks the cell's bytes alone.
    pub fn get(&self, index: usize) -> Option<&'a str> {
        self.text.get(cell(self.ends, index)?)
    }
}

/// Where cell `index` lies in a record's bytes, given the cells' end offsets.
fn cell(ends: &[usize], index: usize) -> Option<std::ops::Range<usize>> {
    let end = *ends.get(index)?;
    let start = index.checked_sub(1).map_or(0, |previous| ends[previous]);
    Some(start..end)
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

pub struct CsvParser {
    core: Reader,
    limits: Limits,
    /// Unescaped bytes of the record being read; grows up to `max_record_bytes`.
    out: Vec<u8>,
    nout: usize,
    /// End offsets of the fields read so far; grows up to `max_fields`.
    ends: Vec<usize>,
    nend: usize,
    /// Set once the record being read broke a limit: from then on its bytes are written over
    /// the start of the buffers and thrown away.
    oversize: Option<Oversize>,
    /// Bytes of the record being read that were thrown away held something besides white
    /// space: the record is not blank.
    discarded_text: bool,
    /// No byte of the next record has been seen yet: line breaks here are blank rows.
    at_record_start: bool,
    /// The last byte consumed was a CR, so an LF right after it ends the same line.
    after_cr: bool,
    /// Spreadsheet rows before the record being read.
    rows_before: u64,
    /// Whether the record being read has an odd number of quote characters so far, and a line
    /// break inside it: both at the end of the file mean an unclosed quote.
    odd_quotes: bool,
    inner_line_break: bool,
    done: bool,
}

const INITIAL_RECORD_BYTES: usize = 4 * 1024;
const INITIAL_FIELDS: usize = 16;

impl CsvParser {
    pub fn new(delimiter: u8, limits: Limits) -> Self {
        let core = ReaderBuilder::new().delimiter(delimiter).build();
        Self {
            core,
            limits,
            out: vec![0; INITIAL_RECORD_BYTES.min(limits.max_record_bytes).max(1)],
            nout: 0,
            ends: vec![0; INITIAL_FIELDS.min(limits.max_fields).max(1)],
            nend: 0,
            oversize: None,
            discarded_text: false,
            at_record_start: true,
            after_cr: false,
            rows_before: 0,
            odd_quotes: false,
            inner_line_break: false,
            done: false,
        }
    }

    /// The row the next byte belongs to: where a decoding error is reported.
    pub fn current_row(&self) -> u64 {
        self.rows_before + 1
    }

    /// Bytes held for the record being read: bounded by the limits.
    pub fn buffered_bytes(&self) -> usize {
        self.out.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }

    /// Parses `input`, calling `on_record` for each record it completes. A record that does not
    /// end in `input` is kept and completed by later calls. Stops at the first error of
    /// `on_record`.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        on_record: &mut impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !input.is_empty() {
            let blank = if self.at_record_start {
                self.count_blank_lines(input)
            } else {
                0
            };
            let (result, nin) = self.read(input);
            self.track(&input[blank.min(nin)..nin]);
            let last = nin.checked_sub(1).map(|i| input[i]);
            input = &input[nin..];
            match result {
                ReadRecordResult::Record => {
                    self.emit(last == Some(b'\r'), on_record)?;
                }
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => self.grow_output(),
                ReadRecordResult::OutputEndsFull => self.grow_ends(),
                ReadRecordResult::End => return Ok(()),
            }
        }
        Ok(())
    }

    /// Ends the input: completes a last record that has no line break after it.
    pub fn finish<E>(
        &mut self,
        on_record: &mut impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !self.done {
            let (result, _) = self.read(&[]);
            match result {
                ReadRecordResult::Record => {
                    // No line break ends the last record: any it has is inside a quoted value.
                    if self.odd_quotes && self.inner_line_break {
                        self.oversize = None;
                        let row_number = self.rows_before + 1;
                        self.reset_record(false);
                        self.rows_before += 1;
                        on_record(Record::Unterminated { row_number })?;
                    } else {
                        self.emit(false, on_record)?;
                    }
                }
                ReadRecordResult::End => self.done = true,
                ReadRecordResult::OutputFull => self.grow_output(),
                ReadRecordResult::OutputEndsFull => self.grow_ends(),
                // Not returned for an empty input; stop rather than spin if it ever is.
                ReadRecordResult::InputEmpty => self.done = true,
            }
        }
        Ok(())
    }

    fn read(&mut self, input: &[u8]) -> (ReadRecordResult, usize) {
        let (result, nin, nout, nend) = self.core.read_record(
            input,
            &mut self.out[self.nout..],
            &mut self.ends[self.nend..],
        );
        self.nout += nout;
        self.nend += nend;
        (result, nin)
    }

    fn emit<E>(
        &mut self,
        ended_with_cr: bool,
        on_record: &mut impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.rows_before += 1;
        let row_number = self.rows_before;
        let blank = !self.discarded_text && is_blank(&self.out[..self.nout]);
        let record = match self.oversize.take() {
            // An odd number of quotes in a record cut short: the parser may be inside a quoted
            // value, and every row boundary after this one is in doubt.
            Some(_) if self.odd_quotes => Record::Unterminated { row_number },
            Some(_) if blank => Record::Blank { row_number },
            Some(reason) => Record::Oversized { row_number, reason },
            None => Record::Fields(Fields {
                row_number,
                bytes: &self.out[..self.nout],
                ends: &self.ends[..self.nend],
            }),
        };
        let result = on_record(record);
        self.reset_record(ended_with_cr);
        result
    }

    fn reset_record(&mut self, ended_with_cr: bool) {
        self.nout = 0;
        self.nend = 0;
        self.discarded_text = false;
        self.at_record_start = true;
        self.after_cr = ended_with_cr;
        self.odd_quotes = false;
        self.inner_line_break = false;
    }

    /// Notes the quotes and line breaks of bytes consumed for the current record.
    /// Called for every record with all its bytes: one pass without branches, which the
    /// compiler turns into vector code.
    fn track(&mut self, consumed: &[u8]) {
        let (odd, line_break) = consumed.iter().fold((false, false), |(odd, line), &b| {
            (odd ^ (b == b'"'), line | (b == b'\n') | (b == b'\r'))
        });
        self.odd_quotes ^= odd;
        self.inner_line_break |= line_break;
    }

    /// Counts the blank lines before the next record. `csv_core` skips them silently, but a
    /// spreadsheet shows each as a row, and row numbers must match what the user sees. Returns
    /// how many bytes of `input` are line breaks before the record.
    fn count_blank_lines(&mut self, input: &[u8]) -> usize {
        for (i, &byte) in input.iter().enumerate() {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' => self.rows_before += 1,
                b'\r' => {
                    self.rows_before += 1;
                    self.after_cr = true;
                }
                _ => {
                    self.at_record_start = false;
                    self.after_cr = false;
                    return i;
                }
            }
        }
        input.len()
    }

    fn grow_output(&mut self) {
        if self.oversize.is_none() && self.out.len() < self.limits.max_record_bytes {
            let len = (self.out.len() * 2).min(self.limits.max_record_bytes);
            self.out.resize(len, 0);
        } else {
            self.oversize.get_or_insert(Oversize::TooLong);
            self.discarded_text |= !is_blank(&self.out[..self.nout]);
            self.nout = 0;
        }
    }

    fn grow_ends(&mut self) {
        if self.oversize.is_none() && self.ends.len() < self.limits.max_fields {
            let len = (self.ends.len() * 2).min(self.limits.max_fields);
            self.ends.resize(len, 0);
        } else {
            self.oversize = Some(Oversize::TooManyFields);
            self.nend = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test sees of a record: its row and its fields as strings.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Row(u64, Vec<String>),
        Skipped(u64, Oversize),
        Unterminated(u64),
        Blank(u64),
    }

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

    fn row(n: u64, fields: &[&str]) -> Seen {
        Seen::Row(n, fields.iter().map(|s| s.to_string()).collect())
    }

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

    #[test]
    fn rows_are_numbered_as_a_spreadsheet_shows_them() {
        let input = b"email,name\r\n\r\na@x.io,\"Ada\r\nLovelace\"\r\n\nb@x.io,Bob\rc@x.io,\"C, \"\"Jr\"\"\"";
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
    }

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
}
