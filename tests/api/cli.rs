//! The service's own client, as a person and a script use it: the help page's words, `--json`,
//! the documented exit codes (0, 2 for Completed - Partial, 1 for errors), one-line errors, a
//! server that cannot be reached, and the template without any server.

use std::path::Path;

use serde_json::Value;

use crate::helpers::*;

/// What a run of the binary gave: its exit code, stdout and stderr.
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) out: String,
    pub(crate) err: String,
}

/// Runs `bulk-import <command> [--server S --account A] <args...>` against `server`.
pub(crate) async fn bulk_import(server: Option<&str>, command: &str, args: &[&str]) -> Ran {
    bulk_import_with(server, command, args, &[]).await
}

/// `bulk_import` with these environment variables set.
pub(crate) async fn bulk_import_with(
    server: Option<&str>,
    command: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Ran {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut argv = vec![command.to_owned()];
    if let Some(server) = server {
        argv.extend([
            "--server".into(),
            server.into(),
            "--account".into(),
            ACCOUNT.into(),
        ]);
    }
    argv.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulk-import"))
            .args(&argv)
            .env_remove("BULK_IMPORT_SERVER")
            .env_remove("BULK_IMPORT_ACCOUNT")
            .envs(env)
            .output()
            .unwrap();
        Ran {
            code: output.status.code().expect("an exit code"),
            out: String::from_utf8_lossy(&output.stdout).into_owned(),
            err: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// Plain output, `--json` and the exit code of each outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_say_how_they_ended_in_words_json_and_exit_codes() {
    let app = spawn_app(Backend::Sqlite).await;
    let server = format!("http://{}", app.addr);
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.csv",
        &format!("{HEADER}ada@x.io,Ada,,,,\ngrace@x.io,,,,,\n"),
    );
    let mixed = write(
        dir.path(),
        "mixed.csv",
        &format!("{HEADER}bob@x.io,Bob,,,,\nnot-an-address,Al,,,,\neve@x.io,,,boss,,\n"),
    );
    let empty = write(dir.path(), "empty.csv", HEADER);
    let broken = write(dir.path(), "broken.csv", "email\n\"never closed,\n");
    let s = Some(server.as_str());

    let ran = bulk_import(s, "upload", &["--import-id", "good", &good]).await;
    assert_eq!(ran.code, 0, "{}{}", ran.out, ran.err);
    assert!(
        ran.out
            .starts_with("Completed - Success: 2 imported, 0 failed\n"),
        "{}",
        ran.out
    );
    assert!(ran.out.contains("import_id: good"), "{}", ran.out);

    let ran = bulk_import(s, "upload", &["--import-id", "mixed", &mixed]).await;
    assert_eq!(
        ran.code, 2,
        "Completed - Partial exits 2: {}{}",
        ran.out, ran.err
    );
    assert!(
        ran.out
            .starts_with("Completed - Partial: 1 imported, 2 failed\n"),
        "{}",
        ran.out
    );
    // The first row errors, as a table.
    assert!(ran.out.contains("ROW  COLUMN  CODE"), "{}", ran.out);
    assert!(
        ran.out.contains("  3  email   INVALID_EMAIL"),
        "{}",
        ran.out
    );
    assert!(ran.out.contains("  4  role    INVALID_ROLE"), "{}", ran.out);

    let ran = bulk_import(s, "upload", &["--import-id", "empty", &empty]).await;
    assert_eq!(ran.code, 0, "{}", ran.out);
    assert!(
        ran.out
            .starts_with("Completed - Nothing to Import: 0 imported, 0 failed"),
        "{}",
        ran.out
    );

    let ran = bulk_import(s, "upload", &["--import-id", "broken", &broken]).await;
    assert_eq!(
        ran.code, 1,
        "Error - Parsing exits 1: {}{}",
        ran.out, ran.err
    );
    assert!(ran.out.starts_with("Error - Parsing: "), "{}", ran.out);

    // The same for scripts: one JSON document, the proto's field names.
    let ran = bulk_import(
        s,
        "upload",
        &["--json", "--import-id", "mixed-json", &mixed],
    )
    .await;
    assert_eq!(ran.code, 2);
    let import = parse(&ran.out);
    assert_eq!(import["status"], "IMPORT_STATUS_COMPLETED_PARTIAL");
    assert_eq!(import["rows_imported"], 0, "bob@x.io exists now");
    assert_eq!(import["rows_failed"], 3);
    assert_eq!(import["import_id"], "mixed-json");
    assert!(
        ran.err.is_empty(),
        "no progress bar off a terminal: {}",
        ran.err
    );

    let ran = bulk_import(s, "get", &["--json", "mixed"]).await;
    assert_eq!(ran.code, 2, "get exits by the import's status too");
    let got = parse(&ran.out);
    assert_eq!(got["import"]["rows_failed"], 2);
    assert_eq!(got["errors"][0]["code"], "INVALID_EMAIL");
    assert_eq!(got["errors"][0]["row_number"], 3);

    let ran = bulk_import(s, "get", &["good"]).await;
    assert_eq!(ran.code, 0);
    assert!(
        ran.out.contains("status:      Completed - Success"),
        "{}",
        ran.out
    );

    let ran = bulk_import(s, "list", &["--json"]).await;
    assert_eq!(ran.code, 0);
    assert_eq!(parse(&ran.out)["imports"].as_array().unwrap().len(), 5);
    let ran = bulk_import(s, "list", &[]).await;
    assert!(ran.out.contains("Completed - Partial"), "{}", ran.out);

    let ran = bulk_import(s, "watch", &["--json", "broken"]).await;
    assert_eq!(ran.code, 1);
    assert_eq!(
        parse(ran.out.lines().last().unwrap())["status"],
        "IMPORT_STATUS_ERROR_PARSING"
    );

    let ran = bulk_import(s, "users", &["--json", "--import", "good"]).await;
    assert_eq!(ran.code, 0);
    let users = parse(&ran.out);
    assert_eq!(users["users"][0]["email"], "ada@x.io");
    assert_eq!(users["users"][0]["role"], "USER_ROLE_MEMBER");
}

/// An error is one line with the gRPC code's name; a server that is not there is named, with
/// the way to point elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_name_what_to_do() {
    let app = spawn_app(Backend::Sqlite).await;
    let server = format!("http://{}", app.addr);
    let ran = bulk_import(Some(&server), "get", &["nope"]).await;
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.err,
        "error: NOT_FOUND: import 'nope' was not found in account 'acme'\n"
    );
    let ran = bulk_import(Some(&server), "cancel", &["--json", "nope"]).await;
    assert_eq!(ran.code, 1);
    assert!(ran.err.starts_with("error: NOT_FOUND: "), "{}", ran.err);

    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let ran = bulk_import(Some(&nobody), "list", &[]).await;
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.err,
        format!(
            "error: cannot reach {nobody}: connection refused; is the server running? \
             (--server or BULK_IMPORT_SERVER)\n"
        )
    );
    let ran = bulk_import(Some(&server), "upload", &["/no/such/file.csv"]).await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.err
            .starts_with("error: cannot read /no/such/file.csv: no such file"),
        "{}",
        ran.err
    );
}

