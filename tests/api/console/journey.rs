//! The help page's journey, in the browser: Imports, New Import, the template, Save, the
//! import completing, its status and Errors, the fix-up file, the Users.

use super::*;
use crate::support::browser::Engine;

/// The journey in Firefox too (SQLite: the backend changes nothing the browser sees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(firefox_tests),
    ignore = "firefox-esr and geckodriver are not installed (.ci/run installs them)"
)]
async fn the_help_pages_journey_in_firefox() {
    journey(Backend::Sqlite, Engine::Firefox, "firefox").await;
}

/// Open Imports (empty), New Import, download the Users Import Template, add rows to it,
/// choose it and Save, then the import's page with "Completed - Partial", its counters and its
/// two row errors; the fix-up file holds exactly the failed rows, and imported as "the fixed
/// file" it completes; the Imports list shows both as the help page describes; Users shows the
/// four created.
async fn journey(backend: Backend, engine: Engine, label: &str) {
    let app = console_app(backend, |_| {}).await;
    let browser = Browser::open_in(engine, app.console_addr.unwrap(), label).await;
    // The account picker of an open server, which says it is open.
    browser.goto("/").await;
    assert!(
        browser
            .text(".banner")
            .await
            .contains("This console is open")
    );
    // By the keyboard: the field has the focus, Enter submits.
    assert!(browser.unlabelled().await.is_empty());
    let focused = browser
        .client
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused.as_str(), Some("account"));
    browser
        .find("#account")
        .await
        .send_keys(&format!("{ACCOUNT}\u{E007}"))
        .await
        .unwrap();
    browser.wait_text("h1", "Imports").await;
    assert_eq!(browser.path().await, "/accounts/acme/imports");
    assert!(browser.text(".empty").await.contains("No imports yet"));
    browser.screenshot("imports-empty").await;

    // New Import, at the top right.
    browser
        .find("a.button.primary")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_text("h1", "New Import").await;
    assert_eq!(browser.text("#type").await, "Users (CSV)");
    assert!(browser.text("aside").await.contains("Imports Templates"));
    let columns = browser.table("table.columns-help").await;
    assert_eq!(columns.len(), 6, "{columns:?}");
    assert!(columns[0][0].contains("email (required)"), "{columns:?}");
    assert_eq!(browser.unlabelled().await, Vec::<String>::new());
    browser.screenshot("new-import").await;

    // The template, as the link downloads it, with rows added.
    let template = browser.fetch("/templates/users.csv").await;
    assert_eq!(
        template,
        "email,first_name,last_name,role,job_title,external_id\n\
             ada.lovelace@example.com,Ada,Lovelace,member,Analyst,EMP-0001\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.csv");
    std::fs::write(&file, format!("{template}{BAD_ROWS}")).unwrap();
    browser
        .find("#file")
        .await
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    browser.find("#save").await.click().await.unwrap();

    // The import's page.
    browser
        .wait_text("[data-status]", "Completed - Partial")
        .await;
    assert!(browser.path().await.starts_with("/accounts/acme/imports/"));
    assert_eq!(browser.text("h1").await, "team.csv");
    assert!(
        browser
            .text("[data-explanation]")
            .await
            .contains("Download the fix-up file")
    );
    assert_eq!(browser.text("[data-counter=rows_processed]").await, "4");
    assert_eq!(browser.text("[data-counter=rows_imported]").await, "2");
    assert_eq!(browser.text("[data-counter=rows_failed]").await, "2");
    let errors = browser.table("table.row-errors").await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        &errors[0][..3],
        ["4", "email", "not-an-address"],
        "{errors:?}"
    );
    assert!(errors[0][3].contains("not a valid address"), "{errors:?}");
    assert_eq!(&errors[1][..3], ["5", "role", "owner"], "{errors:?}");
    browser.screenshot("import").await;

    // The fix-up file: the header and the failed rows, to correct.
    let href = browser
        .find("a[href$='fix-up.csv']")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let fix_up = browser.fetch(&href).await;
    let rows: Vec<&str> = fix_up.trim_start_matches('\u{feff}').lines().collect();
    assert_eq!(rows.len(), 3, "{fix_up}");
    assert!(
        rows[0].starts_with("email,first_name,last_name,role,job_title,external_id"),
        "{fix_up}"
    );
    assert!(
        rows[1].starts_with("not-an-address,Alan,Turing"),
        "{fix_up}"
    );
    assert!(
        rows[2].starts_with("linus@example.com,Linus,Torvalds,owner"),
        "{fix_up}"
    );
    let first_import = browser.path().await;

    // Import the fixed file: the two rows corrected, as a retry of this import.
    let fixed = fix_up
        .replace("not-an-address,", "alan@example.com,")
        .replace(",owner,", ",admin,");
    let fixed_path = dir.path().join("team-fixed.csv");
    std::fs::write(&fixed_path, fixed).unwrap();
    browser
        .find("a[href*='retry_of=']")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_text("h1", "New Import").await;
    assert!(browser.text("form .note").await.contains("team.csv"));
    browser
        .find("#file")
        .await
        .send_keys(fixed_path.to_str().unwrap())
        .await
        .unwrap();
    browser.find("#save").await.click().await.unwrap();
    browser
        .wait_text("[data-status]", "Completed - Success")
        .await;
    assert_eq!(browser.text("[data-counter=rows_imported]").await, "2");
    assert_eq!(browser.text("h1").await, "team-fixed.csv");
    // Its details name the import it fixes.
    let fixes = browser
        .find(".settings a")
        .await
        .attr("href")
        .await
        .unwrap();
    assert_eq!(fixes.as_deref(), Some(first_import.as_str()));
    assert_eq!(app.user_count().await, 4);

    // The Imports list, as the help page shows it.
    browser
        .find("nav.sidebar a[href$='/imports']")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_text("h1", "Imports").await;
    let list = browser.table("table.imports").await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        &list[0][..5],
        [
            "team-fixed.csv",
            "Users (CSV)",
            "Completed - Success",
            "2",
            "0"
        ],
        "{list:?}"
    );
    assert_eq!(
        &list[1][..5],
        ["team.csv", "Users (CSV)", "Completed - Partial", "2", "2"],
        "{list:?}"
    );
    browser.screenshot("imports").await;

    // A click on the row opens the import.
    browser
        .find("table.imports tbody tr:nth-child(2) a")
        .await
        .click()
        .await
        .unwrap();
    browser
        .wait_text("[data-status]", "Completed - Partial")
        .await;

    // Users: the two created, with their import.
    browser
        .find("nav.sidebar a[href$='/users']")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_text("h1", "Users").await;
    let users = browser.table("table.users").await;
    let emails: Vec<&str> = users.iter().map(|u| u[0].as_str()).collect();
    assert_eq!(
        emails,
        [
            "ada.lovelace@example.com",
            "alan@example.com",
            "grace@example.com",
            "linus@example.com"
        ],
        "{users:?}"
    );
    browser.screenshot("users").await;
    browser.close().await;
}

