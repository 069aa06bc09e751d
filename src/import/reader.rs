//! From the bytes of an upload to rows: intake → decoder → delimiter → parser → validator.
//!
//! Synchronous and free of the store, so that the property tests and the fuzzer run exactly
//! the code uploads run. Whatever the chunking, the same file gives the same rows and errors.
//!
//! Memory between chunks is bounded whatever the input (`check::memory_bound`): the intake's
//! sniffing window, the header line while the delimiter is not chosen yet (`MAX_HEADER_LINE`),
//! and one record of the parser. Rows go to a [`RowSink`] as they complete; the reader keeps
//! none of them.
//!
//! How a file stops being read, and what the import becomes:
//!
//! - refused at the door ([`ReadError::Intake`]): too large, or not CSV text;
//! - unreadable ([`ReadError::Parsing`], ERROR_PARSING): a byte that cannot be decoded, a header
//!   without an email column or with a column twice, a first row too large to be a header, a
//!   quote never closed;
//! - row by row, everything else is a row error and reading goes on: a row too long or too
//!   wide, a row of the wrong width, an invalid value.

use super::chunk::{Intake, IntakeError};
use super::decoder::{Decoder, Stop};
use super::delimiter::{blank_lines_before, detect_delimiter, has_first_line};
use super::parser::{CsvParser, Limits, Oversize, Record};
use super::validator::{Header, InvalidText};
use crate::domain::{ErrorCode, FailedRow, NewUser, RowError, TextFormat};

/// Decoded text kept to find the delimiter, at most: the first line of a file is its header,
/// and a header line longer than this is not one. Past it the delimiter is chosen from this
/// much, and the parser reads on: the whole line is still parsed, within the record limit.
const MAX_HEADER_LINE: usize = 64 * 1024;

