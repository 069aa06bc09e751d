//! Real files from real spreadsheets: the corpus of `tests/fixtures/` (written by
//! `make_fixtures.py`), each uploaded through the gRPC API in several chunkings and checked
//! against `manifest.json`.

use std::path::PathBuf;

use bulk_import::proto::ImportStatus;
use serde_json::Value;
use tonic::Code;

use crate::helpers::*;

fn fixtures() -> (PathBuf, Vec<Value>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_slice(&manifest).unwrap();
    assert!(cases.len() >= 39, "the corpus is all there");
    (dir, cases)
}

backend_tests! {
    async fn every_fixture_gives_its_expected_outcome_however_it_is_cut(backend) {
        let app = spawn_app(backend).await;
        let (dir, cases) = fixtures();
        for (n, case) in cases.iter().enumerate() {
            let name = case["file"].as_str().unwrap();
            let file = std::fs::read(dir.join(name)).unwrap();
            for chunk in [file.len().max(1), 1000, 7, 1] {
                let account = format!("fixture-{n}-{chunk}");
                let context = format!("{name} in chunks of {chunk}");
                let result = app.upload(&account, "f", &file, chunk).await;
                let expected = case["status"].as_str().unwrap();
                if expected == "INVALID_ARGUMENT" {
                    let status = result.expect_err(&context);
                    assert_eq!(status.code(), Code::InvalidArgument, "{context}");
                    let message = case["message"].as_str().unwrap();
                    assert!(
                        status.message().contains(message),
                        "{context}: {}",
                        status.message()
                    );
                    assert!(app.list(&account).await.is_empty(), "{context}");
                    continue;
                }
                let import = result.unwrap_or_else(|e| panic!("{context}: {e:?}"));
                let status = ImportStatus::try_from(import.status).unwrap();
                assert_eq!(
                    status.as_str_name(),
                    format!("IMPORT_STATUS_{expected}"),
                    "{context}: {}",
                    import.error_message
                );
                let number = |key: &str| case.get(key).and_then(Value::as_i64);
                if let Some(rows) = number("rows_processed") {
                    assert_eq!(import.rows_processed, rows, "{context}");
                }
                if let Some(rows) = number("rows_imported") {
                    assert_eq!(import.rows_imported, rows, "{context}");
                    assert_eq!(app.users_of(&account, "f").await, rows, "{context}");
                }
                if let Some(rows) = number("rows_failed") {
                    assert_eq!(import.rows_failed, rows, "{context}");
                }
                if let Some(encoding) = case.get("encoding").and_then(Value::as_str) {
                    assert_eq!(import.encoding, encoding, "{context}");
                }
                if let Some(delimiter) = case.get("delimiter").and_then(Value::as_str) {
                    assert_eq!(import.delimiter, delimiter, "{context}");
                }
                if let Some(message) = case.get("message").and_then(Value::as_str) {
                    assert!(
                        import.error_message.contains(message),
                        "{context}: {}",
                        import.error_message
                    );
                }
                if let Some(message) = case.get("row_error_message").and_then(Value::as_str) {
                    let errors = app.errors(&account, "f").await;
                    assert!(
                        errors.iter().any(|e| e.message.contains(message)),
                        "{context}: {errors:?}"
                    );
                }
                if let Some(errors) = case.get("errors").and_then(Value::as_array) {
                    let expected: Vec<(i64, String, String)> = errors
                        .iter()
                        .map(|e| {
                            (
                                e[0].as_i64().unwrap(),
                                e[1].as_str().unwrap().to_owned(),
                                e[2].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect();
                    assert_eq!(
                        codes(&app.errors(&account, "f").await),
                        expected,
                        "{context}"
                    );
                }
            }
        }
    }
}

backend_tests! {
    async fn the_same_sheet_saved_by_excel_in_every_format_gives_the_same_users(backend) {
        let app = spawn_app(backend).await;
        let (dir, cases) = fixtures();
        let mut reference: Option<(String, Vec<String>)> = None;
        let mut compared = 0;
        for case in cases.iter().filter(|c| c["same_users"] == "excel") {
            let name = case["file"].as_str().unwrap();
            let file = std::fs::read(dir.join(name)).unwrap();
            let import = app.upload(name, "excel", &file, 4096).await.unwrap();
            assert_eq!(
                status(&import),
                ImportStatus::CompletedSuccess,
                "{name}: {}",
                import.error_message
            );
            let users = app.users(name).await;
            assert_eq!(users.len(), 6, "{name}");
            match &reference {
                None => reference = Some((name.to_owned(), users)),
                Some((first, expected)) => assert_eq!(&users, expected, "{name} against {first}"),
            }
            compared += 1;
        }
        assert!(compared >= 12);
        let (_, users) = reference.unwrap();
        assert_eq!(
            users[5],
            "zoe@example.com|Zoë|Müller|admin|Head of \"Growth\"|E-001"
        );
        assert!(
            users.contains(&"renee@example.com|Renée|O'Brien|member|Café owner €|E-005".to_owned())
        );
    }
}

backend_tests! {
    async fn a_record_over_one_mebibyte_is_a_row_error_and_the_rows_after_it_import(backend) {
        let app = spawn_app(backend).await;
        let huge = "x".repeat(1_200_000);
        let file = format!(
            "{HEADER}a@example.com,Ann,,,,\n\
             big@example.com,\"{huge}\",,,,\n\
             b@example.com,Bob,,,,\n"
        );
        let import = app
            .upload(ACCOUNT, "huge", file.as_bytes(), 256 * 1024)
            .await
            .unwrap();
        assert_eq!(status(&import), ImportStatus::CompletedPartial);
        assert_eq!(import.rows_processed, 3);
        assert_eq!(import.rows_imported, 2);
        let errors = app.errors(ACCOUNT, "huge").await;
        assert_eq!(
            codes(&errors),
            vec![(3, String::new(), "TOO_LONG".to_owned())]
        );
        assert!(errors[0].message.contains("longer than 1048576 bytes"));
    }
}

backend_tests! {
    async fn stored_row_errors_are_capped_while_the_counters_stay_exact(backend) {
        let app = spawn_app_with(backend, |args| args.max_stored_row_errors = 10).await;
        let (file, stats) = generate(&["--rows", "20000", "--invalid-rate", "0.01", "--seed", "31"]);
        let import = app
            .upload(ACCOUNT, "capped", &file, 64 * 1024)
            .await
            .unwrap();
        assert_eq!(import.rows_failed, stats.invalid);
        assert_eq!(import.rows_imported, stats.valid);
        let errors = app.errors(ACCOUNT, "capped").await;
        assert_eq!(errors.len(), 10);
        // Every failed row has exactly one error in this file.
        assert_eq!(import.row_errors_omitted, stats.invalid - 10);
        // The ones kept are the first ones, in file order.
        assert!(errors.windows(2).all(|w| w[0].row_number < w[1].row_number));

        let full = spawn_app(backend).await;
        let import = full.upload(ACCOUNT, "all", &file, 64 * 1024).await.unwrap();
        assert_eq!(import.row_errors_omitted, 0);
        assert_eq!(full.errors(ACCOUNT, "all").await[..10], errors[..]);
    }
}
