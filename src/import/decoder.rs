//! Text decoding: whatever the spreadsheet saved, the parser reads UTF-8.
//!
//! - A byte order mark decides: UTF-8, UTF-16LE ("Unicode Text" in Excel) or UTF-16BE. UTF-16
//!   is converted as the chunks stream, with `encoding_rs`.
//! - Without a mark the file is read as UTF-8, passed through without a copy and validated on
//!   the way. At the first byte that is not valid UTF-8, the file is taken for Windows-1252
//!   (Excel's plain "CSV" on Windows) only if that is clearly what it is: nothing before was
//!   non-ASCII, so no earlier byte is read differently, and from then on every byte is a
//!   Windows-1252 character (not one of the five it leaves undefined) and no sequence is valid
//!   multi-byte UTF-8 (which would mean a mix of two encodings). Otherwise the file is an
//!   ERROR_PARSING that names the row of the first bad byte.
//! - A UTF-32 mark (PowerShell's `Export-Csv -Encoding UTF32`) is decoded here, four bytes to
//!   a character, since `encoding_rs` does not convert UTF-32.
//!
//! Whatever the chunking, the decoder emits the same text and stops at the same byte: a
//! character cut by the end of a chunk waits in a buffer of at most 3 bytes for the next one.
//! Memory is that buffer and one output buffer for the converted encodings: at most 256 KiB
//! per conversion step for UTF-16 and Windows-1252, the text of one input for UTF-32 (which is
//! smaller than the input).
//!
//! Decoding is not undone: text emitted before a bad byte has been parsed, and its rows may
//! already be in a batch. That is fine, because ERROR_PARSING removes every user of the import.

use encoding_rs::{Decoder as RsDecoder, DecoderResult, UTF_16BE, UTF_16LE, WINDOWS_1252};

pub use crate::domain::TextEncoding;

/// A byte that cannot be decoded. The decoder has emitted everything before it, so the
/// parser's current row is the row of the byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not UTF-8, and not clearly Windows-1252 either (non-ASCII UTF-8 came before, or the
    /// file has a UTF-8 byte order mark).
    InvalidUtf8 {
        /// The first byte that is not valid UTF-8.
        byte: u8,
    },
    /// Read as Windows-1252, but the byte is undefined there.
    NotWindows1252 {
        /// One of 0x81, 0x8D, 0x8F, 0x90 and 0x9D.
        byte: u8,
    },
    /// Read as Windows-1252, but a valid UTF-8 sequence follows: two encodings in one file.
    MixedEncodings,
    /// An unpaired surrogate in UTF-16.
    InvalidUtf16,
    /// A UTF-32 unit that is no character (a surrogate, or past U+10FFFF), or a file that ends
    /// inside a unit.
    InvalidUtf32,
}

impl DecodeError {
    /// The message for an ERROR_PARSING import: the row of the bad byte (as the parser
    /// counted it when decoding stopped), the byte when there is one, and the fix, which is
    /// always to save the file as "CSV UTF-8".
    pub fn message(self, row_number: u64) -> String {
        let fix = "save the file as \"CSV UTF-8\" and upload it again";
        match self {
            DecodeError::InvalidUtf8 { byte } => format!(
                "the file is not valid UTF-8 text: row {row_number} has the byte 0x{byte:02X}, \
                 which is not valid there; {fix}"
            ),
            DecodeError::NotWindows1252 { byte } => format!(
                "the file is neither UTF-8 nor Windows-1252 text: row {row_number} has the byte \
                 0x{byte:02X}; {fix}"
            ),
            DecodeError::MixedEncodings => format!(
                "the file mixes two text encodings: it was read as Windows-1252, but row \
                 {row_number} has UTF-8 text; {fix}"
            ),
            DecodeError::InvalidUtf16 => format!(
                "the file is not valid UTF-16 text: row {row_number} has a broken character; {fix}"
            ),
            DecodeError::InvalidUtf32 => format!(
                "the file is not valid UTF-32 text: row {row_number} has a broken character; {fix}"
            ),
        }
    }
}

/// Why decoding stopped: a byte that cannot be decoded, or an error of the consumer of the
/// decoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop<E> {
    /// The input has a byte that cannot be decoded; everything before it was emitted.
    Invalid(DecodeError),
    /// The consumer refused the text it was handed (the parser or the validator stopped the
    /// file), returned as it is.
    Emit(E),
}

