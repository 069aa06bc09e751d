//! The upload's bytes before decoding: the size limit, the checksum, a first look at the
//! content (bad uploads are refused before anything is written) and the byte order mark.
//!
//! [`Intake`] is the first stage of `reader::FileReader`. It sees every byte exactly as the
//! client sent it, so the byte count and the SHA-256 it keeps are what the finish message is
//! checked against. It holds back only the first `SNIFF_BYTES` of the file, and only until the
//! verdict on them is in; after that every chunk passes through without a copy.
//!
//! A refusal here ([`IntakeError`]) ends the upload before the text is decoded: `TooLarge`
//! becomes an ERROR_UNKNOWN import and a RESOURCE_EXHAUSTED answer, `NotCsv` removes the import
//! as if it never was and answers INVALID_ARGUMENT (see `ending::decide`).

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};

use super::decoder::{TextEncoding, sniff_bom};

/// How much of the file is looked at before deciding that it is CSV text. Clients may send
/// tiny chunks, so the first bytes are held until this many arrived (or the file ended).
pub const SNIFF_BYTES: usize = 8 * 1024;

/// Why the intake refuses an upload. The messages go to the client as they are, so they say
/// what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// More bytes arrived than `--max-upload-bytes` allows. Raised by the chunk that crosses
    /// the limit, so a client that lies about the size (or sends none) is cut off as soon as
    /// it goes over, not at its finish message.
    #[error(
        "the file is larger than the limit of {limit} bytes; split it into smaller files and \
         import each"
    )]
    TooLarge {
        /// The limit, in bytes, as configured.
        limit: u64,
    },
    /// The first bytes are a known binary format, or hold NUL bytes: a workbook, an archive, a
    /// PDF, text in a wide encoding without its mark. Decided from the first `SNIFF_BYTES` only.
    #[error(
        "the file is not CSV text: it looks like {what}; open it in a spreadsheet and save it as \
         CSV (in Excel: File > Save As > CSV UTF-8), then upload that file"
    )]
    NotCsv {
        /// What the content looks like, in plain words ("an Excel workbook (.xlsx)").
        what: String,
    },
}

/// Bytes ready for decoding, and the encoding the byte order mark announced (if any).
pub type Ready<'a> = (&'a [u8], Option<TextEncoding>);

/// Receives the chunks of one upload.
///
/// Whatever the chunking, the bytes handed out (and so the rows read) are the same, and the
/// verdict on the content is the same: it always looks at exactly the first `window` bytes.
/// Memory is the held window at most; it is dropped at the push after it was handed out.
pub struct Intake {
    /// The most bytes the upload may have: `ImportConfig::max_upload_bytes`.
    limit: u64,
    /// How many first bytes are looked at: `SNIFF_BYTES`, smaller in tests.
    window: usize,
    /// Every byte that arrived, including those of the chunk that crossed the limit.
    received: u64,
    /// The SHA-256 of the bytes that passed (`hashed` of them), BOM included, as the client
    /// computes it. Held bytes are hashed once they pass, so that a row's end found in them
    /// can still be marked.
    hasher: Sha256,
    /// Bytes hashed so far: all those received, except the ones held.
    hashed: u64,
    /// The hash as it was at a row's end (an offset in the file), for a resumed upload to go on
    /// from: taken as the bytes pass, since the hash cannot go back.
    snapshot: Option<(u64, Sha256)>,
    /// The first bytes, held until enough of the content was looked at.
    held: Vec<u8>,
    /// The first bytes were looked at and passed: from now on chunks pass straight through.
    sniffed: bool,
    /// The bytes in `held` were handed out: drop them at the next push.
    released: bool,
    /// The encoding the byte order mark announced, once the first bytes were looked at.
    bom: Option<TextEncoding>,
}

impl Intake {
    /// An intake for a file of at most `limit` bytes, that looks at the first `SNIFF_BYTES`.
    pub fn new(limit: u64) -> Self {
        Self::with_window(limit, SNIFF_BYTES)
    }

    /// An intake that looks at the first `window` bytes: tests use a small one, so that short
    /// files reach the code that runs after it.
    pub fn with_window(limit: u64, window: usize) -> Self {
        Self {
            limit,
            window: window.max(1),
            received: 0,
            hasher: Sha256::new(),
            hashed: 0,
            snapshot: None,
            held: Vec::new(),
            sniffed: false,
            released: false,
            bom: None,
        }
    }

