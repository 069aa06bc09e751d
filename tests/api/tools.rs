//! Real outside clients: the README's grpcurl examples, run as they are, and `buf lint`.
//!
//! Without the tool installed these tests print that they were skipped; with
//! `BULK_IMPORT_REQUIRE_TOOLS=1` (set by `.ci/run`) a missing tool is a failure.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

/// Whether `tool` can run here; panics when CI requires it and it cannot.
fn available(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    if !found {
        if std::env::var("BULK_IMPORT_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{tool} is required (BULK_IMPORT_REQUIRE_TOOLS=1) but not installed");
        }
        println!("skipped: {tool} is not installed (.ci/run installs it)");
    }
    found
}

/// The bash blocks between `<!-- grpcurl-examples -->` and `<!-- /grpcurl-examples -->`.
fn readme_examples() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("<!-- grpcurl-examples -->")
        .expect("start marker");
    let end = readme
        .find("<!-- /grpcurl-examples -->")
        .expect("end marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[start..end].lines() {
        match line.trim() {
            "```bash" => in_block = true,
            "```" => in_block = false,
            _ if in_block => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(
        script.contains("grpcurl"),
        "the README has grpcurl examples"
    );
    script
}

#[tokio::test]
async fn the_readme_grpcurl_examples_work_as_written() {
    if !available("grpcurl") || !available("jq") {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let users = format!(
        "{HEADER}ada@example.com,Ada,Lovelace,admin,Countess,E1\n\
         grace@example.com,Grace,Hopper,,,\n\
         not-an-address,Alan,Turing,,,\n"
    );
    std::fs::write(dir.path().join("users.csv"), &users).unwrap();
    let script = readme_examples().replace("localhost:50051", &app.addr.to_string());

    let addr = app.addr;
    let output = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .current_dir(dir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{addr}\n{stdout}\n{stderr}");

    // list
    assert!(stdout.contains("bulkimport.v1.ImportService\n"), "{stdout}");
    assert!(stdout.contains("grpc.health.v1.Health\n"));
    // the template, saved to a file
    let template = std::fs::read_to_string(dir.path().join("template.csv")).unwrap();
    assert!(template.starts_with(HEADER), "{template}");
    // the upload, the get, the watch and the list all show the finished import
    assert_eq!(
        stdout.matches("IMPORT_STATUS_COMPLETED_PARTIAL").count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("\"rowsImported\": \"2\""));
    assert!(stdout.contains("\"rowsFailed\": \"1\""));
    // the row error
    assert!(stdout.contains("\"code\": \"INVALID_EMAIL\""));
    assert!(stdout.contains("\"rowNumber\": \"4\""));
    // health, twice
    assert_eq!(
        stdout.matches("\"status\": \"SERVING\"").count(),
        2,
        "{stdout}"
    );
    assert_eq!(app.users_of("acme", "first-import").await, 2);
}

#[test]
fn the_proto_passes_buf_lint() {
    if !available("buf") {
        return;
    }
    let output = Command::new("buf")
        .arg("lint")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "buf lint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