/// The byte order marks this decoder understands, and what they mean: the encoding and the
/// mark's length in bytes. UTF-32LE is tested before UTF-16LE, whose mark starts it.
pub fn sniff_bom(head: &[u8]) -> Option<(TextEncoding, usize)> {
    if head.starts_with(b"\xEF\xBB\xBF") {
        Some((TextEncoding::Utf8, 3))
    } else if head.starts_with(b"\xFF\xFE\0\0") {
        Some((TextEncoding::Utf32Le, 4))
    } else if head.starts_with(b"\0\0\xFE\xFF") {
        Some((TextEncoding::Utf32Be, 4))
    } else if head.starts_with(b"\xFF\xFE") {
        Some((TextEncoding::Utf16Le, 2))
    } else if head.starts_with(b"\xFE\xFF") {
        Some((TextEncoding::Utf16Be, 2))
    } else {
        None
    }
}

/// Turns the bytes of one file, chunk by chunk, into UTF-8 text for the parser.
///
/// Created from the byte order mark the intake found; without one it starts as UTF-8 and may
/// switch, once, to Windows-1252 (see the module's doc). `encoding` tells which it settled on,
/// which the import reports.
pub struct Decoder {
    /// The encoding being read: the mark's, UTF-8, or Windows-1252 after a fall-back.
    encoding: TextEncoding,
    /// No byte order mark: Windows-1252 is still possible.
    may_fall_back: bool,
    /// A non-ASCII character was decoded, so switching encodings would change earlier text.
    seen_non_ascii: bool,
    /// The start of a UTF-8 character cut by the end of a chunk (at most 3 bytes): completed
    /// by the next chunk in UTF-8 mode, or told apart from Windows-1252 text.
    pending: Vec<u8>,
    /// Converter for UTF-16 and Windows-1252, and its output buffer.
    converter: Option<RsDecoder>,
    /// Text produced by `converter` or the UTF-32 decoding, reused from step to step; UTF-8
    /// input never goes through it.
    out: Vec<u8>,
}

impl Decoder {
    /// A decoder for a file whose byte order mark (if any) was `bom`. Only UTF-16 needs an
    /// `encoding_rs` converter from the start; Windows-1252 gets one if the file falls back.
    pub fn new(bom: Option<TextEncoding>) -> Self {
        let encoding = bom.unwrap_or(TextEncoding::Utf8);
        let converter = match encoding {
            TextEncoding::Utf16Le => Some(UTF_16LE.new_decoder_without_bom_handling()),
            TextEncoding::Utf16Be => Some(UTF_16BE.new_decoder_without_bom_handling()),
            TextEncoding::Utf8
            | TextEncoding::Windows1252
            | TextEncoding::Utf32Le
            | TextEncoding::Utf32Be => None,
        };
        Self {
            encoding,
            may_fall_back: bom.is_none(),
            seen_non_ascii: false,
            pending: Vec::with_capacity(4),
            converter,
            out: Vec::new(),
        }
    }

    /// The encoding the file is read with so far. It may still change from UTF-8 to
    /// Windows-1252 while only ASCII was read.
    pub fn encoding(&self) -> TextEncoding {
        self.encoding
    }

