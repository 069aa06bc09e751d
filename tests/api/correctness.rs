//! Exactly right on every file: each case here was once wrong. (The encodings, invisible
//! characters and wide blank rows are files of the fixture corpus; the row-by-row rule is
//! also checked against a reference model in `row_by_row.rs`.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulk_import::proto::{self, ImportStatus};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;
use crate::lifecycle::open_upload;

backend_tests! {
    /// Row 3 is refused for its address; row 4 then takes E2, which row 3 never held. However
    /// the rows fall into batches, row 3 has one error, naming row 2.
    async fn a_duplicate_is_never_blamed_on_a_later_row(backend) {
        for batch_rows in [Some(1), Some(2), None] {
            let app = spawn_app_with(backend, |args| args.batch_rows = batch_rows).await;
            let cases = [
                ("email,role,external_id\na@x.com,,E1\na@x.com,,E2\nc@x.com,,E2\n", "email"),
                // The mirror case: refused for its external id, its address taken later.
                ("email,role,external_id\na@x.com,,E1\nb@x.com,,E1\nb@x.com,,E3\n", "external_id"),
            ];
            for (file, column) in cases {
                let import = app.upload(column, "dup", file.as_bytes(), 7).await.unwrap();
                assert_eq!((import.rows_imported, import.rows_failed), (2, 1));
                let errors = app.errors(column, "dup").await;
                assert_eq!(
                    codes(&errors),
                    vec![(3, column.to_owned(), "DUPLICATE_IN_FILE".to_owned())],
                    "batches of {batch_rows:?}"
                );
                assert!(errors[0].message.contains("row 2"), "{}", errors[0].message);
            }
        }
    }
}

backend_tests! {
    /// A NUL byte in a cell, past the first 8 KiB (so the file is not refused as binary): the
    /// row gets INVALID_CHARACTER, its value shows `\u0000`, and the rest of the file imports.
    async fn a_nul_in_a_cell_is_a_row_error_and_the_rest_imports(backend) {
        let app = spawn_app(backend).await;
        let mut file = HEADER.to_owned();
        for i in 0..2000 {
            file.push_str(&format!("user{i}@example.com,First,Last,,,\n"));
        }
        file.push_str("nul@example.com,Na\0me,Last,,,\n");
        let import = app.upload(ACCOUNT, "nul", file.as_bytes(), 4096).await.unwrap();
        assert_eq!(status(&import), ImportStatus::CompletedPartial);
        assert_eq!((import.rows_imported, import.rows_failed), (2000, 1));
        let errors = app.errors(ACCOUNT, "nul").await;
        assert_eq!(
            codes(&errors),
            vec![(2002, "first_name".to_owned(), "INVALID_CHARACTER".to_owned())]
        );
        assert_eq!(errors[0].value, "Na\\u0000me");
        assert!(!errors[0].message.contains('\0'));
    }
}

backend_tests! {
    /// An idempotent client retrying an import id learns how that import ended.
    async fn a_retried_import_id_says_how_that_import_ended(backend) {
        let app = spawn_app(backend).await;
        // One that failed: the stream ended before finish.
        let messages = vec![
            metadata(ACCOUNT, "failed", "users.csv"),
            chunk(HEADER.as_bytes()),
        ];
        assert_eq!(app.send(messages).await.unwrap_err().code(), Code::InvalidArgument);
        let retry = app.upload(ACCOUNT, "failed", HEADER.as_bytes(), 100).await.unwrap_err();
        assert_eq!(retry.code(), Code::AlreadyExists);
        assert!(retry.message().contains("ended in ERROR_UNKNOWN"), "{}", retry.message());
        assert!(retry.message().contains("new import_id"), "{}", retry.message());
        let info = retry.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "IMPORT_ALREADY_EXISTS");
        assert_eq!(info.metadata["status"], "IMPORT_STATUS_ERROR_UNKNOWN");
        assert_eq!(info.metadata["import_id"], "failed");

        // One that completed.
        app.upload(ACCOUNT, "done", HEADER.as_bytes(), 100).await.unwrap();
        let retry = app.upload(ACCOUNT, "done", HEADER.as_bytes(), 100).await.unwrap_err();
        assert!(retry.message().contains("completed"), "{}", retry.message());
        let info = retry.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.metadata["status"], "IMPORT_STATUS_COMPLETED_NOTHING_TO_IMPORT");
    }
}

