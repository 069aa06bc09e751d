//! UploadImport end to end: statuses, row errors, chunking, encodings, integrity checks.

use bulk_import::proto::ImportStatus;

use crate::helpers::*;

backend_tests! {
    async fn a_clean_file_completes_with_success_and_every_user_stored(backend) {
        let app = spawn_app(backend).await;
        let (file, stats) = generate(&["--rows", "5000", "--seed", "1"]);
        let import = app
            .upload(ACCOUNT, "clean", &file, 256 * 1024)
            .await
            .unwrap();

        assert_eq!(status(&import), ImportStatus::CompletedSuccess);
        assert_eq!(import.rows_processed, stats.rows);
        assert_eq!(import.rows_imported, stats.valid);
        assert_eq!(import.rows_imported, 5000);
        assert_eq!(import.rows_failed, 0);
        assert_eq!(import.bytes_received, stats.bytes);
        assert!(import.complete_time.is_some());
        assert_eq!(import.error_message, "");
        assert_eq!(app.users_of(ACCOUNT, "clean").await, 5000);
        assert!(app.errors(ACCOUNT, "clean").await.is_empty());
    }
}

backend_tests! {
    async fn invalid_and_duplicate_rows_make_a_partial_import_with_exact_counts(backend) {
        let app = spawn_app(backend).await;
        let (file, stats) = generate(&[
            "--rows",
            "30000",
            "--invalid-rate",
            "0.02",
            "--dup-rate",
            "0.01",
            "--seed",
            "7",
        ]);
        let import = app
            .upload(ACCOUNT, "mixed", &file, 64 * 1024)
            .await
            .unwrap();

        assert_eq!(status(&import), ImportStatus::CompletedPartial);
        assert_eq!(import.rows_processed, stats.rows);
        assert_eq!(import.rows_imported, stats.valid);
        assert_eq!(import.rows_failed, stats.invalid + stats.duplicates);
        assert_eq!(app.users_of(ACCOUNT, "mixed").await, stats.valid);

        let errors = app.errors(ACCOUNT, "mixed").await;
        let duplicates = errors
            .iter()
            .filter(|e| e.code == "DUPLICATE_IN_FILE")
            .count() as i64;
        assert_eq!(duplicates, stats.duplicates);
        let failed_rows: std::collections::BTreeSet<i64> =
            errors.iter().map(|e| e.row_number).collect();
        assert_eq!(failed_rows.len() as i64, import.rows_failed);
        // Pages follow file order.
        assert!(
            errors
                .windows(2)
                .all(|w| w[0].row_number <= w[1].row_number)
        );
    }
}

