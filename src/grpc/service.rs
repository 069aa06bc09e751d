//! The `ImportService` handlers: parse the request, call the import layer, convert the answer.
//!
//! Each handler stays a few lines (as qdrant's `tonic/api`): no SQL, no CSV and no decisions
//! here, so that the import layer can be tested and changed without gRPC, and a reader sees
//! the whole contract of an RPC at a glance. Page sizes and tokens are parsed here because they
//! are a property of the API (AIP-158), not of imports.
//!
//! Every handler follows the same order, so that every RPC refuses the same way:
//!
//! 1. the token, already checked by `auth::CheckToken` (UNAUTHENTICATED);
//! 2. the account, with `auth::scoped` (INVALID_ARGUMENT, then PERMISSION_DENIED);
//! 3. the other arguments, with `convert` and `page_token` (INVALID_ARGUMENT naming the field);
//! 4. the import layer, whose errors `grpc::error` maps. Any call that needs the database is
//!    UNAVAILABLE, `NOT_READY` until the database is open and `DATABASE_UNAVAILABLE` while
//!    it cannot be reached. An import id that the account does not have is NOT_FOUND,
//!    whether or not another account has it: an account never learns of another's imports.
//!
//! Lists are read a page at a time by `pages`, which the web console reads its pages with too.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{auth, convert, page_token, pages};
use crate::import::{Importer, template};
use crate::proto::{self, import_service_server::ImportService};

/// Row errors `GetImport` returns when `errors_page_size` is 0.
const DEFAULT_ERRORS_PAGE: u32 = 100;
/// Imports `ListImports` returns when `page_size` is 0.
const DEFAULT_IMPORTS_PAGE: u32 = 50;
/// Users `ListUsers` returns when `page_size` is 0.
const DEFAULT_USERS_PAGE: u32 = 100;
/// The most rows of any page; a larger `page_size` is coerced to it (AIP-158), so that one
/// request reads, and one answer holds, a bounded number of rows.
const MAX_PAGE: u32 = 1000;

/// The `ImportService`, as tonic serves it: a thin shell over the [`Importer`].
///
/// `app` builds one per server, behind `grpc::auth::CheckToken` and with the message size
/// limit (`grpc::MAX_MESSAGE_BYTES`); tonic shares it between all calls. It holds nothing but
/// the importer, a cheap handle to the state every request shares.
pub struct ImportServiceImpl {
    importer: Importer,
}

impl ImportServiceImpl {
    /// Serves `importer`, which may not have its database yet: calls that need it are
    /// UNAVAILABLE until `app` gives it one.
    pub fn new(importer: Importer) -> Self {
        Self { importer }
    }
}

/// `WatchImport`'s answer, boxed: the importer's stream mapped to messages by a closure has no
/// type that can be named.
type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchImportResponse, Status>> + Send>>;
/// `GetImportErrorReport`'s answer, boxed for the same reason as [`WatchStream`].
type ReportStream =
    Pin<Box<dyn Stream<Item = Result<proto::GetImportErrorReportResponse, Status>> + Send>>;

/// `WatchUserEvents`' answer, boxed for the same reason as [`WatchStream`].
type EventStream = Pin<Box<dyn Stream<Item = Result<proto::UserEvent, Status>> + Send>>;

/// What a revert did, in words: the note it left on the import (which says, when it removed
/// nothing, why); a later revert quotes the first one's note and says it removed nothing now.
fn revert_message(reverted: &crate::store::Reverted) -> String {
    if reverted.first {
        reverted.import.revert_note.clone()
    } else {
        format!(
            "already reverted ({}); nothing removed now",
            reverted.import.revert_note
        )
    }
}

