//! The upload reader (intake, decoder, delimiter, parser, validator) fed arbitrary bytes in
//! arbitrary chunkings: it must not panic, must hold bounded memory (asserted inside
//! `check::read`), and must give the same rows, errors and ending however the bytes are cut.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run reader --sanitizer none -- -max_total_time=600`
//! (see the README's "Fuzzing" section).

#![no_main]

use bulk_import::import::parser::Limits;
use bulk_import::import::reader::check;
use libfuzzer_sys::fuzz_target;

/// Small limits, so that short inputs reach them.
const LIMITS: Limits = Limits {
    max_record_bytes: 256,
    max_fields: 16,
};

fuzz_target!(|data: &[u8]| {
    // The first byte says how many cut offsets follow (two bytes each); the rest is the file.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let cut_bytes = (usize::from(count % 16) * 2).min(rest.len());
    let (cuts, file) = rest.split_at(cut_bytes);
    let cuts: Vec<usize> = cuts
        .chunks(2)
        .map(|pair| usize::from(u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .map(|offset| offset % (file.len() + 1))
        .collect();

    let whole = check::read(file, &[], LIMITS);
    assert_eq!(check::read(file, &cuts, LIMITS), whole);
    if file.len() <= 512 {
        let bytewise: Vec<usize> = (1..file.len()).collect();
        assert_eq!(check::read(file, &bytewise, LIMITS), whole);
    }
});