    /// How many bytes arrived so far, counted even past the limit: the import's
    /// `bytes_received`, and what the finish message's `size_bytes` is checked against.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Takes the next chunk and returns the bytes ready for decoding (none while the first
    /// bytes are held, then everything) and the encoding of the byte order mark, if any.
    ///
    /// A first chunk at least as long as the window is looked at in place and passed on
    /// without a copy; smaller first chunks are gathered in `held`. The encoding is returned
    /// with every later chunk too, so that the caller may create its decoder at any of them.
    pub fn push<'a>(&'a mut self, chunk: &'a [u8]) -> Result<Ready<'a>, IntakeError> {
        // Counted even past the limit: the import says how much arrived.
        self.received += chunk.len() as u64;
        if self.received > self.limit {
            return Err(IntakeError::TooLarge { limit: self.limit });
        }
        if self.released {
            self.held = Vec::new();
            self.released = false;
        }
        if self.sniffed {
            return Ok((chunk, self.bom));
        }
        if self.held.is_empty() && chunk.len() >= self.window {
            sniff(&chunk[..self.window])?;
            self.sniffed = true;
            return Ok((self.strip_bom(chunk), self.bom));
        }
        self.held.extend_from_slice(chunk);
        // The verdict waits for the whole window, so that it (and its message) is the same
        // however the first bytes were cut.
        if self.held.len() < self.window {
            return Ok((&[], None));
        }
        self.release()
    }

    /// Looks at the first bytes held so far, for a stream that ended before the window was
    /// full: a refusal then says what the content is rather than that the upload was cut.
    /// Changes nothing: the held bytes stay held.
    pub fn check_held(&self) -> Result<(), IntakeError> {
        if self.sniffed {
            Ok(())
        } else {
            sniff(self.head())
        }
    }

    /// The file ended: returns the bytes still held. A file shorter than the window is looked
    /// at here, so this can still refuse it as not CSV.
    pub fn finish(&mut self) -> Result<Ready<'_>, IntakeError> {
        if self.sniffed {
            return Ok((&[], self.bom));
        }
        self.release()
    }

    /// Looks at the held bytes and, if they pass, hands them out without their byte order
    /// mark. They stay in `held` until the next push, since the caller borrows them.
    fn release(&mut self) -> Result<Ready<'_>, IntakeError> {
        sniff(self.head())?;
        self.sniffed = true;
        self.released = true;
        let bom = sniff_bom(&self.held);
        self.bom = bom.map(|(encoding, _)| encoding);
        Ok((&self.held[bom.map_or(0, |(_, len)| len)..], self.bom))
    }

    /// The bytes looked at: exactly the first `window`, whatever the chunks were.
    fn head(&self) -> &[u8] {
        &self.held[..self.held.len().min(self.window)]
    }

    /// Records and removes the byte order mark at the start of the file.
    fn strip_bom<'a>(&mut self, head: &'a [u8]) -> &'a [u8] {
        let bom = sniff_bom(head);
        self.bom = bom.map(|(encoding, _)| encoding);
        &head[bom.map_or(0, |(_, len)| len)..]
    }

    /// The SHA-256 of every byte received. Computed on a copy of the hasher, so it can be read
    /// at any point without ending the intake; bytes still held are added to the copy.
    pub fn sha256(&self) -> [u8; 32] {
        let mut hasher = self.hasher.clone();
        if self.hashed < self.received && !self.sniffed {
            hasher.update(&self.held[self.hashed as usize..]);
        }
        hasher.finalize().into()
    }

    /// Hashes the bytes that the last `push` (given its `chunk`) or `finish` let pass, and
    /// keeps the hash as it stands at `mark` (the last row's end, an offset in the file) when
    /// the mark lies within them or at their end. Called once after each of them.
    pub fn hash_passed(&mut self, chunk: &[u8], mark: Option<u64>) {
        let unhashed = (self.received - self.hashed) as usize;
        let passed: &[u8] = if self.released {
            &self.held
        } else if self.sniffed {
            chunk
        } else {
            return;
        };
        let bytes = &passed[passed.len().saturating_sub(unhashed)..];
        let start = self.hashed;
        match mark {
            Some(mark)
                if (start..=start + bytes.len() as u64).contains(&mark)
                    && self.snapshot.as_ref().is_none_or(|(at, _)| *at != mark) =>
            {
                let (before, after) = bytes.split_at((mark - start) as usize);
                self.hasher.update(before);
                self.snapshot = Some((mark, self.hasher.clone()));
                self.hasher.update(after);
            }
            _ => self.hasher.update(bytes),
        }
        self.hashed += bytes.len() as u64;
    }

    /// The hash's state at `offset`, serialized, if it was kept there (see `hash_passed`).
    pub fn state_at(&self, offset: u64) -> Option<Vec<u8>> {
        let (at, hasher) = self.snapshot.as_ref()?;
        (*at == offset).then(|| hasher.serialize().to_vec())
    }

    /// The encoding the file's byte order mark names, once its first bytes were looked at.
    pub fn bom(&self) -> Option<TextEncoding> {
        self.bom
    }

    /// The length of the byte order mark the file starts with: 0 when it has none, or while
    /// its first bytes are held.
    pub fn bom_len(&self) -> u64 {
        self.bom.map_or(0, |encoding| match encoding {
            TextEncoding::Utf8 => 3,
            TextEncoding::Utf16Le | TextEncoding::Utf16Be => 2,
            TextEncoding::Utf32Le | TextEncoding::Utf32Be => 4,
            TextEncoding::Windows1252 => 0,
        })
    }

    /// An intake that goes on at `offset`, a row's end, of a file whose first bytes were
    /// already looked at, with the hash as it was there (`state_at`). `None` for a state that
    /// is not one.
    pub fn resume(
        limit: u64,
        offset: u64,
        bom: Option<TextEncoding>,
        state: &[u8],
    ) -> Option<Self> {
        let hasher = Sha256::deserialize(state.try_into().ok()?).ok()?;
        Some(Self {
            limit,
            window: SNIFF_BYTES,
            received: offset,
            hasher: hasher.clone(),
            hashed: offset,
            snapshot: Some((offset, hasher)),
            held: Vec::new(),
            sniffed: true,
            released: false,
            bom,
        })
    }
}