/// The template needs no server: it is built into the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_works_without_a_server() {
    let ran = bulk_import(None, "template", &[]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    assert!(ran.out.starts_with(HEADER), "{}", ran.out);
    let ran = bulk_import(None, "template", &["--json"]).await;
    let template = parse(&ran.out);
    assert_eq!(template["columns"][0]["name"], "email");
    assert_eq!(template["columns"][0]["required"], true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    let ran = bulk_import(None, "template", &["--output", path.to_str().unwrap()]).await;
    assert_eq!(ran.code, 0);
    assert!(std::fs::read_to_string(path).unwrap().starts_with(HEADER));
}

/// The workflow of issue 12 from a shell: a dry run, a policy, the fix-up file, its retry,
/// the users, a revert, and a cancel refused for a finished import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_the_whole_workflow() {
    let app = spawn_app(Backend::Sqlite).await;
    let server = format!("http://{}", app.addr);
    let s = Some(server.as_str());
    let dir = tempfile::tempdir().unwrap();
    let users = write(
        dir.path(),
        "users.csv",
        &format!("{HEADER}ada@x.io,Ada,,admin,,E1\nnot-an-address,Alan,,,,\n"),
    );

    let ran = bulk_import(s, "upload", &["--dry-run", "--import-id", "dry", &users]).await;
    assert_eq!(ran.code, 2, "{}{}", ran.out, ran.err);
    assert!(
        ran.out
            .starts_with("Completed - Partial: 1 would be imported, 1 failed (a dry run"),
        "{}",
        ran.out
    );
    assert_eq!(app.user_count().await, 0);
    let ran = bulk_import(s, "upload", &["--import-id", "first", &users]).await;
    assert_eq!(ran.code, 2, "{}{}", ran.out, ran.err);
    let ran = bulk_import(
        s,
        "upload",
        &["--on-conflict", "update", "--import-id", "again", &users],
    )
    .await;
    assert!(
        ran.out
            .starts_with("Completed - Partial: 0 imported, 1 updated, 1 failed"),
        "{}",
        ran.out
    );

    let ran = bulk_import(s, "errors", &["first"]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    assert!(ran.out.starts_with('\u{feff}'), "{}", ran.out);
    assert!(
        ran.out
            .contains("not-an-address,Alan,,,,,3,email INVALID_EMAIL"),
        "{}",
        ran.out
    );
    let ran_json = bulk_import(s, "errors", &["--json", "first"]).await;
    assert_eq!(parse(&ran_json.out)["rows"][0]["row_number"], "3");
    let fixed = write(
        dir.path(),
        "fix.csv",
        &ran.out.replace("not-an-address,", "alan@x.io,"),
    );
    let ran = bulk_import(
        s,
        "upload",
        &[
            "--json",
            "--retry-of",
            "first",
            "--import-id",
            "fix",
            &fixed,
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{}{}", ran.out, ran.err);
    assert_eq!(parse(&ran.out)["retry_of_import_id"], "first");

    let ran = bulk_import(s, "users", &["--import", "fix"]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    assert_eq!(
        ran.out.lines().count(),
        2,
        "a header and one user: {}",
        ran.out
    );
    assert!(
        ran.out.lines().nth(1).unwrap().starts_with("alan@x.io "),
        "{}",
        ran.out
    );

    let ran = bulk_import(s, "revert", &["fix"]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    assert!(ran.out.contains("users removed: 1"), "{}", ran.out);
    let ran = bulk_import(s, "cancel", &["first"]).await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.err
            .starts_with("error: FAILED_PRECONDITION: import 'first' already ended"),
        "{}",
        ran.err
    );
}

/// The client reads its TLS settings from `BULK_IMPORT_CLIENT_TLS_*`, never from the server's
/// `BULK_IMPORT_TLS_*`: a shell (or a pod) that serves with a certificate runs the client
/// beside it without presenting the server's certificate as a client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ignores_the_server_s_tls_variables() {
    let app = spawn_app(Backend::Sqlite).await;
    let server = format!("http://{}", app.addr);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.pem");
    let missing = missing.to_str().unwrap();
    let server_env = [
        ("BULK_IMPORT_TLS_CERT", missing),
        ("BULK_IMPORT_TLS_KEY", missing),
        ("BULK_IMPORT_TLS_CLIENT_CA", missing),
    ];
    let listed = bulk_import_with(Some(&server), "list", &[], &server_env).await;
    assert_eq!(listed.code, 0, "{}", listed.err);
    // Its own variables it does read: a CA file that is not there is an error naming it.
    let client_env = [("BULK_IMPORT_CLIENT_TLS_CA", missing)];
    let tls_server = format!("https://{}", app.addr);
    let refused = bulk_import_with(Some(&tls_server), "list", &[], &client_env).await;
    assert_eq!(refused.code, 1, "{}", refused.out);
    assert!(refused.err.contains("absent.pem"), "{}", refused.err);
}

/// Output to a pipe that closes early ends the client quietly, as Unix tools do: no panic, no
/// backtrace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_to_a_closed_pipe_ends_quietly() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut file = String::from(HEADER);
    for i in 0..3000 {
        file.push_str(&format!(
            "someone.with.a.long.address.{i}@example.com,Some,One,,,\n"
        ));
    }
    app.upload(ACCOUNT, "many", file.as_bytes(), 1 << 16)
        .await
        .unwrap();
    let server = format!("http://{}", app.addr);
    let output = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bulk-import"))
            .args(["users", "--server", &server, "--account", ACCOUNT])
            .env_remove("BULK_IMPORT_SERVER")
            .env_remove("BULK_IMPORT_ACCOUNT")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away at once, as `head` does once it has its lines.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!output.status.success(), "the output was not all written");
}

/// Row errors past the server's cap are not shown, but the client says how many and points to
/// the fix-up file, which holds every failed row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_says_when_row_errors_were_not_stored() {
    let app = spawn_app_with(Backend::Sqlite, |args| args.max_stored_row_errors = 0).await;
    let server = format!("http://{}", app.addr);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "users.csv",
        &format!("{HEADER}a@x.io,Ann,,boss,,\nb@x.io,Bob,,,,\n"),
    );
    let ran = bulk_import(Some(&server), "upload", &[&file, "--import-id", "capped"]).await;
    assert_eq!(ran.code, 2, "{}", ran.err);
    assert!(
        ran.out.contains("1 more row errors were not stored"),
        "{}",
        ran.out
    );
    assert!(
        ran.out.contains("errors --account acme capped > fix.csv"),
        "{}",
        ran.out
    );
    let got = bulk_import(Some(&server), "get", &["capped"]).await;
    assert!(
        got.out.contains("1 more row errors were not stored"),
        "{}",
        got.out
    );
}