/// The template's example row, then three rows of the help page's kinds of mistakes.
const BAD_ROWS: &str = "grace@example.com,Grace,Hopper,admin,Rear Admiral,EMP-0002\n\
                        not-an-address,Alan,Turing,,,\n\
                        linus@example.com,Linus,Torvalds,owner,,\n";

browser_tests! {
    /// The journey in Chromium, on both backends.
    async fn the_help_pages_journey(backend) {
        journey(backend, Engine::Chromium, &format!("{backend:?}").to_lowercase()).await;
    }


    /// An `.xlsx` is refused on the form at once, in the service's words, whether its name or
    /// only its content gives it away, and so is a file over the size limit; nothing is
    /// imported and no import is left.
    async fn a_refused_xlsx_is_shown_on_the_form(backend) {
        let app = console_app(backend, |args| args.max_upload_bytes = 4096).await;
        let browser = Browser::open(app.console_addr.unwrap(), &format!("{backend:?}-xlsx").to_lowercase()).await;
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/saved_as_xlsx.csv");
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("users.xlsx");
        std::fs::copy(&fixture, &named).unwrap();

        browser.goto("/accounts/acme/new-import").await;
        browser.find("#file").await.send_keys(named.to_str().unwrap()).await.unwrap();
        browser.find("#save").await.click().await.unwrap();
        let refusal = browser.wait_text("#form-error", "filename").await;
        assert!(refusal.contains(".csv"), "{refusal}");
        browser.screenshot("refused-xlsx").await;

        // A workbook saved under a .csv name: refused by its content.
        browser.find("#file").await.clear().await.unwrap();
        browser.find("#file").await.send_keys(fixture.to_str().unwrap()).await.unwrap();
        browser.find("#save").await.click().await.unwrap();
        let refusal = browser
            .wait_text("#form-error", "the file is not CSV text: it looks like a ZIP archive (an .xlsx")
            .await;
        assert!(!refusal.starts_with("chunk"), "{refusal}");
        assert!(refusal.contains("save it as CSV"), "{refusal}");

        // Over the limit (4096 bytes here).
        let large = dir.path().join("large.csv");
        let rows: String = (0..200).map(|i| format!("user{i}@example.com,A,B,,,\n")).collect();
        std::fs::write(&large, format!("{HEADER}{rows}")).unwrap();
        browser.find("#file").await.clear().await.unwrap();
        browser.find("#file").await.send_keys(large.to_str().unwrap()).await.unwrap();
        browser.find("#save").await.click().await.unwrap();
        let refusal = browser.wait_text("#form-error", "larger than the limit of 4096 bytes").await;
        assert!(refusal.contains("split it into smaller files"), "{refusal}");
        assert!(app.list(ACCOUNT).await.is_empty());
        assert_eq!(app.user_count().await, 0);
        browser.close().await;
    }
}