/// The door's verdict on a whole file before a byte of it is sent: its `size` against `limit`,
/// and its first bytes (`head`, at least the first `SNIFF_BYTES` or the whole file) as
/// [`Intake`] looks at them. The console asks it before it streams a file, so that a refusal
/// shows at once on the form; the upload itself still makes both checks as its bytes come.
pub fn check_before(limit: u64, size: u64, head: &[u8]) -> Result<(), IntakeError> {
    if size > limit {
        return Err(IntakeError::TooLarge { limit });
    }
    sniff(&head[..head.len().min(SNIFF_BYTES)])
}

/// Refuses what is plainly not CSV text: known binary formats by their magic numbers (the
/// `infer` crate knows a few hundred) and NUL bytes in a file without a UTF-16 byte order mark.
///
/// A UTF-16 or UTF-32 byte order mark passes at once: such text is full of NUL bytes, and the
/// decoder checks it. `infer` takes a `#!` line for a shell script, which a CSV file may well
/// start with, so that one match is ignored. NUL bytes are named by their pattern (wide text
/// without a mark, or binary data), so that the message points at the right fix.
fn sniff(head: &[u8]) -> Result<(), IntakeError> {
    if matches!(
        sniff_bom(head),
        Some((
            TextEncoding::Utf16Le
                | TextEncoding::Utf16Be
                | TextEncoding::Utf32Le
                | TextEncoding::Utf32Be,
            _
        ))
    ) {
        return Ok(());
    }
    if let Some(kind) = infer::get(head)
        && kind.mime_type() != "text/x-shellscript"
    {
        return Err(IntakeError::NotCsv {
            what: describe(kind),
        });
    }
    if head.contains(&0) {
        // Text in a wide encoding without its mark: ASCII characters with a NUL beside each
        // (UTF-16), or with three (UTF-32).
        let nuls_at = |offset: usize, step: usize| {
            let nuls = head
                .iter()
                .skip(offset)
                .step_by(step)
                .filter(|&&b| b == 0)
                .count();
            let slots = head.len().saturating_sub(offset).div_ceil(step);
            slots >= 2 && nuls * 10 >= slots * 9
        };
        let utf32 = (nuls_at(1, 4) && nuls_at(2, 4) && nuls_at(3, 4))
            || (nuls_at(0, 4) && nuls_at(1, 4) && nuls_at(2, 4));
        let what = if utf32 {
            "UTF-32 text without a byte order mark"
        } else if nuls_at(0, 2) || nuls_at(1, 2) {
            "UTF-16 text without a byte order mark"
        } else {
            "binary data (it contains NUL bytes)"
        };
        return Err(IntakeError::NotCsv {
            what: what.to_owned(),
        });
    }
    Ok(())
}

