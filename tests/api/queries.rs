//! GetImport, ListImports and GetImportTemplate: scoping, paging, arguments.

use bulk_import::proto::{self, ImportStatus};
use tonic::Code;

use crate::helpers::*;

backend_tests! {
    async fn another_accounts_import_is_invisible(backend) {
        let app = spawn_app(backend).await;
        app.upload(ACCOUNT, "secret", HEADER.as_bytes(), 10)
            .await
            .unwrap();

        let status = app.get("intruder", "secret").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("secret"));
        assert!(app.list("intruder").await.is_empty());
        assert_eq!(app.list(ACCOUNT).await.len(), 1);
    }
}

backend_tests! {
    async fn imports_are_listed_newest_first_page_by_page(backend) {
        let app = spawn_app(backend).await;
        for i in 1..=5 {
            app.upload(ACCOUNT, &format!("import-{i}"), HEADER.as_bytes(), 10)
                .await
                .unwrap();
        }
        app.upload("other", "elsewhere", HEADER.as_bytes(), 10)
            .await
            .unwrap();

        let mut client = app.client.clone();
        let mut token = String::new();
        let mut pages = Vec::new();
        // Bounded: a server that handed out tokens forever must fail the test, not hang it.
        for _ in 0..1000 {
            let page = client
                .list_imports(proto::ListImportsRequest {
                    account_id: ACCOUNT.into(),
                    page_size: 2,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            pages.push(
                page.imports
                    .iter()
                    .map(|i| i.import_id.clone())
                    .collect::<Vec<_>>(),
            );
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
            // A token is bound to its account.
            let misuse = client
                .list_imports(proto::ListImportsRequest {
                    account_id: "other".into(),
                    page_size: 2,
                    page_token: token.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(misuse.code(), Code::InvalidArgument);
            assert!(misuse.message().contains("page_token"));
        }
        assert_eq!(
            pages,
            vec![
                vec!["import-5", "import-4"],
                vec!["import-3", "import-2"],
                vec!["import-1"],
            ]
        );
    }
}

backend_tests! {
    async fn row_errors_come_in_pages_in_file_order(backend) {
        let app = spawn_app(backend).await;
        let mut file = HEADER.to_owned();
        for i in 0..250 {
            file.push_str(&format!("user{i}@example.com,,,boss,,\n"));
        }
        let import = app
            .upload(ACCOUNT, "errors", file.as_bytes(), 500)
            .await
            .unwrap();
        assert_eq!(import.rows_failed, 250);

        let mut client = app.client.clone();
        let mut token = String::new();
        let mut rows = Vec::new();
        let mut pages = 0;
        // Bounded: a server that handed out tokens forever must fail the test, not hang it.
        for _ in 0..1000 {
            let page = client
                .get_import(proto::GetImportRequest {
                    account_id: ACCOUNT.into(),
                    import_id: "errors".into(),
                    errors_page_size: 0, // the default, 100
                    errors_page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.import.unwrap().rows_failed, 250);
            rows.extend(page.errors.iter().map(|e| e.row_number));
            pages += 1;
            token = page.next_errors_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(rows, (2..252).collect::<Vec<i64>>());
    }
}

backend_tests! {
    async fn malformed_arguments_name_the_field(backend) {
        let app = spawn_app(backend).await;
        let mut client = app.client.clone();
        let get = |account: &str, id: &str, size: i32, token: &str| proto::GetImportRequest {
            account_id: account.into(),
            import_id: id.into(),
            errors_page_size: size,
            errors_page_token: token.into(),
        };
        for (request, field) in [
            (get("", "x", 0, ""), "account_id"),
            (get(ACCOUNT, "", 0, ""), "import_id"),
            (get(ACCOUNT, "bad id!", 0, ""), "import_id"),
            (get(ACCOUNT, "x", -1, ""), "errors_page_size"),
            (get(ACCOUNT, "x", 0, "garbage"), "errors_page_token"),
        ] {
            let status = client.get_import(request).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{field}");
            assert!(
                status.message().starts_with(field),
                "{field}: {}",
                status.message()
            );
        }
        let status = client
            .list_imports(proto::ListImportsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("account_id"));
    }
}

backend_tests! {
    async fn the_template_is_ready_to_save_and_imports_cleanly(backend) {
        let app = spawn_app(backend).await;
        let mut client = app.client.clone();
        let template = client
            .get_import_template(proto::GetImportTemplateRequest {
                r#type: proto::ImportType::Users as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(template.filename, "users_import_template.csv");
        let names: Vec<_> = template.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "email",
                "first_name",
                "last_name",
                "role",
                "job_title",
                "external_id"
            ]
        );
        assert!(template.csv.starts_with(HEADER));
        assert!(template.columns[0].required);

        // The template itself, uploaded as is, imports its example row.
        let import = app
            .upload(ACCOUNT, "template", template.csv.as_bytes(), 1024)
            .await
            .unwrap();
        assert_eq!(status(&import), ImportStatus::CompletedSuccess);
        assert_eq!(import.rows_imported, 1);

        let unknown = client
            .get_import_template(proto::GetImportTemplateRequest { r#type: 9 })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::InvalidArgument);
    }
}
