//! What people ask of user importers, part two: the fix-up file, cancel, undo (revert), the
//! users themselves (one user per mailbox: `mailboxes`).

use std::time::Duration;

use bulk_import::proto::{self, ConflictPolicy, ImportStatus};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::features::{cancel, dry_run, emails, list_users, policy, report, revert};
use crate::helpers::*;
use crate::lifecycle::{
    OpenUpload, open_upload, open_upload_with, wait_for_imported_rows, wait_for_terminal,
};

backend_tests! {
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

    /// Cells that start with a tab or a CR (trimmed on upload) survive the fix-up round trip:
    /// the report quotes them for spreadsheets, and importing the report reads them as the
    /// original import did, in every text column.
    async fn cells_that_start_with_a_tab_or_a_cr_survive_the_fix_up_round_trip(backend) {
        let app = spawn_app(backend).await;
        let file = "email,first_name,last_name,role,job_title,external_id\n\
                    \"\tann@x.io\",\"\tTab\",\"\rCR\",boss,\"\t=Title\",\"\tE-1\"\n";
        let first = app.upload(ACCOUNT, "first", file.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!(first.rows_failed, 1);
        let fixup = String::from_utf8(report(&app, ACCOUNT, "first").await.unwrap()).unwrap();
        // Fixed in a "spreadsheet": the role, and nothing else.
        let fixed = fixup.replacen(",boss,", ",admin,", 1);
        let retry = app.upload(ACCOUNT, "retry", fixed.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!(
            status(&retry),
            ImportStatus::CompletedSuccess,
            "{:?}",
            app.errors(ACCOUNT, "retry").await
        );
        let users = app.users(ACCOUNT).await;
        assert_eq!(users, vec!["ann@x.io|Tab|CR|admin|=Title|E-1".to_owned()]);
    }

    /// The fix-up file holds every failed row, whatever the cap on stored row errors: a person
    /// who fixes it and imports it again loses no row.
    async fn the_fix_up_file_holds_every_failed_row_past_the_error_cap(backend) {
        let app = spawn_app_with(backend, |args| args.max_stored_row_errors = 5).await;
        let mut file = String::from(HEADER);
        for i in 0..18 {
            file.push_str(&format!("u{i}@x.io,U{i},,boss,,\n"));
        }
        for i in 18..25 {
            file.push_str(&format!("u{i}@x.io,U{i},,,,\n"));
        }
        let first = app.upload(ACCOUNT, "capped", file.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!((first.rows_imported, first.rows_failed), (7, 18));
        assert_eq!(first.row_errors_omitted, 13);
        let fixup = String::from_utf8(report(&app, ACCOUNT, "capped").await.unwrap()).unwrap();
        let mut reader = csv::ReaderBuilder::new().from_reader(fixup.trim_start_matches('\u{feff}').as_bytes());
        let lines: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(lines.len(), 18, "{fixup}");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(&line[0], format!("u{i}@x.io"));
            assert_eq!(&line[6], (i + 2).to_string());
            assert!(line[7].starts_with("role INVALID_ROLE: "), "{}", &line[7]);
        }
        let fixed = fixup.replace(",boss,", ",admin,");
        let retry = app.upload(ACCOUNT, "retry", fixed.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!((retry.rows_imported, retry.rows_failed), (18, 0));
        assert_eq!(app.users(ACCOUNT).await.len(), 25);
    }

    /// Failed rows with cells of hundreds of kilobytes: the fix-up file comes in chunks any
    /// client takes (gRPC's usual 4 MiB), each long cell kept cut but still too long, so that
    /// the report imported as it is fails the same rows the same way.
    async fn a_fix_up_file_of_huge_cells_stays_small_and_fails_the_same(backend) {
        let app = spawn_app(backend).await;
        let mut file = String::from(HEADER);
        for i in 0..20 {
            file.push_str(&format!("big{i}@x.io,Big,,,={},\n", "J".repeat(600_000)));
        }
        let first = app.upload(ACCOUNT, "huge", file.as_bytes(), 1 << 20).await.unwrap();
        assert_eq!((first.rows_imported, first.rows_failed), (0, 20));
        let mut client = app.client.clone();
        let mut chunks = client
            .get_import_error_report(proto::GetImportErrorReportRequest {
                account_id: ACCOUNT.into(),
                import_id: "huge".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut fixup = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.unwrap().chunk;
            assert!(chunk.len() < 1024 * 1024, "a chunk of {} bytes", chunk.len());
            fixup.extend_from_slice(&chunk);
        }
        assert!(fixup.len() < 100_000, "a report of {} bytes", fixup.len());
        let again = app.upload(ACCOUNT, "again", &fixup, 1 << 16).await.unwrap();
        assert_eq!((again.rows_imported, again.rows_failed), (0, 20));
        let codes: Vec<String> =
            app.errors(ACCOUNT, "again").await.into_iter().map(|e| e.code).collect();
        assert_eq!(codes, vec!["TOO_LONG".to_owned(); 20]);
    }

    /// An import that ended without completing, or with nothing to import, has no fix-up file:
    /// FAILED_PRECONDITION says why and what to do, rather than a header that reads as
    /// "nothing to fix".
    async fn an_import_that_did_not_complete_has_no_fix_up_file(backend) {
        let app = spawn_app(backend).await;
        let unreadable = format!("{HEADER}\"ann@x.io,Ann,,,,\n");
        let parsing = app.upload(ACCOUNT, "parsing", unreadable.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!(status(&parsing), ImportStatus::ErrorParsing);
        let empty = app.upload(ACCOUNT, "empty", HEADER.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!(status(&empty), ImportStatus::CompletedNothingToImport);
        for (id, words) in [("parsing", "Error - Parsing"), ("empty", "Nothing to Import")] {
            let refused = report(&app, ACCOUNT, id).await.unwrap_err();
            assert_eq!(refused.code(), Code::FailedPrecondition, "{id}");
            assert!(refused.message().contains(words), "{id}: {}", refused.message());
        }
        // A completed import with no failed row has a report: its header alone.
        let fine = format!("{HEADER}ann@x.io,Ann,,,,\n");
        app.upload(ACCOUNT, "fine", fine.as_bytes(), 1 << 16).await.unwrap();
        let header_only = report(&app, ACCOUNT, "fine").await.unwrap();
        assert_eq!(header_only.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    /// Failed rows kept by a release before reasons were kept beside them get their reasons
    /// from the row errors stored for them, once, when the new release starts.
    async fn failed_rows_kept_before_get_their_reasons(backend) {
        let mut app = spawn_app(backend).await;
        let file = format!("{HEADER}bad-address,Ann,,,,\nbob@x.io,Bob,,boss,,\n");
        app.upload(ACCOUNT, "old", file.as_bytes(), 1 << 16).await.unwrap();
        // As the older release left them.
        app.execute("ALTER TABLE import_failed_rows DROP COLUMN errors").await;
        app.execute("DELETE FROM _sqlx_migrations WHERE version = 8").await;
        app.stop().await;
        let restarted = spawn_on(&app.database().url, |_| {}).await;
        let fixup = String::from_utf8(report(&restarted, ACCOUNT, "old").await.unwrap()).unwrap();
        let mut reader =
            csv::ReaderBuilder::new().from_reader(fixup.trim_start_matches('\u{feff}').as_bytes());
        let reasons: Vec<String> = reader.records().map(|r| r.unwrap()[7].to_owned()).collect();
        assert_eq!(reasons.len(), 2, "{fixup}");
        assert!(reasons[0].starts_with("email INVALID_EMAIL: "), "{}", reasons[0]);
        assert!(reasons[1].starts_with("role INVALID_ROLE: "), "{}", reasons[1]);
    }

    /// CancelImport on the server that runs the upload: CANCELLED, nothing imported, the
    /// uploader told CANCELLED, the watchers told the end.
    async fn cancel_ends_a_running_import_with_nothing_imported(backend) {
        // One watcher place, which the watcher below takes: the cancel still works, as it
        // follows the import it cancels without taking a place.
        let app = spawn_app_with(backend, |args| args.max_watchers = 1).await;
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

    /// The first revert of an import that created no users says why there was nothing to
    /// remove; only a second revert says "already reverted".
    async fn a_first_revert_that_removes_nothing_says_why(backend) {
        let app = spawn_app(backend).await;
        let base = format!("{HEADER}a@x.io,Ann,,,,\n");
        app.upload(ACCOUNT, "base", base.as_bytes(), 1 << 16).await.unwrap();
        let update = format!("{HEADER}a@x.io,Anna,,,,\n");
        app.upload_with(ACCOUNT, "update", update.as_bytes(), 1 << 16, policy(ConflictPolicy::Update))
            .await
            .unwrap();
        app.upload_with(ACCOUNT, "skip", update.as_bytes(), 1 << 16, policy(ConflictPolicy::Skip))
            .await
            .unwrap();
        let failing = format!("{HEADER}b@x.io,Bob,,boss,,\n");
        app.upload(ACCOUNT, "all-failed", failing.as_bytes(), 1 << 16).await.unwrap();
        app.upload(ACCOUNT, "nothing", HEADER.as_bytes(), 1 << 16).await.unwrap();
        let new = format!("{HEADER}c@x.io,Cid,,,,\n");
        app.upload_with(ACCOUNT, "dry", new.as_bytes(), 1 << 16, dry_run).await.unwrap();
        let broken = upload_messages(
            ACCOUNT,
            "broken",
            "users.csv",
            new.as_bytes(),
            1 << 16,
            proto::UploadFinish { size_bytes: Some(1), sha256: String::new() },
        );
        app.send(broken).await.unwrap();
        for (id, why) in [
            ("update", "created no users"),
            ("skip", "created no users"),
            ("all-failed", "created no users"),
            ("nothing", "the file had no data rows"),
            ("dry", "a dry run writes no user"),
            ("broken", "ended Error - Unknown and kept no user"),
        ] {
            let first = revert(&app, ACCOUNT, id).await.unwrap();
            assert_eq!(first.users_removed, 0, "{id}");
            assert!(!first.message.contains("already"), "{id}: {}", first.message);
            assert!(first.message.contains(why), "{id}: {}", first.message);
            let again = revert(&app, ACCOUNT, id).await.unwrap();
            assert!(again.message.starts_with("already reverted ("), "{id}: {}", again.message);
            assert!(again.message.contains(why), "{id}: {}", again.message);
        }
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
                    ..Default::default()
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

    /// ListUsers shows what is committed: a user an UPDATE import still running has changed
    /// keeps its old values there until that import completes, and keeps them for good if it
    /// is cancelled. GetImport counts the updates as they are written.
    async fn list_users_shows_an_update_only_once_it_completes(backend) {
        let app = spawn_app(backend).await;
        let base = format!("{HEADER}a@x.io,Ann,,,Clerk,E-1\nb@x.io,Bob,,,,\n");
        app.upload(ACCOUNT, "base", base.as_bytes(), 1 << 16).await.unwrap();
        let shown = |users: Vec<proto::User>| -> Vec<String> {
            users
                .iter()
                .map(|u| format!("{}|{}|{}|{}", u.email, u.first_name, u.job_title, u.external_id))
                .collect()
        };
        let before = vec!["a@x.io|Ann|Clerk|E-1".to_owned(), "b@x.io|Bob||".to_owned()];
        // Blank lines past the bytes the server holds until it knows the content is CSV.
        let changes = format!("{HEADER}a@x.io,Anna,,,Lead,E-9\nb@x.io,Bobby,,,,\n{}", "\n".repeat(9000));
        for (id, completes) in [("cancelled", false), ("completed", true)] {
            let upload = open_upload_with(&app, ACCOUNT, id, policy(ConflictPolicy::Update)).await;
            upload.tx.send(chunk(changes.as_bytes())).await.unwrap();
            let start = std::time::Instant::now();
            while app.get(ACCOUNT, id).await.map(|i| i.rows_updated).unwrap_or(0) < 2 {
                assert!(start.elapsed() < Duration::from_secs(20), "{id}: never updated");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Written, not committed: readers see the users as they were.
            assert_eq!(shown(list_users(&app, ACCOUNT, "", 1).await.0), before, "{id}");
            assert_eq!(shown(list_users(&app, ACCOUNT, "base", 100).await.0), before, "{id}");
            if completes {
                upload.tx.send(finish_message(finish())).await.unwrap();
                drop(upload.tx);
                let done = upload.call.await.unwrap().unwrap();
                assert_eq!(status(&done), ImportStatus::CompletedSuccess);
            } else {
                cancel(&app, ACCOUNT, id).await.unwrap();
                let _ = upload.call.await;
                assert_eq!(shown(list_users(&app, ACCOUNT, "", 100).await.0), before, "{id}");
            }
        }
        assert_eq!(
            shown(list_users(&app, ACCOUNT, "", 100).await.0),
            vec!["a@x.io|Anna|Lead|E-9".to_owned(), "b@x.io|Bobby||".to_owned()]
        );
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
