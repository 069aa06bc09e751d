//! Sign-in, a forbidden account, and hostile values shown as text, in the browser.

use super::*;

/// The token of `acme` only, which the browser signs in with.
const TOKEN: &str = "console-test-token-3f9a1c0e7b";
/// A token of every account, for the test's own gRPC calls.
const OPS: &str = "console-test-ops-8d2e41b6a0";

/// A tokens file with [`TOKEN`] (`hr-admin`, acme) and [`OPS`] (every account).
fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokens.toml");
    crate::security::tokens_file(
        &path,
        &[("hr-admin", TOKEN, &["acme"]), ("ops", OPS, &["*"])],
    );
    path
}

browser_tests! {
    /// With a tokens file every page asks for a sign-in first; a wrong token is refused on the
    /// form; the right one opens its account (and the page asked for); another account is a
    /// PERMISSION_DENIED page that says nothing of that account's imports; sign-out ends it.
    async fn sign_in_and_a_forbidden_account(backend) {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens_file(dir.path());
        let app = console_app(backend, |args| args.auth_tokens_file = Some(path)).await;
        // An import in the other account, which the token must not see.
        let mut ops = bulk_import::proto::import_service_client::ImportServiceClient::with_interceptor(
            app.channel(),
            bulk_import::cli::Bearer::new(Some(OPS)).unwrap(),
        );
        let messages = upload_messages(
            "other", "secret-import", "secret.csv", b"email\nsecret@example.com\n", 64, finish(),
        );
        ops.upload_import(tokio_stream::iter(messages)).await.unwrap();
        let browser = Browser::open(app.console_addr.unwrap(), &format!("{backend:?}-auth").to_lowercase()).await;

        browser.goto("/accounts/acme/imports").await;
        browser.wait_text("h1", "Sign in").await;
        assert!(browser.path().await.starts_with("/sign-in?next=%2Faccounts%2Facme%2Fimports"));
        assert_eq!(
            browser.find("#token").await.attr("type").await.unwrap().as_deref(),
            Some("password")
        );
        assert!(browser.all(".banner").await.is_empty(), "not an open console");
        assert_eq!(browser.unlabelled().await, Vec::<String>::new());
        browser.screenshot("sign-in").await;

        browser.find("#token").await.send_keys("not-the-token").await.unwrap();
        browser.find("button[type=submit]").await.click().await.unwrap();
        browser.wait_text("#sign-in-error", "That token is not valid").await;

        browser.find("#token").await.send_keys(TOKEN).await.unwrap();
        browser.find("button[type=submit]").await.click().await.unwrap();
        browser.wait_text("h1", "Imports").await;
        assert_eq!(browser.path().await, "/accounts/acme/imports");
        assert!(browser.text(".who").await.contains("hr-admin"));

        // The session cookie is out of the page's reach.
        let cookies = browser.client.execute("return document.cookie", vec![]).await.unwrap();
        assert_eq!(cookies.as_str(), Some(""));

        for path in ["/accounts/other/imports", "/accounts/other/imports/secret-import",
                     "/accounts/other/users"] {
            browser.goto(path).await;
            browser.wait_text("h1", "Not allowed").await;
            let page = browser.text("main").await;
            assert!(page.contains("PERMISSION_DENIED") || page.contains("may not act in"), "{page}");
            assert!(!page.contains("secret"), "{page}");
        }
        browser.screenshot("forbidden").await;

        browser.goto("/accounts/acme/imports").await;
        browser.find("form[action='/sign-out'] button").await.click().await.unwrap();
        browser.wait_text("h1", "Sign in").await;
        browser.goto("/accounts/acme/imports").await;
        browser.wait_text("h1", "Sign in").await;
        browser.close().await;
    }

    /// Cell values, messages and the file name that hold markup show as text: the list, the
    /// import's Errors, and Users hold no element the file wrote, and no script ran.
    async fn hostile_values_are_shown_as_text(backend) {
        let app = console_app(backend, |_| {}).await;
        let browser = Browser::open(app.console_addr.unwrap(), &format!("{backend:?}-hostile").to_lowercase()).await;
        let name = "<img src=x onerror=alert(1)>.csv";
        let file = "email,first_name,last_name,role,job_title,external_id\n\
                    \"<script>window.pwned=1</script>@x\",A,B,,,\n\
                    eve@example.com,<b>Eve</b>,\"<img src=x onerror=\"\"window.pwned=2\"\">\",,,\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, file).unwrap();

        browser.goto("/accounts/acme/new-import").await;
        browser.find("#file").await.send_keys(path.to_str().unwrap()).await.unwrap();
        browser.find("#save").await.click().await.unwrap();
        browser.wait_text("[data-status]", "Completed - Partial").await;
        assert_eq!(browser.text("h1").await, name);
        let errors = browser.table("table.row-errors").await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0][2], "<script>window.pwned=1</script>@x");
        browser.screenshot("hostile").await;

        browser.goto("/accounts/acme/users").await;
        let users = browser.table("table.users").await;
        assert_eq!(users[0][1], "<b>Eve</b>");
        assert_eq!(users[0][2], "<img src=x onerror=\"window.pwned=2\">");
        browser.goto("/accounts/acme/imports").await;
        assert_eq!(browser.table("table.imports").await[0][0], name);

        // Only the console's own elements: no <b>, <img> or <script> from the file.
        for css in ["main b", "main img", "main script"] {
            assert!(browser.all(css).await.is_empty(), "{css}");
        }
        let pwned = browser.client.execute("return window.pwned === undefined", vec![]).await.unwrap();
        assert_eq!(pwned.as_bool(), Some(true));
        browser.close().await;
    }
}
