//! One user per mailbox, however its address is spelled: IDNA and Unicode domains, composed
//! and decomposed local parts, case folding (Greek sigmas included), and stored addresses moved
//! to today's keys without merging users.

use crate::features::{emails, list_users};
use crate::helpers::*;

backend_tests! {
    /// One mailbox, one user: a domain in Unicode and in its IDNA form, and a local part
    /// precomposed and decomposed, are one address, in a file and against stored users.
    async fn one_mailbox_is_one_user_however_it_is_spelled(backend) {
        let app = spawn_app(backend).await;
        let file = format!(
            "{HEADER}anna@bücher.example,,,,,\nanna@xn--bcher-kva.example,,,,,\n\
             jos\u{e9}@example.com,,,,,\njose\u{301}@example.com,,,,,\n"
        );
        let import = app.upload(ACCOUNT, "first", file.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!((import.rows_imported, import.rows_failed), (2, 2));
        let errors = app.errors(ACCOUNT, "first").await;
        assert_eq!(
            codes(&errors),
            vec![
                (3, "email".to_owned(), "DUPLICATE_IN_FILE".to_owned()),
                (5, "email".to_owned(), "DUPLICATE_IN_FILE".to_owned()),
            ]
        );
        let again = format!(
            "{HEADER}ANNA@XN--BCHER-KVA.EXAMPLE,,,,,\nJOSE\u{301}@example.com,,,,,\n"
        );
        let second = app.upload(ACCOUNT, "second", again.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!((second.rows_imported, second.rows_failed), (0, 2));
        assert_eq!(
            codes(&app.errors(ACCOUNT, "second").await),
            vec![
                (2, "email".to_owned(), "ALREADY_EXISTS".to_owned()),
                (3, "email".to_owned(), "ALREADY_EXISTS".to_owned()),
            ]
        );
        let (users, _) = list_users(&app, ACCOUNT, "", 100).await;
        assert_eq!(emails(&users), vec!["anna@bücher.example", "jos\u{e9}@example.com"]);
    }

    /// Rows stored under yesterday's key (a Unicode domain, a decomposed letter) get today's
    /// at the next start, once.
    async fn stored_addresses_are_migrated_to_the_new_key(backend) {
        let mut app = spawn_app(backend).await;
        let file = format!("{HEADER}anna@bücher.example,,,,,\njos\u{e9}@example.com,,,,,\n");
        app.upload(ACCOUNT, "first", file.as_bytes(), 1 << 16).await.unwrap();
        // As an older release stored them.
        app.execute("UPDATE users SET email = 'anna@bücher.example' WHERE email = 'anna@xn--bcher-kva.example'").await;
        app.execute("UPDATE users SET email = 'jose\u{301}@example.com' WHERE email = 'jos\u{e9}@example.com'").await;
        app.execute("DELETE FROM data_migrations").await;
        app.stop().await;
        let restarted = spawn_on(&app.database().url, |_| {}).await;
        assert_eq!(
            restarted.users(ACCOUNT).await,
            vec!["anna@xn--bcher-kva.example|||member||", "jos\u{e9}@example.com|||member||"]
        );
        let again = format!("{HEADER}anna@xn--bcher-kva.example,,,,,\njose\u{301}@example.com,,,,,\n");
        let second = restarted.upload(ACCOUNT, "second", again.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!((second.rows_imported, second.rows_failed), (0, 2));
    }

    /// Local parts are case-folded: Greek capital sigma is one user with either small sigma
    /// (lower-casing made ΣΣ and σσ two users), while faß.de and fass.de stay two domains, as
    /// non-transitional IDNA requires. Stored users keyed by the old rule get the new key at
    /// start; a pair that now collides is reported and left as it is, never merged.
    async fn greek_capital_sigma_is_one_mailbox_and_old_keys_move_without_merging(backend) {
        let mut app = spawn_app(backend).await;
        let file = format!(
            "{HEADER}ΣΣ@x.gr,,,,,\nσσ@x.gr,,,,,\nσς@x.gr,,,,,\na@faß.de,,,,,\na@fass.de,,,,,\n"
        );
        let import = app.upload(ACCOUNT, "sigma", file.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!((import.rows_imported, import.rows_failed), (3, 2));
        assert_eq!(
            codes(&app.errors(ACCOUNT, "sigma").await),
            vec![
                (3, "email".to_owned(), "DUPLICATE_IN_FILE".to_owned()),
                (4, "email".to_owned(), "DUPLICATE_IN_FILE".to_owned()),
            ]
        );
        let other = "other";
        let old = format!("{HEADER}a@x.gr,,,,,\nb@x.gr,,,,,\nc@x.gr,,,,,\n");
        app.upload(other, "old", old.as_bytes(), 1 << 16).await.unwrap();
        // As a release that lower-cased stored them: ΣΣ as σς, and σσ as itself, two users.
        app.execute("UPDATE users SET email = 'σς@x.gr' WHERE account_key = (SELECT account_key FROM accounts WHERE account_id = 'other') AND email = 'a@x.gr'").await;
        app.execute("UPDATE users SET email = 'σσ@x.gr' WHERE account_key = (SELECT account_key FROM accounts WHERE account_id = 'other') AND email = 'b@x.gr'").await;
        app.execute("UPDATE users SET email = 'ξς@x.gr' WHERE account_key = (SELECT account_key FROM accounts WHERE account_id = 'other') AND email = 'c@x.gr'").await;
        app.execute("DELETE FROM data_migrations WHERE name = 'email_keys_casefold'").await;
        app.stop().await;
        let restarted = spawn_on(&app.database().url, |_| {}).await;
        let keys: Vec<String> = restarted
            .users(other)
            .await
            .into_iter()
            .map(|u| u.split('|').next().unwrap().to_owned())
            .collect();
        assert_eq!(keys, vec!["ξσ@x.gr", "σς@x.gr", "σσ@x.gr"], "the clash stays, not merged");
    }
}
