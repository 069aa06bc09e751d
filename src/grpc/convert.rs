//! Conversions between protobuf messages and domain types. Arguments are parsed here, once, so
//! that the import layer only ever sees valid values ("parse, don't validate"), and prost's
//! generated types never leak past this layer: a change to the proto is a change here only.
//!
//! Two directions:
//!
//! - inward (`account_id`, `import_id`, `import_type`, `upload_event` and its helpers): a
//!   field the client sent becomes a domain value or an [`ArgumentError`] that names the
//!   field, which `grpc::error` turns into INVALID_ARGUMENT with a `BadRequest` violation.
//!   Proto3's zero values are read as the API documents them: an `UNSPECIFIED` enum is the
//!   default (IMPORT_TYPE_USERS, CONFLICT_POLICY_ERROR), an empty optional id is "none";
//! - outward (`import`, `status`, `row_error`, `template`, `role`, `user`): domain values
//!   become messages. These cannot fail: every domain value has a proto form, and the
//!   matches are exhaustive, so a new status or role fails to compile until it has one.
//!
//! Counters are `u64` in the domain and `int64` in the proto; they are cast with `as`, which
//! is exact for the counts of a file of bounded size.

use std::time::SystemTime;

use crate::domain::{
    AccountId, ArgumentError, ConflictPolicy, Filename, Import, ImportId, ImportStatus, ImportType,
    InvitationPolicy, InvitationState, NewImport, Role, RowError,
};
use crate::import::feed::{After, Cursor, FeedEvent};
use crate::import::pipeline::events::{FinishCheck, StreamError, UploadEvent};
use crate::import::template::Template;
use crate::proto;
use proto::upload_import_request::Payload;

/// An `account_id` field: required, at most 128 characters, without surrounding spaces or
/// control characters (`AccountId::parse`). The error names the field `account_id`,
/// whichever message it came in.
pub fn account_id(value: &str) -> Result<AccountId, ArgumentError> {
    AccountId::parse(value)
}

/// An `import_id` field: required, 1 to 64 of `A-Z a-z 0-9 _ -` (`ImportId::parse`).
/// Optional ids (the upload's own, `ListUsers`' filter) test for `""` before they call this.
pub fn import_id(value: &str) -> Result<ImportId, ArgumentError> {
    ImportId::parse(value)
}

/// The `type` of an import. UNSPECIFIED means USERS, the only type, so that clients written
/// before the field existed keep working; a number the proto does not know is
/// INVALID_ARGUMENT rather than a silent default, in case a newer client asks for a type this
/// server cannot import.
pub fn import_type(value: i32) -> Result<ImportType, ArgumentError> {
    match proto::ImportType::try_from(value) {
        Ok(proto::ImportType::Unspecified | proto::ImportType::Users) => Ok(ImportType::Users),
        Err(_) => Err(ArgumentError::new(
            "type",
            format!("unknown import type {value}; use IMPORT_TYPE_USERS"),
        )),
    }
}

