//! The store on its own, for what the API cannot provoke at will: a batch that arrives after
//! its import was ended elsewhere (on PostgreSQL, by another replica that took it for dead).

use bulk_import::domain::{
    AccountId, Counters, Email, Filename, ImportId, ImportStatus, ImportType, NewImport, NewUser,
    Role, UserBatch,
};
use bulk_import::store::{self, BatchTarget, Conclusion, Guard, OpenOptions, StoreError};

use crate::helpers::*;

/// An import of `users.csv` into [`ACCOUNT`], with the defaults, resumable or not.
fn new_import(import_id: &str, resumable: bool) -> NewImport {
    NewImport {
        account_id: AccountId::parse(ACCOUNT).unwrap(),
        import_id: ImportId::parse(import_id).unwrap(),
        kind: ImportType::Users,
        filename: Filename::parse("users.csv").unwrap(),
        created_by: String::new(),
        validate_only: false,
        on_conflict: Default::default(),
        retry_of: None,
        invitations: Default::default(),
        resumable,
        resume_offset: 0,
    }
}

backend_tests! {
    async fn a_batch_for_an_import_that_already_ended_writes_nothing(backend) {
        let database = TestDatabase::new(backend).await;
        let store = store::open(&database.url, OpenOptions::default()).await.unwrap();
        let account_id = AccountId::parse(ACCOUNT).unwrap();
        let import = store
            .create_import(&new_import("ended", false))
            .await
            .unwrap();
        let ended = Conclusion::new(
            ImportStatus::ErrorUnknown,
            Counters::default(),
            None,
            "ended by another replica".into(),
        );
        store
            .conclude_import(import.key, &ended, Guard::Processing)
            .await
            .unwrap();

        // Large enough to be written in parts at once on PostgreSQL.
        let emails: Vec<String> = (0..5000).map(|i| format!("late{i}@example.com")).collect();
        let mut batch = UserBatch::with_capacity(emails.len());
        for (i, email) in emails.iter().enumerate() {
            let user = NewUser {
                email: Email::parse(email).unwrap(),
                first_name: "Late",
                last_name: "",
                role: Role::Member,
                role_given: false,
                job_title: "",
                external_id: None,
            };
            batch.push_user(i as u64 + 2, &user);
        }
        let account_key = store.account_key(&account_id).await.unwrap();
        let target = BatchTarget {
            key: import.key,
            account_id: &account_id,
            account_key,
            next_error_seq: 0,
            error_budget: 100,
            progress: Counters::default(),
            committed: Default::default(),
            format: None,
            on_conflict: Default::default(),
            validate_only: false,
            seen: None,
        };
        let written = store.write_batch(&target, &batch).await;
        assert!(matches!(written, Err(StoreError::NotProcessing)), "{written:?}");

        let users: i64 = match backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&database.url).await.unwrap();
                sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap()
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
                sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap()
            }
        };
        assert_eq!(users, 0, "no user of an ended import may be left behind");
        let stored = store
            .get_import(&account_id, &ImportId::parse("ended").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, ImportStatus::ErrorUnknown);
        assert_eq!(stored.counters, Counters::default());
    }
}

/// On PostgreSQL, a replica that lost an import (cut off from the database while the reaper
/// made it wait, and a resume took it on another replica) can neither write a batch to it nor
/// end it when it comes back: the import is the other replica's now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_replica_that_lost_an_import_to_a_resume_elsewhere_cannot_touch_it() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let first = store::open(&database.url, OpenOptions::default())
        .await
        .unwrap();
    let other = store::open(&database.url, OpenOptions::default())
        .await
        .unwrap();
    let account_id = AccountId::parse(ACCOUNT).unwrap();
    let import = first
        .create_import(&new_import("lost", true))
        .await
        .unwrap();
    // Made to wait (here by its own replica, as the reaper would), then resumed elsewhere.
    first
        .park_import(
            import.key,
            std::time::Duration::from_secs(60),
            Guard::Processing,
        )
        .await
        .unwrap();
    other.claim_import(import.key, 0).await.unwrap();

    let mut batch = UserBatch::with_capacity(1);
    let user = NewUser {
        email: Email::parse("late@example.com").unwrap(),
        first_name: "Late",
        last_name: "",
        role: Role::Member,
        role_given: false,
        job_title: "",
        external_id: None,
    };
    batch.push_user(2, &user);
    let account_key = first.account_key(&account_id).await.unwrap();
    let target = BatchTarget {
        key: import.key,
        account_id: &account_id,
        account_key,
        next_error_seq: 0,
        error_budget: 100,
        progress: Counters::default(),
        committed: Default::default(),
        format: None,
        on_conflict: Default::default(),
        validate_only: false,
        seen: None,
    };
    let written = first.write_batch(&target, &batch).await;
    assert!(
        matches!(written, Err(StoreError::NotProcessing)),
        "{written:?}"
    );
    let ended = Conclusion::new(
        ImportStatus::ErrorUnknown,
        Counters::default(),
        None,
        "a late ending".into(),
    );
    let late = first
        .conclude_import(import.key, &ended, Guard::Processing)
        .await;
    assert!(matches!(late, Err(StoreError::NotProcessing)), "{late:?}");
    let parked = first
        .park_import(
            import.key,
            std::time::Duration::from_secs(60),
            Guard::Processing,
        )
        .await;
    assert!(
        matches!(parked, Err(StoreError::NotProcessing)),
        "{parked:?}"
    );
    // The replica that has it writes and ends it as usual.
    let written = other.write_batch(&target, &batch).await.unwrap();
    assert_eq!(written.outcome.imported, 1);
    let stored = other
        .get_import(&account_id, &ImportId::parse("lost").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, ImportStatus::Processing);
    assert!(!stored.waiting());
    first.close().await;
    other.close().await;
}
