//! Both backends behave the same: the same random sequence of imports (every conflict policy,
//! dry runs), failed and cancelled imports (whose changes are undone) and reverts gives the
//! same statuses, counters, row errors and users on SQLite and on PostgreSQL. The rules both
//! stores apply are written once (`store::{ending, revert, record, planned}`); this checks
//! that what each backend writes in its own dialect adds up to the same thing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulk_import::proto::{self, ImportStatus};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;

use crate::helpers::*;
use crate::lifecycle::open_upload_with;
use crate::model::{self, Email, Policy, ROLES, Row};

fn row() -> impl Strategy<Value = Row> {
    let email = prop_oneof![
        1 => Just(Email::Missing),
        1 => Just(Email::Invalid),
        12 => (0u8..5, any::<u8>()).prop_map(|(n, case)| Email::Pool { n, case }),
    ];
    let role = prop_oneof![6 => 0..ROLES.len() - 1, 1 => Just(ROLES.len() - 1)];
    let external_id = proptest::option::weighted(0.5, 0u8..4);
    (email, role, external_id).prop_map(|(email, role, external_id)| Row {
        email,
        role,
        external_id,
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Error),
        Just(Policy::Skip),
        Just(Policy::Update)
    ]
}

/// One step of a sequence.
#[derive(Debug, Clone)]
enum Op {
    /// An upload that completes (or, as a dry run, writes nothing).
    Import {
        rows: Vec<Row>,
        policy: Policy,
        dry_run: bool,
    },
    /// An upload whose finish message gives the wrong size: ERROR_UNKNOWN, its changes undone.
    Broken { rows: Vec<Row>, policy: Policy },
    /// An upload cancelled once its rows are stored: CANCELLED, its changes undone.
    Cancelled { rows: Vec<Row>, policy: Policy },
    /// `RevertImport` of the `nth` import of the sequence so far (modulo their number).
    Revert { nth: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let rows = || proptest::collection::vec(row(), 0..10);
    prop_oneof![
        6 => (rows(), policy(), proptest::bool::weighted(0.2))
            .prop_map(|(rows, policy, dry_run)| Op::Import { rows, policy, dry_run }),
        1 => (rows(), policy()).prop_map(|(rows, policy)| Op::Broken { rows, policy }),
        1 => (rows(), policy()).prop_map(|(rows, policy)| Op::Cancelled { rows, policy }),
        2 => (0usize..8).prop_map(|nth| Op::Revert { nth }),
    ]
}

fn proto_policy(policy: Policy) -> proto::ConflictPolicy {
    match policy {
        Policy::Error => proto::ConflictPolicy::Error,
        Policy::Skip => proto::ConflictPolicy::Skip,
        Policy::Update => proto::ConflictPolicy::Update,
    }
}

/// What a step gives, in terms both backends must agree on exactly: an import's status,
/// counters and row errors, or a revert's answer; then the account's users.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Import {
        status: ImportStatus,
        counters: [i64; 6],
        error_message: String,
        errors: Vec<(i64, String, String, String, String)>,
    },
    Revert(Result<(i64, String), (Code, String)>),
}

fn counters(import: &proto::Import) -> [i64; 6] {
    [
        import.rows_processed,
        import.rows_imported,
        import.rows_failed,
        import.rows_skipped,
        import.rows_updated,
        import.row_errors_omitted,
    ]
}

async fn seen(app: &TestApp, account: &str, import: &proto::Import) -> Seen {
    if matches!(
        status(import),
        ImportStatus::CompletedSuccess
            | ImportStatus::CompletedPartial
            | ImportStatus::CompletedNothingToImport
    ) {
        // Every row processed has one outcome.
        assert_eq!(
            import.rows_processed,
            import.rows_imported + import.rows_failed + import.rows_skipped + import.rows_updated,
            "{import:?}"
        );
    }
    let errors = app
        .errors(account, &import.import_id)
        .await
        .into_iter()
        .map(|e| (e.row_number, e.column, e.code, e.message, e.value))
        .collect();
    Seen::Import {
        status: status(import),
        counters: counters(import),
        error_message: import.error_message.clone(),
        errors,
    }
}

