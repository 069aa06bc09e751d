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

use super::checkpoint::Checkpoint;
use super::chunk::{Intake, IntakeError};
use super::decoder::{Decoder, Stop, source_len};
use super::delimiter::{blank_lines_before, detect_delimiter, has_first_line};
use super::parser::{CsvParser, Limits, Mark, Oversize, Record};
use super::validator::{Header, InvalidText};
use crate::domain::{ErrorCode, FailedRow, NewUser, RowError, TextEncoding, TextFormat};

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
    /// The encoding of the last text decoded: how the held header line maps to the file.
    encoding: TextEncoding,
    /// Bytes of the file (after its byte order mark) that the text taken so far came from.
    source: u64,
    /// The parser's last record end, and where it is in the file (after the byte order
    /// mark): what a checkpoint is taken at.
    marked: Option<(Mark, u64)>,
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
                encoding: TextEncoding::Utf8,
                source: 0,
                marked: None,
            },
        }
    }

    /// A reader that goes on from `checkpoint`, taken by another reader of the same file: fed
    /// the bytes from `checkpoint.offset` on, it gives the rows, errors, format and checksum
    /// that reader would have given. `None` for a checkpoint that cannot be one.
    pub fn resume(max_upload_bytes: u64, limits: Limits, checkpoint: &Checkpoint) -> Option<Self> {
        let state = hex::decode(&checkpoint.sha256).ok()?;
        let intake = Intake::resume(max_upload_bytes, checkpoint.offset, checkpoint.bom, &state)?;
        let header = Header::from_stored(&checkpoint.header)?;
        let bom_len = intake.bom_len();
        let decoder = Decoder::resume(checkpoint.decoding);
        let mark = checkpoint.mark();
        let source = checkpoint.offset.checked_sub(bom_len)?;
        Some(Self {
            intake,
            text: TextStage {
                limits,
                head: Vec::new(),
                parser: Some(CsvParser::resume(checkpoint.delimiter, limits, mark)),
                delimiter: Some(checkpoint.delimiter),
                header: Some(header),
                encoding: decoder.encoding(),
                source,
                marked: Some((mark, source)),
            },
            decoder: Some(decoder),
        })
    }

    /// The state at the end of the last row read, if the header was read: where a resumable
    /// upload goes on from once the rows up to there are stored. `None` before that, and, were
    /// the hash ever not kept at that row's end, never a state that disagrees with the rows.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let header = self.text.header.as_ref()?;
        let (mark, source) = self.text.marked?;
        let offset = self.intake.bom_len() + source;
        let state = self.intake.state_at(offset)?;
        Some(Checkpoint {
            offset,
            rows: mark.rows_before,
            sha256: hex::encode(state),
            bom: self.intake.bom(),
            decoding: self.decoder.as_ref()?.decoding(),
            delimiter: self.text.delimiter?,
            header: header.stored(),
            text_end: mark.end,
            after_cr: mark.after_cr,
        })
    }

    /// Where the last row read ends in the file, and the spreadsheet rows up to there; `None`
    /// before the first. What `checkpoint` gives, without the state a resume needs.
    pub fn committed(&self) -> Option<(u64, u64)> {
        let (mark, _) = self.text.marked?;
        Some((self.mark_offset()?, mark.rows_before))
    }

    /// Where the last row read ends in the file, if one did.
    fn mark_offset(&self) -> Option<u64> {
        let (_, source) = self.text.marked?;
        Some(self.intake.bom_len() + source)
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
        let result = match ready.is_empty() {
            true => Ok(()),
            false => {
                let decoder = self.decoder.get_or_insert_with(|| Decoder::new(bom));
                decode(decoder, &mut self.text, ready, false, sink)
            }
        };
        // Hashed once read, so that the hash can be kept at the last row's end.
        self.intake.hash_passed(chunk, self.mark_offset());
        result
    }

    /// The file ended: reads what is left, including a last row without a line break.
    pub fn finish(&mut self, sink: &mut impl RowSink) -> Result<(), ReadError> {
        let (rest, bom) = self.intake.finish()?;
        let decoder = self.decoder.get_or_insert_with(|| Decoder::new(bom));
        let result =
            decode(decoder, &mut self.text, rest, true, sink).and_then(|()| self.text.finish(sink));
        if result.is_ok()
            && let Some(parser) = &self.text.parser
        {
            // Read to its end: the file's last byte (a CR's LF, a blank line) is read too.
            self.text.marked = Some((parser.end_mark(), self.text.source));
        }
        self.intake.hash_passed(&[], self.mark_offset());
        result
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
    match decoder.decode(input, last, &mut |t: &[u8], encoding| {
        text.feed(t, encoding, sink)
    }) {
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
    fn feed(
        &mut self,
        text: &[u8],
        encoding: TextEncoding,
        sink: &mut impl RowSink,
    ) -> Result<(), ReadError> {
        self.encoding = encoding;
        if self.parser.is_none() {
            self.head.extend_from_slice(text);
            self.source += source_len(text, encoding);
            if !has_first_line(&self.head) && self.head.len() < MAX_HEADER_LINE {
                return Ok(());
            }
            return self.start_parser(sink);
        }
        let (parser, mut rows) = self.parts();
        let fed = parser.fed();
        let result = parser.feed(text, &mut |record| rows.record(record, sink));
        self.place_mark(text, fed, self.source);
        self.source += source_len(text, encoding);
        result
    }

    /// Places the parser's last record end in the file, if it moved within `text`: the text
    /// the parser read from its byte `fed` on, which came from the file's byte `source` on
    /// (after the byte order mark).
    fn place_mark(&mut self, text: &[u8], fed: u64, source: u64) {
        let Some(mark) = self.parser.as_ref().and_then(CsvParser::mark) else {
            return;
        };
        if self.marked.is_some_and(|(placed, _)| placed == mark) {
            return;
        }
        let within = (mark.end.saturating_sub(fed) as usize).min(text.len());
        self.marked = Some((mark, source + source_len(&text[..within], self.encoding)));
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
            let result = parser.feed(&head[skip..], &mut |record| rows.record(record, sink));
            // The held text was decoded in one encoding, or in ASCII before Windows-1252,
            // which count alike: the last encoding places the mark.
            let before = source_len(&head[..skip], self.encoding);
            self.place_mark(&head[skip..], 0, before);
            result?;
        }
        Ok(())
    }

    /// The text ended: a file whose header line never ended (a file of one line without a
    /// line break) is parsed now, then the parser's last record is completed.
    fn finish(&mut self, sink: &mut impl RowSink) -> Result<(), ReadError> {
        self.start_parser(sink)?;
        let (parser, mut rows) = self.parts();
        let fed = parser.fed();
        let result = parser.finish(&mut |record| rows.record(record, sink));
        self.place_mark(&[], fed, self.source);
        result
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
pub mod check;

#[cfg(test)]
mod tests;
