//! The users table holds an account's integer key in place of its text since migration 0018
//! (`store::accounts`). A database of the version before, with users in several accounts, keeps
//! every user through the upgrade, in its account, with uniqueness per account and an import's
//! own users (SQLite finds them by the rowids its batches recorded) as they were.

use bulk_import::proto;

use crate::claims::texts;
use crate::features::{list_users, revert};
use crate::helpers::*;

/// Users `u0000@example.com` (external id `E0`) onwards, numbered from `from` up to `to`,
/// their first names starting with `first`.
fn people(from: usize, to: usize, first: &str) -> Vec<u8> {
    let mut file = "email,first_name,last_name,role,job_title,external_id\n".to_owned();
    for i in from..to {
        file.push_str(&format!("u{i:04}@example.com,{first}{i},Last,,,E{i}\n"));
    }
    file.into_bytes()
}

/// Every stored user, every column, one text per user in a fixed order, its account named
/// by `account` (an expression on `u`): on SQLite with its rowid, which its import's recorded
/// ranges point at.
async fn snapshot(backend: Backend, url: &str, account: &str) -> Vec<String> {
    let mut columns = vec![account.to_owned()];
    if backend == Backend::Sqlite {
        columns.insert(0, "u.user_id".into());
    }
    for column in [
        "email",
        "first_name",
        "last_name",
        "role",
        "job_title",
        "external_id",
        "import_key",
        "source_row",
        "create_time",
        "update_time",
        "updated_by",
        "invitation_state",
        "invite_time",
        "invitations_sent",
        "old_first_name",
        "old_last_name",
        "old_role",
        "old_job_title",
        "old_external_id",
        "old_update_time",
        "old_updated_by",
    ] {
        columns.push(format!("u.{column}"));
    }
    let cells: Vec<String> = columns
        .iter()
        .map(|c| format!("coalesce(CAST({c} AS TEXT), '-')"))
        .collect();
    let sql = format!(
        "SELECT {} FROM users AS u ORDER BY {account}, u.email",
        cells.join(" || '|' || ")
    );
    texts(backend, url, &sql).await
}

/// The account of a user before the upgrade, and after it.
const ACCOUNT_BEFORE: &str = "u.account_id";
const ACCOUNT_AFTER: &str =
    "(SELECT a.account_id FROM accounts AS a WHERE a.account_key = u.account_key)";

/// The database as the version before this one left it: the account's text in the users
/// table and its indexes, no accounts table, migration 0018 not applied.
pub(crate) async fn as_before_account_keys(app: &TestApp, backend: Backend) {
    let text = match backend {
        Backend::Sqlite => "TEXT",
        Backend::Postgres => "TEXT COLLATE \"C\"",
    };
    app.execute(&format!("ALTER TABLE users ADD COLUMN account_id {text}"))
        .await;
    app.execute(
        "UPDATE users SET account_id = (SELECT a.account_id FROM accounts AS a \
         WHERE a.account_key = users.account_key)",
    )
    .await;
    match backend {
        Backend::Sqlite => {
            app.execute("DROP INDEX users_account_email").await;
            app.execute("DROP INDEX users_account_external_id").await;
            app.execute("ALTER TABLE users DROP COLUMN account_key")
                .await;
            app.execute("CREATE UNIQUE INDEX users_account_email ON users (account_id, email)")
                .await;
            app.execute(
                "CREATE UNIQUE INDEX users_account_external_id ON users (account_id, external_id) \
                 WHERE external_id IS NOT NULL",
            )
            .await;
        }
        Backend::Postgres => {
            app.execute("ALTER TABLE users DROP CONSTRAINT users_pkey")
                .await;
            app.execute("DROP INDEX users_external_id_account").await;
            app.execute("ALTER TABLE users DROP COLUMN account_key")
                .await;
            app.execute("ALTER TABLE users ALTER COLUMN account_id SET NOT NULL")
                .await;
            app.execute(
                "ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY (email, account_id)",
            )
            .await;
            app.execute(
                "CREATE UNIQUE INDEX users_external_id_account ON users (external_id, account_id) \
                 WHERE external_id IS NOT NULL",
            )
            .await;
        }
    }
    app.execute("DROP TABLE accounts").await;
    app.execute("DELETE FROM _sqlx_migrations WHERE version = 18")
        .await;
}