/// Where the rows of a file go.
///
/// Called synchronously, in file order, from inside `FileReader::push` and `finish`: the
/// values borrow the reader's buffers and must be copied (as `UserBatch` does) to be kept.
pub trait RowSink {
    /// A valid row, from spreadsheet row `row_number`.
    fn user(&mut self, row_number: u64, user: &NewUser<'_>);
    /// A row that failed, with every error it has.
    fn failed(&mut self, row: FailedRow<'_>);
}

/// Why a file cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Refused at the door: too large (the import ends ERROR_UNKNOWN), or not CSV text (the
    /// import is removed).
    #[error(transparent)]
    Intake(#[from] IntakeError),
    /// The file cannot be read: ERROR_PARSING, with a message that says why and how to fix it.
    /// The rows read before it were handed to the sink; the import's ending removes them.
    #[error("{0}")]
    Parsing(String),
}

/// Reads one uploaded file, chunk by chunk, into rows for a [`RowSink`].
///
/// Feed it every chunk with `push`, then call `finish` once the upload's finish message came.
/// After an error it must not be fed again: the file is over.
pub struct FileReader {
    /// Size limit, checksum, content check and byte order mark.
    intake: Intake,
    /// Created with the first bytes the intake releases, once the byte order mark is known.
    decoder: Option<Decoder>,
    /// Delimiter, parser and validator, fed the decoded text.
    text: TextStage,
}

/// What comes after decoding; a separate struct so the decoder can feed it while borrowed.
struct TextStage {
    /// The parser's limits, and the figures its row errors name.
    limits: Limits,
    /// Decoded text held until the first line is complete, to choose the delimiter.
    head: Vec<u8>,
    /// Started, once, when the delimiter is chosen.
    parser: Option<CsvParser>,
    /// The delimiter chosen, which the import reports.
    delimiter: Option<u8>,
    /// The header, once its row was read: every later record is a data row.
    header: Option<Header>,
}

impl FileReader {
    /// A reader for a file of at most `max_upload_bytes`, whose records are held to `limits`.
    pub fn new(max_upload_bytes: u64, limits: Limits) -> Self {
        Self::with_intake(Intake::new(max_upload_bytes), limits)
    }

    /// A reader with the given intake: `check::read` uses a small sniffing window, so that
    /// short files are cut after it too.
    fn with_intake(intake: Intake, limits: Limits) -> Self {
        Self {
            intake,
            decoder: None,
            text: TextStage {
                limits,
                head: Vec::new(),
                parser: None,
                delimiter: None,
                header: None,
            },
        }
    }

    /// Bytes received so far, as the client sent them (see `Intake::bytes_received`).
    pub fn bytes_received(&self) -> u64 {
        self.intake.bytes_received()
    }

    /// The SHA-256 of the bytes received so far, checked against the finish message.
    pub fn sha256(&self) -> [u8; 32] {
        self.intake.sha256()
    }

    /// The encoding and delimiter, once the first bytes were read.
    pub fn format(&self) -> Option<TextFormat> {
        Some(TextFormat {
            encoding: self.decoder.as_ref()?.encoding(),
            delimiter: self.text.delimiter?,
        })
    }

    /// For a stream that ended without its finish message: whether what arrived was already
    /// plainly not CSV.
    pub fn check_content(&self) -> Result<(), ReadError> {
        Ok(self.intake.check_held()?)
    }

    /// Memory held between chunks: bounded whatever the input.
    pub fn buffered_bytes(&self) -> usize {
        self.text.head.capacity()
            + self
                .text
                .parser
                .as_ref()
                .map_or(0, CsvParser::buffered_bytes)
    }

    /// Reads the next chunk of the file, handing its complete rows to `sink`. A record cut by
    /// the end of the chunk waits for the next one.
    pub fn push(&mut self, chunk: &[u8], sink: &mut impl RowSink) -> Result<(), ReadError> {
        let (ready, bom) = self.intake.push(chunk)?;
        if ready.is_empty() {
            return Ok(());
        }
        let decoder = self.decoder.get_or_insert_with(|| Decoder::new(bom));
        decode(decoder, &mut self.text, ready, false, sink)
    }

    /// The file ended: reads what is left, including a last row without a line break.
    pub fn finish(&mut self, sink: &mut impl RowSink) -> Result<(), ReadError> {
        let (rest, bom) = self.intake.finish()?;
        let decoder = self.decoder.get_or_insert_with(|| Decoder::new(bom));
        decode(decoder, &mut self.text, rest, true, sink)?;
        self.text.finish(sink)
    }
}

/// Decodes `input` and feeds the text on. A byte that cannot be decoded ends the file with
/// ERROR_PARSING on the row it is in: everything before it was fed, so that is the row the
/// text stage is on.
fn decode(
    decoder: &mut Decoder,
    text: &mut TextStage,
    input: &[u8],
    last: bool,
    sink: &mut impl RowSink,
) -> Result<(), ReadError> {
    match decoder.decode(input, last, &mut |t: &[u8]| text.feed(t, sink)) {
        Ok(()) => Ok(()),
        Err(Stop::Emit(e)) => Err(e),
        Err(Stop::Invalid(e)) => Err(ReadError::Parsing(e.message(text.current_row()))),
    }
}

impl TextStage {
    /// The spreadsheet row the next text belongs to. Before the parser starts, the text held
    /// is blank lines and the start of the first line, whose row follows the blank ones.
    fn current_row(&self) -> u64 {
        match &self.parser {
            Some(parser) => parser.current_row(),
            None => blank_lines_before(&self.head) + 1,
        }
    }

    /// Takes decoded text: held until the header line is complete (or `MAX_HEADER_LINE`
    /// long), then parsed.
    fn feed(&mut self, text: &[u8], sink: &mut impl RowSink) -> Result<(), ReadError> {
        if self.parser.is_none() {
            self.head.extend_from_slice(text);
            if !has_first_line(&self.head) && self.head.len() < MAX_HEADER_LINE {
                return Ok(());
            }
            return self.start_parser(sink);
        }
        let (parser, mut rows) = self.parts();
        parser.feed(text, &mut |record| rows.record(record, sink))
    }

    /// Chooses the delimiter from the text held so far and parses that text, without the
    /// `sep=` line if there was one. Does nothing once the parser runs.
    fn start_parser(&mut self, sink: &mut impl RowSink) -> Result<(), ReadError> {
        if self.parser.is_none() {
            let head = std::mem::take(&mut self.head);
            let (delimiter, skip) = detect_delimiter(&head[..head.len().min(MAX_HEADER_LINE)]);
            self.delimiter = Some(delimiter);
            self.parser = Some(CsvParser::new(delimiter, self.limits));
            let (parser, mut rows) = self.parts();
            parser.feed(&head[skip..], &mut |record| rows.record(record, sink))?;
        }
        Ok(())
    }

    /// The text ended: a file whose header line never ended (a file of one line without a
    /// line break) is parsed now, then the parser's last record is completed.
    fn finish(&mut self, sink: &mut impl RowSink) -> Result<(), ReadError> {
        self.start_parser(sink)?;
        let (parser, mut rows) = self.parts();
        parser.finish(&mut |record| rows.record(record, sink))
    }

    /// The parser and the row stage, borrowed apart, so that the parser's callback can use
    /// the row stage.
    fn parts(&mut self) -> (&mut CsvParser, Rows<'_>) {
        let parser = self.parser.as_mut().expect("the parser runs");
        (
            parser,
            Rows {
                header: &mut self.header,
                limits: self.limits,
            },
        )
    }
}

/// Turns records into rows for the sink.
struct Rows<'a> {
    /// The header, set by the first record that is not blank.
    header: &'a mut Option<Header>,
    /// For the row errors of oversized records, which name the limit.
    limits: Limits,
}

impl Rows<'_> {
    /// One record: the header if none was read yet, else a data row for the sink. Blank
    /// records are skipped (they are rows of the numbering, not of the import); an oversized
    /// one is a row error, or the end of the file if it would have been the header.
    fn record(&mut self, record: Record<'_>, sink: &mut impl RowSink) -> Result<(), ReadError> {
        let fields = match record {
            Record::Fields(fields) => fields,
            Record::Unterminated { row_number } => {
                return Err(ReadError::Parsing(format!(
                    "row {row_number} opens a quoted value that is never closed, so the rows \
                     after it cannot be read; close the quote (a quote inside a value is \
                     written twice: \"\")"
                )));
            }
            Record::Blank { .. } => return Ok(()),
            Record::Oversized { row_number, reason } => {
                if self.header.is_none() {
                    return Err(ReadError::Parsing(format!(
                        "the first row (row {row_number}) is too large to be a header; check \
                         that the file is a CSV file with a header row"
                    )));
                }
                let (code, message) = match reason {
                    Oversize::TooLong => (
                        ErrorCode::TooLong,
                        format!(
                            "row is longer than {} bytes; split the long values",
                            self.limits.max_record_bytes
                        ),
                    ),
                    Oversize::TooManyFields => (
                        ErrorCode::FieldCount,
                        format!(
                            "row has more than {} fields; check the delimiters",
                            self.limits.max_fields
                        ),
                    ),
                };
                sink.failed(FailedRow::with_errors(vec![RowError::new(
                    row_number, None, code, message, "",
                )]));
                return Ok(());
            }
        };
        if fields.is_blank() {
            return Ok(());
        }
        let Some(header) = self.header.as_ref() else {
            let header = Header::parse(&fields).map_err(|e| ReadError::Parsing(e.to_string()))?;
            *self.header = Some(header);
            return Ok(());
        };
        let row = header.row(&fields).map_err(invalid_text)?;
        match NewUser::try_from(row) {
            Ok(user) => sink.user(fields.row_number, &user),
            Err(failed) => sink.failed(failed),
        }
        Ok(())
    }
}