backend_tests! {
    async fn every_row_error_code_names_the_row_column_and_value(backend) {
        let app = spawn_app(backend).await;
        let existing = format!("{HEADER}taken@example.com,Old,User,member,,EMP-1\n");
        let first = app
            .upload(ACCOUNT, "first", existing.as_bytes(), 1024)
            .await
            .unwrap();
        assert_eq!(status(&first), ImportStatus::CompletedSuccess);

        let long = "é".repeat(101);
        let file = format!(
            "{HEADER}\
             ,Ada,Lovelace,admin,,\n\
             ada at example.com,Ada,,,,\n\
             grace@example.com,{long},Hopper,,,\n\
             alan@example.com,\"Al\tan\",Turing,,,\n\
             edsger@example.com,Edsger,Dijkstra,superuser,,\n\
             barbara@example.com,Barbara,Liskov,viewer,,E-7\n\
             BARBARA@example.com,Barb,Liskov,,,\n\
             TAKEN@example.com,Someone,Else,,,\n\
             donald@example.com,Donald,Knuth,,,EMP-1\n\
             frances@example.com,Frances\n\
             ken@example.com,Ken,Thompson,member,,E-7\n\
             dennis@example.com,Dennis,Ritchie,Member,Engineer,\n"
        );
        let import = app
            .upload(ACCOUNT, "codes", file.as_bytes(), 7)
            .await
            .unwrap();
        assert_eq!(status(&import), ImportStatus::CompletedPartial);
        assert_eq!(import.rows_processed, 12);
        assert_eq!(import.rows_imported, 2);
        assert_eq!(import.rows_failed, 10);

        let errors = app.errors(ACCOUNT, "codes").await;
        let e = |row, column: &str, code: &str| (row, column.to_owned(), code.to_owned());
        assert_eq!(
            codes(&errors),
            vec![
                e(2, "email", "REQUIRED"),
                e(3, "email", "INVALID_EMAIL"),
                e(4, "first_name", "TOO_LONG"),
                e(5, "first_name", "INVALID_CHARACTER"),
                e(6, "role", "INVALID_ROLE"),
                e(8, "email", "DUPLICATE_IN_FILE"),
                e(9, "email", "ALREADY_EXISTS"),
                e(10, "external_id", "ALREADY_EXISTS"),
                e(11, "", "FIELD_COUNT"),
                e(12, "external_id", "DUPLICATE_IN_FILE"),
            ]
        );
        let by_row = |row| errors.iter().find(|e| e.row_number == row).unwrap();
        assert_eq!(by_row(3).value, "ada at example.com");
        assert_eq!(by_row(4).value.chars().count(), 101);
        assert_eq!(
            by_row(6).message,
            "role must be one of admin, member, viewer; got 'superuser' (leave it empty for member)"
        );
        assert_eq!(by_row(6).value, "superuser");
        assert!(by_row(8).message.contains("row 7"), "{}", by_row(8).message);
        assert_eq!(by_row(8).value, "BARBARA@example.com");
        assert!(by_row(9).message.contains("already exists"));
        assert!(by_row(11).message.contains("2 fields but the header has 6"));
        assert!(by_row(12).message.contains("row 7"));
        assert_eq!(
            app.users(ACCOUNT).await,
            vec![
                "barbara@example.com|Barbara|Liskov|viewer||E-7",
                "dennis@example.com|Dennis|Ritchie|member|Engineer|",
                "taken@example.com|Old|User|member||EMP-1",
            ]
        );
    }
}

backend_tests! {
    async fn values_in_row_errors_are_cut_to_200_characters(backend) {
        let app = spawn_app(backend).await;
        let file = format!("{HEADER}a@example.com,{},,,,\n", "x".repeat(5000));
        app.upload(ACCOUNT, "long", file.as_bytes(), 1024)
            .await
            .unwrap();
        let errors = app.errors(ACCOUNT, "long").await;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].value, "x".repeat(200));
        assert_eq!(errors[0].code, "TOO_LONG");
    }
}

/// A file with every awkward spot: a quoted field with a line break and the delimiter (in a
/// column the template ignores), doubled quotes, multi-byte characters, CRLF line ends, a blank
/// line.
const AWKWARD: &str = "email,first_name,last_name,role,job_title,external_id,notes\r\n\
    zoe@example.com,Zoë,\"O'Brien, \"\"Jr\"\"\",admin,Head of Growth,É-1,\"line one\r\nline two, too\"\r\n\
    \r\n\
    søren@example.com,Søren,Kierkegaard,,Łukasz's boss,,\r\n\
    bad@,Chloé,Nguyễn,,,,\r\n\
    mãe@example.com,Mãe,García,VIEWER,,,\r\n";

backend_tests! {
    async fn chunks_cut_anywhere_give_the_same_import(backend) {
        let app = spawn_app(backend).await;
        let file = AWKWARD.as_bytes();
        let reference = app
            .upload("whole", "whole", file, file.len())
            .await
            .unwrap();
        assert_eq!(status(&reference), ImportStatus::CompletedPartial);
        assert_eq!(reference.rows_processed, 4);
        assert_eq!(reference.rows_imported, 3);
        let reference_errors = codes(&app.errors("whole", "whole").await);
        assert_eq!(
            reference_errors,
            vec![(5, "email".to_owned(), "INVALID_EMAIL".to_owned())]
        );
        let reference_users = app.users("whole").await;
        assert_eq!(
            reference_users,
            vec![
                "mãe@example.com|Mãe|García|viewer||",
                "søren@example.com|Søren|Kierkegaard|member|Łukasz's boss|",
                "zoe@example.com|Zoë|O'Brien, \"Jr\"|admin|Head of Growth|É-1",
            ]
        );

        // Every cut into two chunks: inside quotes, inside each multi-byte character, between
        // every CR and LF.
        for cut in 1..file.len() {
            let account = format!("cut-{cut}");
            let messages = vec![
                metadata(&account, "awkward", "users.csv"),
                chunk(&file[..cut]),
                chunk(&file[cut..]),
                finish_message(finish()),
            ];
            let import = app.send(messages).await.unwrap();
            assert_eq!(import.rows_processed, 4, "cut at {cut}");
            assert_eq!(import.rows_imported, 3, "cut at {cut}");
            assert_eq!(
                codes(&app.errors(&account, "awkward").await),
                reference_errors
            );
            assert_eq!(app.users(&account).await, reference_users, "cut at {cut}");
        }
        // And one byte at a time.
        let import = app.upload("bytewise", "awkward", file, 1).await.unwrap();
        assert_eq!(import.rows_imported, 3);
        assert_eq!(app.users("bytewise").await, reference_users);
    }
}

