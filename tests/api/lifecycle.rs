//! However an upload ends, it ends: never stuck in PROCESSING, never a partial import.

use std::time::Duration;

use bulk_import::proto::{self, ImportStatus};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::helpers::*;

/// An upload fed message by message, so a test can stop it halfway.
pub struct OpenUpload {
    pub tx: mpsc::Sender<proto::UploadImportRequest>,
    pub call: tokio::task::JoinHandle<Result<proto::Import, tonic::Status>>,
}

pub async fn open_upload(app: &TestApp, account: &str, import_id: &str) -> OpenUpload {
    let (tx, rx) = mpsc::channel(4);
    tx.send(metadata(account, import_id, "users.csv"))
        .await
        .unwrap();
    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .upload_import(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner().import.unwrap())
    });
    OpenUpload { tx, call }
}

/// An upload with these metadata options, fed message by message.
pub async fn open_upload_with(
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

/// Waits until the server created the import, so that others can see it.
pub async fn wait_for_import(app: &TestApp, account: &str, import_id: &str) {
    for _ in 0..400 {
        if app.get(account, import_id).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the import was never created");
}

/// Waits until the import has users written, so that ending it has something to undo.
pub async fn wait_for_imported_rows(app: &TestApp, account: &str, import_id: &str) {
    for _ in 0..400 {
        if let Ok(import) = app.get(account, import_id).await
            && import.rows_imported > 0
            && app.users_of(account, import_id).await > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no rows were written");
}

pub async fn wait_for_terminal(app: &TestApp, account: &str, import_id: &str) -> proto::Import {
    for _ in 0..500 {
        let import = app.get(account, import_id).await.unwrap();
        if status(&import) != ImportStatus::Processing {
            return import;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the import stayed PROCESSING");
}

/// Sends the first `n` chunks of `file`.
async fn send_chunks(upload: &OpenUpload, file: &[u8], size: usize, n: usize) {
    for piece in file.chunks(size).take(n) {
        upload.tx.send(chunk(piece)).await.unwrap();
    }
}

backend_tests! {
    async fn a_client_that_goes_away_mid_stream_leaves_nothing_imported(backend) {
        let app = spawn_app(backend).await;
        let (file, _) = generate(&["--rows", "60000"]);
        let upload = open_upload(&app, ACCOUNT, "gone").await;
        send_chunks(&upload, &file, 64 * 1024, 40).await;
        wait_for_imported_rows(&app, ACCOUNT, "gone").await;

        // The client cancels its call: hyper resets the stream and drops the handler.
        upload.call.abort();
        drop(upload.tx);

        let import = wait_for_terminal(&app, ACCOUNT, "gone").await;
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(
            import.error_message.contains("nothing was imported"),
            "{}",
            import.error_message
        );
        assert_eq!(import.rows_imported, 0);
        assert_eq!(app.users_of(ACCOUNT, "gone").await, 0);
    }
}

backend_tests! {
    async fn a_stream_that_ends_without_finish_imports_nothing(backend) {
        let app = spawn_app(backend).await;
        let (file, _) = generate(&["--rows", "60000"]);
        let upload = open_upload(&app, ACCOUNT, "no-finish").await;
        send_chunks(&upload, &file, 64 * 1024, usize::MAX).await;
        wait_for_imported_rows(&app, ACCOUNT, "no-finish").await;
        drop(upload.tx);

        let status_code = upload.call.await.unwrap().unwrap_err();
        assert_eq!(status_code.code(), tonic::Code::InvalidArgument);
        assert!(
            status_code.message().contains("finish"),
            "{}",
            status_code.message()
        );
        let import = app.get(ACCOUNT, "no-finish").await.unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(import.error_message.contains("finish message"));
        assert_eq!(app.users_of(ACCOUNT, "no-finish").await, 0);
    }
}

backend_tests! {
    async fn metadata_in_the_middle_of_a_stream_ends_the_import(backend) {
        let app = spawn_app(backend).await;
        let upload = open_upload(&app, ACCOUNT, "twice").await;
        upload
            .tx
            .send(chunk(b"email\na@example.com\n"))
            .await
            .unwrap();
        upload
            .tx
            .send(metadata(ACCOUNT, "twice", "users.csv"))
            .await
            .unwrap();
        let status_code = upload.call.await.unwrap().unwrap_err();
        assert_eq!(status_code.code(), tonic::Code::InvalidArgument);
        let import = app.get(ACCOUNT, "twice").await.unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
    }
}

backend_tests! {
    async fn shutdown_ends_running_uploads_after_the_grace_period(backend) {
        let mut app = spawn_app_with(backend, |args| args.shutdown_grace_seconds = 0).await;
        let (file, _) = generate(&["--rows", "60000"]);
        let upload = open_upload(&app, ACCOUNT, "cut-short").await;
        send_chunks(&upload, &file, 64 * 1024, 40).await;
        wait_for_imported_rows(&app, ACCOUNT, "cut-short").await;

        app.stop().await;
        let reply = upload.call.await.unwrap().unwrap_err();
        assert_eq!(reply.code(), tonic::Code::Unavailable, "{reply:?}");

        // Read what the server left behind, with the server gone.
        let again = spawn_on(&app.database_url, |_| {}).await;
        let import = again.get(ACCOUNT, "cut-short").await.unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(
            import.error_message.contains("shut down"),
            "{}",
            import.error_message
        );
        assert_eq!(again.users_of(ACCOUNT, "cut-short").await, 0);
    }
}

backend_tests! {
    async fn an_import_left_processing_by_a_killed_server_is_ended_at_the_next_start(backend) {
        let database = TestDatabase::new(backend).await;
        let mut server = crate::support::Server::start_this(&database.url).await;
        let mut client = server.client();

        // A completed import, which must survive the crash untouched.
        let (done, _) = generate(&["--rows", "100", "--seed", "5"]);
        let messages = upload_messages(ACCOUNT, "done", "done.csv", &done, 4096, finish());
        client.upload_import(tokio_stream::iter(messages)).await.unwrap();

        // An upload in flight when the process is killed.
        let (file, _) = generate(&["--rows", "60000", "--seed", "6"]);
        let (tx, rx) = mpsc::channel(4);
        tx.send(metadata(ACCOUNT, "killed", "users.csv"))
            .await
            .unwrap();
        let mut streaming = client.clone();
        let call = tokio::spawn(async move { streaming.upload_import(ReceiverStream::new(rx)).await });
        for piece in file.chunks(64 * 1024).take(40) {
            tx.send(chunk(piece)).await.unwrap();
        }
        let mut written = false;
        for _ in 0..400 {
            let import = client
                .get_import(proto::GetImportRequest {
                    account_id: ACCOUNT.into(),
                    import_id: "killed".into(),
                    ..Default::default()
                })
                .await;
            if import.is_ok_and(|r| r.into_inner().import.unwrap().rows_imported > 0) {
                written = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(written, "rows were written before the kill");
        server.kill();
        let _ = call.await;

        let killed = std::time::Instant::now();
        let app = spawn_on(&database.url, |_| {}).await;
        // SQLite: this server holds the file, so it ends the import before it serves.
        // PostgreSQL: other replicas may run it; the reaper ends it once its life sign stood
        // still for the grace (10 s), within the documented delay.
        let limit = match backend {
            Backend::Sqlite => Duration::ZERO,
            Backend::Postgres => Duration::from_secs(20),
        };
        let import = loop {
            let import = app.get(ACCOUNT, "killed").await.unwrap();
            if status(&import) != ImportStatus::Processing {
                break import;
            }
            assert!(killed.elapsed() <= limit, "still PROCESSING after {:?}", killed.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(
            import.error_message.contains("server stopped"),
            "{}",
            import.error_message
        );
        assert_eq!(import.rows_imported, 0);
        assert_eq!(app.users_of(ACCOUNT, "killed").await, 0);
        let done = app.get(ACCOUNT, "done").await.unwrap();
        assert_eq!(status(&done), ImportStatus::CompletedSuccess);
        assert_eq!(app.users_of(ACCOUNT, "done").await, 100);
    }
}

backend_tests! {
    /// Batches share a memory budget; uploads whose clients went quiet must not keep it from
    /// the others.
    async fn quiet_uploads_do_not_hold_back_other_uploads(backend) {
        let app = spawn_app(backend).await;
        let mut quiet = Vec::new();
        for i in 0..20 {
            let id = format!("quiet-{i}");
            let upload = open_upload(&app, ACCOUNT, &id).await;
            // More than the first 8 KiB, so that rows are read and a batch is being filled.
            let mut rows = HEADER.to_owned();
            for n in 0..200 {
                rows.push_str(&format!("q{i}-{n}@example.com,Quiet,Client,,,\n"));
            }
            upload.tx.send(chunk(rows.as_bytes())).await.unwrap();
            quiet.push((id, upload));
        }

        let (file, stats) = generate(&["--rows", "20000", "--seed", "8"]);
        let other = tokio::time::timeout(
            Duration::from_secs(30),
            app.upload(ACCOUNT, "other", &file, 64 * 1024),
        )
        .await
        .expect("an upload beside quiet ones is not held back")
        .unwrap();
        assert_eq!(status(&other), ImportStatus::CompletedSuccess);
        assert_eq!(other.rows_imported, stats.valid);

        for (id, upload) in quiet {
            upload.tx.send(finish_message(finish())).await.unwrap();
            // The stream ends after finish: that commits the import.
            drop(upload.tx);
            let import = upload.call.await.unwrap().unwrap();
            assert_eq!(status(&import), ImportStatus::CompletedSuccess, "{id}");
            assert_eq!(import.rows_imported, 200, "{id}");
        }
    }
}

backend_tests! {
    /// A file cut short in a quoted value would not parse; the finish message's size says
    /// what really happened.
    async fn a_truncated_file_is_reported_as_truncated_not_as_unreadable(backend) {
        let app = spawn_app(backend).await;
        let whole = format!("{HEADER}ada@example.com,Ada,Lovelace,,\"Countess\nof Lovelace\",\n");
        // Cut inside the quoted value, after its line break.
        let cut = &whole.as_bytes()[..whole.len() - 8];
        let size = whole.len() as i64;
        let messages = upload_messages(
            ACCOUNT,
            "cut",
            "users.csv",
            cut,
            1024,
            proto::UploadFinish {
                size_bytes: Some(size),
                sha256: String::new(),
            },
        );
        let import = app.send(messages).await.unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(
            import.error_message.contains(&format!("says the file has {size} bytes")),
            "{}",
            import.error_message
        );
        assert_eq!(app.users_of(ACCOUNT, "cut").await, 0);
    }
}
