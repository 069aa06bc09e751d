//! The whole import (reader, batches, the store's unique indexes and conflict reporting) on
//! files built from arbitrary bytes, against the reference model of `tests/model`: the row
//! errors and counters must be exactly those of a row-by-row reading, whatever the batch size
//! (1 to 8 rows, from the first byte), the conflict policy (from its high bits) and however the
//! file is cut; a dry run first must give the same.
//!
//! Runs the real `Importer` on a SQLite file in a temporary directory, in this process.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run import_model --sanitizer none -- -max_total_time=600`

#![no_main]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use bulk_import::domain::{
    AccountId, Caller, ConflictPolicy, Filename, ImportId, ImportType, NewImport,
};
use bulk_import::import::pipeline::events::{FinishCheck, UploadEvent};
use bulk_import::import::{ImportConfig, Importer};
use bulk_import::store::{self, OpenOptions};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/model/mod.rs"]
mod model;

struct Harness {
    runtime: tokio::runtime::Runtime,
    /// One importer per batch size, on one database.
    importers: Vec<Importer>,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let store = runtime
            .block_on(store::open(&url, OpenOptions::default()))
            .unwrap();
        let importers = (1..=8)
            .map(|rows| {
                let importer = Importer::new(ImportConfig {
                    batch_rows: Some(rows),
                    ..ImportConfig::default()
                });
                importer.set_store(store.clone());
                importer
            })
            .collect();
        Harness {
            runtime,
            importers,
            _dir: dir,
        }
    })
}

static ACCOUNTS: AtomicUsize = AtomicUsize::new(0);

async fn import(
    importer: &Importer,
    account: &AccountId,
    file: Vec<u8>,
    cut: usize,
    policy: model::Policy,
    validate_only: bool,
) -> model::Outcome {
    let new = NewImport {
        account_id: account.clone(),
        import_id: ImportId::generate(),
        kind: ImportType::Users,
        filename: Filename::parse("fuzz.csv").unwrap(),
        created_by: String::new(),
        validate_only,
        on_conflict: match policy {
            model::Policy::Error => ConflictPolicy::Error,
            model::Policy::Skip => ConflictPolicy::Skip,
            model::Policy::Update => ConflictPolicy::Update,
        },
        retry_of: None,
        invitations: Default::default(),
        resumable: false,
        resume_offset: 0,
    };
    let mut events = vec![Ok(UploadEvent::Metadata(new))];
    events.extend(
        file.chunks(cut.max(1))
            .map(|c| Ok(UploadEvent::Chunk(bytes::Bytes::copy_from_slice(c)))),
    );
    events.push(Ok(UploadEvent::Finish(FinishCheck::default())));
    let imported = importer
        .upload(Caller::open(), futures::stream::iter(events))
        .await
        .expect("the import completes");
    let errors = importer
        .row_errors(&imported, None, 100_000)
        .await
        .unwrap();
    let c = imported.counters;
    model::Outcome {
        rows_processed: c.rows_processed as i64,
        rows_imported: c.rows_imported as i64,
        rows_failed: c.rows_failed as i64,
        rows_skipped: c.rows_skipped as i64,
        rows_updated: c.rows_updated as i64,
        errors: errors
            .iter()
            .map(|stored| {
                let e = &stored.error;
                let code = e.code.as_str().to_owned();
                let named = (code == "DUPLICATE_IN_FILE")
                    .then(|| model::named_row(&e.message))
                    .flatten();
                let column = e.column.map(|c| c.name()).unwrap_or_default().to_owned();
                (e.row_number as i64, column, code, named)
            })
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let (batch_rows, rows) = model::rows_from_bytes(data);
    // A few rows already in the account, then the file under test.
    let split = rows.len() / 4;
    let (existing, rows) = rows.split_at(split);
    let (expected_first, held) = model::import(&Default::default(), existing);
    // The first byte's high bits pick the policy of the import under test.
    let policy = match data.first().map_or(0, |b| (b >> 3) % 3) {
        0 => model::Policy::Error,
        1 => model::Policy::Skip,
        _ => model::Policy::Update,
    };
    let (expected, _) = model::import_with(&held, rows, policy);
    let harness = harness();
    let importer = &harness.importers[batch_rows - 1];
    let account =
        AccountId::parse(&format!("fuzz-{}", ACCOUNTS.fetch_add(1, Ordering::SeqCst))).unwrap();
    let cut = data.get(1).map_or(1, |b| usize::from(*b) + 1);
    harness.runtime.block_on(async {
        let first = import(importer, &account, model::csv(existing), 1 << 20, model::Policy::Error, false).await;
        assert_eq!(first, expected_first);
        let dry = import(importer, &account, model::csv(rows), cut, policy, true).await;
        assert_eq!(dry, expected, "the dry run");
        let second = import(importer, &account, model::csv(rows), cut, policy, false).await;
        assert_eq!(second, expected);
    });
});