/// One message of an upload stream, as the import layer wants it.
///
/// The handler maps the request stream through this, so the pipeline sees only events or
/// one of two failures, which end the import differently:
///
/// - [`StreamError::Invalid`]: the client sent something wrong (a message over
///   [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES), a message without a payload, bad
///   metadata, a bad finish). The client is told INVALID_ARGUMENT with the field;
/// - [`StreamError::Transport`]: the stream itself failed (the client went away, the
///   connection broke, a deadline passed). The client may not be there to hear the answer;
///   the import ends with nothing imported (`ImportError::StreamBroke`).
///
/// Every tonic code is listed, rather than `_`, so that the one code that means "your message
/// was too large" cannot be lost among the transport's.
pub fn upload_event(
    message: Result<proto::UploadImportRequest, tonic::Status>,
) -> Result<UploadEvent, StreamError> {
    let message = message.map_err(|status| match status.code() {
        // tonic's answer to a message over the decoding limit.
        tonic::Code::OutOfRange => StreamError::Invalid(ArgumentError::new(
            "chunk",
            format!(
                "a message of the upload is larger than {} MiB; send the file in chunks of at \
                 most 4 MiB (256 KiB is typical)",
                super::MAX_MESSAGE_BYTES / (1024 * 1024)
            ),
        )),
        // `grpc::pending`'s answer to a first message that did not come in time.
        tonic::Code::DeadlineExceeded => StreamError::Stalled(status.message().to_owned()),
        // Whatever else ends a stream early is the transport's: the client went away, the
        // connection broke.
        tonic::Code::Ok
        | tonic::Code::Cancelled
        | tonic::Code::Unknown
        | tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::AlreadyExists
        | tonic::Code::PermissionDenied
        | tonic::Code::ResourceExhausted
        | tonic::Code::FailedPrecondition
        | tonic::Code::Aborted
        | tonic::Code::Unimplemented
        | tonic::Code::Internal
        | tonic::Code::Unavailable
        | tonic::Code::DataLoss
        | tonic::Code::Unauthenticated => StreamError::Transport(status.message().to_owned()),
    })?;
    match message.payload {
        Some(Payload::Metadata(m)) => new_import(&m).map(UploadEvent::Metadata),
        Some(Payload::Chunk(bytes)) => Ok(UploadEvent::Chunk(bytes)),
        Some(Payload::Finish(f)) => finish_check(&f).map(UploadEvent::Finish),
        None => Err(ArgumentError::new(
            "payload",
            "the message has no payload; send metadata, chunk or finish",
        )),
    }
    .map_err(StreamError::Invalid)
}

