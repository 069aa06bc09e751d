//! The row errors are exactly those of reading the file row by row, whatever the chunking,
//! however small the batches, and however PostgreSQL splits a batch's file keys between its
//! transaction and a second one (`postgres::beside`, here for every batch): the service
//! against the reference model (`tests/model`), over random files full of collisions, into
//! accounts that already hold some of their values, under every conflict policy. Each file is first checked by a dry run, whose outcome must be the
//! same, with nothing written. The users the import leaves are the model's too: the files mix
//! existing users unchanged, existing users with another first name or external id, and new
//! ones, so that SKIP must leave alone what UPDATE must change.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::helpers::*;
use crate::model::{self, Email, FIRST_NAMES, NamedRow, Policy, ROLES, Row};

fn row() -> impl Strategy<Value = NamedRow> {
    let email = prop_oneof![
        1 => Just(Email::Missing),
        1 => Just(Email::Invalid),
        10 => (0u8..6, any::<u8>()).prop_map(|(n, case)| Email::Pool { n, case }),
    ];
    let role = prop_oneof![6 => 0..ROLES.len() - 1, 1 => Just(ROLES.len() - 1)];
    let external_id = proptest::option::weighted(0.6, 0u8..5);
    let first_name = proptest::sample::select(&FIRST_NAMES[..]);
    (email, first_name, role, external_id).prop_map(|(email, first_name, role, external_id)| {
        NamedRow {
            row: Row {
                email,
                role,
                external_id,
            },
            first_name,
        }
    })
}

/// A file already imported into the account, then the file under test, its chunk size, which
/// server (batch size) takes it, and under which policy. Both files draw from the same small
/// pools of addresses, first names and external ids: the second one's rows are often the first
/// one's users, as they are or with other values.
fn case() -> impl Strategy<Value = (Vec<NamedRow>, Vec<NamedRow>, usize, usize, Policy)> {
    (
        proptest::collection::vec(row(), 0..12),
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

/// The stored users (`TestApp::users`) as the model holds them: by email key, with their first
/// name and external id.
fn stored(users: &[String]) -> BTreeMap<String, model::User> {
    users
        .iter()
        .map(|user| {
            let cells: Vec<&str> = user.split('|').collect();
            let [email, first_name, _, _, _, external_id] = cells[..] else {
                panic!("not email|first|last|role|title|external_id: {user}");
            };
            let user = model::User {
                first_name: first_name.to_owned(),
                external_id: (!external_id.is_empty()).then(|| external_id.to_owned()),
            };
            (email.to_owned(), user)
        })
        .collect()
}

/// What the rows (with an address) of the file under test are to the account before it: rows
/// of an existing user that change nothing, rows that would change its first name or external
/// id, and rows of a new user (repeated addresses counted each time, failed rows too).
#[derive(Debug, Default, Clone, Copy)]
struct Mix {
    unchanged: usize,
    changed: usize,
    new: usize,
}

impl Mix {
    fn of(account: &model::Account, rows: &[NamedRow]) -> Mix {
        let users = account.users();
        let mut mix = Mix::default();
        for r in rows {
            let Some(email) = r.row.email_key() else {
                continue;
            };
            match users.get(&email) {
                None => mix.new += 1,
                Some(user) => {
                    let name = !r.first_name.is_empty() && r.first_name != user.first_name;
                    let id = r.row.external_id.map(|x| format!("E{x}"));
                    if name || id.is_some_and(|id| user.external_id.as_ref() != Some(&id)) {
                        mix.changed += 1;
                    } else {
                        mix.unchanged += 1;
                    }
                }
            }
        }
        mix
    }

    fn add(&mut self, other: Mix) {
        self.unchanged += other.unchanged;
        self.changed += other.changed;
        self.new += other.new;
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
            apps.push(
                spawn_app_with(backend, |args| {
                    args.batch_rows = Some(rows);
                    // On PostgreSQL, part of every batch's file keys go on a second connection
                    // (`postgres::beside`), as a large batch's do.
                    args.file_keys_beside_from = 1;
                })
                .await,
            );
        }
        apps
    });
    // The rows of each policy's files, and the users whose first name an UPDATE changed.
    let mixes: RefCell<BTreeMap<String, Mix>> = Default::default();
    let renamed = Cell::new(0);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(&case(), |(existing, rows, chunk_size, server, policy)| {
            let app = &apps[server];
            let account = format!("model-{}", ACCOUNTS.fetch_add(1, Ordering::SeqCst));
            let (expected_first, held) = model::import(&Default::default(), &existing);
            let (expected, after) = model::import_with(&held, &rows, policy);
            let (held_users, expected_users) = (held.users(), after.users());
            mixes
                .borrow_mut()
                .entry(format!("{policy:?}"))
                .or_default()
                .add(Mix::of(&held, &rows));
            let renames = held_users
                .iter()
                .filter(|(email, user)| expected_users[*email].first_name != user.first_name)
                .count();
            renamed.set(renamed.get() + renames);
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
            let users_after = runtime.block_on(app.users(&account));
            prop_assert_eq!(first, expected_first);
            prop_assert_eq!(
                stored(&users_before),
                held_users,
                "the users of the existing file"
            );
            prop_assert_eq!(&dry, &expected, "the dry run");
            prop_assert_eq!(users_before, users_after_dry, "a dry run writes nothing");
            prop_assert_eq!(second, expected);
            prop_assert_eq!(
                stored(&users_after),
                expected_users,
                "the users after the import under {:?}",
                policy
            );
            Ok(())
        })
        .unwrap();
    drop(apps);
    let mixes = mixes.into_inner();
    let renamed = renamed.into_inner();
    println!("{backend:?}: the rows by policy {mixes:?}; {renamed} users renamed by UPDATE");
    // The generator must exercise what this test is for: rows that would change a user under
    // SKIP and under UPDATE, and an UPDATE that changes a first name.
    for policy in ["Skip", "Update"] {
        let changed = mixes.get(policy).map_or(0, |mix| mix.changed);
        assert!(
            changed > 0,
            "no {policy} file had a row changing its user: {mixes:?}"
        );
    }
    assert!(renamed > 0, "no UPDATE changed a first name");
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
