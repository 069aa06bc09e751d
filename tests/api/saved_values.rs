//! The values a running UPDATE import replaced, which its failure or cancel puts back, live in
//! the updated users' own rows (`old_*`). The versions before kept them in a table of their
//! own (`import_user_updates`): migration 0017 moves them, so an import that waited for its
//! client across the upgrade still shows its users as they were and gives them their values
//! back when it is cancelled.

use std::time::Duration;

use bulk_import::proto;

use crate::account_keys::as_before_account_keys;
use crate::claims::texts;
use crate::features::{cancel, list_users};
use crate::helpers::*;
use crate::resume::{send, until};
use crate::resume_planned::first;

/// 2,000 users whose first names are `first_name` and their number.
fn people(first_name: &str) -> Vec<u8> {
    let mut file = "email,first_name,last_name,role,job_title,external_id\n".to_owned();
    for i in 0..2000 {
        file.push_str(&format!(
            "u{i:04}@example.com,{first_name}{i},Last,,,E{i}\n"
        ));
    }
    file.into_bytes()
}

/// How many rows `sql` gives on the database at `url`.
async fn count(backend: Backend, url: &str, sql: &str) -> usize {
    let sql = format!("SELECT CAST(count(*) AS TEXT) FROM ({sql}) AS counted");
    texts(backend, url, &sql).await[0].parse().unwrap()
}

/// The first names `ListUsers` shows, by email.
async fn listed_first_names(app: &TestApp) -> Vec<String> {
    let (users, _) = list_users(app, ACCOUNT, "", 1000).await;
    users.into_iter().map(|u| u.first_name).collect()
}

/// The database as the version before this one left it: the old values in a table of their
/// own, with its index, and no `old_*` columns.
async fn as_the_version_before(app: &TestApp, backend: Backend) {
    // Before 0017, and so before 0018 too: 0017 reads the users by the account's text.
    as_before_account_keys(app, backend).await;
    let (text, key, time) = match backend {
        Backend::Sqlite => ("TEXT", "INTEGER", "INTEGER"),
        Backend::Postgres => ("TEXT COLLATE \"C\"", "BIGINT", "TIMESTAMPTZ"),
    };
    app.execute(&format!(
        "CREATE TABLE import_user_updates (import_key {key} NOT NULL, \
         account_id {text} NOT NULL, email {text} NOT NULL, first_name TEXT NOT NULL, \
         last_name TEXT NOT NULL, role TEXT NOT NULL, job_title TEXT NOT NULL, \
         external_id {text}, update_time {time}, updated_by {key})"
    ))
    .await;
    app.execute(
        "INSERT INTO import_user_updates SELECT updated_by, account_id, email, old_first_name, \
         old_last_name, old_role, old_job_title, old_external_id, old_update_time, \
         old_updated_by FROM users WHERE old_first_name IS NOT NULL",
    )
    .await;
    app.execute(
        "CREATE INDEX import_user_updates_user ON import_user_updates \
         (import_key, account_id, email)",
    )
    .await;
    for column in [
        "first_name",
        "last_name",
        "role",
        "job_title",
        "external_id",
        "update_time",
        "updated_by",
    ] {
        app.execute(&format!("ALTER TABLE users DROP COLUMN old_{column}"))
            .await;
    }
    app.execute("DELETE FROM _sqlx_migrations WHERE version = 17")
        .await;
}

backend_tests! {
    async fn a_waiting_update_gives_its_users_back_their_values_after_the_upgrade(backend) {
        let mut app = spawn_app_with(backend, |a| a.batch_rows = Some(20)).await;
        app.upload(ACCOUNT, "first", &people("Old"), 1 << 16).await.unwrap();
        let before = app.users(ACCOUNT).await;
        let listed = listed_first_names(&app).await;
        assert_eq!((before.len(), listed.len()), (2000, 2000));

        // An UPDATE of every first name whose client goes halfway: the import waits for its
        // resume, the users it changed holding their values from before it.
        let update = |m: &mut proto::ImportMetadata| {
            m.on_conflict = proto::ConflictPolicy::Update as i32;
        };
        let file = people("New");
        let mut client = app.client.clone();
        let mut messages = vec![first(ACCOUNT, "update", 0, &update)];
        messages.extend(file[..file.len() / 2].chunks(2000).map(chunk));
        send(&mut client, messages).await.unwrap_err();
        let waiting = until(&mut client, ACCOUNT, "update", Duration::from_secs(30), |i| {
            i.resume_deadline.is_some()
        })
        .await;
        let url = app.database_url.clone();
        let renamed = "SELECT 1 FROM users WHERE first_name LIKE 'New%'";
        let changed = count(backend, &url, renamed).await;
        assert_eq!(changed as i64, waiting.rows_processed, "{waiting:?}");
        assert!((20..2000).contains(&changed), "{changed} {waiting:?}");
        let kept = "SELECT 1 FROM users WHERE old_first_name LIKE 'Old%' \
                    AND updated_by IS NOT NULL";
        assert_eq!(count(backend, &url, kept).await, changed);
        // Readers see the values from before the running import.
        assert_eq!(listed_first_names(&app).await, listed);

        as_the_version_before(&app, backend).await;
        let saved = "SELECT 1 FROM import_user_updates WHERE first_name LIKE 'Old%'";
        assert_eq!(count(backend, &url, saved).await, changed);
        app.stop().await;

        // The new version starts on it: the old values are in the users' rows again, and the
        // table is gone.
        let restarted = spawn_on(&url, |a| a.batch_rows = Some(20)).await;
        assert_eq!(count(backend, &url, kept).await, changed);
        let tables = match backend {
            Backend::Sqlite => "SELECT 1 FROM sqlite_schema WHERE name = 'import_user_updates'",
            Backend::Postgres => "SELECT 1 FROM pg_tables WHERE tablename = 'import_user_updates'",
        };
        assert_eq!(count(backend, &url, tables).await, 0);
        assert_eq!(listed_first_names(&restarted).await, listed);

        // Cancelled, the import puts back every value it replaced.
        cancel(&restarted, ACCOUNT, "update").await.unwrap();
        let cancelled = restarted.get(ACCOUNT, "update").await.unwrap();
        assert_eq!(status(&cancelled), proto::ImportStatus::Cancelled);
        assert_eq!(restarted.users(ACCOUNT).await, before);
        assert_eq!(listed_first_names(&restarted).await, listed);
    }
}
