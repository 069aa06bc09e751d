//! Tests of `plan`.

use super::*;
use crate::domain::{Email, ErrorCode, FailedRow, NewUser, Role};

const KEY: ImportKey = 9;

fn batch(rows: &[(u64, &str, Option<&str>)]) -> UserBatch {
    let mut batch = UserBatch::with_capacity(rows.len());
    for &(row, email, external_id) in rows {
        let user = NewUser {
            email: Email::parse(email).unwrap(),
            first_name: "",
            last_name: "",
            role: Role::Member,
            role_given: false,
            job_title: "",
            external_id,
        };
        batch.push_user(row, &user);
    }
    batch
}

fn existing(email: &str, external_id: Option<&str>, import_key: ImportKey) -> Existing {
    Existing {
        email: email.to_owned(),
        external_id: external_id.map(str::to_owned),
        import_key,
        source_row: 2,
        running_import: None,
        updated_by: None,
        running_update: None,
        // One per user of these tests (their addresses start with different letters).
        row_id: Some(import_key * 1_000 + i64::from(email.as_bytes()[0])),
        first_name: String::new(),
        last_name: String::new(),
        role: "member".to_owned(),
        job_title: String::new(),
    }
}

fn mode(policy: ConflictPolicy, dry_run: bool) -> Mode {
    Mode {
        key: KEY,
        policy,
        dry_run,
    }
}

fn codes(plan: &Plan<'_>) -> Vec<(u64, Column, ErrorCode)> {
    plan.errors
        .iter()
        .map(|e| (e.row_number, e.column.unwrap(), e.code))
        .collect()
}

#[test]
fn skip_leaves_existing_users_and_counts_them() {
    let batch = batch(&[
        (2, "a@x.io", None),
        (3, "b@x.io", None),
        (4, "A@x.io", None),
    ]);
    let known = Known {
        users: vec![existing("a@x.io", Some("E1"), 1)],
        file_keys: vec![],
    };
    let plan = decide(mode(ConflictPolicy::Skip, false), &batch, &known);
    assert_eq!(plan.skipped, 1);
    assert_eq!(plan.inserts, vec![1]);
    assert_eq!(plan.conflicts, 1);
    // The second row of one address is a duplicate under every policy.
    assert_eq!(
        codes(&plan),
        vec![(4, Column::Email, ErrorCode::DuplicateInFile)]
    );
    assert_eq!(plan.claims.len(), 1);
    assert_eq!(plan.claims[0].row_number, 2);
}

#[test]
fn update_refuses_an_external_id_of_another_user() {
    let batch = batch(&[
        (2, "a@x.io", Some("E1")),
        (3, "b@x.io", Some("E1")),
        (4, "c@x.io", Some("E3")),
    ]);
    let known = Known {
        users: vec![
            existing("a@x.io", Some("E1"), 1),
            existing("b@x.io", Some("E2"), 1),
            existing("c@x.io", None, 1),
        ],
        file_keys: vec![],
    };
    let plan = decide(mode(ConflictPolicy::Update, false), &batch, &known);
    assert_eq!(plan.updated, 2);
    // Row 2 gives a@x.io the id it has: counted, but nothing to write.
    // Row 4 updates c@x.io, with the rowid its lookup found, by which SQLite writes it.
    let c = known
        .users
        .iter()
        .find(|user| user.email == "c@x.io")
        .unwrap();
    assert_eq!(
        plan.updates,
        vec![Update {
            index: 2,
            row_id: c.row_id,
            import_key: c.import_key,
            updated_by: c.updated_by,
        }]
    );
    assert_eq!(
        codes(&plan),
        vec![(3, Column::ExternalId, ErrorCode::DuplicateInFile)]
    );
}

