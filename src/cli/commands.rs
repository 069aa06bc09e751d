//! The commands that read or act on imports once they exist: `get`, `list`, `watch`,
//! `template`, `errors`, `cancel`, `revert` and `users`. Each prints a table or the help
//! page's words for people, and with `--json` one JSON document for scripts.
//!
//! Each command connects (`connect::client`), makes its calls, prints, and returns an
//! [`Outcome`] that `main` turns into the exit code. Only `get` and `watch` (and `upload`)
//! end with the import's status, so that a script can act on how the import fared: 0 for
//! Completed - Success and Nothing to Import, 2 for Completed - Partial, 1 for the rest. The
//! others exit 0 when they did what was asked. An RPC error (`?` on a `tonic::Status`) becomes
//! a [`CliError`], printed as one line with the gRPC code's name, and exit code 1.
//!
//! Commands that follow pages (`get`'s row errors, `users`) size each page to what is left
//! to show, at most the server's maximum of 1000, and stop at their limit or at the last page.

use std::io::Write;

use futures::StreamExt;
use serde_json::json;

use super::connect::client;
use super::outcome::{CliError, CliResult, Outcome};
use super::{json, show};
use crate::config::{
    GetArgs, ImportArgs, InviteArgs, ListArgs, TemplateArgs, UsersArgs, WatchArgs,
};
use crate::domain::ImportType;
use crate::proto;

/// `bulk-import get ID`: the import, field by field, then up to `--errors` row errors (100 by
/// default) as a table; with `--json`, `{"import": ..., "errors": [...]}`.
///
/// Follows the row error pages until it has `--errors` of them or there are no more. The
/// exit code is the import's status, so `get` after a detached upload tells a script how it
/// went; a PROCESSING import exits 1, like an error. `--errors 0` shows the import alone.
pub async fn get(args: GetArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut token = String::new();
    let mut errors = Vec::new();
    let mut import = None;
    loop {
        let page = client
            .get_import(proto::GetImportRequest {
                account_id: args.target.account.clone(),
                import_id: args.import_id.clone(),
                // 0 would mean the server's default page; `--errors 0` shows the import alone.
                errors_page_size: (args.errors as usize - errors.len()).clamp(1, 1000) as i32,
                errors_page_token: token,
            })
            .await?
            .into_inner();
        import.get_or_insert(page.import.unwrap_or_default());
        let room = args.errors as usize - errors.len();
        errors.extend(page.errors.into_iter().take(room));
        token = page.next_errors_page_token;
        if token.is_empty() || errors.len() >= args.errors as usize {
            break;
        }
    }
    let import = import.unwrap_or_default();
    if args.target.json {
        let errors: Vec<_> = errors.iter().map(json::row_error).collect();
        json::print(&json!({ "import": json::import(&import), "errors": errors }));
    } else {
        println!("{}", show::import(&import));
        if !errors.is_empty() {
            println!();
            println!("{}", show::row_errors(&errors));
        }
        if let Some(note) = show::omitted(&import) {
            println!("{note}");
        }
    }
    Ok(Outcome::Ended(import.status))
}

/// The largest page `ListImports` gives (AIP-158: larger sizes are cut to it).
const LIST_PAGE: usize = 1000;

