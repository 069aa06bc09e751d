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
//!
//! The parser knows nothing of headers or users: it hands each [`Record`] to a callback,
//! borrowed from its own buffers, and the validator copies out only what a batch keeps. Its
//! buffers start small (4 KiB and 16 fields) and double up to the limits, so a typical file
//! never reaches them.

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

/// Bounds that keep one record from taking unbounded memory. Not configurable from the
/// command line: `ImportConfig::record_limits` takes the default; tests and the fuzzer use
/// small ones so that short inputs reach them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unescaped bytes of one record, at most (1 MiB by default). A longer record is a
    /// TOO_LONG row error, an unclosed quote (see [`Record::Unterminated`]), or, as the header,
    /// an ERROR_PARSING.
    pub max_record_bytes: usize,
    /// Fields of one record, at most (1000 by default). More is a FIELD_COUNT row error:
    /// usually a wrong delimiter.
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
    /// More bytes than `Limits::max_record_bytes`.
    TooLong,
    /// More fields than `Limits::max_fields`. Also what a record that is already too long
    /// reports once its fields outgrow the field buffer, which stops growing at that point: such
    /// a row may be called too wide with fewer than `max_fields` fields.
    TooManyFields,
}

/// One record of the file.
#[derive(Debug)]
pub enum Record<'a> {
    /// A record within the limits: its fields, which may all be blank (see
    /// [`Fields::is_blank`]).
    Fields(Fields<'a>),
    /// The record broke a limit; its content was discarded as it streamed by. Reading goes on
    /// at the next record: the row is only a row error.
    Oversized {
        /// The spreadsheet row the record starts on.
        row_number: u64,
        /// Which limit it broke (see [`Oversize::TooManyFields`] for a record that broke both).
        reason: Oversize,
    },
    /// A quoted value opened at this row is never closed: it ran to the end of the file, or
    /// past the record limit, so parsing cannot resume at a row boundary. The reader ends the
    /// file with ERROR_PARSING on this row.
    Unterminated {
        /// The row the quote was opened on.
        row_number: u64,
    },
    /// A record past a limit whose every field is empty or white space: a blank row of a wide
    /// sheet (`,,,,` a thousand times), skipped like any blank row.
    Blank {
        /// The row, which still counts in the numbering.
        row_number: u64,
    },
}

/// The unescaped fields of one record, borrowed from the parser: valid only for the callback
/// that receives them, since the next record is written over them.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// The spreadsheet row the record starts on (a quoted line break does not make a new row).
    pub row_number: u64,
    /// The unescaped bytes of every field, one after another, quotes removed.
    bytes: &'a [u8],
    /// Where each field ends in `bytes`.
    ends: &'a [usize],
}

impl<'a> Fields<'a> {
    /// How many fields the record has.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of field `index` (0-based), or `None` past the last field.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        self.bytes.get(cell(self.ends, index)?)
    }

    /// Every field's bytes, in order.
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
    /// The record's bytes, checked once as a whole.
    text: &'a str,
    /// Where each field ends in `text`, as in [`Fields`].
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

/// Only ASCII white space, or nothing: what a blank cell or a blank row holds.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// An incremental CSV parser for one file, with one delimiter, fed decoded UTF-8 text.
///
/// Holds at most one record: `max_record_bytes` of text and `max_fields` field ends, plus
/// `csv_core`'s small fixed state. A record that does not fit is streamed over, not kept.
pub struct CsvParser {
    /// `csv_core`'s reader: the quoting state machine, which keeps its state across calls.
    core: Reader,
    limits: Limits,
    /// Unescaped bytes of the record being read; grows up to `max_record_bytes`.
    out: Vec<u8>,
    /// How much of `out` the record being read fills.
    nout: usize,
    /// End offsets of the fields read so far; grows up to `max_fields`.
    ends: Vec<usize>,
    /// How much of `ends` the record being read fills.
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
    /// The record being read has a line break inside it (see `odd_quotes`).
    inner_line_break: bool,
    /// Where the record being read stands, quote-wise, as far as its bytes that `csv_core`
    /// did not complete it with: at the end of the file, inside a quoted value means an
    /// unclosed quote (see `Quote`).
    quote: Quote,
    /// The field delimiter, for `Quote`.
    delimiter: u8,
    /// `csv_core` reported the end of the input: `finish` has nothing more to do.
    done: bool,
    /// Bytes of text fed before the current call: places in the text are counted from the
    /// parser's first byte.
    fed: u64,
    /// Where the last record ended, and the state to read on from there: what a resumed upload
    /// starts from (see [`Mark`]).
    mark: Option<Mark>,
}

