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

use encoding_rs::{Decoder as RsDecoder, DecoderResult, UTF_16BE, UTF_16LE, WINDOWS_1252};

pub use crate::domain::TextEncoding;

/// A byte that cannot be decoded. The decoder has emitted everything before it, so the
/// parser's current row is the row of the byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not UTF-8, and not clearly Windows-1252 either (non-ASCII UTF-8 came before).
    InvalidUtf8 { byte: u8 },
    /// Read as Windows-1252, but the byte is undefined there.
    NotWindows1252 { byte: u8 },
    /// Read as Windows-1252, but a valid UTF-8 sequence follows: two encodings in one file.
    MixedEncodings,
    /// An unpaired surrogate in UTF-16.
    InvalidUtf16,
    /// A UTF-32 unit that is no character (a surrogate, or past U+10FFFF), or a file that ends
    /// inside a unit.
    InvalidUtf32,
}

impl DecodeError {
    /// The message for an ERROR_PARSING import.
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
    Invalid(DecodeError),
    Emit(E),
}

/// The byte order marks this decoder understands, and what they mean.
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

pub struct Decoder {
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
    out: Vec<u8>,
}

impl Decoder {
    /// A decoder for a file whose byte order mark (if any) was `bom`.
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
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
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
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
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
                emit(&self.out).map_err(Stop::Emit)?;
                return Err(Stop::Invalid(DecodeError::InvalidUtf32));
            }
        }
        emit(&self.out).map_err(Stop::Emit)?;
        self.pending.extend_from_slice(rest);
        if last && !self.pending.is_empty() {
            return Err(Stop::Invalid(DecodeError::InvalidUtf32));
        }
        Ok(())
    }

    fn decode_utf8<E>(
        &mut self,
        mut input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
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
                    emit(&pending).map_err(Stop::Emit)?;
                }
                Err(_) => return self.fall_back(&pending, input, last, emit),
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => {
                self.note_text(input);
                emit(input).map_err(Stop::Emit)?;
            }
            Err(e) => {
                let (valid, rest) = input.split_at(e.valid_up_to());
                self.note_text(valid);
                emit(valid).map_err(Stop::Emit)?;
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
    fn fall_back<E>(
        &mut self,
        bad: &[u8],
        rest: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
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

    fn decode_windows_1252<E>(
        &mut self,
        input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
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
    fn windows_1252_checked<E>(
        &mut self,
        input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
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

    /// Runs `encoding_rs` over `input` and emits the UTF-8 it produces.
    fn convert<E>(
        &mut self,
        mut input: &[u8],
        last: bool,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
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
            emit(text).map_err(Stop::Emit)?;
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

    fn note_text(&mut self, text: &[u8]) {
        if !self.seen_non_ascii && !text.is_ascii() {
            self.seen_non_ascii = true;
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
mod tests {
    use super::*;

    /// Decodes `input` cut into chunks of `size`; returns the text and the first error.
    fn decode(
        input: &[u8],
        bom: Option<TextEncoding>,
        size: usize,
    ) -> (String, Option<DecodeError>, TextEncoding) {
        let mut decoder = Decoder::new(bom);
        let mut text = Vec::new();
        let mut emit = |t: &[u8]| -> Result<(), ()> {
            text.extend_from_slice(t);
            Ok(())
        };
        let invalid = |result: Result<(), Stop<()>>| match result {
            Ok(()) => None,
            Err(Stop::Invalid(e)) => Some(e),
            Err(Stop::Emit(())) => unreachable!("emit never fails here"),
        };
        let mut error = None;
        let pieces: Vec<&[u8]> = input.chunks(size.max(1)).collect();
        for piece in &pieces {
            error = invalid(decoder.decode(piece, false, &mut emit));
            if error.is_some() {
                break;
            }
        }
        if error.is_none() {
            error = invalid(decoder.decode(&[], true, &mut emit));
        }
        (String::from_utf8(text).unwrap(), error, decoder.encoding())
    }

    fn every_chunking(
        input: &[u8],
        bom: Option<TextEncoding>,
    ) -> (String, Option<DecodeError>, TextEncoding) {
        let whole = decode(input, bom, input.len());
        for size in 1..input.len() {
            assert_eq!(decode(input, bom, size), whole, "chunks of {size}");
        }
        whole
    }

    #[test]
    fn utf8_passes_through_whatever_the_cuts() {
        let text = "email,name\nzoë@x.io,Zoë 😀 Łukasz\n";
        assert_eq!(
            every_chunking(text.as_bytes(), None),
            (text.to_owned(), None, TextEncoding::Utf8)
        );
    }

    #[test]
    fn windows_1252_is_recognised_when_it_is_clearly_that() {
        let text = b"email,name\nrene@x.io,Ren\xE9e \x80 \x93quoted\x94\n";
        assert_eq!(
            every_chunking(text, None),
            (
                "email,name\nrene@x.io,Renée € “quoted”\n".to_owned(),
                None,
                TextEncoding::Windows1252
            )
        );
    }

    #[test]
    fn windows_1252_letters_that_look_like_utf8_lead_bytes_survive_any_cut() {
        // Found by the fuzzer: Æ (0xC6) could start a UTF-8 character, so one at the end of a
        // chunk waits for the next; a run of them must keep its order.
        let text = b"a,Ren\xE9e\nb,\xC6\xC6\xC6\xC6x\xC3\n";
        assert_eq!(
            every_chunking(text, None),
            (
                "a,Renée\nb,ÆÆÆÆxÃ\n".to_owned(),
                None,
                TextEncoding::Windows1252
            )
        );
    }

    #[test]
    fn a_bad_byte_after_utf8_text_is_an_error() {
        let (text, error, encoding) = every_chunking("a,zoë\nb,\u{e9}".as_bytes(), None);
        assert_eq!(
            (text.as_str(), error, encoding),
            ("a,zoë\nb,é", None, TextEncoding::Utf8)
        );
        let (text, error, _) = every_chunking(b"a,zo\xC3\xAB\nb,x\xE9y\n", None);
        assert_eq!(text, "a,zoë\nb,x");
        assert_eq!(error, Some(DecodeError::InvalidUtf8 { byte: 0xE9 }));
    }

    #[test]
    fn windows_1252_stops_at_undefined_bytes_and_utf8_sequences() {
        let (text, error, _) = every_chunking(b"a,Ren\xE9e\nb,\x81\n", None);
        assert_eq!(text, "a,Renée\nb,");
        assert_eq!(error, Some(DecodeError::NotWindows1252 { byte: 0x81 }));
        let (text, error, _) = every_chunking(b"a,Ren\xE9e\nb,Zo\xC3\xAB\n", None);
        assert_eq!(text, "a,Renée\nb,Zo");
        assert_eq!(error, Some(DecodeError::MixedEncodings));
    }

    #[test]
    fn utf16_is_converted_as_it_streams() {
        let text = "email\tname\r\nzoë@x.io\tZoë 😀\r\n";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(every_chunking(&le, Some(TextEncoding::Utf16Le)).0, text);
        assert_eq!(every_chunking(&be, Some(TextEncoding::Utf16Be)).0, text);
        // An unpaired surrogate.
        let (_, error, _) = every_chunking(b"a\x00\x00\xD8b\x00", Some(TextEncoding::Utf16Le));
        assert_eq!(error, Some(DecodeError::InvalidUtf16));
    }

    #[test]
    fn utf32_is_converted_as_it_streams() {
        let text = "email,name\r\nzoë@x.io,Zoë 😀\r\n";
        let le: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_le_bytes())
            .collect();
        let be: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_be_bytes())
            .collect();
        assert_eq!(every_chunking(&le, Some(TextEncoding::Utf32Le)).0, text);
        assert_eq!(every_chunking(&be, Some(TextEncoding::Utf32Be)).0, text);
        // A surrogate is no character; a file cut inside a unit is broken.
        let (text, error, _) = every_chunking(b"a\0\0\0\x00\xD8\0\0", Some(TextEncoding::Utf32Le));
        assert_eq!(
            (text.as_str(), error),
            ("a", Some(DecodeError::InvalidUtf32))
        );
        let (_, error, _) = every_chunking(b"a\0\0\0b\0", Some(TextEncoding::Utf32Le));
        assert_eq!(error, Some(DecodeError::InvalidUtf32));
    }

    #[test]
    fn byte_order_marks_are_recognised() {
        assert_eq!(
            sniff_bom(b"\xEF\xBB\xBFemail"),
            Some((TextEncoding::Utf8, 3))
        );
        assert_eq!(
            sniff_bom(b"\xFF\xFEe\x00"),
            Some((TextEncoding::Utf16Le, 2))
        );
        assert_eq!(
            sniff_bom(b"\xFE\xFF\x00e"),
            Some((TextEncoding::Utf16Be, 2))
        );
        assert_eq!(
            sniff_bom(b"\xFF\xFE\0\0e\0\0\0"),
            Some((TextEncoding::Utf32Le, 4))
        );
        assert_eq!(
            sniff_bom(b"\0\0\xFE\xFF\0\0\0e"),
            Some((TextEncoding::Utf32Be, 4))
        );
        assert_eq!(sniff_bom(b"email"), None);
    }
}