#[test]
fn an_external_id_an_update_gives_up_is_free_for_later_rows() {
    let batch = batch(&[(2, "a@x.io", Some("E9")), (3, "new@x.io", Some("E1"))]);
    let known = Known {
        users: vec![existing("a@x.io", Some("E1"), 1)],
        file_keys: vec![],
    };
    for dry_run in [false, true] {
        let plan = decide(mode(ConflictPolicy::Update, dry_run), &batch, &known);
        assert_eq!(codes(&plan), vec![], "dry run {dry_run}");
        assert_eq!((plan.updated, plan.would_insert), (1, 1));
        assert_eq!(plan.claims[0].released_external_id, Some("E1"));
    }
    // Under ERROR, the same file fails twice.
    let plan = decide(mode(ConflictPolicy::Error, true), &batch, &known);
    assert_eq!(
        codes(&plan),
        vec![
            (2, Column::Email, ErrorCode::AlreadyExists),
            (3, Column::ExternalId, ErrorCode::AlreadyExists),
        ]
    );
}

#[test]
fn a_dry_run_ignores_running_imports_and_reads_its_own_file_keys() {
    let batch = batch(&[(7, "a@x.io", None), (8, "b@x.io", None)]);
    let mut running = existing("a@x.io", None, 3);
    running.running_import = Some("other".into());
    let known = Known {
        users: vec![running],
        file_keys: vec![FileKey {
            email: "b@x.io".into(),
            external_id: None,
            source_row: 5,
            released_external_id: None,
        }],
    };
    let plan = decide(mode(ConflictPolicy::Error, true), &batch, &known);
    assert!(plan.inserts.is_empty());
    assert_eq!(plan.would_insert, 1);
    assert_eq!(
        codes(&plan),
        vec![(8, Column::Email, ErrorCode::DuplicateInFile)]
    );
    assert!(plan.errors[0].message.contains("row 5"));
    // A real import is told about the running one.
    let plan = decide(mode(ConflictPolicy::Skip, false), &batch, &known);
    assert_eq!(
        codes(&plan),
        vec![
            (7, Column::Email, ErrorCode::AlreadyExists),
            (8, Column::Email, ErrorCode::DuplicateInFile),
        ]
    );
    assert!(plan.errors[0].message.contains("still running"));
}

#[test]
fn a_user_a_running_update_changed_is_named_as_being_changed() {
    let batch = batch(&[(2, "a@x.io", None), (3, "b@x.io", None)]);
    let mut changed = existing("a@x.io", None, 1);
    changed.updated_by = Some(5);
    changed.running_update = Some("sync".into());
    let mut created = existing("b@x.io", None, 6);
    created.running_import = Some("adding".into());
    let known = Known {
        users: vec![changed, created],
        file_keys: vec![],
    };
    let plan = decide(mode(ConflictPolicy::Update, false), &batch, &known);
    assert_eq!(plan.errors.len(), 2);
    assert!(
        plan.errors[0]
            .message
            .contains("is being changed by import 'sync'"),
        "{}",
        plan.errors[0].message
    );
    assert!(
        plan.errors[1]
            .message
            .contains("is being added by import 'adding'"),
        "{}",
        plan.errors[1].message
    );
}

#[test]
fn failed_rows_see_only_the_rows_before_them() {
    let mut batch = batch(&[(2, "a@x.io", Some("E1")), (5, "b@x.io", None)]);
    let failed = |row, email| FailedRow {
        errors: vec![RowError::invalid_role(row, "boss")],
        email: Some(Email::parse(email).unwrap()),
        external_id: None,
        cells: None,
    };
    batch.push_failed_row(failed(3, "B@x.io"));
    batch.push_failed_row(failed(6, "B@x.io"));
    let known = Known::default();
    let plan = decide(mode(ConflictPolicy::Update, false), &batch, &known);
    assert_eq!(
        codes(&plan),
        vec![(6, Column::Email, ErrorCode::DuplicateInFile)]
    );
    assert_eq!(plan.inserts, vec![0, 1]);
    assert!(plan.claims.is_empty());
}