backend_tests! {
    async fn an_excel_file_with_bom_and_crlf_imports_like_a_plain_one(backend) {
        let app = spawn_app(backend).await;
        let (plain, stats) = generate(&["--rows", "2000", "--seed", "3"]);
        let (excel, _) = generate(&["--rows", "2000", "--seed", "3", "--bom", "--crlf"]);
        assert!(excel.starts_with(b"\xEF\xBB\xBF"));
        let a = app.upload("plain", "f", &plain, 4096).await.unwrap();
        let b = app.upload("excel", "f", &excel, 4096).await.unwrap();
        assert_eq!(status(&b), ImportStatus::CompletedSuccess);
        assert_eq!(b.rows_imported, stats.valid);
        assert_eq!(a.rows_imported, b.rows_imported);
        assert_eq!(app.users("plain").await, app.users("excel").await);
    }
}

backend_tests! {
    async fn header_only_and_empty_files_have_nothing_to_import(backend) {
        let app = spawn_app(backend).await;
        for (id, file) in [
            ("header-only", HEADER.as_bytes()),
            ("header-no-newline", b"email,first_name".as_slice()),
            ("empty", b"".as_slice()),
            ("blank-lines", b"\r\n\n  \n".as_slice()),
            ("header-and-blank-rows", b"email,role\n,\n\n".as_slice()),
        ] {
            let import = app.upload(ACCOUNT, id, file, 3).await.unwrap();
            assert_eq!(
                status(&import),
                ImportStatus::CompletedNothingToImport,
                "{id}"
            );
            assert_eq!(import.rows_processed, 0, "{id}");
            assert_eq!(import.rows_imported, 0, "{id}");
        }
        assert_eq!(app.user_count().await, 0);
    }
}

backend_tests! {
    async fn unreadable_files_end_in_error_parsing_with_nothing_imported(backend) {
        let app = spawn_app(backend).await;
        // Valid rows first, so that some were written before the problem was found.
        // UTF-8 text first, so the file cannot be taken for Windows-1252.
        let mut late_bad_byte = format!("{HEADER}zoe@example.com,Zoë,,,,\n").into_bytes();
        for i in 0..6000 {
            late_bad_byte.extend_from_slice(format!("user{i}@example.com,U,{i},,,\n").as_bytes());
        }
        late_bad_byte.extend_from_slice(b"zed@example.com,Z\xE9,Z,,,\n");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "no-email",
                b"name,role\nAda,admin\n".to_vec(),
                "no email column",
            ),
            (
                "two-emails",
                b"email,E-mail\na@x.io,b@x.io\n".to_vec(),
                "two columns for email",
            ),
            ("bad-byte", late_bad_byte, "row 6003 has the byte 0xE9"),
        ];
        for (id, file, expected) in cases {
            let import = app.upload(ACCOUNT, id, &file, 8192).await.unwrap();
            assert_eq!(status(&import), ImportStatus::ErrorParsing, "{id}");
            assert!(
                import.error_message.contains(expected),
                "{id}: {}",
                import.error_message
            );
            assert_eq!(import.rows_imported, 0, "{id}");
            assert_eq!(app.users_of(ACCOUNT, id).await, 0, "{id}");
            assert!(import.complete_time.is_some());
        }
    }
}