/// Waits (bounded) until the import's progress as stored counts `rows` rows: its batch is
/// written, whichever backend, before it is cancelled.
async fn wait_stored_rows(app: &TestApp, account: &str, import_id: &str, rows: i64) {
    let start = Instant::now();
    loop {
        if let Ok(import) = app.get(account, import_id).await
            && app.stored(account, import_id).await.1 == rows
            && import.rows_processed == rows
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{import_id}: its rows were never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `ops` in `account` of `app`: what each step gave, and the users after it.
async fn run(app: &TestApp, account: &str, ops: &[Op]) -> Vec<(Seen, Vec<String>)> {
    let mut results = Vec::new();
    let mut imports: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let id = format!("step-{i}");
        let options = |policy: Policy, dry_run: bool| {
            move |m: &mut proto::ImportMetadata| {
                m.on_conflict = proto_policy(policy) as i32;
                m.validate_only = dry_run;
            }
        };
        let step = match op {
            Op::Import {
                rows,
                policy,
                dry_run,
            } => {
                let file = model::csv(rows);
                let import = app
                    .upload_with(account, &id, &file, 7, options(*policy, *dry_run))
                    .await
                    .unwrap();
                imports.push(id);
                seen(app, account, &import).await
            }
            Op::Broken { rows, policy } => {
                let file = model::csv(rows);
                let mut messages = upload_messages(
                    account,
                    &id,
                    "users.csv",
                    &file,
                    1 << 20,
                    proto::UploadFinish {
                        size_bytes: Some(file.len() as i64 + 1),
                        sha256: String::new(),
                    },
                );
                if let Some(proto::upload_import_request::Payload::Metadata(m)) =
                    &mut messages[0].payload
                {
                    options(*policy, false)(m);
                }
                let import = app.send(messages).await.unwrap();
                imports.push(id);
                // Which rows failed on a conflict depends on whether a batch was written
                // before the finish message: not compared.
                Seen::Import {
                    status: status(&import),
                    counters: [
                        import.rows_processed,
                        import.rows_imported,
                        0,
                        import.rows_skipped,
                        import.rows_updated,
                        0,
                    ],
                    error_message: import.error_message.clone(),
                    errors: Vec::new(),
                }
            }
            Op::Cancelled { rows, policy } => {
                let upload = open_upload_with(app, account, &id, options(*policy, false)).await;
                // Blank lines after the rows, past the first bytes the server holds until it
                // has seen enough of the content to know it is CSV: the rows are then read.
                let mut file = model::csv(rows);
                file.resize(file.len() + 9 * 1024, b'\n');
                upload.tx.send(chunk(&file)).await.unwrap();
                wait_stored_rows(app, account, &id, rows.len() as i64).await;
                let mut client = app.client.clone();
                let cancelled = client
                    .cancel_import(proto::CancelImportRequest {
                        account_id: account.into(),
                        import_id: id.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .import
                    .unwrap();
                let answer = upload.call.await.unwrap().unwrap_err();
                assert_eq!(answer.code(), Code::Cancelled, "{answer:?}");
                imports.push(id);
                seen(app, account, &cancelled).await
            }
            Op::Revert { nth } => {
                let Some(target) = (!imports.is_empty()).then(|| &imports[nth % imports.len()])
                else {
                    continue;
                };
                let mut client = app.client.clone();
                let reverted = client
                    .revert_import(proto::RevertImportRequest {
                        account_id: account.into(),
                        import_id: target.clone(),
                    })
                    .await;
                Seen::Revert(match reverted {
                    Ok(r) => {
                        let r = r.into_inner();
                        Ok((r.users_removed, r.message))
                    }
                    Err(status) => Err((status.code(), status.message().to_owned())),
                })
            }
        };
        results.push((step, app.users(account).await));
    }
    results
}

static ACCOUNTS: AtomicUsize = AtomicUsize::new(0);

#[test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
fn the_same_sequence_gives_the_same_imports_and_users_on_both_backends() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Small batches: several per file, so that batch boundaries are part of what is compared.
    let (sqlite, postgres) = runtime.block_on(async {
        let small = |args: &mut bulk_import::config::ServeArgs| args.batch_rows = Some(3);
        (
            spawn_app_with(Backend::Sqlite, small).await,
            spawn_app_with(Backend::Postgres, small).await,
        )
    });
    let mut runner = TestRunner::new(Config::with_cases(40));
    runner
        .run(&proptest::collection::vec(op(), 1..7), |ops| {
            let account = format!("both-{}", ACCOUNTS.fetch_add(1, Ordering::SeqCst));
            let (on_sqlite, on_postgres) = runtime.block_on(async {
                (
                    run(&sqlite, &account, &ops).await,
                    run(&postgres, &account, &ops).await,
                )
            });
            prop_assert_eq!(on_sqlite.len(), on_postgres.len());
            for (step, (a, b)) in on_sqlite.iter().zip(&on_postgres).enumerate() {
                prop_assert_eq!(a, b, "step {} of {:?}", step, ops);
            }
            Ok(())
        })
        .unwrap();
    drop((sqlite, postgres));
}