backend_tests! {
    async fn users_stored_before_the_account_keys_keep_their_accounts_after_the_upgrade(backend) {
        let mut app = spawn_app(backend).await;
        let url = app.database_url.clone();
        let file = people(0, 300, "First");
        let acme = app.upload("acme", "first", &file, 1 << 12).await.unwrap();
        assert_eq!(acme.rows_imported, 300);
        // Users in between that go again: on SQLite a gap in the rowids, so that rows renumbered
        // by the migration would no longer be where the later imports' ranges say.
        let mid = app.upload("acme", "mid", &people(300, 400, "Mid"), 1 << 12).await.unwrap();
        assert_eq!(mid.rows_imported, 100);
        // The same addresses and external ids in another account: uniqueness is per account.
        let globex = app.upload("globex", "first", &people(0, 150, "First"), 1 << 12).await.unwrap();
        assert_eq!(globex.rows_imported, 150);
        assert_eq!(revert(&app, "acme", "mid").await.unwrap().users_removed, 100);
        // Updated users, with their update's time, mark and old values.
        let renamed = people(0, 50, "Renamed");
        let update = app
            .upload_with("acme", "update", &renamed, 1 << 12, |m| {
                m.on_conflict = proto::ConflictPolicy::Update as i32;
            })
            .await
            .unwrap();
        assert_eq!(update.rows_updated, 50);
        let (acme_users, globex_users) = (app.users("acme").await, app.users("globex").await);
        assert_eq!((acme_users.len(), globex_users.len()), (300, 150));

        as_before_account_keys(&app, backend).await;
        let before = snapshot(backend, &url, ACCOUNT_BEFORE).await;
        assert_eq!(before.len(), 450);
        let columns = match backend {
            Backend::Sqlite => "SELECT name FROM pragma_table_info('users') WHERE name LIKE 'account%'",
            Backend::Postgres => "SELECT column_name::text FROM information_schema.columns \
                                  WHERE table_name = 'users' AND column_name LIKE 'account%'",
        };
        assert_eq!(texts(backend, &url, columns).await, ["account_id"]);
        app.stop().await;

        // The new version migrates it at start: one key per account, every user in its own,
        // every column as it was (on SQLite, every rowid), and the indexes under their names.
        let app = spawn_on(&url, |_| {}).await;
        assert_eq!(texts(backend, &url, columns).await, ["account_key"]);
        let accounts = "SELECT account_id FROM accounts ORDER BY account_id";
        assert_eq!(texts(backend, &url, accounts).await, ["acme", "globex"]);
        assert_eq!(snapshot(backend, &url, ACCOUNT_AFTER).await, before);
        let indexes = match backend {
            Backend::Sqlite => "SELECT name || ' ' || sql FROM sqlite_schema \
                                WHERE type = 'index' AND tbl_name = 'users' ORDER BY name",
            Backend::Postgres => "SELECT indexname || ' ' || indexdef FROM pg_indexes \
                                  WHERE tablename = 'users' ORDER BY indexname",
        };
        let indexes = texts(backend, &url, indexes).await;
        let expected: &[(&str, &str)] = match backend {
            Backend::Sqlite => &[
                ("users_account_email", "(account_key, email)"),
                ("users_account_external_id", "(account_key, external_id)"),
                ("users_updated_by", "(updated_by)"),
            ],
            Backend::Postgres => &[
                ("users_external_id_account", "(external_id, account_key)"),
                ("users_import_brin", "brin (import_key)"),
                ("users_pkey", "(email, account_key)"),
                ("users_updated_by", "(updated_by)"),
            ],
        };
        assert_eq!(indexes.len(), expected.len(), "{indexes:?}");
        for (index, (name, on)) in indexes.iter().zip(expected) {
            assert!(index.starts_with(&format!("{name} ")) && index.contains(on), "{index}");
        }
        assert_eq!(app.users("acme").await, acme_users);
        assert_eq!(app.users("globex").await, globex_users);
        assert_eq!(list_users(&app, "acme", "", 1000).await.0.len(), 300);
        assert_eq!(list_users(&app, "globex", "", 1000).await.0.len(), 150);

        // Each unique index still holds per account: a new address with a taken external id,
        // and a taken address with a new external id, are both refused in acme.
        let clash = b"email,first_name,last_name,role,job_title,external_id\n\
                      new@example.com,New,Last,,,E5\n\
                      u0006@example.com,Old,Last,,,NEW-6\n";
        let refused = app.upload("acme", "clash", clash, 1 << 12).await.unwrap();
        assert_eq!((refused.rows_imported, refused.rows_failed), (0, 2));
        let errors: Vec<(i64, String, String)> = app
            .errors("acme", "clash")
            .await
            .into_iter()
            .map(|e| (e.row_number, e.column, e.code))
            .collect();
        assert_eq!(
            errors,
            [
                (2, "external_id".into(), "ALREADY_EXISTS".into()),
                (3, "email".into(), "ALREADY_EXISTS".into())
            ]
        );
        // And per account: the same file again finds every row taken in acme, and none of
        // the other half in globex, which it imports.
        let again = app.upload("acme", "again", &file, 1 << 12).await.unwrap();
        assert_eq!((again.rows_imported, again.rows_failed), (0, 300));
        let rest = app.upload("globex", "rest", &file, 1 << 12).await.unwrap();
        assert_eq!((rest.rows_imported, rest.rows_failed), (150, 150));
        // A new account gets its key with its first import.
        let new = app.upload("initech", "first", &people(0, 150, "First"), 1 << 12).await.unwrap();
        assert_eq!(new.rows_imported, 150);
        assert_eq!(
            texts(backend, &url, accounts).await,
            ["acme", "globex", "initech"]
        );

        // The imports from before the upgrade still find their own users (on SQLite by the
        // rowid ranges they recorded): reverted, they go, and the other accounts' stay.
        assert_eq!(revert(&app, "globex", "first").await.unwrap().users_removed, 150);
        assert_eq!(revert(&app, "acme", "first").await.unwrap().users_removed, 250);
        assert_eq!(app.users("acme").await.len(), 50);
        assert_eq!(app.users("globex").await.len(), 150);
        assert_eq!(app.users("initech").await.len(), 150);
    }
}
