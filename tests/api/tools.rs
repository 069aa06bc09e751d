//! Real outside clients: the README's grpcurl examples, run as they are, and `buf lint`.
//!
//! Without the tool installed when the tests were built, these tests are ignored, with the
//! reason; with `BULK_IMPORT_REQUIRE_TOOLS=1` (set by `.ci/run`) they always run, and a
//! missing tool is a failure (see `build.rs`).

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

/// Fails the test when `tool` cannot run.
fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    assert!(found, "{tool} is not installed (.ci/run installs it)");
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
#[cfg_attr(
    not(grpcurl_tests),
    ignore = "grpcurl or jq is not installed (.ci/run installs them)"
)]
async fn the_readme_grpcurl_examples_work_as_written() {
    require("grpcurl");
    require("jq");
    // A server with tokens, as the examples say.
    let dir = tempfile::tempdir().unwrap();
    let token = "readme-example-token";
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"readme\"\nsha256 = \"{}\"\naccounts = [\"acme\"]\n",
            bulk_import::auth::digest(token)
        ),
    )
    .unwrap();
    let app = spawn_app_with(Backend::Sqlite, |args| args.auth_tokens_file = Some(tokens)).await;
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
                .env("TOKEN", token)
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
    // the upload, the get, the watch and the list all show the finished import; so does the
    // dry run of the same file
    assert_eq!(
        stdout.matches("IMPORT_STATUS_COMPLETED_PARTIAL").count(),
        6,
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

    // the dry run, under UPDATE: both users exist, nothing written
    assert!(stdout.contains("\"validateOnly\": true"), "{stdout}");
    assert!(stdout.contains("\"rowsUpdated\": \"2\""), "{stdout}");
    assert_eq!(app.users_of("acme", "check-first").await, 0);
    // the fix-up file, fixed, and its upload
    let fixed = std::fs::read_to_string(dir.path().join("fix.csv")).unwrap();
    assert!(
        fixed.starts_with(
            "\u{feff}email,first_name,last_name,role,job_title,external_id,row_number,errors\r\n"
        ),
        "{fixed}"
    );
    assert!(
        fixed.contains("\r\nalan@example.com,Alan,Turing,,,,4,email INVALID_EMAIL: "),
        "{fixed}"
    );
    assert!(
        stdout.contains("\"retryOfImportId\": \"first-import\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("IMPORT_STATUS_COMPLETED_SUCCESS"),
        "{stdout}"
    );
    // the users, then the revert of the fix
    assert!(
        stdout.contains("\"email\": \"alan@example.com\""),
        "{stdout}"
    );
    assert!(stdout.contains("\"usersRemoved\": \"1\""), "{stdout}");
    assert_eq!(app.users_of("acme", "fix-1").await, 0);
    // the cancel, and what its client got
    assert!(stdout.contains("IMPORT_STATUS_CANCELLED"), "{stdout}");
    assert!(stdout.contains("Code: Canceled"), "{stdout}");
    // the feed from its start: the imports' invitations and the revert, in order; then, after
    // the cursor it ended on, only the held user invited and accepting
    assert!(
        stdout.contains(
            "USER_EVENT_TYPE_INVITED ada@example.com\nUSER_EVENT_TYPE_INVITED \
             grace@example.com\nUSER_EVENT_TYPE_INVITED alan@example.com\n\
             USER_EVENT_TYPE_REMOVED alan@example.com\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("\"usersInvited\": \"1\""), "{stdout}");
    assert!(stdout.contains("INVITATION_STATE_ACCEPTED"), "{stdout}");
    assert_eq!(stdout.matches("since: ").count(), 2, "{stdout}");
    assert!(
        stdout.contains(
            "since: USER_EVENT_TYPE_INVITED kay@example.com\n\
             since: USER_EVENT_TYPE_INVITATION_ACCEPTED kay@example.com\n"
        ),
        "{stdout}"
    );
    // the resumable upload: cut, waiting with the rows read whole stored, then resumed
    assert!(stdout.contains("Code: Aborted"), "{stdout}");
    let waiting = stdout
        .lines()
        .find(|l| l.starts_with("waiting until "))
        .expect("the waiting line");
    assert!(!waiting.contains("null"), "{waiting}");
    assert!(
        !waiting.ends_with("committed_bytes 0"),
        "a whole row was read before the cut: {waiting}"
    );
    let size = std::fs::metadata(dir.path().join("more.csv"))
        .unwrap()
        .len();
    assert!(
        stdout.contains(&format!("\"committedBytes\": \"{size}\"")),
        "{stdout}"
    );
    assert_eq!(app.users_of("acme", "resumable-1").await, 700);
    assert_eq!(app.users("acme").await.len(), 703);
}

#[test]
#[cfg_attr(not(buf_tests), ignore = "buf is not installed (.ci/run installs it)")]
fn the_proto_passes_buf_lint() {
    require("buf");
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

/// grpcurl decodes the error details the service sends (`google.rpc.ErrorInfo`), through
/// reflection, with no proto file given: no "is not recognized".
#[tokio::test]
#[cfg_attr(
    not(grpcurl_tests),
    ignore = "grpcurl or jq is not installed (.ci/run installs them)"
)]
async fn grpcurl_decodes_the_error_details() {
    require("grpcurl");
    let app = spawn_app(Backend::Sqlite).await;
    let addr = app.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("grpcurl")
            .args([
                "-plaintext",
                "-d",
                r#"{"account_id":"acme","import_id":"nope"}"#,
            ])
            .args([addr.as_str(), "bulkimport.v1.ImportService/GetImport"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("Code: NotFound"), "{stderr}");
    assert!(!stderr.contains("is not recognized"), "{stderr}");
    assert!(stderr.contains("google.rpc.ErrorInfo"), "{stderr}");
    assert!(stderr.contains("IMPORT_NOT_FOUND"), "{stderr}");
}