backend_tests! {
    async fn a_wrong_size_or_checksum_ends_in_error_unknown_with_nothing_imported(backend) {
        let app = spawn_app(backend).await;
        let (file, _) = generate(&["--rows", "10000"]);
        let wrong_size = bulk_import::proto::UploadFinish {
            size_bytes: Some(file.len() as i64 + 1),
            sha256: String::new(),
        };
        let import = app
            .send(upload_messages(
                ACCOUNT, "size", "u.csv", &file, 65536, wrong_size,
            ))
            .await
            .unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(
            import
                .error_message
                .contains(&format!("{} bytes arrived", file.len()))
        );
        assert_eq!(import.rows_imported, 0);
        assert_eq!(app.users_of(ACCOUNT, "size").await, 0);

        let wrong_sha = bulk_import::proto::UploadFinish {
            size_bytes: Some(file.len() as i64),
            sha256: "00".repeat(32),
        };
        let import = app
            .send(upload_messages(
                ACCOUNT, "sha", "u.csv", &file, 65536, wrong_sha,
            ))
            .await
            .unwrap();
        assert_eq!(status(&import), ImportStatus::ErrorUnknown);
        assert!(import.error_message.contains("SHA-256"));
        assert_eq!(app.users_of(ACCOUNT, "sha").await, 0);

        use sha2::Digest;
        let right = bulk_import::proto::UploadFinish {
            size_bytes: Some(file.len() as i64),
            sha256: hex::encode(sha2::Sha256::digest(&file)),
        };
        let import = app
            .send(upload_messages(
                ACCOUNT, "right", "u.csv", &file, 65536, right,
            ))
            .await
            .unwrap();
        assert_eq!(status(&import), ImportStatus::CompletedSuccess);
        assert_eq!(app.users_of(ACCOUNT, "right").await, 10000);
    }
}

backend_tests! {
    async fn a_retried_import_id_is_refused_and_imports_nothing_twice(backend) {
        let app = spawn_app(backend).await;
        let (file, _) = generate(&["--rows", "100"]);
        let first = app.upload(ACCOUNT, "retry-me", &file, 1000).await.unwrap();
        assert_eq!(first.rows_imported, 100);
        let again = app
            .upload(ACCOUNT, "retry-me", &file, 1000)
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists);
        assert!(again.message().contains("retry-me"));
        assert_eq!(app.user_count().await, 100);
        assert_eq!(app.list(ACCOUNT).await.len(), 1);
        // Another account may use the same id.
        let other = app.upload("other", "retry-me", &file, 1000).await.unwrap();
        assert_eq!(other.rows_imported, 100);
    }
}

backend_tests! {
    async fn the_server_makes_an_import_id_when_none_is_given(backend) {
        let app = spawn_app(backend).await;
        let a = app
            .upload(ACCOUNT, "", HEADER.as_bytes(), 10)
            .await
            .unwrap();
        let b = app
            .upload(ACCOUNT, "", HEADER.as_bytes(), 10)
            .await
            .unwrap();
        assert_ne!(a.import_id, b.import_id);
        assert_eq!(a.import_id.len(), 36);
        assert_eq!(app.get(ACCOUNT, &a.import_id).await.unwrap(), a);
    }
}

backend_tests! {
    async fn two_uploads_at_once_both_succeed(backend) {
        let app = spawn_app(backend).await;
        let (one, stats_one) = generate(&["--rows", "40000", "--seed", "11"]);
        // Other users (other addresses and external ids) than the first file's.
        let (two, stats_two) = generate(&["--rows", "40000", "--seed", "12", "--start", "100000"]);
        // The same account: both write into the same unique indexes at the same time.
        let (a, b) = tokio::join!(
            app.upload("shared", "one", &one, 32 * 1024),
            app.upload("shared", "two", &two, 32 * 1024),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            status(&a),
            ImportStatus::CompletedSuccess,
            "{}",
            a.error_message
        );
        assert_eq!(
            status(&b),
            ImportStatus::CompletedSuccess,
            "{}",
            b.error_message
        );
        assert_eq!(a.rows_imported, stats_one.valid);
        assert_eq!(b.rows_imported, stats_two.valid);
        assert_eq!(
            app.users("shared").await.len() as i64,
            stats_one.valid + stats_two.valid
        );

        // Two imports of one account at once, with overlapping addresses: no user twice.
        let (c, d) = tokio::join!(
            app.upload("same", "c", &one, 16 * 1024),
            app.upload("same", "d", &one, 16 * 1024),
        );
        let (c, d) = (c.unwrap(), d.unwrap());
        assert_eq!(c.rows_imported + d.rows_imported, stats_one.valid);
        assert_eq!(c.rows_failed + d.rows_failed, stats_one.valid);
        assert_eq!(app.users("same").await.len() as i64, stats_one.valid);
    }
}

