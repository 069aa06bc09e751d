//! Bad uploads are refused at once, with a message that says what to do, and leave no import.

use bulk_import::proto::{self, ImportStatus};
use tonic::Code;

use crate::helpers::*;

async fn refused(app: &TestApp, messages: Vec<proto::UploadImportRequest>) -> tonic::Status {
    let status = app.send(messages).await.expect_err("refused");
    assert!(
        app.list(ACCOUNT).await.is_empty(),
        "a refused upload must leave no import"
    );
    status
}

backend_tests! {
    async fn the_first_message_must_be_metadata(backend) {
        let app = spawn_app(backend).await;
        let status = refused(
            &app,
            vec![chunk(HEADER.as_bytes()), finish_message(finish())],
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("first message"),
            "{}",
            status.message()
        );

        let status = refused(&app, vec![]).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("metadata"));
    }
}

backend_tests! {
    async fn metadata_fields_are_checked_and_named(backend) {
        let app = spawn_app(backend).await;
        let cases = [
            (metadata("", "x", "users.csv"), "account_id"),
            (metadata(ACCOUNT, "x", "users.xlsx"), "filename"),
            (metadata(ACCOUNT, "x", ""), "filename"),
            (metadata(ACCOUNT, "has space", "users.csv"), "import_id"),
            (metadata(ACCOUNT, &"x".repeat(65), "users.csv"), "import_id"),
        ];
        for (message, field) in cases {
            let status = refused(&app, vec![message, chunk(HEADER.as_bytes())]).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{field}");
            assert!(
                status.message().starts_with(field),
                "{field}: {}",
                status.message()
            );
        }
        let mut unknown_type = metadata(ACCOUNT, "x", "users.csv");
        if let Some(proto::upload_import_request::Payload::Metadata(m)) = &mut unknown_type.payload {
            m.r#type = 42;
        }
        let status = refused(&app, vec![unknown_type]).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("unknown import type 42"));
    }
}

backend_tests! {
    async fn an_upper_case_csv_extension_is_fine(backend) {
        let app = spawn_app(backend).await;
        let import = app
            .send(upload_messages(
                ACCOUNT,
                "caps",
                "USERS.CSV",
                HEADER.as_bytes(),
                10,
                finish(),
            ))
            .await
            .unwrap();
        assert_eq!(status(&import), ImportStatus::CompletedNothingToImport);
        assert_eq!(import.filename, "USERS.CSV");
    }
}

backend_tests! {
    async fn content_that_is_not_csv_text_is_refused_at_the_first_chunk(backend) {
        let app = spawn_app(backend).await;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "xlsx",
                b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00".to_vec(),
                "ZIP",
            ),
            (
                "pdf",
                b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj".to_vec(),
                "PDF",
            ),
            (
                "png",
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec(),
                "image",
            ),
            (
                "xls",
                b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1\x00\x00\x00\x00".to_vec(),
                "xls",
            ),
            (
                "nul",
                b"email,name\nada@example.com,A\x00da\n".to_vec(),
                "NUL",
            ),
            ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00".to_vec(), "gzip"),
        ];
        for (name, head, expected) in cases {
            // Refused at the first chunk: the rest of the stream is never read.
            let messages = vec![metadata(ACCOUNT, name, "users.csv"), chunk(&head)];
            let status = refused(&app, messages).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{name}");
            assert!(
                status.message().contains(expected),
                "{name}: {}",
                status.message()
            );
            assert!(
                status.message().contains("save it as CSV"),
                "{}",
                status.message()
            );
        }
        assert_eq!(app.user_count().await, 0);
    }
}

backend_tests! {
    async fn a_file_over_the_size_limit_is_stopped_with_resource_exhausted(backend) {
        let app = spawn_app_with(backend, |args| args.max_upload_bytes = 100_000).await;
        let (file, _) = generate(&["--rows", "5000"]);
        assert!(file.len() > 100_000);
        let status = app.upload(ACCOUNT, "big", &file, 8192).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("100000 bytes"),
            "{}",
            status.message()
        );

        let import = app.get(ACCOUNT, "big").await.unwrap();
        assert_eq!(
            ImportStatus::try_from(import.status).unwrap(),
            ImportStatus::ErrorUnknown
        );
        assert!(import.error_message.contains("larger than the limit"));
        assert_eq!(import.rows_imported, 0);
        assert_eq!(app.users_of(ACCOUNT, "big").await, 0);

        // Exactly at the limit is fine.
        let exact = &file[..100_000];
        let cut = exact.iter().rposition(|&b| b == b'\n').unwrap() + 1;
        let mut at_limit = exact[..cut].to_vec();
        at_limit.resize(100_000, b'\n');
        let import = app
            .upload(ACCOUNT, "at-limit", &at_limit, 8192)
            .await
            .unwrap();
        assert_eq!(status_of(&import), ImportStatus::CompletedSuccess);
    }
}

fn status_of(import: &proto::Import) -> ImportStatus {
    ImportStatus::try_from(import.status).unwrap()
}

backend_tests! {
    async fn a_chunk_over_the_message_limit_is_named_and_ends_the_import(backend) {
        let app = spawn_app(backend).await;
        let mut file = HEADER.as_bytes().to_vec();
        file.resize(6 * 1024 * 1024, b'x');
        let messages = upload_messages(ACCOUNT, "big-chunk", "users.csv", &file, file.len(), finish());
        let status = app.send(messages).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("chunks of at most 4 MiB"),
            "{}",
            status.message()
        );
        let import = app.get(ACCOUNT, "big-chunk").await.unwrap();
        assert_eq!(
            ImportStatus::try_from(import.status),
            Ok(ImportStatus::ErrorUnknown)
        );
        assert_eq!(app.users_of(ACCOUNT, "big-chunk").await, 0);
    }
}