/// A record's end, and all a new parser needs to read on from there as this one does: at a
/// record's end `csv_core` has no state of its own, and only the row count and a CR that an LF
/// may still complete are carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Bytes of text (from the parser's first) up to the end of the record, its line break
    /// included.
    pub end: u64,
    /// Spreadsheet rows up to and including the record.
    pub rows_before: u64,
    /// The record ended with a CR: an LF right after it ends the same line.
    pub after_cr: bool,
}

/// Where a record stands, quote-wise, as `csv_core` reads it (its default rules: a quote opens
/// a quoted value only at the start of a field, two quotes inside one are a quote, and after
/// the closing quote the field goes on unquoted). `csv_core` keeps this state to itself, and
/// at the end of the input completes a quoted value as if it were closed; this tells an
/// unclosed quote apart. It is followed only over the bytes of a record that a chunk did not
/// complete: the record a file ends in always is one, and a record completed within its chunk
/// never needs it, so the common path pays nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted value: its end, or the first of two.
    EndOrDoubled,
}

impl Quote {
    /// The state after `bytes` of the same record.
    fn after(self, bytes: &[u8], delimiter: u8) -> Self {
        bytes
            .iter()
            .fold(self, |state, &b| state.step(b, delimiter))
    }

    /// The state after one more byte.
    fn step(self, b: u8, delimiter: u8) -> Self {
        match self {
            Quote::Quoted if b == b'"' => Quote::EndOrDoubled,
            Quote::Quoted => Quote::Quoted,
            Quote::EndOrDoubled | Quote::FieldStart if b == b'"' => Quote::Quoted,
            _ if b == b'\n' || b == b'\r' || b == delimiter => Quote::FieldStart,
            Quote::FieldStart | Quote::Unquoted | Quote::EndOrDoubled => Quote::Unquoted,
        }
    }
}

/// The record buffer's first size: rows of a Users file are short (a generated one is about
/// 80 bytes), so it rarely grows.
const INITIAL_RECORD_BYTES: usize = 4 * 1024;
/// The field buffer's first size: the template has 6 columns.
const INITIAL_FIELDS: usize = 16;