backend_tests! {
    /// A large batch may be written in parts at once (PostgreSQL): the first row of an address
    /// or external id must still be the one kept, however far apart the two rows are. One file
    /// repeats an address (its rows stay in one part), the other an external id with another
    /// address (the batch is then written whole).
    async fn the_first_of_two_rows_is_kept_however_far_apart_in_a_large_file(backend) {
        let app = spawn_app(backend).await;
        let file = |late: &str| {
            let mut file = HEADER.to_owned();
            for row in 2..20_002 {
                if row == 16_000 {
                    file.push_str(late);
                } else {
                    let i = row - 2;
                    file.push_str(&format!("user{i}@example.com,First{i},Last,,,EMP-{i}\n"));
                }
            }
            file
        };
        let cases = [
            // Row 50's address in other case, with an external id of its own.
            ("email", "USER48@EXAMPLE.COM,Late,Email,,,EMP-LATE\n", "row 50"),
            // Another address with the external id of row 100.
            ("id", "late@example.com,Late,Id,,,EMP-98\n", "row 100"),
        ];
        for (account, late, first_row) in cases {
            let import = app
                .upload(account, "far", file(late).as_bytes(), 256 * 1024)
                .await
                .unwrap();
            assert_eq!(status(&import), ImportStatus::CompletedPartial);
            assert_eq!(import.rows_imported, 19_999);
            assert_eq!(import.rows_failed, 1);
            let errors = app.errors(account, "far").await;
            let column = if account == "email" { "email" } else { "external_id" };
            assert_eq!(
                codes(&errors),
                vec![(16_000, column.to_owned(), "DUPLICATE_IN_FILE".to_owned())]
            );
            assert!(errors[0].message.contains(first_row), "{}", errors[0].message);
            let users = app.users(account).await;
            assert_eq!(users.len(), 19_999);
            assert!(users.contains(&"user48@example.com|First48|Last|member||EMP-48".to_owned()));
            assert!(users.contains(&"user98@example.com|First98|Last|member||EMP-98".to_owned()));
            assert!(!users.iter().any(|u| u.contains("|Late|")));
        }
    }
}

backend_tests! {
    /// An address another import is adding is refused, but the message says that import is
    /// still running: if it fails, its users go and the row can be imported again.
    async fn a_row_held_by_a_running_import_says_so(backend) {
        let app = spawn_app(backend).await;
        let mut rows = HEADER.to_owned();
        // More than the first 8 KiB, which are held until the content was looked at.
        for n in 0..400 {
            rows.push_str(&format!("held{n}@example.com,Held,Row,,,\n"));
        }
        let running = crate::lifecycle::open_upload(&app, ACCOUNT, "running").await;
        running.tx.send(chunk(rows.as_bytes())).await.unwrap();
        crate::lifecycle::wait_for_imported_rows(&app, ACCOUNT, "running").await;

        let file = format!("{HEADER}held7@example.com,Other,Row,,,\nfree@example.com,Free,Row,,,\n");
        let second = app
            .upload(ACCOUNT, "second", file.as_bytes(), 1024)
            .await
            .unwrap();
        assert_eq!(status(&second), ImportStatus::CompletedPartial);
        let errors = app.errors(ACCOUNT, "second").await;
        assert_eq!(
            codes(&errors),
            vec![(2, "email".to_owned(), "ALREADY_EXISTS".to_owned())]
        );
        assert!(
            errors[0]
                .message
                .contains("is being added by import 'running', which is still running"),
            "{}",
            errors[0].message
        );

        // The running import fails: its users go, the address is free again.
        drop(running.tx);
        let _ = running.call.await;
        let ended = crate::lifecycle::wait_for_terminal(&app, ACCOUNT, "running").await;
        assert_eq!(status(&ended), ImportStatus::ErrorUnknown);
        assert_eq!(app.users_of(ACCOUNT, "running").await, 0);
        let again = format!("{HEADER}held7@example.com,Other,Row,,,\n");
        let third = app.upload(ACCOUNT, "third", again.as_bytes(), 1024).await.unwrap();
        assert_eq!(status(&third), ImportStatus::CompletedSuccess);
    }
}
