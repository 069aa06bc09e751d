//! Conversions between protobuf messages and domain types. Arguments are parsed here, once, so
//! that the import layer only ever sees valid values ("parse, don't validate"), and prost's
//! generated types never leak past this layer: a change to the proto is a change here only.

use std::time::SystemTime;

use crate::domain::{
    AccountId, ArgumentError, ConflictPolicy, Filename, Import, ImportId, ImportStatus, ImportType,
    NewImport, RowError,
};
use crate::import::pipeline::events::{FinishCheck, StreamError, UploadEvent};
use crate::import::template::Template;
use crate::proto;
use proto::upload_import_request::Payload;

pub fn account_id(value: &str) -> Result<AccountId, ArgumentError> {
    AccountId::parse(value)
}

pub fn import_id(value: &str) -> Result<ImportId, ArgumentError> {
    ImportId::parse(value)
}

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
        _ => StreamError::Transport(status.message().to_owned()),
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

fn new_import(m: &proto::ImportMetadata) -> Result<NewImport, ArgumentError> {
    let import_id = match m.import_id.as_str() {
        "" => ImportId::generate(),
        id => import_id(id)?,
    };
    Ok(NewImport {
        account_id: account_id(&m.account_id)?,
        import_id,
        kind: import_type(m.r#type)?,
        filename: Filename::parse(&m.filename)?,
        // Set by the import layer from the caller, never by the client.
        created_by: String::new(),
        validate_only: m.validate_only,
        on_conflict: conflict_policy(m.on_conflict)?,
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

fn proto_policy(policy: ConflictPolicy) -> proto::ConflictPolicy {
    match policy {
        ConflictPolicy::Error => proto::ConflictPolicy::Error,
        ConflictPolicy::Skip => proto::ConflictPolicy::Skip,
        ConflictPolicy::Update => proto::ConflictPolicy::Update,
    }
}

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
    }
}

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

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

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

pub fn user(user: &crate::store::StoredUser) -> proto::User {
    proto::User {
        email: crate::domain::email::readable(&user.email),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        role: match user.role.as_str() {
            "admin" => proto::UserRole::Admin,
            "viewer" => proto::UserRole::Viewer,
            "member" => proto::UserRole::Member,
            _ => proto::UserRole::Unspecified,
        } as i32,
        job_title: user.job_title.clone(),
        external_id: user.external_id.clone().unwrap_or_default(),
        import_id: user.import_id.clone(),
        create_time: Some(timestamp(user.create_time)),
        update_time: Some(timestamp(user.update_time)),
    }
}
