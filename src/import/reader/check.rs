//! Reading a whole file in a given chunking, with a comparable outcome.

use super::*;
use crate::import::checkpoint::Checkpoint;

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

/// Reads `file` as a resumable upload that broke at `cut` and was resumed: a reader is fed
/// the bytes before `cut` (in pieces cut at `cuts`), its checkpoint is stored (as text) and
/// read back, and a new reader is fed the file from the checkpoint's offset (cut at `cuts`
/// too) and finished. The outcome is the first reader's rows, which all lie before the
/// checkpoint, then the second's; with the SHA-256 the second checked, and the offset.
///
/// Without a checkpoint (no header read yet, or the first reader refused the file) it is what
/// the server does: a reader that refused ends the file there, else the upload starts again.
pub fn resumed(
    file: &[u8],
    cut: usize,
    cuts: &[usize],
    limits: Limits,
) -> (Outcome, [u8; 32], Option<u64>) {
    let pieces = |from: usize, to: usize| {
        let mut offsets: Vec<usize> = cuts
            .iter()
            .copied()
            .filter(|&c| c > from && c < to)
            .collect();
        offsets.push(from);
        offsets.push(to);
        offsets.sort_unstable();
        offsets.dedup();
        offsets
    };
    let cut = cut.min(file.len());
    let mut first = FileReader::with_intake(Intake::with_window(u64::MAX, 16), limits);
    let mut rows = Collect::default();
    for pair in pieces(0, cut).windows(2) {
        if let Err(e) = first.push(&file[pair[0]..pair[1]], &mut rows) {
            let format = first.format();
            let sha = first.sha256();
            return (
                Outcome {
                    rows: rows.0,
                    end: Err(e),
                    format,
                },
                sha,
                None,
            );
        }
    }
    let checkpoint = first
        .checkpoint()
        .map(|c| Checkpoint::decode(&c.encode()).expect("a checkpoint reads back"));
    let (mut second, from) = match &checkpoint {
        Some(c) => (
            FileReader::resume(u64::MAX, limits, c).expect("a checkpoint resumes"),
            c.offset as usize,
        ),
        None => {
            assert!(rows.0.is_empty(), "rows without a checkpoint");
            (
                FileReader::with_intake(Intake::with_window(u64::MAX, 16), limits),
                0,
            )
        }
    };
    let mut end = Ok(());
    for pair in pieces(from, file.len()).windows(2) {
        end = second.push(&file[pair[0]..pair[1]], &mut rows);
        if end.is_err() {
            break;
        }
    }
    if end.is_ok() {
        end = second.finish(&mut rows);
    }
    let outcome = Outcome {
        rows: rows.0,
        end,
        format: second.format(),
    };
    (outcome, second.sha256(), checkpoint.map(|c| c.offset))
}