/// The upload's metadata, parsed field by field; the first bad field is the error.
///
/// An empty `import_id` gets a fresh one (a UUIDv7). `created_by` is left empty here: the
/// import layer sets it from the caller's token, so a client cannot claim to be someone
/// else. A bad `retry_of_import_id` is reported under that field's name, not `import_id`.
pub fn new_import(m: &proto::ImportMetadata) -> Result<NewImport, ArgumentError> {
    let import_id = match m.import_id.as_str() {
        "" => ImportId::generate(),
        id => import_id(id)?,
    };
    let resume_offset = match (m.resume_offset, m.resumable) {
        (0, _) => 0,
        (offset, true) if offset > 0 => offset as u64,
        (offset, true) => {
            return Err(ArgumentError::new(
                "resume_offset",
                format!(
                    "resume_offset {offset} is negative; give the import's committed_bytes \
                     (GetImport)"
                ),
            ));
        }
        (_, false) => {
            return Err(ArgumentError::new(
                "resume_offset",
                "resume_offset is only for a resumable upload; set resumable too",
            ));
        }
    };
    Ok(NewImport {
        resumable: m.resumable,
        resume_offset,
        account_id: account_id(&m.account_id)?,
        import_id,
        kind: import_type(m.r#type)?,
        filename: Filename::parse(&m.filename)?,
        // Set by the import layer from the caller, never by the client.
        created_by: String::new(),
        validate_only: m.validate_only,
        on_conflict: conflict_policy(m.on_conflict)?,
        invitations: invitation_policy(m.invitations)?,
        retry_of: match m.retry_of_import_id.as_str() {
            "" => None,
            id => Some(ImportId::parse(id).map_err(|e| {
                ArgumentError::new(
                    "retry_of_import_id",
                    format!("retry_of_import_id: {}", e.message),
                )
            })?),
        },
    })
}

/// `on_conflict`: UNSPECIFIED is ERROR, the policy that changes no existing user, so that a
/// client that does not know the field never overwrites anyone. An unknown number is
/// INVALID_ARGUMENT, for the same reason as in [`import_type`].
fn conflict_policy(value: i32) -> Result<ConflictPolicy, ArgumentError> {
    match proto::ConflictPolicy::try_from(value) {
        Ok(proto::ConflictPolicy::Unspecified | proto::ConflictPolicy::Error) => {
            Ok(ConflictPolicy::Error)
        }
        Ok(proto::ConflictPolicy::Skip) => Ok(ConflictPolicy::Skip),
        Ok(proto::ConflictPolicy::Update) => Ok(ConflictPolicy::Update),
        Err(_) => Err(ArgumentError::new(
            "on_conflict",
            format!(
                "unknown conflict policy {value}; use CONFLICT_POLICY_ERROR, \
                 CONFLICT_POLICY_SKIP or CONFLICT_POLICY_UPDATE"
            ),
        )),
    }
}

/// `invitations`: UNSPECIFIED is SEND, since inviting the people in the file is what an
/// import is for.
fn invitation_policy(value: i32) -> Result<InvitationPolicy, ArgumentError> {
    match proto::InvitationPolicy::try_from(value) {
        Ok(proto::InvitationPolicy::Unspecified | proto::InvitationPolicy::Send) => {
            Ok(InvitationPolicy::Send)
        }
        Ok(proto::InvitationPolicy::Hold) => Ok(InvitationPolicy::Hold),
        Err(_) => Err(ArgumentError::new(
            "invitations",
            format!(
                "unknown invitation policy {value}; use INVITATION_POLICY_SEND or \
                 INVITATION_POLICY_HOLD"
            ),
        )),
    }
}

/// The stored invitation policy as the API names it; never UNSPECIFIED.
fn proto_invitations(policy: InvitationPolicy) -> proto::InvitationPolicy {
    match policy {
        InvitationPolicy::Send => proto::InvitationPolicy::Send,
        InvitationPolicy::Hold => proto::InvitationPolicy::Hold,
    }
}

/// The most addresses one `SendInvitations` takes.
const MAX_INVITEES: usize = 1000;

/// An address as a request gives it, as its mailbox key (how users are stored and matched):
/// however it is spelled, one mailbox is one user.
pub fn mailbox(field: &'static str, value: &str) -> Result<String, ArgumentError> {
    named_mailbox(field, field, value)
}

/// `mailbox`, the message naming `name` (such as `emails[3]`) in the request's `field`.
fn named_mailbox(field: &'static str, name: &str, value: &str) -> Result<String, ArgumentError> {
    if value.trim().is_empty() {
        return Err(ArgumentError::new(field, format!("{name} is required")));
    }
    crate::domain::Email::parse(value.trim())
        .map(|email| email.as_str().to_owned())
        .map_err(|e| ArgumentError::new(field, format!("{name} '{value}': {e}")))
}

/// `SendInvitations`' `emails` as mailbox keys. Neither an import nor an address is
/// INVALID_ARGUMENT, so that no call invites a whole account by accident.
pub fn invitees(has_import: bool, emails: &[String]) -> Result<Vec<String>, ArgumentError> {
    if !has_import && emails.is_empty() {
        return Err(ArgumentError::new(
            "import_id",
            "give import_id (its HELD users are invited) or emails (those users are), or both; \
             a whole account is never invited at once",
        ));
    }
    if emails.len() > MAX_INVITEES {
        return Err(ArgumentError::new(
            "emails",
            format!(
                "{} addresses; at most {MAX_INVITEES} per call, so send them in several calls",
                emails.len()
            ),
        ));
    }
    let mut keys = emails
        .iter()
        .enumerate()
        .map(|(i, email)| named_mailbox("emails", &format!("emails[{i}]"), email))
        .collect::<Result<Vec<_>, _>>()?;
    // The same mailbox twice is invited once.
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// `invitation_state` of `ListUsers`: UNSPECIFIED is no filter.
pub fn state_filter(value: i32) -> Result<Option<InvitationState>, ArgumentError> {
    match proto::InvitationState::try_from(value) {
        Ok(proto::InvitationState::Unspecified) => Ok(None),
        Ok(proto::InvitationState::Held) => Ok(Some(InvitationState::Held)),
        Ok(proto::InvitationState::Sent) => Ok(Some(InvitationState::Sent)),
        Ok(proto::InvitationState::Accepted) => Ok(Some(InvitationState::Accepted)),
        Ok(proto::InvitationState::Revoked) => Ok(Some(InvitationState::Revoked)),
        Err(_) => Err(ArgumentError::new(
            "invitation_state",
            format!(
                "unknown invitation state {value}; use INVITATION_STATE_HELD, _SENT, _ACCEPTED \
                 or _REVOKED"
            ),
        )),
    }
}

/// A user's invitation state as the API names it.
fn proto_state(state: InvitationState) -> proto::InvitationState {
    match state {
        InvitationState::Held => proto::InvitationState::Held,
        InvitationState::Sent => proto::InvitationState::Sent,
        InvitationState::Accepted => proto::InvitationState::Accepted,
        InvitationState::Revoked => proto::InvitationState::Revoked,
    }
}

/// The stored policy as the API names it. Never UNSPECIFIED: the import shows the policy it
/// ran with, not the one the client left out.
fn proto_policy(policy: ConflictPolicy) -> proto::ConflictPolicy {
    match policy {
        ConflictPolicy::Error => proto::ConflictPolicy::Error,
        ConflictPolicy::Skip => proto::ConflictPolicy::Skip,
        ConflictPolicy::Update => proto::ConflictPolicy::Update,
    }
}

/// The finish message's claims about the whole file, for the pipeline to check against what
/// it received: a mismatch ends the import in ERROR_UNKNOWN with nothing imported, which is
/// how a truncated or corrupted upload is caught. Both are optional (`None` skips the check);
/// a negative size or a digest that is not 64 hex digits is INVALID_ARGUMENT. Surrounding
/// spaces in the digest are forgiven, and hex digits of either case are accepted.
fn finish_check(f: &proto::UploadFinish) -> Result<FinishCheck, ArgumentError> {
    let size_bytes = match f.size_bytes {
        Some(n) if n < 0 => {
            return Err(ArgumentError::new(
                "finish.size_bytes",
                "must not be negative",
            ));
        }
        n => n.map(|n| n as u64),
    };
    let sha256 = match f.sha256.trim() {
        "" => None,
        hex_digest => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| {
                ArgumentError::new(
                    "finish.sha256",
                    "must be the SHA-256 of the file as 64 hex digits",
                )
            })?;
            Some(digest)
        }
    };
    Ok(FinishCheck { size_bytes, sha256 })
}