/// The ERROR_PARSING message for a cell that is not valid text.
fn invalid_text(e: InvalidText) -> ReadError {
    let byte = e
        .byte
        .map(|b| format!(" (byte 0x{b:02X})"))
        .unwrap_or_default();
    ReadError::Parsing(format!(
        "the file is not valid text: row {}, column {} has an invalid byte{byte}; save the file \
         as \"CSV UTF-8\" and upload it again",
        e.row_number, e.column_index
    ))
}

/// Reading a whole file in a given chunking, with a comparable outcome: the property tests and
/// the fuzz target (`fuzz/`) check that the chunking never changes it, and that memory stays
/// bounded whatever the bytes.
#[doc(hidden)]
pub mod check {
    use super::*;

    /// Every row as a line (`row|email|...` or `row|CODE,CODE`), then how reading ended.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Outcome {
        /// Every row the sink got, valid or failed, in order.
        pub rows: Vec<String>,
        /// How reading ended: `Ok` for a file read to its end.
        pub end: Result<(), ReadError>,
        /// The encoding and delimiter found, if reading got that far.
        pub format: Option<TextFormat>,
    }

    /// A sink that writes each row down as a line, for comparison.
    #[derive(Default)]
    struct Collect(Vec<String>);

    impl RowSink for Collect {
        fn user(&mut self, row_number: u64, user: &NewUser<'_>) {
            self.0.push(format!(
                "{row_number}|{}|{}|{}|{}|{}|{:?}",
                user.email.as_str(),
                user.first_name,
                user.last_name,
                user.role.as_str(),
                user.job_title,
                user.external_id
            ));
        }

        fn failed(&mut self, row: FailedRow<'_>) {
            let errors = row.errors;
            let codes: Vec<String> = errors
                .iter()
                .map(|e| format!("{}:{}", e.column.map_or("", |c| c.name()), e.code.as_str()))
                .collect();
            self.0.push(format!(
                "{}|{}",
                errors.first().map_or(0, |e| e.row_number),
                codes.join(",")
            ));
        }
    }

    /// The most memory a reader may hold between chunks for these limits and chunk size.
    pub fn memory_bound(limits: Limits, largest_chunk: usize) -> usize {
        let record = limits.max_record_bytes + limits.max_fields * std::mem::size_of::<usize>();
        // Buffers grow by doubling up to their limit; the header line is held once, plus the
        // text decoded from one chunk (UTF-16 can grow by half).
        2 * record + 2 * (MAX_HEADER_LINE + 2 * largest_chunk) + 64 * 1024
    }

    /// Reads `file` cut at `cuts` (offsets, any order, out of range ignored).
    pub fn read(file: &[u8], cuts: &[usize], limits: Limits) -> Outcome {
        let mut offsets: Vec<usize> = cuts.iter().copied().filter(|&c| c < file.len()).collect();
        offsets.push(0);
        offsets.push(file.len());
        offsets.sort_unstable();
        offsets.dedup();
        // A small sniffing window, so that short files are cut after it too.
        let mut reader = FileReader::with_intake(Intake::with_window(u64::MAX, 16), limits);
        let mut rows = Collect::default();
        let mut largest = 0;
        let mut end = Ok(());
        for pair in offsets.windows(2) {
            let chunk = &file[pair[0]..pair[1]];
            largest = largest.max(chunk.len());
            end = reader.push(chunk, &mut rows);
            assert!(
                reader.buffered_bytes() <= memory_bound(limits, largest),
                "{} bytes held",
                reader.buffered_bytes()
            );
            if end.is_err() {
                break;
            }
        }
        if end.is_ok() {
            end = reader.finish(&mut rows);
        }
        Outcome {
            rows: rows.0,
            end,
            format: reader.format(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Small limits, so that short inputs reach them.
    const LIMITS: Limits = Limits {
        max_record_bytes: 64,
        max_fields: 8,
    };

    /// Pieces that make CSV-like files with every hard case: quotes, all line ends, the three
    /// delimiters, a `sep=` line, byte order marks, UTF-8, Windows-1252 and invalid bytes.
    fn token() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => Just(b"email".to_vec()),
            2 => Just(b"first_name".to_vec()),
            1 => Just(b"role".to_vec()),
            1 => Just(b"external_id".to_vec()),
            4 => Just(b"a@example.com".to_vec()),
            2 => Just(b"B@Example.com".to_vec()),
            6 => Just(b",".to_vec()),
            2 => Just(b";".to_vec()),
            2 => Just(b"\t".to_vec()),
            3 => Just(b"\"".to_vec()),
            3 => Just(b"\n".to_vec()),
            2 => Just(b"\r\n".to_vec()),
            1 => Just(b"\r".to_vec()),
            2 => Just(b" ".to_vec()),
            2 => Just("Zoë".as_bytes().to_vec()),
            1 => Just(b"Ren\xE9e".to_vec()),
            1 => Just(b"\xC3".to_vec()),
            1 => Just(b"\xC6\xC6\xC6".to_vec()),
            1 => Just(b"\x81".to_vec()),
            1 => Just(b"\xEF\xBB\xBF".to_vec()),
            1 => Just(b"sep=;".to_vec()),
            1 => Just(b"admin".to_vec()),
            1 => Just(b"superuser".to_vec()),
            1 => Just(b"\0".to_vec()),
            2 => proptest::collection::vec(any::<u8>(), 1..4),
        ]
    }

    /// A file: a start that is often a byte order mark or a valid header, then random pieces.
    fn file() -> impl Strategy<Value = Vec<u8>> {
        let body = proptest::collection::vec(token(), 0..120).prop_map(|t| t.concat());
        let start = prop_oneof![
            6 => Just(Vec::new()),
            1 => Just(b"\xEF\xBB\xBF".to_vec()),
            1 => Just(b"\xFF\xFE".to_vec()),
            1 => Just(b"\xFE\xFF".to_vec()),
            1 => Just(b"\xFF\xFE\0\0".to_vec()),
            1 => Just(b"\0\0\xFE\xFF".to_vec()),
            2 => Just(b"email,first_name,role\n".to_vec()),
        ];
        (start, body).prop_map(|(a, b)| [a, b].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the bytes and however they are cut: no panic, bounded memory, and the same
        /// rows, errors, format and ending as the file read whole.
        #[test]
        fn the_chunking_never_changes_the_outcome(
            file in file(),
            cuts in proptest::collection::vec(0usize..1000, 0..12),
        ) {
            let whole = check::read(&file, &[], LIMITS);
            let cut = check::read(&file, &cuts, LIMITS);
            prop_assert_eq!(&cut, &whole);
            let bytewise: Vec<usize> = (1..file.len()).collect();
            prop_assert_eq!(check::read(&file, &bytewise, LIMITS), whole);
        }
    }
}