backend_tests! {
    /// `finish` is the last message: anything after it is refused, with nothing imported.
    async fn a_message_after_finish_imports_nothing(backend) {
        let app = spawn_app(backend).await;
        let file = format!("{HEADER}ada@example.com,Ada,,,,\n");
        let messages = vec![
            metadata(ACCOUNT, "late", "users.csv"),
            chunk(file.as_bytes()),
            finish_message(finish()),
            chunk(b"grace@example.com,Grace,,,,\n"),
        ];
        let refused = app.send(messages).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().starts_with("finish must be the last message"), "{}", refused.message());
        let import = app.get(ACCOUNT, "late").await.unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(import.error_message.contains("finish"), "{}", import.error_message);
        assert_eq!(app.users_of(ACCOUNT, "late").await, 0);
    }
}

backend_tests! {
    /// The small corners: the filename as given, a stored message that names the malformed
    /// field, and the bytes received when the size limit stopped the first chunk.
    async fn what_is_stored_is_what_was_sent(backend) {
        let app = spawn_app_with(backend, |args| args.max_upload_bytes = 100).await;
        let messages = upload_messages(ACCOUNT, "spaced", "a.csv ", HEADER.as_bytes(), 50, finish());
        assert_eq!(app.send(messages).await.unwrap().filename, "a.csv ");

        let messages = upload_messages(
            ACCOUNT,
            "negative",
            "users.csv",
            HEADER.as_bytes(),
            50,
            proto::UploadFinish { size_bytes: Some(-1), sha256: String::new() },
        );
        let refused = app.send(messages).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        let stored = app.get(ACCOUNT, "negative").await.unwrap();
        assert!(
            stored.error_message.contains("finish.size_bytes: must not be negative"),
            "{}",
            stored.error_message
        );

        let big = vec![b'a'; 150];
        let refused = app.upload(ACCOUNT, "big", &big, 150).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(app.get(ACCOUNT, "big").await.unwrap().bytes_received, 150);
    }
}

