//! What people ask of user importers: dry runs, conflict policies, the fix-up file, cancel,
//! undo, the users themselves, and one user per mailbox however its address is spelled.

use std::time::Duration;

use bulk_import::proto::{self, ConflictPolicy, ImportStatus};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;
use crate::lifecycle::{OpenUpload, open_upload, wait_for_imported_rows, wait_for_terminal};

fn policy(policy: ConflictPolicy) -> impl FnOnce(&mut proto::ImportMetadata) {
    move |m| m.on_conflict = policy as i32
}

fn dry_run(m: &mut proto::ImportMetadata) {
    m.validate_only = true;
}

/// Every page of `ListUsers`, `page_size` at a time: the emails, and the number of pages.
async fn list_users(
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

fn emails(users: &[proto::User]) -> Vec<&str> {
    users.iter().map(|u| u.email.as_str()).collect()
}

/// The whole error report of an import.
async fn report(app: &TestApp, account: &str, import_id: &str) -> Result<Vec<u8>, tonic::Status> {
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

async fn cancel(
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

async fn revert(
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
fn counters(import: &proto::Import) -> (ImportStatus, [i64; 5]) {
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
fn described(errors: &[proto::RowError]) -> Vec<(i64, String, String, String)> {
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
fn file_and_existing() -> (Vec<u8>, Vec<u8>) {
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

    /// The fix-up file: failed rows with their cells and reasons, fixed in a "spreadsheet" and
    /// uploaded again as it is, formula-like cells kept exactly.
    async fn the_error_report_round_trips_through_a_spreadsheet(backend) {
        let app = spawn_app(backend).await;
        let file = "email,first_name,last_name,role,job_title,external_id,notes\n\
                    ok@x.io,Ok,,,,,\n\
                    bad-address,Bad,,,=SUM(A1),,x\n\
                    ok@x.io,Dup,,,,,\n\
                    zed@x.io,Zed,,boss,+1 555,,\n\
                    only,two\n";
        let first = app.upload(ACCOUNT, "first", file.as_bytes(), 9).await.unwrap();
        assert_eq!((first.rows_imported, first.rows_failed), (1, 4));
        let fixup = report(&app, ACCOUNT, "first").await.unwrap();
        assert!(fixup.starts_with(b"\xEF\xBB\xBF"), "a BOM for Excel");
        let mut reader = csv::ReaderBuilder::new().from_reader(&fixup[3..]);
        assert_eq!(
            reader.headers().unwrap().iter().collect::<Vec<_>>(),
            vec!["email", "first_name", "last_name", "role", "job_title", "external_id", "row_number", "errors"]
        );
        let mut lines: Vec<Vec<String>> = reader
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect();
        let rows: Vec<&str> = lines.iter().map(|l| l[6].as_str()).collect();
        assert_eq!(rows, vec!["3", "4", "5", "6"]);
        assert_eq!(&lines[0][..6], &["bad-address", "Bad", "", "", "'=SUM(A1)", ""]);
        assert!(lines[0][7].starts_with("email INVALID_EMAIL: "), "{}", lines[0][7]);
        assert!(lines[1][7].contains("DUPLICATE_IN_FILE"), "{}", lines[1][7]);
        assert_eq!(&lines[2][..6], &["zed@x.io", "Zed", "", "boss", "'+1 555", ""]);
        assert!(lines[2][7].starts_with("role INVALID_ROLE: "), "{}", lines[2][7]);
        assert_eq!(&lines[3][..6], &["", "", "", "", "", ""]);
        assert!(lines[3][7].contains("FIELD_COUNT"), "{}", lines[3][7]);

        // Fixed by hand, the line with nothing to save removed, uploaded as it is.
        lines[0][0] = "bad@x.io".into();
        lines[1][0] = "ok2@x.io".into();
        lines[2][3] = "admin".into();
        lines.pop();
        let mut fixed = b"\xEF\xBB\xBF".to_vec();
        {
            let mut writer = csv::Writer::from_writer(&mut fixed);
            writer
                .write_record(["email", "first_name", "last_name", "role", "job_title", "external_id", "row_number", "errors"])
                .unwrap();
            for line in &lines {
                writer.write_record(line).unwrap();
            }
            writer.flush().unwrap();
        }
        let retry = app
            .upload_with(ACCOUNT, "retry", &fixed, 11, |m| m.retry_of_import_id = "first".into())
            .await
            .unwrap();
        assert_eq!(status(&retry), ImportStatus::CompletedSuccess, "{:?}", app.errors(ACCOUNT, "retry").await);
        assert_eq!(retry.rows_imported, 3);
        assert_eq!(retry.retry_of_import_id, "first");
        assert!(report(&app, ACCOUNT, "retry").await.unwrap().len() < 120, "a header alone");
        let users = app.users(ACCOUNT).await;
        assert!(users.contains(&"bad@x.io|Bad||member|=SUM(A1)|".to_owned()), "{users:?}");
        assert!(users.contains(&"zed@x.io|Zed||admin|+1 555|".to_owned()), "{users:?}");

        // The corrected import must be one of the account's.
        for (account, id) in [(ACCOUNT, "nope"), ("other", "first")] {
            let refused = app
                .upload_with(account, "bad-retry", &fixed, 1 << 16, |m| m.retry_of_import_id = id.into())
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument);
            let fields: Vec<String> = refused
                .get_details_bad_request()
                .unwrap()
                .field_violations
                .into_iter()
                .map(|v| v.field)
                .collect();
            assert_eq!(fields, vec!["retry_of_import_id"]);
        }
        assert_eq!(
            report(&app, "other", "first").await.unwrap_err().code(),
            Code::NotFound
        );
    }

    /// CancelImport on the server that runs the upload: CANCELLED, nothing imported, the
    /// uploader told CANCELLED, the watchers told the end.
    async fn cancel_ends_a_running_import_with_nothing_imported(backend) {
        let app = spawn_app(backend).await;
        let (file, _) = generate(&["--rows", "60000", "--seed", "9"]);
        let upload = open_upload(&app, ACCOUNT, "mistake").await;
        for piece in file.chunks(64 * 1024).take(30) {
            upload.tx.send(chunk(piece)).await.unwrap();
        }
        wait_for_imported_rows(&app, ACCOUNT, "mistake").await;
        let mut client = app.client.clone();
        let mut watcher = client
            .watch_import(proto::WatchImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "mistake".into(),
            })
            .await
            .unwrap()
            .into_inner();
        expect_cancelled(&app, &app, upload).await;
        let mut last = None;
        while let Some(update) = tokio::time::timeout(Duration::from_secs(30), watcher.next())
            .await
            .expect("the watch ends")
        {
            last = Some(update.unwrap().import.unwrap());
        }
        assert_eq!(status(&last.unwrap()), ImportStatus::Cancelled);

        // A finished import, and another account's.
        let again = cancel(&app, ACCOUNT, "mistake").await.unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition);
        assert!(again.message().contains("CANCELLED"), "{}", again.message());
        assert_eq!(cancel(&app, "other", "mistake").await.unwrap_err().code(), Code::NotFound);
        let done = format!("{HEADER}a@x.io,,,,,\n");
        app.upload(ACCOUNT, "done", done.as_bytes(), 64).await.unwrap();
        assert_eq!(
            cancel(&app, ACCOUNT, "done").await.unwrap_err().code(),
            Code::FailedPrecondition
        );
    }

    /// RevertImport removes what the import created, once; a user that another import updated
    /// since is kept and counted. The same file can be imported again afterwards.
    async fn revert_removes_what_an_import_created_once(backend) {
        let app = spawn_app(backend).await;
        let file = format!("{HEADER}a@x.io,A,,,,\nb@x.io,B,,,,\nc@x.io,C,,,,\n");
        app.upload(ACCOUNT, "first", file.as_bytes(), 1 << 16).await.unwrap();
        let touch = format!("{HEADER}b@x.io,Bee,,,,\n");
        app.upload_with(ACCOUNT, "touch", touch.as_bytes(), 1 << 16, policy(ConflictPolicy::Update))
            .await
            .unwrap();
        let reverted = revert(&app, ACCOUNT, "first").await.unwrap();
        assert_eq!(reverted.users_removed, 2);
        assert!(reverted.message.contains("1 kept"), "{}", reverted.message);
        let import = reverted.import.unwrap();
        assert!(import.revert_time.is_some());
        assert_eq!(import.revert_note, reverted.message);
        assert_eq!(app.users(ACCOUNT).await, vec!["b@x.io|Bee||member||"]);

        let again = revert(&app, ACCOUNT, "first").await.unwrap();
        assert_eq!(again.users_removed, 0);
        assert_eq!(again.import.unwrap().revert_time, import.revert_time);
        assert_eq!(app.get(ACCOUNT, "first").await.unwrap().revert_time, import.revert_time);

        let reimport = app.upload(ACCOUNT, "again", file.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!((reimport.rows_imported, reimport.rows_failed), (2, 1));

        // Nothing to remove for a dry run; a running import cannot be reverted.
        app.upload_with(ACCOUNT, "dry", file.as_bytes(), 1 << 16, dry_run).await.unwrap();
        assert_eq!(revert(&app, ACCOUNT, "dry").await.unwrap().users_removed, 0);
        let running = open_upload(&app, ACCOUNT, "running").await;
        crate::lifecycle::wait_for_import(&app, ACCOUNT, "running").await;
        assert_eq!(
            revert(&app, ACCOUNT, "running").await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        drop(running.tx);
        let ended = wait_for_terminal(&app, ACCOUNT, "running").await;
        assert_eq!(revert(&app, ACCOUNT, &ended.import_id).await.unwrap().users_removed, 0);
        assert_eq!(revert(&app, "other", "first").await.unwrap_err().code(), Code::NotFound);
    }

    /// ListUsers: every user once, in pages of `page_size`, in one order; scoped to the
    /// account, and to one import when asked.
    async fn list_users_pages_through_an_account(backend) {
        let app = spawn_app(backend).await;
        let first = format!("{HEADER}e@x.io,,,,,\nb@x.io,,,admin,,B1\nd@x.io,,,,,\n");
        let second = format!("{HEADER}a@x.io,Ann,,viewer,,\nc@x.io,,,,,\n");
        app.upload(ACCOUNT, "first", first.as_bytes(), 1 << 16).await.unwrap();
        app.upload(ACCOUNT, "second", second.as_bytes(), 1 << 16).await.unwrap();
        app.upload("other", "first", first.as_bytes(), 1 << 16).await.unwrap();
        let everyone = vec!["a@x.io", "b@x.io", "c@x.io", "d@x.io", "e@x.io"];
        for page_size in [0, 1, 2, 5, 2000] {
            let (users, pages) = list_users(&app, ACCOUNT, "", page_size).await;
            assert_eq!(emails(&users), everyone, "page_size {page_size}");
            let expected_pages = match page_size {
                1 => 5,
                2 => 3,
                _ => 1,
            };
            assert_eq!(pages, expected_pages, "page_size {page_size}");
        }
        let (users, _) = list_users(&app, ACCOUNT, "second", 1).await;
        assert_eq!(emails(&users), vec!["a@x.io", "c@x.io"]);
        assert_eq!(users[0].first_name, "Ann");
        assert_eq!(users[0].role, proto::UserRole::Viewer as i32);
        assert_eq!(users[0].import_id, "second");
        let (users, _) = list_users(&app, "other", "", 100).await;
        assert_eq!(emails(&users), vec!["b@x.io", "d@x.io", "e@x.io"]);
        assert_eq!(users[0].external_id, "B1");
        assert_eq!(users[0].role, proto::UserRole::Admin as i32);

        // A token is for the list it came from.
        let mut client = app.client.clone();
        let page = client
            .list_users(proto::ListUsersRequest {
                account_id: ACCOUNT.into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for (account, import_id, token) in [
            ("other", "", page.next_page_token.clone()),
            (ACCOUNT, "first", page.next_page_token.clone()),
            (ACCOUNT, "", "not-a-token".to_owned()),
        ] {
            let refused = client
                .list_users(proto::ListUsersRequest {
                    account_id: account.into(),
                    import_id: import_id.into(),
                    page_size: 1,
                    page_token: token,
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        }
        let unknown = client
            .list_users(proto::ListUsersRequest {
                account_id: ACCOUNT.into(),
                import_id: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
    }

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
}

/// Cancels the upload `upload` on `app` from `canceller`, and checks every party's view.
async fn expect_cancelled(app: &TestApp, canceller: &TestApp, upload: OpenUpload) {
    let cancelled = cancel(canceller, ACCOUNT, "mistake").await.unwrap();
    assert_eq!(status(&cancelled), ImportStatus::Cancelled);
    assert_eq!(cancelled.rows_imported, 0);
    let refused = tokio::time::timeout(Duration::from_secs(30), upload.call)
        .await
        .expect("the uploader is answered")
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), Code::Cancelled, "{refused:?}");
    assert!(
        refused.message().contains("cancelled"),
        "{}",
        refused.message()
    );
    assert_eq!(app.users_of(ACCOUNT, "mistake").await, 0);
    let stored = app.get(ACCOUNT, "mistake").await.unwrap();
    assert_eq!(status(&stored), ImportStatus::Cancelled);
}

/// An upload with these metadata options, fed message by message.
async fn open_upload_with(
    app: &TestApp,
    account: &str,
    import_id: &str,
    options: impl FnOnce(&mut proto::ImportMetadata),
) -> OpenUpload {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut first = metadata(account, import_id, "users.csv");
    if let Some(proto::upload_import_request::Payload::Metadata(m)) = &mut first.payload {
        options(m);
    }
    tx.send(first).await.unwrap();
    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .upload_import(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner().import.unwrap())
    });
    OpenUpload { tx, call }
}

/// CancelImport on another replica than the one running the upload (PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn cancel_works_from_another_replica() {
    let app = spawn_app(Backend::Postgres).await;
    let other = spawn_on(&app.database().url, |_| {}).await;
    let (file, _) = generate(&["--rows", "60000", "--seed", "9"]);
    let upload = open_upload(&app, ACCOUNT, "mistake").await;
    for piece in file.chunks(64 * 1024).take(30) {
        upload.tx.send(chunk(piece)).await.unwrap();
    }
    wait_for_imported_rows(&app, ACCOUNT, "mistake").await;
    expect_cancelled(&app, &other, upload).await;
    assert_eq!(
        status(&other.get(ACCOUNT, "mistake").await.unwrap()),
        ImportStatus::Cancelled
    );
}
