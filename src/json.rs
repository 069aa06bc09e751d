//! The server's messages as JSON, for the CLI's `--json` output and the payloads the relay
//! publishes to NATS (`relay`): the messages with the proto's field names, enums by
//! their proto names, timestamps in RFC 3339, and counters as numbers (a script reads them
//! with `jq .rows_failed`).
//!
//! Written out field by field rather than derived from prost's types, which have no serde
//! support and would show enums as numbers: the shape here is a contract with scripts, and a
//! new proto field appears in it only when it is added here. Unlike the proto3 JSON mapping,
//! fields keep the proto's snake_case names, are always present (empty strings, `0`, `false`,
//! `null` for a time not set), and 64-bit counters are numbers, not strings.

use serde_json::{Value, json};

use crate::proto;

/// A timestamp in RFC 3339 (UTC, `Z`), as prost's `Display` writes it; `null` when not set,
/// as `complete_time` is while an import runs.
fn time(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// A status by its proto name (`IMPORT_STATUS_COMPLETED_PARTIAL`): the stable name scripts
/// match on, not the help page's words. A number this client does not know (a newer server)
/// shows as UNSPECIFIED rather than failing the command.
fn status(value: i32) -> &'static str {
    proto::ImportStatus::try_from(value).map_or("IMPORT_STATUS_UNSPECIFIED", |s| s.as_str_name())
}

/// An import, every field of `proto::Import` under its proto name; enums by name.
pub fn import(import: &proto::Import) -> Value {
    json!({
        "account_id": import.account_id,
        "import_id": import.import_id,
        "type": proto::ImportType::try_from(import.r#type)
            .map_or("IMPORT_TYPE_UNSPECIFIED", |t| t.as_str_name()),
        "filename": import.filename,
        "created_by": import.created_by,
        "status": status(import.status),
        "bytes_received": import.bytes_received,
        "rows_processed": import.rows_processed,
        "rows_imported": import.rows_imported,
        "rows_failed": import.rows_failed,
        "rows_skipped": import.rows_skipped,
        "rows_updated": import.rows_updated,
        "row_errors_omitted": import.row_errors_omitted,
        "error_message": import.error_message,
        "encoding": import.encoding,
        "delimiter": import.delimiter,
        "validate_only": import.validate_only,
        "on_conflict": proto::ConflictPolicy::try_from(import.on_conflict)
            .map_or("CONFLICT_POLICY_UNSPECIFIED", |p| p.as_str_name()),
        "retry_of_import_id": import.retry_of_import_id,
        "create_time": time(import.create_time.as_ref()),
        "update_time": time(import.update_time.as_ref()),
        "complete_time": time(import.complete_time.as_ref()),
        "revert_time": time(import.revert_time.as_ref()),
        "details_removed_time": time(import.details_removed_time.as_ref()),
        "revert_note": import.revert_note,
        "invitations": proto::InvitationPolicy::try_from(import.invitations)
            .map_or("INVITATION_POLICY_UNSPECIFIED", |p| p.as_str_name()),
        "users_invited": import.users_invited,
        "resumable": import.resumable,
        "committed_bytes": import.committed_bytes,
        "resume_deadline": time(import.resume_deadline.as_ref()),
    })
}

/// A row error: `row_number` as a spreadsheet numbers it, `column` (`""` for the whole row),
/// the stable `code`, the `message` and the offending `value`.
pub fn row_error(error: &proto::RowError) -> Value {
    json!({
        "row_number": error.row_number,
        "column": error.column,
        "code": error.code,
        "message": error.message,
        "value": error.value,
    })
}

/// A user, as `ListUsers` sent it: the role by its proto name (`USER_ROLE_ADMIN`), unlike the
/// table, which shows `admin`.
pub fn user(user: &proto::User) -> Value {
    json!({
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "role": proto::UserRole::try_from(user.role)
            .map_or("USER_ROLE_UNSPECIFIED", |r| r.as_str_name()),
        "job_title": user.job_title,
        "external_id": user.external_id,
        "import_id": user.import_id,
        "create_time": time(user.create_time.as_ref()),
        "update_time": time(user.update_time.as_ref()),
        "invitation_state": proto::InvitationState::try_from(user.invitation_state)
            .map_or("INVITATION_STATE_UNSPECIFIED", |s| s.as_str_name()),
        "invite_time": time(user.invite_time.as_ref()),
        "invitations_sent": user.invitations_sent,
    })
}

/// One JSON document on its own line.
///
/// Compact, not pretty-printed, so that `watch --json` is JSON Lines (a document per line)
/// and every other command's output is a single line that `jq` reads as it is.
pub fn print(value: &Value) {
    println!("{value}");
}

/// An event of the user feed, as `bulk-import events --json` prints it and the relay
/// publishes it; its user as `user`, its type by its proto name.
pub fn user_event(event: &proto::UserEvent) -> Value {
    let kind = proto::UserEventType::try_from(event.r#type)
        .map_or("USER_EVENT_TYPE_UNSPECIFIED", |t| t.as_str_name());
    json!({
        "cursor": event.cursor,
        "event_id": event.event_id,
        "type": kind,
        "account_id": event.account_id,
        "import_id": event.import_id,
        "user": user(&event.user.clone().unwrap_or_default()),
        "event_time": time(event.event_time.as_ref()),
    })
}