#[tonic::async_trait]
impl ImportService for ImportServiceImpl {
    /// `UploadImport`: the stream is handed to the import layer, which runs the upload in a
    /// task of its own and answers once the import has ended.
    ///
    /// The handler checks only the token: the account is in the stream's first message, which
    /// the pipeline reads and scopes (PERMISSION_DENIED) before a byte of the file. The answer:
    ///
    /// - OK with the ended import for every ending the file itself decides: the COMPLETED
    ///   statuses, ERROR_PARSING (the file could not be read), and ERROR_UNKNOWN for a finish
    ///   whose size or SHA-256 does not match. The call worked; the status says how the file
    ///   fared, and its row errors are in `GetImport`;
    /// - an error, with no import left behind: a first message that is not valid metadata or
    ///   a `retry_of_import_id` the account does not have, content that is plainly not CSV
    ///   (INVALID_ARGUMENT), a taken `import_id` (ALREADY_EXISTS, with the existing import's
    ///   status), too many uploads running (RESOURCE_EXHAUSTED, `LIMIT_REACHED`), a server
    ///   starting, stopping or with a full disk (UNAVAILABLE);
    /// - an error, with the import ended ERROR_UNKNOWN or CANCELLED and nothing imported: a file
    ///   over the size limit (RESOURCE_EXHAUSTED, `FILE_TOO_LARGE`), a malformed message or a
    ///   stream that ends before `finish` (INVALID_ARGUMENT), one that breaks (CANCELLED), a
    ///   client silent for `--upload-idle-timeout` (DEADLINE_EXCEEDED), `CancelImport`
    ///   (CANCELLED), shutdown (UNAVAILABLE), a failed write (UNAVAILABLE or INTERNAL), the
    ///   import ended by another server meanwhile (ABORTED).
    ///
    /// If the client goes away, the upload's task still ends its import properly.
    async fn upload_import(
        &self,
        request: Request<Streaming<proto::UploadImportRequest>>,
    ) -> Result<Response<proto::UploadImportResponse>, Status> {
        let caller = auth::caller(&request)?;
        let events = request.into_inner().map(convert::upload_event);
        let import = self.importer.upload(caller, events).await?;
        Ok(Response::new(proto::UploadImportResponse {
            import: Some(convert::import(&import)),
        }))
    }

