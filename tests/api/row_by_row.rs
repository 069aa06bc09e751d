//! The row errors are exactly those of reading the file row by row, whatever the chunking and
//! however small the batches: the service against the reference model (`tests/model`), over
//! random files full of collisions, into accounts that already hold some of their values, under
//! every conflict policy. Each file is first checked by a dry run, whose outcome must be the
//! same, with nothing written.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::helpers::*;
use crate::model::{self, Email, Policy, ROLES, Row};

fn row() -> impl Strategy<Value = Row> {
    let email = prop_oneof![
        1 => Just(Email::Missing),
        1 => Just(Email::Invalid),
        10 => (0u8..6, any::<u8>()).prop_map(|(n, case)| Email::Pool { n, case }),
    ];
    let role = prop_oneof![6 => 0..ROLES.len() - 1, 1 => Just(ROLES.len() - 1)];
    let external_id = proptest::option::weighted(0.6, 0u8..5);
    (email, role, external_id).prop_map(|(email, role, external_id)| Row {
        email,
        role,
        external_id,
    })
}

/// A file already imported into the account, then the file under test, its chunk size, which
/// server (batch size) takes it, and under which policy.
fn case() -> impl Strategy<Value = (Vec<Row>, Vec<Row>, usize, usize, Policy)> {
    (
        proptest::collection::vec(row(), 0..6),
        proptest::collection::vec(row(), 0..40),
        1usize..200,
        0usize..BATCH_ROWS.len(),
        prop_oneof![
            Just(Policy::Error),
            Just(Policy::Skip),
            Just(Policy::Update)
        ],
    )
}

fn proto_policy(policy: Policy) -> bulk_import::proto::ConflictPolicy {
    use bulk_import::proto::ConflictPolicy as P;
    match policy {
        Policy::Error => P::Error,
        Policy::Skip => P::Skip,
        Policy::Update => P::Update,
    }
}

/// Batch sizes of the servers: every row its own batch, a few rows, and more than a file.
const BATCH_ROWS: [usize; 3] = [1, 3, 64];

static ACCOUNTS: AtomicUsize = AtomicUsize::new(0);

/// What the service says of an import, in the model's terms.
async fn outcome(
    app: &TestApp,
    account: &str,
    import: &bulk_import::proto::Import,
) -> model::Outcome {
    let errors = app.errors(account, &import.import_id).await;
    model::Outcome {
        rows_processed: import.rows_processed,
        rows_imported: import.rows_imported,
        rows_failed: import.rows_failed,
        rows_skipped: import.rows_skipped,
        rows_updated: import.rows_updated,
        errors: errors
            .iter()
            .map(|e| {
                let named = (e.code == "DUPLICATE_IN_FILE")
                    .then(|| model::named_row(&e.message))
                    .flatten();
                (e.row_number, e.column.clone(), e.code.clone(), named)
            })
            .collect(),
    }
}

fn check(backend: Backend, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let apps: Vec<TestApp> = runtime.block_on(async {
        let mut apps = Vec::new();
        for rows in BATCH_ROWS {
            apps.push(spawn_app_with(backend, |args| args.batch_rows = Some(rows)).await);
        }
        apps
    });
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(&case(), |(existing, rows, chunk_size, server, policy)| {
            let app = &apps[server];
            let account = format!("model-{}", ACCOUNTS.fetch_add(1, Ordering::SeqCst));
            let (expected_first, held) = model::import(&Default::default(), &existing);
            let (expected, _) = model::import_with(&held, &rows, policy);
            let file = model::csv(&rows);
            let (first, users_before, dry, users_after_dry, second) = runtime.block_on(async {
                let first = app
                    .upload(&account, "existing", &model::csv(&existing), 1 << 20)
                    .await
                    .unwrap();
                let users_before = app.users(&account).await;
                let options = |dry_run: bool| {
                    move |m: &mut bulk_import::proto::ImportMetadata| {
                        m.validate_only = dry_run;
                        m.on_conflict = proto_policy(policy) as i32;
                    }
                };
                let dry = app
                    .upload_with(&account, "dry-run", &file, chunk_size, options(true))
                    .await
                    .unwrap();
                let users_after_dry = app.users(&account).await;
                let second = app
                    .upload_with(&account, "under-test", &file, chunk_size, options(false))
                    .await
                    .unwrap();
                (
                    outcome(app, &account, &first).await,
                    users_before,
                    outcome(app, &account, &dry).await,
                    users_after_dry,
                    outcome(app, &account, &second).await,
                )
            });
            prop_assert_eq!(first, expected_first);
            prop_assert_eq!(&dry, &expected, "the dry run");
            prop_assert_eq!(users_before, users_after_dry, "a dry run writes nothing");
            prop_assert_eq!(second, expected);
            Ok(())
        })
        .unwrap();
    drop(apps);
}

mod the_row_errors_are_those_of_a_row_by_row_reading {
    use super::*;

    #[test]
    fn sqlite() {
        check(Backend::Sqlite, 64);
    }

    #[test]
    #[cfg_attr(
        not(postgres_tests),
        ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
    )]
    fn postgres() {
        check(Backend::Postgres, 64);
    }
}