/// An import as every RPC shows it (`UploadImport`, `GetImport`, `WatchImport`,
/// `ListImports`, `CancelImport`, `RevertImport`).
///
/// Optional parts become the proto's empty values: `encoding` and `delimiter` are `""` until
/// the first bytes arrived, `complete_time`, `revert_time` and `details_removed_time` are
/// absent until they happen,
/// `retry_of_import_id` is `""` when the import retries nothing.
pub fn import(import: &Import) -> proto::Import {
    let c = &import.counters;
    proto::Import {
        import_id: import.import_id.to_string(),
        account_id: import.account_id.to_string(),
        r#type: match import.kind {
            ImportType::Users => proto::ImportType::Users as i32,
        },
        filename: import.filename.as_str().to_owned(),
        status: status(import.status) as i32,
        bytes_received: c.bytes_received as i64,
        rows_processed: c.rows_processed as i64,
        rows_imported: c.rows_imported as i64,
        rows_failed: c.rows_failed as i64,
        error_message: import.error_message.clone(),
        create_time: Some(timestamp(import.create_time)),
        update_time: Some(timestamp(import.update_time)),
        complete_time: import.complete_time.map(timestamp),
        encoding: import
            .format
            .map(|f| f.encoding.as_str().to_owned())
            .unwrap_or_default(),
        delimiter: import
            .format
            .map(|f| f.delimiter_name())
            .unwrap_or_default(),
        row_errors_omitted: c.row_errors_omitted as i64,
        created_by: import.created_by.clone(),
        validate_only: import.validate_only,
        on_conflict: proto_policy(import.on_conflict) as i32,
        rows_skipped: c.rows_skipped as i64,
        rows_updated: c.rows_updated as i64,
        retry_of_import_id: import
            .retry_of
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        revert_time: import.revert_time.map(timestamp),
        revert_note: import.revert_note.clone(),
        details_removed_time: import.details_removed_time.map(timestamp),
        invitations: proto_invitations(import.invitations) as i32,
        users_invited: import.users_invited as i64,
        resumable: import.resumable,
        committed_bytes: import.committed_bytes as i64,
        resume_deadline: import
            .waiting()
            .then_some(import.resume_deadline)
            .flatten()
            .map(timestamp),
    }
}