/// `upload --hold-invitations` creates the users HELD; `invite --import` invites them once;
/// `invite` with neither an import nor an address is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_invitations_are_sent_by_invite() {
    let app = spawn_app(Backend::Sqlite).await;
    let server = format!("http://{}", app.addr);
    let s = Some(server.as_str());
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "users.csv",
        "email,first_name,last_name,role,job_title,external_id\n\
         ada@x.io,Ada,,,,\ngrace@x.io,Grace,,,,\n",
    );
    let ran = bulk_import(
        s,
        "upload",
        &["--json", "--hold-invitations", "--import-id", "held", &file],
    )
    .await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    let import = parse(&ran.out);
    assert_eq!(import["invitations"], "INVITATION_POLICY_HOLD", "{import}");
    assert_eq!(import["users_invited"], 0);
    let ran = bulk_import(s, "users", &["--json"]).await;
    let users = parse(&ran.out);
    assert_eq!(
        users["users"][0]["invitation_state"],
        "INVITATION_STATE_HELD"
    );

    let ran = bulk_import(s, "invite", &["--import", "held"]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    assert_eq!(ran.out.trim(), "users invited: 2");
    let ran = bulk_import(s, "invite", &["--json", "--import", "held"]).await;
    assert_eq!(parse(&ran.out)["users_invited"], 0);
    let ran = bulk_import(s, "invite", &["--email", "ADA@x.io", "--resend"]).await;
    assert_eq!(ran.out.trim(), "users invited: 1", "{}", ran.err);
    let ran = bulk_import(s, "invite", &[]).await;
    assert_eq!(ran.code, 64, "{}", ran.err);
    assert!(ran.err.contains("--import"), "{}", ran.err);

    // The feed: the two invitations, then the resend; it ends once caught up.
    let ran = bulk_import(s, "events", &[]).await;
    assert_eq!(ran.code, 0, "{}", ran.err);
    let lines: Vec<&str> = ran.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.out);
    assert!(lines[0].ends_with(" INVITED ada@x.io held"), "{}", ran.out);
    assert!(
        lines[2].ends_with(" INVITATION_RESENT ada@x.io held"),
        "{}",
        ran.out
    );
    // After the first: the other two; as JSON Lines.
    let first = lines[0].split(' ').next().unwrap();
    let ran = bulk_import(s, "events", &["--json", "--after", first]).await;
    let docs: Vec<Value> = ran.out.lines().map(parse).collect();
    assert_eq!(docs.len(), 2, "{}", ran.out);
    assert_eq!(docs[0]["user"]["email"], "grace@x.io");
    assert_eq!(docs[1]["type"], "USER_EVENT_TYPE_INVITATION_RESENT");
}