/// What `infer` found, in words a spreadsheet user knows: the formats people upload by
/// mistake by name, any other by its kind, MIME type and extension.
fn describe(kind: infer::Type) -> String {
    if kind.mime_type() == "application/x-ole-storage" {
        // The container of .xls and .doc files; telling them apart needs the whole file.
        return "an Excel 97-2003 workbook (.xls) or another old Office file".to_owned();
    }
    let named = match kind.extension() {
        "xlsx" => "an Excel workbook (.xlsx)",
        "xls" => "an Excel 97-2003 workbook (.xls)",
        "ods" => "an OpenDocument spreadsheet (.ods)",
        "zip" => "a ZIP archive (an .xlsx or .ods workbook is one)",
        "pdf" => "a PDF document",
        "rtf" => "an RTF document (.rtf)",
        "gz" => "a gzip-compressed file",
        "xml" => "an XML document (such as an Excel 2003 XML spreadsheet)",
        "html" => "an HTML page",
        "exe" | "dll" | "elf" | "mach" => "a program",
        _ => "",
    };
    if !named.is_empty() {
        return named.to_owned();
    }
    let article = match kind.matcher_type() {
        infer::MatcherType::Image => "an image",
        infer::MatcherType::Archive => "an archive",
        infer::MatcherType::Doc | infer::MatcherType::Book => "a document",
        infer::MatcherType::Audio => "an audio file",
        infer::MatcherType::Video => "a video",
        infer::MatcherType::Font => "a font",
        _ => "a file",
    };
    format!("{article} ({}, .{})", kind.mime_type(), kind.extension())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the intake says a file with these first bytes looks like, pushed whole and then
    /// finished: the refusal may come at either step.
    fn not_csv(head: &[u8]) -> String {
        let mut intake = Intake::new(u64::MAX);
        let first = intake.push(head).err();
        match first.or_else(|| intake.finish().err()).expect("refused") {
            IntakeError::NotCsv { what } => what,
            other => panic!("{other:?}"),
        }
    }

    /// The formats people upload by mistake get their own words; wide text without its mark
    /// is told apart from binary data.
    #[test]
    fn binary_formats_are_named() {
        assert_eq!(not_csv(b"%PDF-1.7\n%\xE2\xE3"), "a PDF document");
        assert!(not_csv(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").starts_with("an image (image/png"));
        assert!(not_csv(b"PK\x03\x04\x14\0\x06\0").contains("ZIP"));
        assert_eq!(not_csv(b"\x1f\x8b\x08\0\0\0"), "a gzip-compressed file");
        assert!(not_csv(b"e\0m\0a\0i\0l\0").contains("UTF-16 text without"));
        assert!(not_csv(b"e\0\0\0m\0\0\0a\0\0\0i\0\0\0").contains("UTF-32 text without"));
        assert!(not_csv(b"\0\0\0e\0\0\0m\0\0\0a\0\0\0i").contains("UTF-32 text without"));
        assert_eq!(
            not_csv(b"{\\rtf1\\ansi\\deff0 hello}"),
            "an RTF document (.rtf)"
        );
        assert!(not_csv(b"email,name\nada@x.io,A\0da\n").contains("NUL"));
    }

    /// Chunks smaller than, equal to and larger than the window give the same bytes out, the
    /// mark removed and reported once.
    #[test]
    fn text_passes_whatever_the_chunking_and_loses_its_bom() {
        let file = [
            b"\xEF\xBB\xBF".as_slice(),
            b"email\n".as_slice(),
            &b"a@example.com\n".repeat(1000),
        ]
        .concat();
        for chunk in [1, 2, 3, 5, 4096, SNIFF_BYTES, file.len()] {
            let mut intake = Intake::new(u64::MAX);
            let mut out = Vec::new();
            let mut bom = None;
            for piece in file.chunks(chunk) {
                let (ready, mark) = intake.push(piece).unwrap();
                out.extend_from_slice(ready);
                bom = bom.or(mark);
            }
            let (ready, mark) = intake.finish().unwrap();
            out.extend_from_slice(ready);
            assert_eq!(out, &file[3..], "chunk size {chunk}");
            assert_eq!(bom.or(mark), Some(TextEncoding::Utf8));
            assert_eq!(intake.bytes_received(), file.len() as u64);
        }
    }

    /// NUL bytes are expected in UTF-16: its mark lets them pass the content check.
    #[test]
    fn utf16_with_its_mark_is_text() {
        let mut intake = Intake::new(u64::MAX);
        assert_eq!(intake.push(b"\xFF\xFEe\0m\0").unwrap(), (&b""[..], None));
        assert_eq!(
            intake.finish().unwrap(),
            (&b"e\0m\0"[..], Some(TextEncoding::Utf16Le))
        );
    }

    /// The chunk that crosses the limit is refused, and still counted in the bytes received.
    #[test]
    fn the_limit_counts_every_byte() {
        let mut intake = Intake::new(10);
        assert!(intake.push(b"email\n").is_ok());
        assert_eq!(
            intake.push(b"a@b.io\n"),
            Err(IntakeError::TooLarge { limit: 10 })
        );
        assert_eq!(intake.bytes_received(), 13);
    }

    /// The checksum is of the bytes as sent, across chunks, whatever is held back.
    #[test]
    fn the_checksum_covers_the_whole_file() {
        let mut intake = Intake::new(u64::MAX);
        intake.push(b"email\n").unwrap();
        intake.push(b"a@b.io\n").unwrap();
        assert_eq!(
            hex::encode(intake.sha256()),
            hex::encode(Sha256::digest(b"email\na@b.io\n"))
        );
    }
}