/// A status as the API names it. Also used by `grpc::error` for the `status` metadata of
/// ALREADY_EXISTS, so that a client retrying an upload by id can tell "done" from "failed"
/// without another call.
pub fn status(status: ImportStatus) -> proto::ImportStatus {
    match status {
        ImportStatus::Processing => proto::ImportStatus::Processing,
        ImportStatus::CompletedSuccess => proto::ImportStatus::CompletedSuccess,
        ImportStatus::CompletedPartial => proto::ImportStatus::CompletedPartial,
        ImportStatus::CompletedNothingToImport => proto::ImportStatus::CompletedNothingToImport,
        ImportStatus::ErrorParsing => proto::ImportStatus::ErrorParsing,
        ImportStatus::ErrorUnknown => proto::ImportStatus::ErrorUnknown,
        ImportStatus::Cancelled => proto::ImportStatus::Cancelled,
    }
}

/// A time as a protobuf `Timestamp` (seconds and nanoseconds since the Unix epoch).
/// A status the API names, in the domain's terms; `None` for UNSPECIFIED or a number this
/// build does not know (a newer server, seen by the client).
pub fn domain_status(status: i32) -> Option<ImportStatus> {
    match proto::ImportStatus::try_from(status) {
        Ok(proto::ImportStatus::Processing) => Some(ImportStatus::Processing),
        Ok(proto::ImportStatus::CompletedSuccess) => Some(ImportStatus::CompletedSuccess),
        Ok(proto::ImportStatus::CompletedPartial) => Some(ImportStatus::CompletedPartial),
        Ok(proto::ImportStatus::CompletedNothingToImport) => {
            Some(ImportStatus::CompletedNothingToImport)
        }
        Ok(proto::ImportStatus::ErrorParsing) => Some(ImportStatus::ErrorParsing),
        Ok(proto::ImportStatus::ErrorUnknown) => Some(ImportStatus::ErrorUnknown),
        Ok(proto::ImportStatus::Cancelled) => Some(ImportStatus::Cancelled),
        Ok(proto::ImportStatus::Unspecified) | Err(_) => None,
    }
}

/// A time as the API's `Timestamp`.
fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// A row error as `GetImport` lists it: the row number as a spreadsheet shows it (the header
/// is row 1), the template column's name (`""` for an error of the whole row), the stable code
/// scripts match on, the message for people, and the offending value (cut to 200 characters).
pub fn row_error(error: &RowError) -> proto::RowError {
    proto::RowError {
        row_number: error.row_number as i64,
        column: error
            .column
            .map(|c| c.name().to_owned())
            .unwrap_or_default(),
        code: error.code.as_str().to_owned(),
        message: error.message.clone(),
        value: error.value.clone(),
    }
}

/// The CSV template, with the description of each column, its example, and the other header
/// names the validator accepts for it (`aliases`): the same `import::template` the CLI's
/// `template` command prints without a server.
pub fn template(template: Template) -> proto::GetImportTemplateResponse {
    proto::GetImportTemplateResponse {
        filename: template.filename.to_owned(),
        csv: template.csv,
        columns: template
            .columns
            .into_iter()
            .map(|c| proto::TemplateColumn {
                name: c.name.to_owned(),
                required: c.required,
                description: c.description.to_owned(),
                example: c.example.to_owned(),
                aliases: c.aliases.iter().map(|a| (*a).to_owned()).collect(),
            })
            .collect(),
    }
}