    /// `GetImport`: the import, as fresh as this server knows it (the live counters of an
    /// upload running here), and one page of its row errors in file order.
    ///
    /// `errors_page_size` follows AIP-158 (0 is 100, at most 1000); `errors_page_token` is
    /// bound to the account and the import, so a token from another import is
    /// INVALID_ARGUMENT. NOT_FOUND for an import the account does not have. Row errors past
    /// `--max-stored-row-errors` were not stored, and are counted in `row_errors_omitted`.
    async fn get_import(
        &self,
        request: Request<proto::GetImportRequest>,
    ) -> Result<Response<proto::GetImportResponse>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let import_id = convert::import_id(&req.import_id)?;
        let limit = page_token::page_size(
            "errors_page_size",
            req.errors_page_size,
            DEFAULT_ERRORS_PAGE,
            MAX_PAGE,
        )?;
        let (import, errors, next_errors_page_token) = pages::import_with_errors(
            &self.importer,
            &scope,
            &import_id,
            "errors_page_token",
            &req.errors_page_token,
            limit,
        )
        .await?;
        Ok(Response::new(proto::GetImportResponse {
            import: Some(convert::import(&import)),
            errors: errors
                .iter()
                .map(|e| convert::row_error(&e.error))
                .collect(),
            next_errors_page_token,
        }))
    }

    /// Snapshots of the import, then the end of the stream once it is terminal.
    type WatchImportStream = WatchStream;

    /// `WatchImport`: a snapshot at once, another whenever the counters moved (at least every
    /// 500 ms while they do), then the terminal one, after which the stream ends.
    ///
    /// An import already ended gets its one terminal snapshot. One running on another replica
    /// is followed through the database. NOT_FOUND before the stream starts for an import the
    /// account does not have; RESOURCE_EXHAUSTED (`LIMIT_REACHED`) when this server already
    /// has `--max-watchers` streams open. The stream ends with an error item when the
    /// database cannot be read for about 5 s in a row.
    async fn watch_import(
        &self,
        request: Request<proto::WatchImportRequest>,
    ) -> Result<Response<Self::WatchImportStream>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let import_id = convert::import_id(&req.import_id)?;
        let updates = self.importer.watch(&scope, &import_id).await?;
        let stream = updates.map(|update| {
            update
                .map(|import| proto::WatchImportResponse {
                    import: Some(convert::import(&import)),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// `ListImports`: the account's imports, newest first (by `create_time`, ties by
    /// `import_id`), running ones as fresh as this server knows them.
    ///
    /// `page_size` follows AIP-158 (0 is 50, at most 1000); `page_token` is bound to the
    /// account. An account with no imports gets an empty list, not NOT_FOUND.
    async fn list_imports(
        &self,
        request: Request<proto::ListImportsRequest>,
    ) -> Result<Response<proto::ListImportsResponse>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let limit =
            page_token::page_size("page_size", req.page_size, DEFAULT_IMPORTS_PAGE, MAX_PAGE)?;
        let (imports, next_page_token) =
            pages::imports(&self.importer, &scope, "page_token", &req.page_token, limit).await?;
        Ok(Response::new(proto::ListImportsResponse {
            imports: imports.iter().map(convert::import).collect(),
            next_page_token,
        }))
    }

    /// `GetImportTemplate`: the CSV template of an import type, with its columns described.
    ///
    /// Built into the binary, so it needs no database: it answers while the server is not
    /// ready yet. Any valid token will do, since the template belongs to no account.
    /// INVALID_ARGUMENT for a type number this server does not know.
    async fn get_import_template(
        &self,
        request: Request<proto::GetImportTemplateRequest>,
    ) -> Result<Response<proto::GetImportTemplateResponse>, Status> {
        // Any valid token: the template belongs to no account.
        auth::caller(&request)?;
        let kind = convert::import_type(request.into_inner().r#type)?;
        Ok(Response::new(convert::template(template::template(kind))))
    }

    /// `CancelImport`: stops a PROCESSING import wherever it runs, and answers with it ended
    /// CANCELLED, nothing imported or updated.
    ///
    /// An upload running here is told directly; one on another replica through the database.
    /// The call then waits for the ending, at most 30 s: past that it is UNAVAILABLE (the
    /// cancel stays asked; `GetImport` shows when it lands). FAILED_PRECONDITION for an import
    /// that had already ended, or that ended some other way before the cancel reached it.
    /// NOT_FOUND for an import the account does not have. The wait follows the import as
    /// `WatchImport` does, so it takes one of the `--max-watchers` places while it lasts.
    async fn cancel_import(
        &self,
        request: Request<proto::CancelImportRequest>,
    ) -> Result<Response<proto::CancelImportResponse>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let import_id = convert::import_id(&req.import_id)?;
        let import = self.importer.cancel(&scope, &import_id).await?;
        Ok(Response::new(proto::CancelImportResponse {
            import: Some(convert::import(&import)),
        }))
    }

    /// `RevertImport`: removes the users the import created, except those another import has
    /// updated since, and says how many went in `users_removed` and in words in `message`.
    ///
    /// Idempotent: a second call removes nothing and keeps the first `revert_time` and note.
    /// FAILED_PRECONDITION while the import runs, or while a running UPDATE import has changed
    /// some of its users. Updates the import made to existing users are not undone.
    async fn revert_import(
        &self,
        request: Request<proto::RevertImportRequest>,
    ) -> Result<Response<proto::RevertImportResponse>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let import_id = convert::import_id(&req.import_id)?;
        let reverted = self.importer.revert(&scope, &import_id).await?;
        Ok(Response::new(proto::RevertImportResponse {
            message: revert_message(&reverted),
            import: Some(convert::import(&reverted.import)),
            users_removed: reverted.removed as i64,
        }))
    }

    /// The report's bytes, a chunk per 500 failed rows; the first chunk starts with the byte
    /// order mark and the header.
    type GetImportErrorReportStream = ReportStream;

    /// `GetImportErrorReport`: the failed rows as a CSV file to fix and upload again, streamed
    /// as it is read from the database, so that a large report costs little memory.
    ///
    /// FAILED_PRECONDITION while the import runs: its failed rows are not all known yet. An
    /// import without failed rows gets a file with the header alone. A database error part
    /// way ends the stream with an error item; the client must then discard what it got.
    async fn get_import_error_report(
        &self,
        request: Request<proto::GetImportErrorReportRequest>,
    ) -> Result<Response<Self::GetImportErrorReportStream>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let import_id = convert::import_id(&req.import_id)?;
        let chunks = self.importer.error_report(&scope, &import_id).await?;
        let stream = chunks.map(|chunk| {
            chunk
                .map(|chunk| proto::GetImportErrorReportResponse { chunk })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// `ListUsers`: the account's users by email, or only those one import created when
    /// `import_id` is set (NOT_FOUND for an import the account does not have).
    ///
    /// `page_size` follows AIP-158 (0 is 100, at most 1000); `page_token` is bound to the
    /// account and to the `import_id` filter, so changing the filter between pages is
    /// INVALID_ARGUMENT rather than a mix of two lists.
    async fn list_users(
        &self,
        request: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let import_id = match req.import_id.as_str() {
            "" => None,
            id => Some(convert::import_id(id)?),
        };
        let state = convert::state_filter(req.invitation_state)?;
        let limit =
            page_token::page_size("page_size", req.page_size, DEFAULT_USERS_PAGE, MAX_PAGE)?;
        let (users, next_page_token) = pages::users(
            &self.importer,
            &scope,
            import_id.as_ref(),
            state,
            &req.page_token,
            limit,
        )
        .await?;
        Ok(Response::new(proto::ListUsersResponse {
            users: users.iter().map(convert::user).collect(),
            next_page_token,
        }))
    }

    /// `SendInvitations`: invites an import's HELD users, or the users with these addresses;
    /// with `resend`, SENT ones again. Neither `import_id` nor `emails` is INVALID_ARGUMENT,
    /// so that no call invites a whole account by accident.
    async fn send_invitations(
        &self,
        request: Request<proto::SendInvitationsRequest>,
    ) -> Result<Response<proto::SendInvitationsResponse>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let import_id = match req.import_id.as_str() {
            "" => None,
            id => Some(convert::import_id(id)?),
        };
        let emails = convert::invitees(import_id.is_some(), &req.emails)?;
        let invited = self
            .importer
            .send_invitations(&scope, import_id.as_ref(), &emails, req.resend)
            .await?;
        Ok(Response::new(proto::SendInvitationsResponse {
            users_invited: invited as i64,
        }))
    }

    /// `AcceptInvitation`: the user, ACCEPTED. NOT_FOUND for an address the account has no
    /// user for; FAILED_PRECONDITION for a HELD or REVOKED invitation.
    async fn accept_invitation(
        &self,
        request: Request<proto::AcceptInvitationRequest>,
    ) -> Result<Response<proto::AcceptInvitationResponse>, Status> {
        let (scope, req) = auth::scoped(request)?;
        let email = convert::mailbox("email", &req.email)?;
        let user = self.importer.accept_invitation(&scope, &email).await?;
        Ok(Response::new(proto::AcceptInvitationResponse {
            user: Some(convert::user(&user)),
        }))
    }

    /// The feed's events, one message each.
    type WatchUserEventsStream = EventStream;

    /// `WatchUserEvents`: the stored events after `after_cursor`, then the new ones as they
    /// commit. An empty `account_id` follows every account the token allows.
    async fn watch_user_events(
        &self,
        request: Request<proto::WatchUserEventsRequest>,
    ) -> Result<Response<Self::WatchUserEventsStream>, Status> {
        let (caller, account, req) = auth::caller_and_account(request, "WatchUserEvents")?;
        let after = convert::cursor(&req.after_cursor)?;
        let events = self.importer.user_events(caller, account, after).await?;
        let stream = events.map(|event| {
            event
                .map(|event| convert::user_event(&event))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
