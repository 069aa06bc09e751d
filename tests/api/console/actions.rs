//! What a person does to an import in the browser: watch it run, cancel it, revert it.

use super::*;
use bulk_import::proto::ImportStatus;

/// `n` valid rows from `start`.
fn rows(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("user{i}@example.com,User,{i},,,\n"))
        .collect()
}

browser_tests! {
    /// An upload that runs (a gRPC client holds its stream open): its page's counters move as
    /// more rows arrive, without a reload; Cancel ends it CANCELLED with nothing imported.
    async fn a_running_import_moves_live_and_cancels(backend) {
        let app = console_app(backend, |args| args.batch_rows = Some(50)).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = app.client.clone();
        let upload = tokio::spawn(async move {
            client
                .upload_import(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        tx.send(metadata(ACCOUNT, "running", "running.csv")).await.unwrap();
        // More than the 8 KiB the server looks at before it reads rows.
        let first = format!("{HEADER}{}", rows(0, 400));
        tx.send(chunk(first.as_bytes())).await.unwrap();
        let browser = Browser::open(app.console_addr.unwrap(), &format!("{backend:?}-running").to_lowercase()).await;
        browser.goto("/accounts/acme/imports/running").await;
        browser.wait_text("[data-status]", "Processing").await;
        browser.wait_text("[data-counter=rows_processed]", "400").await;
        browser.screenshot("running").await;

        // More rows: the counter moves in place; the page was not loaded again.
        browser.client.execute("window.keptAcrossUpdates = true", vec![]).await.unwrap();
        tx.send(chunk(rows(400, 300).as_bytes())).await.unwrap();
        browser.wait_text("[data-counter=rows_processed]", "700").await;
        let kept = browser.client.execute("return window.keptAcrossUpdates === true", vec![]).await.unwrap();
        assert_eq!(kept.as_bool(), Some(true), "the page was reloaded");

        browser.find("form[action$='/cancel'] button").await.click().await.unwrap();
        browser.wait_text("[data-status]", "Cancelled").await;
        assert!(browser.text("main").await.contains("cancel"));
        browser.screenshot("cancelled").await;
        let answer = upload.await.unwrap();
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Cancelled);
        let import = app.get(ACCOUNT, "running").await.unwrap();
        assert_eq!(status(&import), ImportStatus::Cancelled);
        assert_eq!(import.rows_imported, 0);
        assert_eq!(app.user_count().await, 0);
        drop(tx);
        browser.close().await;
    }

    /// Revert asks first; confirmed, it removes the import's users and says so on its page.
    async fn revert_asks_then_removes_the_users(backend) {
        let app = console_app(backend, |_| {}).await;
        let file = format!("{HEADER}{}", rows(0, 5));
        app.upload(ACCOUNT, "done", file.as_bytes(), 64).await.unwrap();
        assert_eq!(app.user_count().await, 5);
        let browser = Browser::open(app.console_addr.unwrap(), &format!("{backend:?}-revert").to_lowercase()).await;
        browser.goto("/accounts/acme/imports/done").await;
        browser.wait_text("[data-status]", "Completed - Success").await;
        browser.find("a[href$='/revert']").await.click().await.unwrap();
        browser.wait_text("h1", "Revert users.csv?").await;
        assert!(browser.text("main").await.contains("removes the 5 users"));
        browser.screenshot("revert").await;
        // Keep it: nothing happens.
        browser.find("form[action$='/revert'] a.button").await.click().await.unwrap();
        browser.wait_text("[data-status]", "Completed - Success").await;
        assert_eq!(app.user_count().await, 5);

        browser.find("a[href$='/revert']").await.click().await.unwrap();
        browser.find("form[action$='/revert'] button").await.click().await.unwrap();
        browser.wait_text(".note", "Reverted").await;
        assert_eq!(app.user_count().await, 0);
        // Once reverted, it is not offered again.
        assert!(browser.all("a[href$='/revert']").await.is_empty());
        browser.close().await;
    }
}