/// `bulk-import list`: the account's imports, newest first, one line each (id, status, counts,
/// file name); dry runs are marked. With `--json`, `{"imports": [...]}`.
///
/// The newest `--limit` imports (50 by default): pages of up to the server's cap of 1000 are
/// followed until there are that many or no more. Exit code 0, whatever the imports'
/// statuses.
pub async fn list(args: ListArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut imports = Vec::new();
    let mut page_token = String::new();
    while imports.len() < args.limit {
        let want = (args.limit - imports.len()).min(LIST_PAGE);
        let page = client
            .list_imports(proto::ListImportsRequest {
                account_id: args.target.account.clone(),
                page_size: want as i32,
                page_token,
            })
            .await?
            .into_inner();
        imports.extend(page.imports);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    imports.truncate(args.limit);
    if args.target.json {
        let imports: Vec<_> = imports.iter().map(json::import).collect();
        json::print(&json!({ "imports": imports }));
        return Ok(Outcome::Done);
    }
    println!(
        "{:<38} {:<30} {:>11} {:>11}  FILENAME",
        "IMPORT_ID", "STATUS", "IMPORTED", "FAILED"
    );
    for import in &imports {
        let mut status = show::status_words(import.status).to_owned();
        if import.validate_only {
            status.push_str(" (dry run)");
        }
        println!(
            "{:<38} {:<30} {:>11} {:>11}  {}",
            import.import_id,
            status,
            show::count(import.rows_imported),
            show::count(import.rows_failed),
            import.filename
        );
    }
    Ok(Outcome::Done)
}

/// `bulk-import watch ID`: a line per snapshot (`bytes, rows: outcome`) until the import ends;
/// with `--json`, one JSON document per line (JSON Lines), one per snapshot.
///
/// Exits with the last status seen, which is the terminal one when the server ended the
/// stream normally. An error item from the server (the database out of reach) ends the
/// command with that error; a stream that ends without a single snapshot is an error too.
pub async fn watch(args: WatchArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut updates = client
        .watch_import(proto::WatchImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(update) = updates.next().await {
        let import = update?.import.unwrap_or_default();
        if args.target.json {
            json::print(&json::import(&import));
        } else {
            println!(
                "{} bytes, {} rows: {}",
                show::count(import.bytes_received),
                show::count(import.rows_processed),
                show::outcome(&import)
            );
        }
        last = Some(import.status);
    }
    match last {
        Some(status) => Ok(Outcome::Ended(status)),
        None => Err(CliError::new("the watch ended without a word")),
    }
}

/// The template, from the binary itself (the same as the server's): no server needed.
///
/// Prints the CSV, or writes it to `--output`; with `--json`, the file name, the CSV and each
/// column's description, example and accepted aliases (`--output` is then ignored). The
/// hidden `--server` is accepted and unused, for scripts written when this asked the server.
pub async fn template(args: TemplateArgs) -> CliResult {
    let template = crate::import::template::template(ImportType::Users);
    if args.json {
        let columns: Vec<_> = template
            .columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "required": c.required,
                    "description": c.description,
                    "example": c.example,
                    "aliases": c.aliases,
                })
            })
            .collect();
        json::print(&json!({
            "filename": template.filename,
            "csv": template.csv,
            "columns": columns,
        }));
        return Ok(Outcome::Done);
    }
    match args.output {
        Some(path) => std::fs::write(&path, &template.csv)
            .map_err(|e| CliError::io(format!("cannot write {}", path.display()), e))?,
        None => print!("{}", template.csv),
    }
    Ok(Outcome::Done)
}

/// Writes the fix-up file to standard output as it arrives; with `--json`, its rows as
/// objects keyed by its header.
///
/// The bytes are written as the server sends them, byte order mark included, so
/// `errors ID > fix.csv` gives the file Excel opens as UTF-8, ready to fix and upload with
/// `--retry-of ID`. `--json` must read the whole report first (to parse it as CSV) and drops
/// the byte order mark; every value is a string, as in the file. FAILED_PRECONDITION while the
/// import still runs.
pub async fn errors(args: ImportArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut chunks = client
        .get_import_error_report(proto::GetImportErrorReportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    if args.target.json {
        let mut report = Vec::new();
        while let Some(chunk) = chunks.next().await {
            report.extend_from_slice(&chunk?.chunk);
        }
        let text = report.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&report);
        let mut reader = csv::Reader::from_reader(text);
        let header = reader
            .headers()
            .map_err(|e| CliError::new(format!("the report is not CSV: {e}")))?
            .clone();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record =
                record.map_err(|e| CliError::new(format!("the report is not CSV: {e}")))?;
            let row: serde_json::Map<String, serde_json::Value> = header
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            rows.push(serde_json::Value::Object(row));
        }
        json::print(&json!({ "rows": rows }));
        return Ok(Outcome::Done);
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = chunks.next().await {
        out.write_all(&chunk?.chunk)
            .map_err(|e| CliError::io("cannot write the report", e))?;
    }
    out.flush()
        .map_err(|e| CliError::io("cannot write the report", e))?;
    Ok(Outcome::Done)
}