    /// Decodes the next bytes of the file, handing UTF-8 text to `emit` (possibly in several
    /// pieces). `last` marks the end of the file. On an undecodable byte, everything before it
    /// has been emitted when the error is returned; an error of `emit` stops decoding at once.
    pub fn decode<E>(
        &mut self,
        input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8], TextEncoding) -> Result<(), E>,
    ) -> Result<(), Stop<E>> {
        match self.encoding {
            TextEncoding::Utf8 => self.decode_utf8(input, last, emit),
            TextEncoding::Windows1252 => self.decode_windows_1252(input, last, emit),
            TextEncoding::Utf16Le | TextEncoding::Utf16Be => self.convert(input, last, emit),
            TextEncoding::Utf32Le => self.decode_utf32(input, last, emit, u32::from_le_bytes),
            TextEncoding::Utf32Be => self.decode_utf32(input, last, emit, u32::from_be_bytes),
        }
    }

    /// UTF-32, which `encoding_rs` does not convert (the WHATWG encodings leave it out): each
    /// four bytes are one character. A unit cut by the end of a chunk waits in `pending`.
    fn decode_utf32<E>(
        &mut self,
        mut input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8], TextEncoding) -> Result<(), E>,
        unit: fn([u8; 4]) -> u32,
    ) -> Result<(), Stop<E>> {
        self.out.clear();
        let mut char_buffer = [0u8; 4];
        let mut push = |out: &mut Vec<u8>, bytes: [u8; 4]| match char::from_u32(unit(bytes)) {
            Some(c) => {
                out.extend_from_slice(c.encode_utf8(&mut char_buffer).as_bytes());
                true
            }
            None => false,
        };
        if !self.pending.is_empty() {
            let take = (4 - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() < 4 {
                return match last {
                    true => Err(Stop::Invalid(DecodeError::InvalidUtf32)),
                    false => Ok(()),
                };
            }
            let bytes = [
                self.pending[0],
                self.pending[1],
                self.pending[2],
                self.pending[3],
            ];
            self.pending.clear();
            if !push(&mut self.out, bytes) {
                return Err(Stop::Invalid(DecodeError::InvalidUtf32));
            }
        }
        let units = input.chunks_exact(4);
        let rest = units.remainder();
        for bytes in units {
            if !push(&mut self.out, [bytes[0], bytes[1], bytes[2], bytes[3]]) {
                // Everything before the bad unit is emitted, so the error lands on its row.
                emit(&self.out, self.encoding).map_err(Stop::Emit)?;
                return Err(Stop::Invalid(DecodeError::InvalidUtf32));
            }
        }
        emit(&self.out, self.encoding).map_err(Stop::Emit)?;
        self.pending.extend_from_slice(rest);
        if last && !self.pending.is_empty() {
            return Err(Stop::Invalid(DecodeError::InvalidUtf32));
        }
        Ok(())
    }

    /// UTF-8: valid text is emitted as it is, without a copy. A character cut by the end of
    /// the chunk waits in `pending`; the first invalid byte goes to `fall_back`.
    fn decode_utf8<E>(
        &mut self,
        mut input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8], TextEncoding) -> Result<(), E>,
    ) -> Result<(), Stop<E>> {
        if !self.pending.is_empty() {
            // Complete the character cut by the previous chunk, a byte at a time.
            while !input.is_empty() && utf8_sequence(&self.pending) == Sequence::Incomplete {
                self.pending.push(input[0]);
                input = &input[1..];
            }
            if utf8_sequence(&self.pending) == Sequence::Incomplete && !last {
                return Ok(());
            }
            let pending = std::mem::take(&mut self.pending);
            match std::str::from_utf8(&pending) {
                Ok(_) => {
                    self.seen_non_ascii = true;
                    emit(&pending, self.encoding).map_err(Stop::Emit)?;
                }
                Err(_) => return self.fall_back(&pending, input, last, emit),
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => {
                self.note_text(input);
                emit(input, self.encoding).map_err(Stop::Emit)?;
            }
            Err(e) => {
                let (valid, rest) = input.split_at(e.valid_up_to());
                self.note_text(valid);
                emit(valid, self.encoding).map_err(Stop::Emit)?;
                if e.error_len().is_none() && !last {
                    // A character cut by the end of the chunk: finish it with the next one.
                    self.pending.extend_from_slice(rest);
                } else {
                    return self.fall_back(rest, &[], last, emit);
                }
            }
        }
        Ok(())
    }

    /// The first invalid UTF-8: switch to Windows-1252 if that is clearly right, else fail.
    /// `bad` starts at the invalid byte (or is the cut character that turned out invalid);
    /// `rest` is the input after it, when `bad` came from `pending`. Both are then read again
    /// as Windows-1252, which checks them for undefined bytes and UTF-8 like any later text.
    fn fall_back<E>(
        &mut self,
        bad: &[u8],
        rest: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8], TextEncoding) -> Result<(), E>,
    ) -> Result<(), Stop<E>> {
        if !self.may_fall_back || self.seen_non_ascii {
            return Err(Stop::Invalid(DecodeError::InvalidUtf8 { byte: bad[0] }));
        }
        self.encoding = TextEncoding::Windows1252;
        self.converter = Some(WINDOWS_1252.new_decoder_without_bom_handling());
        if rest.is_empty() {
            return self.decode_windows_1252(bad, last, emit);
        }
        self.decode_windows_1252(bad, false, emit)?;
        self.decode_windows_1252(rest, last, emit)
    }

    /// Windows-1252, after a fall-back: `pending` (a possible UTF-8 character cut by the last
    /// chunk) is decided together with the bytes that follow it.
    fn decode_windows_1252<E>(
        &mut self,
        input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8], TextEncoding) -> Result<(), E>,
    ) -> Result<(), Stop<E>> {
        if self.pending.is_empty() {
            return self.windows_1252_checked(input, last, emit);
        }
        // A possible UTF-8 character cut by the previous chunk goes first: decide it with the
        // bytes that follow. (A copy, but only when a chunk ended on such a byte.)
        let mut joined = std::mem::take(&mut self.pending);
        joined.extend_from_slice(input);
        self.windows_1252_checked(&joined, last, emit)
    }

    /// Converts `input`, stopping at an undefined byte or a UTF-8 character; keeps a possible
    /// UTF-8 character cut by the end of `input` for the next call.
    ///
    /// Only the bytes 0xC2 to 0xF4 can lead a UTF-8 character, and Windows-1252 text has them
    /// too (accented capitals, `Ã`): such a byte is a mix of encodings only when a valid
    /// sequence follows it. At the end of the file a cut sequence is plain Windows-1252.
    fn windows_1252_checked<E>(
        &mut self,
        input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8], TextEncoding) -> Result<(), E>,
    ) -> Result<(), Stop<E>> {
        for (i, &byte) in input.iter().enumerate() {
            let problem = match byte {
                0x81 | 0x8D | 0x8F | 0x90 | 0x9D => Some(DecodeError::NotWindows1252 { byte }),
                0xC2..=0xF4 => match utf8_sequence(&input[i..]) {
                    Sequence::Complete => Some(DecodeError::MixedEncodings),
                    Sequence::Incomplete if !last => {
                        // Everything before is emitted; the rest waits for the next chunk.
                        self.convert(&input[..i], false, emit)?;
                        self.pending.extend_from_slice(&input[i..]);
                        return Ok(());
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some(problem) = problem {
                // Everything before the byte is emitted, so the error lands on its row.
                self.convert(&input[..i], false, emit)?;
                return Err(Stop::Invalid(problem));
            }
        }
        self.convert(input, last, emit)
    }

    /// Runs `encoding_rs` over `input` and emits the UTF-8 it produces, in steps whose output
    /// is at most 256 KiB, so that a multi-megabyte chunk needs no buffer of its size.
    /// (`encoding_rs` never reports Windows-1252 bytes as malformed: the undefined ones were
    /// caught by `windows_1252_checked` before this.)
    fn convert<E>(
        &mut self,
        mut input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8], TextEncoding) -> Result<(), E>,
    ) -> Result<(), Stop<E>> {
        let converter = self
            .converter
            .as_mut()
            .expect("a converter for this encoding");
        loop {
            let room = converter
                .max_utf8_buffer_length_without_replacement(input.len())
                .unwrap_or(usize::MAX)
                .clamp(16, 256 * 1024);
            if self.out.len() < room {
                self.out.resize(room, 0);
            }
            let (result, read, written) =
                converter.decode_to_utf8_without_replacement(input, &mut self.out, last);
            input = &input[read..];
            let text = &self.out[..written];
            if !self.seen_non_ascii && !text.is_ascii() {
                self.seen_non_ascii = true;
            }
            emit(text, self.encoding).map_err(Stop::Emit)?;
            match result {
                DecoderResult::InputEmpty => return Ok(()),
                DecoderResult::OutputFull => continue,
                DecoderResult::Malformed(..) => {
                    return Err(Stop::Invalid(match self.encoding {
                        TextEncoding::Windows1252 | TextEncoding::Utf8 => {
                            DecodeError::NotWindows1252 { byte: 0 }
                        }
                        TextEncoding::Utf16Le | TextEncoding::Utf16Be => DecodeError::InvalidUtf16,
                        TextEncoding::Utf32Le | TextEncoding::Utf32Be => DecodeError::InvalidUtf32,
                    }));
                }
            }
        }
    }

    /// Notes non-ASCII text, after which a switch to Windows-1252 is no longer possible.
    fn note_text(&mut self, text: &[u8]) {
        if !self.seen_non_ascii && !text.is_ascii() {
            self.seen_non_ascii = true;
        }
    }
}

