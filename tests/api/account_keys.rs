//! The users table holds an account's integer key in place of its text since migration 0018
//! (`store::accounts`). A database of the version before, with users in several accounts, keeps
//! every user through the upgrade, in its account, with uniqueness per account and an import's
//! own users (SQLite finds them by the rowids its batches recorded) as they were.

use crate::claims::texts;
use crate::features::{list_users, revert};
use crate::helpers::*;

/// `n` users, `u0000@example.com` with external id `E0` onwards.
fn people(n: usize) -> Vec<u8> {
    let mut file = "email,first_name,last_name,role,job_title,external_id\n".to_owned();
    for i in 0..n {
        file.push_str(&format!("u{i:04}@example.com,First{i},Last,,,E{i}\n"));
    }
    file.into_bytes()
}

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
        let file = people(300);
        let acme = app.upload("acme", "first", &file, 1 << 12).await.unwrap();
        assert_eq!(acme.rows_imported, 300);
        // The same addresses and external ids in another account: uniqueness is per account.
        let half = people(150);
        let globex = app.upload("globex", "first", &half, 1 << 12).await.unwrap();
        assert_eq!(globex.rows_imported, 150);
        let (acme_users, globex_users) = (app.users("acme").await, app.users("globex").await);
        assert_eq!((acme_users.len(), globex_users.len()), (300, 150));

        as_before_account_keys(&app, backend).await;
        let url = app.database_url.clone();
        let columns = match backend {
            Backend::Sqlite => "SELECT name FROM pragma_table_info('users') WHERE name LIKE 'account%'",
            Backend::Postgres => "SELECT column_name::text FROM information_schema.columns \
                                  WHERE table_name = 'users' AND column_name LIKE 'account%'",
        };
        assert_eq!(texts(backend, &url, columns).await, ["account_id"]);
        app.stop().await;

        // The new version migrates it at start: one key per account, every user in its own.
        let app = spawn_on(&url, |_| {}).await;
        assert_eq!(texts(backend, &url, columns).await, ["account_key"]);
        let accounts = "SELECT account_id FROM accounts ORDER BY account_id";
        assert_eq!(texts(backend, &url, accounts).await, ["acme", "globex"]);
        assert_eq!(app.users("acme").await, acme_users);
        assert_eq!(app.users("globex").await, globex_users);
        assert_eq!(list_users(&app, "acme", "", 1000).await.0.len(), 300);
        assert_eq!(list_users(&app, "globex", "", 1000).await.0.len(), 150);

        // Uniqueness per account still holds: the same file again finds every row taken in
        // acme, and none in globex, whose other half it imports.
        let again = app.upload("acme", "again", &file, 1 << 12).await.unwrap();
        assert_eq!((again.rows_imported, again.rows_failed), (0, 300));
        let rest = app.upload("globex", "rest", &file, 1 << 12).await.unwrap();
        assert_eq!((rest.rows_imported, rest.rows_failed), (150, 150));
        // A new account gets its key with its first import.
        let new = app.upload("initech", "first", &half, 1 << 12).await.unwrap();
        assert_eq!(new.rows_imported, 150);
        assert_eq!(
            texts(backend, &url, accounts).await,
            ["acme", "globex", "initech"]
        );

        // The import from before the upgrade still finds its own users: reverted, they go, and
        // the other accounts' users stay.
        let reverted = revert(&app, "acme", "first").await.unwrap();
        assert_eq!(reverted.users_removed, 300, "{reverted:?}");
        assert_eq!(app.users("acme").await.len(), 0);
        assert_eq!(app.users("globex").await.len(), 300);
        assert_eq!(app.users("initech").await.len(), 150);
    }
}