/// `bulk-import cancel ID`: stops a running import and prints it, ended CANCELLED.
///
/// Exit code 0 when the cancel worked, although a CANCELLED status would make `get` exit 1:
/// the command did what it was asked. FAILED_PRECONDITION (exit 1) when the import had already
/// ended; UNAVAILABLE when the server running it has not ended it within 30 s.
pub async fn cancel(args: ImportArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let import = client
        .cancel_import(proto::CancelImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner()
        .import
        .unwrap_or_default();
    if args.target.json {
        json::print(&json::import(&import));
    } else {
        println!("{}", show::import(&import));
    }
    Ok(Outcome::Done)
}

/// `bulk-import revert ID`: removes the users the import created, then prints the server's
/// message, how many users this call removed, and the import (with its revert note). With
/// `--json`, `{"import", "users_removed", "message"}`.
///
/// Safe to run twice: the second run removes nothing. FAILED_PRECONDITION while the import,
/// or an UPDATE import that changed some of its users, still runs.
pub async fn revert(args: ImportArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let reverted = client
        .revert_import(proto::RevertImportRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone(),
        })
        .await?
        .into_inner();
    let import = reverted.import.unwrap_or_default();
    if args.target.json {
        json::print(&json!({
            "import": json::import(&import),
            "users_removed": reverted.users_removed,
            "message": reverted.message,
        }));
    } else {
        println!("{}", reverted.message);
        println!("users removed: {}", show::count(reverted.users_removed));
        println!("{}", show::import(&import));
    }
    Ok(Outcome::Done)
}

/// Prints the users, following the pages: a table, or with `--json` one document.
///
/// `bulk-import users [--import ID] [--limit N]`: every user of the account by email, or only
/// those one import created; `--limit` stops after N users (all of them by default). Emails
/// are shown as people read them (Unicode domains); roles without their `USER_ROLE_` prefix,
/// in lower case, as in the CSV.
pub async fn users(args: UsersArgs) -> CliResult {
    let mut client = client(&args.target).await?;
    let mut token = String::new();
    let mut users = Vec::new();
    let limit = args.limit.unwrap_or(u64::MAX);
    while (users.len() as u64) < limit {
        let page = client
            .list_users(proto::ListUsersRequest {
                account_id: args.target.account.clone(),
                import_id: args.import_id.clone().unwrap_or_default(),
                page_size: (limit - users.len() as u64).min(1000) as i32,
                page_token: token,
                invitation_state: proto::InvitationState::Unspecified as i32,
            })
            .await?
            .into_inner();
        let room = (limit - users.len() as u64) as usize;
        users.extend(page.users.into_iter().take(room));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    if args.target.json {
        let users: Vec<_> = users.iter().map(json::user).collect();
        json::print(&json!({ "users": users }));
        return Ok(Outcome::Done);
    }
    println!(
        "{:<40} {:<8} {:<20} {:<20} {:<16} IMPORT_ID",
        "EMAIL", "ROLE", "FIRST_NAME", "LAST_NAME", "EXTERNAL_ID"
    );
    for user in &users {
        let role = proto::UserRole::try_from(user.role)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("USER_ROLE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "{:<40} {:<8} {:<20} {:<20} {:<16} {}",
            user.email, role, user.first_name, user.last_name, user.external_id, user.import_id
        );
    }
    Ok(Outcome::Done)
}

/// `bulk-import invite [--import ID] [--email ADDRESS]... [--resend]`: invites an import's held
/// users, or users by address, and says how many were invited.
pub async fn invite(args: InviteArgs) -> CliResult {
    if args.import_id.is_none() && args.emails.is_empty() {
        return Err(CliError::usage(
            "give --import ID (its held users are invited) or --email ADDRESS, or both",
        ));
    }
    let mut client = client(&args.target).await?;
    let sent = client
        .send_invitations(proto::SendInvitationsRequest {
            account_id: args.target.account.clone(),
            import_id: args.import_id.clone().unwrap_or_default(),
            emails: args.emails.clone(),
            resend: args.resend,
        })
        .await?
        .into_inner();
    if args.target.json {
        json::print(&json!({ "users_invited": sent.users_invited }));
    } else {
        println!("users invited: {}", show::count(sent.users_invited));
    }
    Ok(Outcome::Done)
}