/// How many bytes of the file the decoded `text` came from, had it been decoded from
/// `encoding`: what turns a place in the text (a row's end) into a place in the file, which a
/// resumed upload starts from.
///
/// Exact, because each encoding maps every character to a fixed number of the file's bytes:
/// UTF-8 its own, Windows-1252 one, UTF-16 two per code unit (four for a character past
/// U+FFFF, whose UTF-8 form is the only one of four bytes), UTF-32 four. Free for UTF-8, the
/// common case; a counting pass over the text for the others, which cost far more to convert.
pub fn source_len(text: &[u8], encoding: TextEncoding) -> u64 {
    // A character's first byte: anything but a continuation byte (0x80 to 0xBF).
    let chars = || text.iter().filter(|&&b| (b as i8) >= -0x40).count() as u64;
    match encoding {
        TextEncoding::Utf8 => text.len() as u64,
        TextEncoding::Windows1252 => chars(),
        TextEncoding::Utf16Le | TextEncoding::Utf16Be => {
            2 * chars() + 2 * text.iter().filter(|&&b| b >= 0xF0).count() as u64
        }
        TextEncoding::Utf32Le | TextEncoding::Utf32Be => 4 * chars(),
    }
}

/// How a decoder reads on from a row's end, for a resumed upload: enough to make a decoder that
/// reads the rest of the file exactly as the first one would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Decoding {
    /// UTF-8 without a byte order mark, and only ASCII so far: Windows-1252 is still possible.
    Undecided,
    /// This encoding, for good (UTF-8 after a mark or after non-ASCII UTF-8 text).
    Settled(TextEncoding),
}