impl CsvParser {
    /// A parser for fields separated by `delimiter` (`,`, `;`, tab, or what a `sep=` line
    /// named), with double quotes for quoting.
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
            quote: Quote::FieldStart,
            delimiter,
            done: false,
            fed: 0,
            mark: None,
        }
    }

    /// A parser that reads on from `mark`, where another one stopped at a record's end: the
    /// same rows, row numbers and errors as that one would have given for the rest of the text.
    pub fn resume(delimiter: u8, limits: Limits, mark: Mark) -> Self {
        let mut parser = Self::new(delimiter, limits);
        // `csv_core` strips a UTF-8 byte order mark at the start of its first read, which for
        // a resumed parser is the middle of the file: there the other parser keeps the mark
        // as text, so this one must too. A line break at a record's start is skipped without
        // a trace, so reading one makes `csv_core` past its first read and changes nothing
        // else (its line count, which is not used).
        let (result, nin, nout, nend) =
            parser
                .core
                .read_record(b"\n", &mut parser.out, &mut parser.ends);
        debug_assert_eq!(
            (result, nin, nout, nend),
            (ReadRecordResult::InputEmpty, 1, 0, 0)
        );
        parser.rows_before = mark.rows_before;
        parser.after_cr = mark.after_cr;
        parser.fed = mark.end;
        parser.mark = Some(mark);
        parser
    }

    /// Where the last record ended, if one did.
    pub fn mark(&self) -> Option<Mark> {
        self.mark
    }

    /// The end of the text, once `finish` read it all: every byte is read, the last line
    /// break included, and nothing follows.
    pub fn end_mark(&self) -> Mark {
        Mark {
            end: self.fed,
            rows_before: self.rows_before,
            after_cr: false,
        }
    }

    /// Bytes of text fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
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
    ///
    /// Line breaks between records are counted here as blank rows before `csv_core` skips
    /// them; the quotes and line breaks of the bytes a record consumes are noted on the way,
    /// for telling an unclosed quote from a long value.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        on_record: &mut impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.fed;
        let len = input.len() as u64;
        // Counted before the records: a record's end is placed from it.
        self.fed += len;
        while !input.is_empty() {
            let blank = if self.at_record_start {
                self.count_blank_lines(input)
            } else {
                0
            };
            let (result, nin) = self.read(input);
            let consumed = &input[blank.min(nin)..nin];
            self.track(consumed);
            if !matches!(result, ReadRecordResult::Record) {
                // The record goes on past these bytes: it may be the file's last.
                self.quote = self.quote.after(consumed, self.delimiter);
            }
            let last = nin.checked_sub(1).map(|i| input[i]);
            input = &input[nin..];
            match result {
                ReadRecordResult::Record => {
                    let end = start + len - input.len() as u64;
                    self.emit(last == Some(b'\r'), end, on_record)?;
                }
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => self.grow_output(),
                ReadRecordResult::OutputEndsFull => self.grow_ends(),
                ReadRecordResult::End => return Ok(()),
            }
        }
        Ok(())
    }

    /// Ends the input: completes a last record that has no line break after it. A last
    /// record with an odd number of quotes and a line break inside is an unclosed quote
    /// ([`Record::Unterminated`]), not a value that happens to hold line breaks.
    pub fn finish<E>(
        &mut self,
        on_record: &mut impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        // Asked before the end of input completes the record.
        let unclosed = self.quote == Quote::Quoted;
        while !self.done {
            let (result, _) = self.read(&[]);
            match result {
                ReadRecordResult::Record => {
                    // The file ends inside a quoted value: whether or not the value has a line
                    // break, and whether or not the file ends with one (which would be inside
                    // the value), it is an unclosed quote, never a value.
                    if unclosed {
                        self.oversize = None;
                        let row_number = self.rows_before + 1;
                        self.reset_record(false);
                        self.rows_before += 1;
                        on_record(Record::Unterminated { row_number })?;
                    } else {
                        self.emit(false, self.fed, on_record)?;
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

    /// One call to `csv_core` into the free part of the buffers; returns how many input
    /// bytes it consumed.
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

    /// Hands the completed record to `on_record` as the right kind of [`Record`], then makes
    /// room for the next, whatever the callback returned. `ended_with_cr`: the record's line
    /// ended with a CR, so an LF right after it belongs to the same line break.
    fn emit<E>(
        &mut self,
        ended_with_cr: bool,
        end: u64,
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
        self.mark = Some(Mark {
            end,
            rows_before: self.rows_before,
            after_cr: ended_with_cr,
        });
        result
    }

    /// Empties the buffers for the next record; they keep their capacity.
    fn reset_record(&mut self, ended_with_cr: bool) {
        self.nout = 0;
        self.nend = 0;
        self.discarded_text = false;
        self.at_record_start = true;
        self.after_cr = ended_with_cr;
        self.odd_quotes = false;
        self.inner_line_break = false;
        self.quote = Quote::FieldStart;
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

    /// `csv_core` filled the record buffer: double it, up to the limit. At the limit the record
    /// is oversized: its bytes so far are dropped (noting whether any was not blank) and the
    /// rest is written over the start of the buffer, so memory stays at the limit.
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

    /// `csv_core` filled the field buffer: double it, up to the limit, past which the record
    /// has too many fields and its field ends are written over and thrown away.
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
mod tests;
