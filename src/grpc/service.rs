//! The `ImportService` handlers: parse the request, call the import layer, convert the answer.
//!
//! Each handler stays a few lines (as qdrant's `tonic/api`): no SQL, no CSV and no decisions
//! here, so that the import layer can be tested and changed without gRPC, and a reader sees
//! the whole contract of an RPC at a glance. Page sizes and tokens are parsed here because they
//! are a property of the API (AIP-158), not of imports.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{auth, convert, page_token};
use crate::import::ImportCursor;
use crate::import::{Importer, template};
use crate::proto::{self, import_service_server::ImportService};

const DEFAULT_ERRORS_PAGE: u32 = 100;
const DEFAULT_IMPORTS_PAGE: u32 = 50;
const DEFAULT_USERS_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub struct ImportServiceImpl {
    importer: Importer,
}

impl ImportServiceImpl {
    pub fn new(importer: Importer) -> Self {
        Self { importer }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchImportResponse, Status>> + Send>>;
type ReportStream =
    Pin<Box<dyn Stream<Item = Result<proto::GetImportErrorReportResponse, Status>> + Send>>;

/// What a revert did, in words: the note it left on the import.
fn revert_message(reverted: &crate::store::Reverted) -> String {
    if reverted.removed == 0 && reverted.kept == 0 && reverted.import.revert_note.is_empty() {
        return "nothing to revert".to_owned();
    }
    match reverted.removed {
        0 if reverted.kept == 0 => format!(
            "already reverted ({}); nothing removed now",
            reverted.import.revert_note
        ),
        _ => reverted.import.revert_note.clone(),
    }
}

#[tonic::async_trait]
impl ImportService for ImportServiceImpl {
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

    async fn get_import(
        &self,
        request: Request<proto::GetImportRequest>,
    ) -> Result<Response<proto::GetImportResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let account_id = convert::account_id(&req.account_id)?;
        auth::allow(&caller, &account_id)?;
        let import_id = convert::import_id(&req.import_id)?;
        let limit = page_token::page_size(
            "errors_page_size",
            req.errors_page_size,
            DEFAULT_ERRORS_PAGE,
            MAX_PAGE,
        )?;
        let scope = page_token::scope(&[account_id.as_str(), import_id.as_str()]);
        let after = page_token::decode("errors_page_token", &req.errors_page_token, scope)?;

        let import = self.importer.get(&account_id, &import_id).await?;
        let mut errors = self
            .importer
            .row_errors(import.key, after, limit + 1)
            .await?;
        let next_errors_page_token = if errors.len() > limit as usize {
            errors.truncate(limit as usize);
            page_token::encode(scope, errors.last().map_or(0, |e| e.seq))
        } else {
            String::new()
        };
        Ok(Response::new(proto::GetImportResponse {
            import: Some(convert::import(&import)),
            errors: errors
                .iter()
                .map(|e| convert::row_error(&e.error))
                .collect(),
            next_errors_page_token,
        }))
    }

    type WatchImportStream = WatchStream;

    async fn watch_import(
        &self,
        request: Request<proto::WatchImportRequest>,
    ) -> Result<Response<Self::WatchImportStream>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let account_id = convert::account_id(&req.account_id)?;
        auth::allow(&caller, &account_id)?;
        let import_id = convert::import_id(&req.import_id)?;
        let updates = self.importer.watch(&account_id, &import_id).await?;
        let stream = updates.map(|update| {
            update
                .map(|import| proto::WatchImportResponse {
                    import: Some(convert::import(&import)),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_imports(
        &self,
        request: Request<proto::ListImportsRequest>,
    ) -> Result<Response<proto::ListImportsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let account_id = convert::account_id(&req.account_id)?;
        auth::allow(&caller, &account_id)?;
        let limit =
            page_token::page_size("page_size", req.page_size, DEFAULT_IMPORTS_PAGE, MAX_PAGE)?;
        let scope = page_token::scope(&[account_id.as_str()]);
        let after = page_token::decode_cursor("page_token", &req.page_token, scope)?.map(
            |(create_micros, import_id)| ImportCursor {
                create_micros,
                import_id,
            },
        );

        let mut imports = self
            .importer
            .list(&account_id, after.as_ref(), limit + 1)
            .await?;
        let next_page_token = if imports.len() > limit as usize {
            imports.truncate(limit as usize);
            let last = ImportCursor::after(imports.last().expect("a full page"));
            page_token::encode_cursor(scope, last.create_micros, &last.import_id)
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListImportsResponse {
            imports: imports.iter().map(convert::import).collect(),
            next_page_token,
        }))
    }

    async fn get_import_template(
        &self,
        request: Request<proto::GetImportTemplateRequest>,
    ) -> Result<Response<proto::GetImportTemplateResponse>, Status> {
        // Any valid token: the template belongs to no account.
        auth::caller(&request)?;
        let kind = convert::import_type(request.into_inner().r#type)?;
        Ok(Response::new(convert::template(template::template(kind))))
    }

    async fn cancel_import(
        &self,
        request: Request<proto::CancelImportRequest>,
    ) -> Result<Response<proto::CancelImportResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let account_id = convert::account_id(&req.account_id)?;
        auth::allow(&caller, &account_id)?;
        let import_id = convert::import_id(&req.import_id)?;
        let import = self.importer.cancel(&account_id, &import_id).await?;
        Ok(Response::new(proto::CancelImportResponse {
            import: Some(convert::import(&import)),
        }))
    }

    async fn revert_import(
        &self,
        request: Request<proto::RevertImportRequest>,
    ) -> Result<Response<proto::RevertImportResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let account_id = convert::account_id(&req.account_id)?;
        auth::allow(&caller, &account_id)?;
        let import_id = convert::import_id(&req.import_id)?;
        let reverted = self.importer.revert(&account_id, &import_id).await?;
        Ok(Response::new(proto::RevertImportResponse {
            message: revert_message(&reverted),
            import: Some(convert::import(&reverted.import)),
            users_removed: reverted.removed as i64,
        }))
    }

    type GetImportErrorReportStream = ReportStream;

    async fn get_import_error_report(
        &self,
        request: Request<proto::GetImportErrorReportRequest>,
    ) -> Result<Response<Self::GetImportErrorReportStream>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let account_id = convert::account_id(&req.account_id)?;
        auth::allow(&caller, &account_id)?;
        let import_id = convert::import_id(&req.import_id)?;
        let chunks = self.importer.error_report(&account_id, &import_id).await?;
        let stream = chunks.map(|chunk| {
            chunk
                .map(|chunk| proto::GetImportErrorReportResponse { chunk })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_users(
        &self,
        request: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let account_id = convert::account_id(&req.account_id)?;
        auth::allow(&caller, &account_id)?;
        let import_id = match req.import_id.as_str() {
            "" => None,
            id => Some(convert::import_id(id)?),
        };
        let limit =
            page_token::page_size("page_size", req.page_size, DEFAULT_USERS_PAGE, MAX_PAGE)?;
        let scope_import = import_id.as_ref().map_or("", |id| id.as_str());
        let scope = page_token::scope(&[account_id.as_str(), scope_import]);
        let after = page_token::decode_key("page_token", &req.page_token, scope)?;
        let mut users = self
            .importer
            .users(&account_id, import_id.as_ref(), after.as_deref(), limit + 1)
            .await?;
        let next_page_token = if users.len() > limit as usize {
            users.truncate(limit as usize);
            page_token::encode_key(scope, &users.last().expect("a full page").email)
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListUsersResponse {
            users: users.iter().map(convert::user).collect(),
            next_page_token,
        }))
    }
}