impl Decoder {
    /// How this decoder would read on. Taken at the end of a step, when the row end it is
    /// stored with may lie a little earlier: the same, because the only change of mind (UTF-8
    /// to Windows-1252, or to settled UTF-8) follows ASCII text, which both read alike.
    pub fn decoding(&self) -> Decoding {
        if self.may_fall_back && !self.seen_non_ascii && self.encoding == TextEncoding::Utf8 {
            Decoding::Undecided
        } else {
            Decoding::Settled(self.encoding)
        }
    }

    /// A decoder that reads on as `decoding` says, at a character boundary.
    pub fn resume(decoding: Decoding) -> Self {
        match decoding {
            Decoding::Undecided => Self::new(None),
            Decoding::Settled(TextEncoding::Windows1252) => Self {
                encoding: TextEncoding::Windows1252,
                may_fall_back: false,
                seen_non_ascii: true,
                pending: Vec::with_capacity(4),
                converter: Some(WINDOWS_1252.new_decoder_without_bom_handling()),
                out: Vec::new(),
            },
            Decoding::Settled(encoding) => Self::new(Some(encoding)),
        }
    }
}

/// What a UTF-8 decoder would make of the character starting `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sequence {
    /// A complete, valid multi-byte character.
    Complete,
    /// A valid start that needs more bytes than `bytes` has.
    Incomplete,
    /// Not a multi-byte UTF-8 character.
    Invalid,
}

/// Whether `bytes` start with a multi-byte UTF-8 character: complete, cut short, or not one.
/// Only the lead bytes 0xC2 to 0xF4 can start one.
fn utf8_sequence(bytes: &[u8]) -> Sequence {
    let len = match bytes.first() {
        Some(0xC2..=0xDF) => 2,
        Some(0xE0..=0xEF) => 3,
        Some(0xF0..=0xF4) => 4,
        _ => return Sequence::Invalid,
    };
    match std::str::from_utf8(&bytes[..len.min(bytes.len())]) {
        Ok(_) if bytes.len() >= len => Sequence::Complete,
        Err(e) if e.error_len().is_none() => Sequence::Incomplete,
        _ => Sequence::Invalid,
    }
}

#[cfg(test)]
mod tests;
