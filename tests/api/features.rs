//! What people ask of user importers, part one: dry runs and the conflict policies (SKIP,
//! UPDATE), with what an UPDATE that does not complete leaves (nothing). The fix-up file,
//! cancel, revert and the users are in `follow_up`; the helpers here serve both.

use bulk_import::proto::{self, ConflictPolicy, ImportStatus};
use futures::StreamExt;
use tonic::Code;

use crate::helpers::*;
use crate::lifecycle::{OpenUpload, open_upload, open_upload_with, wait_for_imported_rows};

pub(crate) fn policy(policy: ConflictPolicy) -> impl FnOnce(&mut proto::ImportMetadata) {
    move |m| m.on_conflict = policy as i32
}

pub(crate) fn dry_run(m: &mut proto::ImportMetadata) {
    m.validate_only = true;
}

/// Every page of `ListUsers`, `page_size` at a time: the emails, and the number of pages.
pub(crate) async fn list_users(
    app: &TestApp,
    account: &str,
    import_id: &str,
    page_size: i32,
) -> (Vec<proto::User>, usize) {
    let mut client = app.client.clone();
    let mut token = String::new();
    let mut users = Vec::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(proto::ListUsersRequest {
                account_id: account.into(),
                import_id: import_id.into(),
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        users.extend(page.users);
        token = page.next_page_token;
        if token.is_empty() {
            return (users, pages);
        }
        assert!(pages < 10_000, "the pages never end");
    }
}

pub(crate) fn emails(users: &[proto::User]) -> Vec<&str> {
    users.iter().map(|u| u.email.as_str()).collect()
}

/// The whole error report of an import.
pub(crate) async fn report(
    app: &TestApp,
    account: &str,
    import_id: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut client = app.client.clone();
    let mut chunks = client
        .get_import_error_report(proto::GetImportErrorReportRequest {
            account_id: account.into(),
            import_id: import_id.into(),
        })
        .await?
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = chunks.next().await {
        file.extend_from_slice(&chunk?.chunk);
    }
    Ok(file)
}

pub(crate) async fn cancel(
    app: &TestApp,
    account: &str,
    import_id: &str,
) -> Result<proto::Import, tonic::Status> {
    let mut client = app.client.clone();
    let response = client
        .cancel_import(proto::CancelImportRequest {
            account_id: account.into(),
            import_id: import_id.into(),
        })
        .await?;
    Ok(response.into_inner().import.unwrap())
}

pub(crate) async fn revert(
    app: &TestApp,
    account: &str,
    import_id: &str,
) -> Result<proto::RevertImportResponse, tonic::Status> {
    let mut client = app.client.clone();
    Ok(client
        .revert_import(proto::RevertImportRequest {
            account_id: account.into(),
            import_id: import_id.into(),
        })
        .await?
        .into_inner())
}

/// The counters that a dry run and a real import must share.
pub(crate) fn counters(import: &proto::Import) -> (ImportStatus, [i64; 5]) {
    (
        status(import),
        [
            import.rows_processed,
            import.rows_imported,
            import.rows_failed,
            import.rows_skipped,
            import.rows_updated,
        ],
    )
}

/// The row errors as the client sees them, in full.
pub(crate) fn described(errors: &[proto::RowError]) -> Vec<(i64, String, String, String)> {
    errors
        .iter()
        .map(|e| {
            (
                e.row_number,
                e.column.clone(),
                e.code.clone(),
                e.message.clone(),
            )
        })
        .collect()
}

/// A generated file with invalid rows and duplicates, and an account that already holds some
/// of its users: the first 300 rows of the same file.
pub(crate) fn file_and_existing() -> (Vec<u8>, Vec<u8>) {
    let (file, stats) = generate(&[
        "--rows",
        "3000",
        "--seed",
        "12",
        "--invalid-rate",
        "0.05",
        "--dup-rate",
        "0.05",
    ]);
    assert!(stats.invalid > 0 && stats.duplicates > 0, "{stats:?}");
    let text = String::from_utf8(file.clone()).unwrap();
    let existing: String = text.split_inclusive('\n').take(301).collect();
    (file, existing.into_bytes())
}

backend_tests! {
    /// The dry run's status, counters and row errors are exactly those of the real import that
    /// follows it, under every policy, and it writes no user.
    async fn a_dry_run_reports_exactly_what_the_import_then_does(backend) {
        // Small batches: the dry run's own rows span many of them.
        let app = spawn_app_with(backend, |args| args.batch_rows = Some(256)).await;
        let (file, existing) = file_and_existing();
        for (n, chosen) in [ConflictPolicy::Unspecified, ConflictPolicy::Skip, ConflictPolicy::Update]
            .into_iter()
            .enumerate()
        {
            let account = format!("dry-{n}");
            app.upload(&account, "existing", &existing, 1 << 16).await.unwrap();
            let before = app.users(&account).await;
            let dry = app
                .upload_with(&account, "dry", &file, 50_000, |m| {
                    dry_run(m);
                    policy(chosen)(m);
                })
                .await
                .unwrap();
            assert!(dry.validate_only);
            assert_eq!(app.users(&account).await, before, "a dry run writes no user");
            assert_eq!(app.users_of(&account, "dry").await, 0);
            let real = app
                .upload_with(&account, "real", &file, 50_000, policy(chosen))
                .await
                .unwrap();
            assert!(!real.validate_only);
            assert_eq!(counters(&dry), counters(&real), "{chosen:?}");
            assert_eq!(
                described(&app.errors(&account, "dry").await),
                described(&app.errors(&account, "real").await),
                "{chosen:?}"
            );
            // The file's first 300 rows are the account's users: each is one of them.
            let [processed, imported, failed, skipped, updated] = counters(&real).1;
            assert_eq!(processed, 3000);
            assert_eq!(imported + failed + skipped + updated, 3000);
            let held = app.get(&account, "existing").await.unwrap().rows_imported;
            match chosen {
                ConflictPolicy::Skip => assert_eq!((skipped, updated), (held, 0)),
                ConflictPolicy::Update => assert_eq!((skipped, updated), (0, held)),
                _ => assert_eq!((skipped, updated), (0, 0)),
            }
            // Listed like any import, marked as a dry run.
            let listed = app.list(&account).await;
            let listed_dry = listed.iter().find(|i| i.import_id == "dry").unwrap();
            assert!(listed_dry.validate_only);
            assert_eq!(listed_dry.on_conflict, chosen.max(ConflictPolicy::Error) as i32);
        }
    }

    /// Two dry runs at once, beside a real import still running, do not see each other: the
    /// same file in all three gets no DUPLICATE_IN_FILE or ALREADY_EXISTS from the others.
    /// Once the real import completed, a dry run sees its users, as an import would.
    async fn dry_runs_do_not_see_each_other(backend) {
        let app = spawn_app(backend).await;
        let (file, stats) = generate(&["--rows", "20000", "--seed", "3"]);
        let real = open_upload(&app, ACCOUNT, "real").await;
        for piece in file.chunks(64 * 1024) {
            real.tx.send(chunk(piece)).await.unwrap();
        }
        wait_for_imported_rows(&app, ACCOUNT, "real").await;
        let (a, b) = tokio::join!(
            app.upload_with(ACCOUNT, "dry-a", &file, 16 * 1024, dry_run),
            app.upload_with(ACCOUNT, "dry-b", &file, 16 * 1024, dry_run),
        );
        for dry in [a.unwrap(), b.unwrap()] {
            assert_eq!((dry.rows_imported, dry.rows_failed), (stats.valid, stats.rows - stats.valid));
        }
        // The stream ends after its finish message: the import commits then.
        let OpenUpload { tx, call } = real;
        tx.send(finish_message(finish())).await.unwrap();
        drop(tx);
        let real = call.await.unwrap().unwrap();
        assert_eq!(real.rows_imported, stats.valid);
        assert_eq!(app.user_count().await, stats.valid);
        let after = app.upload_with(ACCOUNT, "dry-after", &file, 1 << 20, dry_run).await.unwrap();
        assert_eq!((after.rows_imported, after.rows_failed), (0, stats.rows));
    }

    /// SKIP leaves existing users alone and counts them; UPDATE replaces their values with the
    /// row's non-empty cells, refuses an external id of another user, and frees the one it
    /// replaces.
    async fn skip_and_update_do_what_they_say(backend) {
        let app = spawn_app(backend).await;
        let existing = format!(
            "{HEADER}a@x.io,Ann,Old,admin,Engineer,E1\nb@x.io,Bob,Old,,Designer,E2\n\
             c@x.io,Cy,Old,viewer,,\n"
        );
        app.upload(ACCOUNT, "existing", existing.as_bytes(), 1 << 16).await.unwrap();
        let before = app.users(ACCOUNT).await;

        // Only skipped and imported rows: Completed - Success.
        let skip = format!("{HEADER}A@x.io,Changed,,,,\nnew1@x.io,New,,,,N1\n");
        let skipped = app
            .upload_with(ACCOUNT, "skip", skip.as_bytes(), 7, policy(ConflictPolicy::Skip))
            .await
            .unwrap();
        assert_eq!(status(&skipped), ImportStatus::CompletedSuccess);
        assert_eq!(counters(&skipped).1, [2, 1, 0, 1, 0]);
        let users = app.users(ACCOUNT).await;
        assert_eq!(&users[..3], &before[..], "skipped users are as they were");

        // A duplicate in the file stays one under SKIP.
        let twice = format!("{HEADER}b@x.io,,,,,\nB@x.io,,,,,\n");
        let twice = app
            .upload_with(ACCOUNT, "twice", twice.as_bytes(), 1 << 16, policy(ConflictPolicy::Skip))
            .await
            .unwrap();
        assert_eq!(counters(&twice).1, [2, 0, 1, 1, 0]);
        assert_eq!(
            codes(&app.errors(ACCOUNT, "twice").await),
            vec![(3, "email".to_owned(), "DUPLICATE_IN_FILE".to_owned())]
        );

        let update = format!(
            "{HEADER}a@x.io,Anna,,,,\nb@x.io,,New,viewer,,E9\nc@x.io,,,,,E1\nnew2@x.io,,,,,E2\n"
        );
        let updated = app
            .upload_with(ACCOUNT, "update", update.as_bytes(), 5, policy(ConflictPolicy::Update))
            .await
            .unwrap();
        assert_eq!(status(&updated), ImportStatus::CompletedPartial);
        assert_eq!(counters(&updated).1, [4, 1, 1, 0, 2]);
        let errors = app.errors(ACCOUNT, "update").await;
        assert_eq!(
            codes(&errors),
            vec![(4, "external_id".to_owned(), "ALREADY_EXISTS".to_owned())]
        );
        assert_eq!(
            app.users(ACCOUNT).await,
            [
                "a@x.io|Anna|Old|admin|Engineer|E1",
                "b@x.io|Bob|New|viewer|Designer|E9",
                "c@x.io|Cy|Old|viewer||",
                "new1@x.io|New||member||N1",
                "new2@x.io|||member||E2",
            ]
        );
        // The update time moved for the updated users only.
        let (users, _) = list_users(&app, ACCOUNT, "", 100).await;
        let by_email = |e: &str| users.iter().find(|u| u.email == e).unwrap().clone();
        let a = by_email("a@x.io");
        assert!(system_time(a.update_time.as_ref()) > system_time(a.create_time.as_ref()));
        let c = by_email("c@x.io");
        assert_eq!(c.update_time, c.create_time);
        assert_eq!(a.import_id, "existing");
    }

    /// A row whose cells are the user's values already is counted as updated but writes
    /// nothing: the user keeps its update time (the lookups of SKIP and dry runs leave the
    /// values out, an UPDATE's must not).
    async fn an_update_row_that_changes_nothing_writes_nothing(backend) {
        let app = spawn_app(backend).await;
        let existing = format!("{HEADER}a@x.io,Ann,Old,admin,Engineer,E1\nb@x.io,Bob,Old,,,E2\n");
        app.upload(ACCOUNT, "existing", existing.as_bytes(), 1 << 16).await.unwrap();
        let before = app.users(ACCOUNT).await;
        let same = format!("{HEADER}a@x.io,Ann,Old,admin,Engineer,E1\nB@x.io,Bob,,,,\n");
        for dry_run in [true, false] {
            let id = if dry_run { "dry" } else { "same" };
            let options = |m: &mut proto::ImportMetadata| {
                m.on_conflict = ConflictPolicy::Update as i32;
                m.validate_only = dry_run;
            };
            let done = app.upload_with(ACCOUNT, id, same.as_bytes(), 9, options).await.unwrap();
            assert_eq!(status(&done), ImportStatus::CompletedSuccess, "{id}");
            assert_eq!(counters(&done).1, [2, 0, 0, 0, 2], "{id}");
        }
        assert_eq!(app.users(ACCOUNT).await, before);
        let (users, _) = list_users(&app, ACCOUNT, "", 100).await;
        assert_eq!(users.len(), 2);
        for user in users {
            assert_eq!(user.update_time, user.create_time, "{}", user.email);
            assert_eq!(user.import_id, "existing");
        }
    }

    /// An UPDATE import that ends without completing (here, cancelled) puts every value back.
    async fn an_update_that_does_not_complete_changes_nothing(backend) {
        let app = spawn_app(backend).await;
        let existing = format!("{HEADER}a@x.io,Ann,Old,admin,Engineer,E1\n");
        app.upload(ACCOUNT, "existing", existing.as_bytes(), 1 << 16).await.unwrap();
        let before = app.users(ACCOUNT).await;
        let (generated, _) = generate(&["--rows", "40000", "--seed", "5"]);
        let mut file = format!("{HEADER}a@x.io,Changed,New,viewer,Boss,E7\n").into_bytes();
        let body = generated.iter().position(|b| *b == b'\n').unwrap() + 1;
        file.extend_from_slice(&generated[body..]);
        let upload = open_upload_with(&app, ACCOUNT, "update", policy(ConflictPolicy::Update)).await;
        for piece in file.chunks(64 * 1024).take(20) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        wait_for_imported_rows(&app, ACCOUNT, "update").await;
        let cancelled = cancel(&app, ACCOUNT, "update").await.unwrap();
        assert_eq!(status(&cancelled), ImportStatus::Cancelled);
        assert_eq!((cancelled.rows_imported, cancelled.rows_updated), (0, 0));
        let refused = upload.call.await.unwrap().unwrap_err();
        assert_eq!(refused.code(), Code::Cancelled, "{refused:?}");
        assert_eq!(app.users(ACCOUNT).await, before);
    }

    /// An UPDATE import gives E1 up for E9 and a later row takes E1; undoing it (here, a
    /// cancel) must remove the new user before E1 goes back, and give every value back.
    async fn an_undone_update_gives_back_an_external_id_it_moved(backend) {
        let app = spawn_app(backend).await;
        let existing = format!("{HEADER}a@x.io,Ann,,admin,,E1\nb@x.io,Bob,,,,E2\n");
        app.upload(ACCOUNT, "existing", existing.as_bytes(), 1 << 16).await.unwrap();
        let before = app.users(ACCOUNT).await;
        let (generated, _) = generate(&["--rows", "40000", "--seed", "6"]);
        let mut file =
            format!("{HEADER}a@x.io,,,,,E9\nn@x.io,New,,,,E1\nb@x.io,,,viewer,,E9b\nc@x.io,,,,,E2\n")
                .into_bytes();
        let body = generated.iter().position(|b| *b == b'\n').unwrap() + 1;
        file.extend_from_slice(&generated[body..]);
        let upload = open_upload_with(&app, ACCOUNT, "moves", policy(ConflictPolicy::Update)).await;
        for piece in file.chunks(64 * 1024).take(20) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        wait_for_imported_rows(&app, ACCOUNT, "moves").await;
        let cancelled = cancel(&app, ACCOUNT, "moves").await.unwrap();
        assert_eq!(status(&cancelled), ImportStatus::Cancelled);
        let _ = upload.call.await.unwrap().unwrap_err();
        assert_eq!(app.users(ACCOUNT).await, before);
    }

    /// A user that an UPDATE import still running has changed is that import's until it ends:
    /// a second UPDATE gets ALREADY_EXISTS naming it, and the user's creator cannot be
    /// reverted meanwhile (the running import's ending decides whether the user stays).
    async fn a_user_being_updated_is_held_by_that_import(backend) {
        let app = spawn_app(backend).await;
        let existing = format!("{HEADER}u@x.io,Una,,,,\n");
        app.upload(ACCOUNT, "existing", existing.as_bytes(), 1 << 16).await.unwrap();
        let (generated, _) = generate(&["--rows", "40000", "--seed", "8"]);
        let mut file = format!("{HEADER}u@x.io,First,,,,\n").into_bytes();
        let body = generated.iter().position(|b| *b == b'\n').unwrap() + 1;
        file.extend_from_slice(&generated[body..]);
        let upload = open_upload_with(&app, ACCOUNT, "first", policy(ConflictPolicy::Update)).await;
        for piece in file.chunks(64 * 1024).take(20) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        wait_for_imported_rows(&app, ACCOUNT, "first").await;
        let second = format!("{HEADER}u@x.io,Second,,,,\n");
        for dry in [false, true] {
            let id = if dry { "second-dry" } else { "second" };
            let import = app
                .upload_with(ACCOUNT, id, second.as_bytes(), 1 << 16, |m| {
                    m.validate_only = dry;
                    policy(ConflictPolicy::Update)(m);
                })
                .await
                .unwrap();
            if dry {
                // A dry run sees the account as it stands: the user exists, and would update.
                assert_eq!(import.rows_updated, 1);
            } else {
                assert_eq!(import.rows_failed, 1);
                let errors = app.errors(ACCOUNT, "second").await;
                assert_eq!(codes(&errors), vec![(2, "email".to_owned(), "ALREADY_EXISTS".to_owned())]);
                assert!(errors[0].message.contains("'first', which is still running"), "{}", errors[0].message);
            }
        }
        let refused = revert(&app, ACCOUNT, "existing").await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.message().contains("'first'"), "{}", refused.message());
        cancel(&app, ACCOUNT, "first").await.unwrap();
        let _ = upload.call.await.unwrap().unwrap_err();
        assert_eq!(app.users(ACCOUNT).await, vec!["u@x.io|Una||member||"]);
        assert_eq!(revert(&app, ACCOUNT, "existing").await.unwrap().users_removed, 1);
    }

    /// Two UPDATE imports of the same users at once: a user one of them holds is refused to the
    /// other (ALREADY_EXISTS), and each counts what it did, no more: as many UPDATED events as
    /// it counts, each user once, and every user ends with the values of its last event.
    async fn two_updates_of_the_same_users_at_once_count_what_they_did(backend) {
        const USERS: usize = 2_000;
        let app = spawn_app(backend).await;
        let file = |name: &str| -> String {
            let rows: String = (0..USERS).map(|i| format!("u{i}@x.io,{name},,,,\n")).collect();
            format!("{HEADER}{rows}")
        };
        app.upload(ACCOUNT, "base", file("Base").as_bytes(), 1 << 16).await.unwrap();
        let (file_a, file_b) = (file("A"), file("B"));
        let (a, b) = tokio::join!(
            app.upload_with(ACCOUNT, "a", file_a.as_bytes(), 512, policy(ConflictPolicy::Update)),
            app.upload_with(ACCOUNT, "b", file_b.as_bytes(), 512, policy(ConflictPolicy::Update)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        for import in [&a, &b] {
            assert_eq!(import.rows_updated + import.rows_failed, USERS as i64, "{import:?}");
            let errors = app.errors(ACCOUNT, &import.import_id).await;
            assert_eq!(errors.len() as i64, import.rows_failed);
            assert!(errors.iter().all(|e| e.code == "ALREADY_EXISTS"), "{errors:?}");
        }
        assert!(a.rows_updated + b.rows_updated >= USERS as i64, "a user updated by neither");
        let mut stream = crate::feed::follow(&app, ACCOUNT, "").await;
        let told = USERS + (a.rows_updated + b.rows_updated) as usize;
        let events = crate::feed::next(&mut stream, told).await;
        let mut last = std::collections::HashMap::new();
        let mut once = std::collections::HashSet::new();
        for event in &events[USERS..] {
            assert_eq!(event.r#type, proto::UserEventType::Updated as i32);
            let user = event.user.as_ref().unwrap();
            assert!(once.insert((event.import_id.clone(), user.email.clone())), "{event:?}");
            last.insert(user.email.clone(), user.first_name.clone());
        }
        for import in [&a, &b] {
            let told = once.iter().filter(|(id, _)| *id == import.import_id).count();
            assert_eq!(told as i64, import.rows_updated, "{}", import.import_id);
        }
        let (users, _) = list_users(&app, ACCOUNT, "", 1000).await;
        assert_eq!(users.len(), USERS);
        for user in &users {
            assert_eq!(Some(&user.first_name), last.get(&user.email), "{user:?}");
        }
    }
}
