//! The upload's bytes before parsing: the size limit, the checksum, a first look at the content
//! (bad uploads are refused before anything is written) and the byte order mark.

use sha2::{Digest, Sha256};

/// How much of the file is looked at before deciding that it is CSV text. Clients may send
/// tiny chunks, so the first bytes are held until this many arrived (or the file ended).
pub const SNIFF_BYTES: usize = 8 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    #[error(
        "the file is larger than the limit of {limit} bytes; split it into smaller files and \
         import each"
    )]
    TooLarge { limit: u64 },
    #[error(
        "the file is not CSV text: it looks like {what}; open it in a spreadsheet and save it as \
         CSV (in Excel: File > Save As > CSV UTF-8), then upload that file"
    )]
    NotCsv { what: String },
}

/// Receives the chunks of one upload.
pub struct Intake {
    limit: u64,
    received: u64,
    hasher: Sha256,
    /// The first bytes, held until enough of the content was looked at.
    held: Vec<u8>,
    sniffed: bool,
    /// The bytes in `held` were handed out: drop them at the next push.
    released: bool,
}

impl Intake {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            received: 0,
            hasher: Sha256::new(),
            held: Vec::new(),
            sniffed: false,
            released: false,
        }
    }

    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Takes the next chunk and returns the bytes ready for parsing: none while the first
    /// bytes are held, then everything.
    pub fn push<'a>(&'a mut self, chunk: &'a [u8]) -> Result<&'a [u8], IntakeError> {
        let received = self.received + chunk.len() as u64;
        if received > self.limit {
            return Err(IntakeError::TooLarge { limit: self.limit });
        }
        self.received = received;
        self.hasher.update(chunk);
        if self.released {
            self.held = Vec::new();
            self.released = false;
        }
        if self.sniffed {
            return Ok(chunk);
        }
        if self.held.is_empty() && chunk.len() >= SNIFF_BYTES {
            sniff(chunk)?;
            self.sniffed = true;
            return Ok(strip_bom(chunk));
        }
        self.held.extend_from_slice(chunk);
        // A known signature or a NUL byte is a verdict already; only "looks like text" needs
        // the whole sniffing window.
        sniff(&self.held)?;
        if self.held.len() < SNIFF_BYTES {
            return Ok(&[]);
        }
        self.release()
    }

    /// The file ended: returns the bytes still held.
    pub fn finish(&mut self) -> Result<&[u8], IntakeError> {
        if self.sniffed {
            return Ok(&[]);
        }
        self.release()
    }

    fn release(&mut self) -> Result<&[u8], IntakeError> {
        sniff(&self.held)?;
        self.sniffed = true;
        self.released = true;
        Ok(strip_bom(&self.held))
    }

    /// The SHA-256 of every byte received.
    pub fn sha256(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
}

/// Refuses what is plainly not CSV text: known binary formats by their magic numbers (the
/// `infer` crate knows a few hundred) and anything with NUL bytes.
fn sniff(head: &[u8]) -> Result<(), IntakeError> {
    if let Some(kind) = infer::get(head)
        && kind.mime_type() != "text/x-shellscript"
    {
        return Err(IntakeError::NotCsv {
            what: describe(kind),
        });
    }
    if head.contains(&0) {
        let utf16 = head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF");
        let what = if utf16 {
            "UTF-16 text (\"Unicode Text\"), which is not supported".to_owned()
        } else {
            "binary data (it contains NUL bytes)".to_owned()
        };
        return Err(IntakeError::NotCsv { what });
    }
    Ok(())
}

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

    fn not_csv(head: &[u8]) -> String {
        let mut intake = Intake::new(u64::MAX);
        let first = intake.push(head).err();
        match first.or_else(|| intake.finish().err()).expect("refused") {
            IntakeError::NotCsv { what } => what,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binary_formats_are_named() {
        assert_eq!(not_csv(b"%PDF-1.7\n%\xE2\xE3"), "a PDF document");
        assert!(not_csv(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").starts_with("an image (image/png"));
        assert!(not_csv(b"PK\x03\x04\x14\0\x06\0").contains("ZIP"));
        assert_eq!(not_csv(b"\x1f\x8b\x08\0\0\0"), "a gzip-compressed file");
        assert!(not_csv(b"\xFF\xFEe\0m\0").contains("UTF-16"));
        assert!(not_csv(b"email,name\nada@x.io,A\0da\n").contains("NUL"));
    }

    #[test]
    fn text_passes_whatever_the_chunking_and_loses_its_bom() {
        let file = [
            UTF8_BOM,
            b"email\n".as_slice(),
            &b"a@example.com\n".repeat(1000),
        ]
        .concat();
        for chunk in [1, 2, 3, 5, 4096, SNIFF_BYTES, file.len()] {
            let mut intake = Intake::new(u64::MAX);
            let mut out = Vec::new();
            for piece in file.chunks(chunk) {
                out.extend_from_slice(intake.push(piece).unwrap());
            }
            out.extend_from_slice(intake.finish().unwrap());
            assert_eq!(out, &file[3..], "chunk size {chunk}");
            assert_eq!(intake.bytes_received(), file.len() as u64);
        }
    }

    #[test]
    fn the_limit_counts_every_byte() {
        let mut intake = Intake::new(10);
        assert!(intake.push(b"email\n").is_ok());
        assert_eq!(
            intake.push(b"a@b.io\n"),
            Err(IntakeError::TooLarge { limit: 10 })
        );
    }

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