/// A role as the API names it.
pub fn role(role: Role) -> proto::UserRole {
    match role {
        Role::Admin => proto::UserRole::Admin,
        Role::Member => proto::UserRole::Member,
        Role::Viewer => proto::UserRole::Viewer,
    }
}

/// A user of the account, as `ListUsers` shows it: the address with its domain in Unicode.
///
/// Only the display changes: users are ordered, and `ListUsers` page tokens keyed, by the
/// stored address (its domain in punycode), which this function never returns. An empty
/// `external_id` means the user has none.
pub fn user(user: &crate::store::StoredUser) -> proto::User {
    proto::User {
        email: crate::domain::email::readable(&user.email),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        role: role(user.role) as i32,
        job_title: user.job_title.clone(),
        external_id: user.external_id.clone().unwrap_or_default(),
        import_id: user.import_id.clone(),
        create_time: Some(timestamp(user.create_time)),
        update_time: Some(timestamp(user.update_time)),
        invitation_state: proto_state(user.invitation_state) as i32,
        invite_time: user.invite_time.map(timestamp),
        invitations_sent: user.invitations_sent.min(i32::MAX as u32) as i32,
    }
}

/// `after_cursor`: empty is the start of the feed; otherwise a `cursor` a server gave:
/// `1.FEED.SEQ`, or `1.FEED.SEQ.ROW` within a commit's invitations. Whether it is of this
/// feed, and within it, is the import layer's to say (`import::feed`).
pub fn cursor(value: &str) -> Result<Option<After>, ArgumentError> {
    if value.is_empty() {
        return Ok(None);
    }
    // Digits only: `+3` or `03` are no cursor this server wrote.
    let number = |part: &str| {
        (!part.is_empty()
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0')))
        .then(|| part.parse::<i64>().ok())
        .flatten()
    };
    value
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|rest| {
            let mut parts = rest.split('.');
            let feed = parts.next().filter(|f| !f.is_empty())?;
            let seq = number(parts.next()?)?;
            let row = match parts.next() {
                None => None,
                Some(row) => Some(number(row)?),
            };
            if parts.next().is_some() || (seq == 0 && row.is_some()) {
                return None;
            }
            Some(After {
                feed: feed.to_owned(),
                cursor: Cursor { seq, row },
            })
        })
        .ok_or_else(|| {
            ArgumentError::new(
                "after_cursor",
                "after_cursor is not a cursor of this feed: give the `cursor` of an event it \
                 sent, or nothing to start from the oldest event kept",
            )
        })
        .map(Some)
}

/// What starts every cursor: a version, so that the form can change.
const CURSOR_PREFIX: &str = "1.";

/// An event of the feed as `WatchUserEvents` sends it. The `event_id` is the event's place
/// in the feed, which never changes: a follower de-duplicates on it.
pub fn user_event(feed: &FeedEvent) -> proto::UserEvent {
    use crate::domain::UserEventKind;
    let event = &feed.event;
    let (name, seq) = (&feed.feed, feed.cursor.seq);
    let (cursor, id) = match feed.cursor.row {
        None => (format!("{name}.{seq}"), format!("{name}-{seq}")),
        Some(row) => (format!("{name}.{seq}.{row}"), format!("{name}-{seq}-{row}")),
    };
    let kind = match event.kind {
        UserEventKind::Invited => proto::UserEventType::Invited,
        UserEventKind::InvitationResent => proto::UserEventType::InvitationResent,
        UserEventKind::Updated => proto::UserEventType::Updated,
        UserEventKind::Removed => proto::UserEventType::Removed,
        UserEventKind::InvitationAccepted => proto::UserEventType::InvitationAccepted,
    };
    proto::UserEvent {
        cursor: format!("{CURSOR_PREFIX}{cursor}"),
        event_id: format!("ue-{id}"),
        r#type: kind as i32,
        account_id: event.account_id.clone(),
        import_id: event.import_id.clone(),
        user: Some(user(&event.user)),
        event_time: Some(timestamp(event.event_time)),
    }
}