backend_tests! {
    /// Newest first means by `create_time` (ties by `import_id`), also for uploads that
    /// started at once, and across pages.
    async fn the_imports_list_is_newest_first_by_create_time(backend) {
        let app = spawn_app(backend).await;
        let uploads = (0..16).map(|i| {
            let id = format!("at-once-{i:02}");
            let app = &app;
            async move { app.upload(ACCOUNT, &id, HEADER.as_bytes(), 10).await.unwrap() }
        });
        futures::future::join_all(uploads).await;
        // One more, whose server's clock was an hour behind: the newest key, the oldest time.
        let backdated = match backend {
            Backend::Sqlite => {
                "INSERT INTO imports (account_id, import_id, type, filename, status, create_time, \
                 update_time, complete_time) SELECT 'acme', 'backdated', 'USERS', 'old.csv', \
                 'COMPLETED_NOTHING_TO_IMPORT', min(create_time) - 3600000000, \
                 min(create_time) - 3600000000, min(create_time) - 3600000000 FROM imports"
            }
            Backend::Postgres => {
                "INSERT INTO imports (account_id, import_id, type, filename, status, create_time, \
                 update_time, complete_time) VALUES ('acme', 'backdated', 'USERS', 'old.csv', \
                 'COMPLETED_NOTHING_TO_IMPORT', now() - interval '1 hour', \
                 now() - interval '1 hour', now() - interval '1 hour')"
            }
        };
        app.execute(backdated).await;
        let mut client = app.client.clone();
        let mut listed = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = client
                .list_imports(proto::ListImportsRequest {
                    account_id: ACCOUNT.into(),
                    page_size: 3,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            listed.extend(page.imports);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(listed.len(), 17);
        assert_eq!(listed.last().unwrap().import_id, "backdated");
        let keys: Vec<_> = listed
            .iter()
            .map(|i| (system_time(i.create_time.as_ref()), i.import_id.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(keys, sorted);
    }
}

/// A second server on the same SQLite file refuses to start, names the file and who holds
/// it, and the first server's running upload goes on untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_file_refuses_to_start() {
    let app = spawn_app(Backend::Sqlite).await;
    let upload = open_upload(&app, ACCOUNT, "running").await;
    upload.tx.send(chunk(HEADER.as_bytes())).await.unwrap();
    upload
        .tx
        .send(chunk(b"ada@example.com,Ada,,,,\n"))
        .await
        .unwrap();
    crate::lifecycle::wait_for_import(&app, ACCOUNT, "running").await;

    let url = app.database_url.clone();
    let second = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulk-import"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
            .args(["--console-listen", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("the second server did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let (exit, stderr) = second;
    assert!(!exit.success(), "{stderr}");
    let path = app.database_url.trim_start_matches("sqlite://");
    assert!(stderr.contains(&format!("{path} is in use")), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );

    upload.tx.send(finish_message(finish())).await.unwrap();
    drop(upload.tx);
    let import = upload.call.await.unwrap().unwrap();
    assert_eq!(status(&import), ImportStatus::CompletedSuccess);
    assert_eq!(app.users_of(ACCOUNT, "running").await, 1);
}

/// Behind a load balancer, polls alternate between the replica that runs an upload and
/// another: the counters never go back, and a terminal status never becomes PROCESSING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn counters_never_go_back_whichever_replica_answers() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let (first, second) = tokio::join!(
        crate::support::Server::start_this(&database.url),
        crate::support::Server::start_this(&database.url)
    );
    let mut clients = [first.client(), second.client()];
    let (file, stats) = generate(&["--rows", "40000", "--seed", "61"]);
    let (tx, rx) = mpsc::channel(4);
    tx.send(metadata(ACCOUNT, "balanced", "users.csv"))
        .await
        .unwrap();
    let mut uploader = first.client();
    let upload = tokio::spawn(async move { uploader.upload_import(ReceiverStream::new(rx)).await });
    let sender = tokio::spawn(async move {
        for piece in file.chunks(file.len() / 60) {
            tx.send(chunk(piece)).await.unwrap();
            // A slow client.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        tx.send(finish_message(finish())).await.unwrap();
    });

    let mut seen: Vec<proto::Import> = Vec::new();
    let start = Instant::now();
    let mut turn = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the upload never ended"
        );
        let client = &mut clients[turn % 2];
        turn += 1;
        let Ok(response) = client
            .get_import(proto::GetImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "balanced".into(),
                ..Default::default()
            })
            .await
        else {
            continue;
        };
        let import = response.into_inner().import.unwrap();
        if let Some(last) = seen.last() {
            let counters = |i: &proto::Import| {
                [
                    i.bytes_received,
                    i.rows_processed,
                    i.rows_imported,
                    i.rows_failed,
                ]
            };
            let (before, now) = (counters(last), counters(&import));
            assert!(
                before.iter().zip(&now).all(|(b, n)| n >= b),
                "went back from {before:?} to {now:?} (poll {turn})"
            );
            assert!(
                status(last) == ImportStatus::Processing || status(&import) == status(last),
                "a terminal status went back"
            );
        }
        let terminal = status(&import) != ImportStatus::Processing;
        seen.push(import);
        if terminal {
            break;
        }
    }
    // Once ended, ended on both.
    for client in &mut clients {
        let again = client
            .get_import(proto::GetImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "balanced".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .import
            .unwrap();
        assert_eq!(status(&again), status(seen.last().unwrap()));
    }
    sender.await.unwrap();
    let finished = upload.await.unwrap().unwrap().into_inner().import.unwrap();
    assert_eq!(finished.rows_imported, stats.valid);
    assert!(seen.len() > 20, "{} polls", seen.len());
}

backend_tests! {
    /// A file that ends inside a quoted value is an unclosed quote, Error - Parsing naming the
    /// row that opened it, whatever its last byte: with or without a final line break.
    async fn a_quote_the_file_ends_in_is_unclosed_whatever_the_last_byte(backend) {
        let app = spawn_app(backend).await;
        for (i, end) in ["", "\n", "\r\n", "\r"].iter().enumerate() {
            let file = format!("email,first_name\na@x.com,Ann\nb@x.com,\"Bob{end}");
            let id = format!("unclosed-{i}");
            let import = app.upload(ACCOUNT, &id, file.as_bytes(), 1 << 16).await.unwrap();
            assert_eq!(status(&import), ImportStatus::ErrorParsing, "{end:?}");
            assert!(
                import.error_message.contains("row 3"),
                "{end:?}: {}",
                import.error_message
            );
            assert_eq!(app.users_of(ACCOUNT, &id).await, 0, "{end:?}");
        }
        // A closed quote is a value, with or without the final line break.
        let closed = "email,first_name\na@x.com,\"Ann\"";
        let import = app.upload(ACCOUNT, "closed", closed.as_bytes(), 1 << 16).await.unwrap();
        assert_eq!(status(&import), ImportStatus::CompletedSuccess);
    }
}
