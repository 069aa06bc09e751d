//! Who may call, and in which account: the token check of every `ImportService` call, and the
//! account check of every handler.
//!
//! - [`CheckToken`] runs before any handler, and so before any byte of an upload is read:
//!   UNAUTHENTICATED without a valid token. The caller it finds goes into the request's
//!   extensions. Health and reflection are not behind it: probes and grpcurl's listing need
//!   no token.
//! - [`scoped`] starts every handler of a request that names an account: it returns the
//!   checked [`Scope`], the only form in which the import layer takes an account, so a handler
//!   cannot reach an account without the check. The upload names its account in its first
//!   message, inside the stream: the pipeline checks it there with the same
//!   `Caller::scope`, before a byte of the file is read.
//!
//! Both refusals go through the one mapping of errors to statuses (`grpc::error`), with their
//! `ErrorInfo`.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::convert;
use crate::auth::Authenticator;
use crate::domain::{AccountId, Caller, Scope};
use crate::import::ImportError;
use crate::proto;

/// The token check in front of the `ImportService`.
///
/// `app` wraps the service in it (`InterceptedService`), so it runs once per call, on the
/// call's headers, before tonic reads any message: an upload without a valid token costs the
/// server no byte of its file. It holds the shared [`Authenticator`], whose tokens the file
/// watcher swaps while the server runs, so every clone checks against the newest version.
#[derive(Clone)]
pub struct CheckToken(pub Arc<Authenticator>);

impl Interceptor for CheckToken {
    /// Puts the [`Caller`] the token names into the request's extensions, where [`caller`]
    /// finds it; without a valid token the call ends here with UNAUTHENTICATED (reason
    /// `UNAUTHENTICATED`), whose message says whether the token was missing or not valid. On a
    /// server that runs open every call passes, as `Caller::open`.
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        match self.0.check(authorization) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            // Neither the message nor the log quotes the token.
            Err(e) => {
                crate::audit::unauthenticated(request.remote_addr(), &e.to_string());
                Err(ImportError::Unauthenticated(e.to_string()).into())
            }
        }
    }
}

/// Who makes `request`, as the token check found.
///
/// For the handlers whose request names no account in its own fields: `UploadImport` (the
/// account is in the stream's first message, and the pipeline scopes it) and
/// `GetImportTemplate` (any valid token). UNAUTHENTICATED when the extension is missing,
/// which only a server wired without [`CheckToken`] can produce: a mistake there locks
/// everyone out rather than letting everyone in.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    // Without the check in front (a wiring mistake), nobody gets in.
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            ImportError::Unauthenticated("no caller: the token check did not run".to_owned()).into()
        })
}

/// The request's account, checked against its caller, and the request: INVALID_ARGUMENT for
/// an account id that is not one, PERMISSION_DENIED for an account the token does not cover.
///
/// The first line of every handler whose request names an account. It consumes the request,
/// so that a handler has the account only as the [`Scope`] and cannot read `account_id`
/// unchecked by mistake. The account is checked before the import id or any other argument:
/// a caller without the account gets PERMISSION_DENIED whatever else the request holds.
pub fn scoped<T: NamesAccount>(request: Request<T>) -> Result<(Scope, T), Status> {
    let caller = caller(&request)?;
    let peer = request.remote_addr();
    let request = request.into_inner();
    let account_id = convert::account_id(request.account_id())?;
    let scope = caller.scope(account_id).map_err(|account| {
        crate::audit::denied(caller.name(), account.as_str(), T::RPC, peer);
        ImportError::PermissionDenied(account)
    })?;
    Ok((scope, request))
}

/// The caller and, when the request names one, its account, checked: for the calls whose
/// empty `account_id` means "every account the token allows" (`WatchUserEvents`).
pub fn caller_and_account<T: AccountField>(
    request: Request<T>,
    rpc: &'static str,
) -> Result<(Caller, Option<AccountId>, T), Status> {
    let caller = caller(&request)?;
    let peer = request.remote_addr();
    let request = request.into_inner();
    let account = match request.account_field() {
        "" => None,
        id => {
            let account = convert::account_id(id)?;
            if !caller.may_act_in(&account) {
                crate::audit::denied(caller.name(), account.as_str(), rpc, peer);
                return Err(ImportError::PermissionDenied(account).into());
            }
            Some(account)
        }
    };
    Ok((caller, account, request))
}

/// A request whose `account_id` may be empty (`caller_and_account`).
pub trait AccountField {
    /// The account id as the client sent it; empty for every account the token allows.
    fn account_field(&self) -> &str;
}

impl AccountField for proto::WatchUserEventsRequest {
    fn account_field(&self) -> &str {
        &self.account_id
    }
}

/// A request that names the account it acts in.
///
/// Implemented by `names_account!` for every request message with an `account_id` field,
/// so that [`scoped`] can start any handler. A new RPC whose request names an account is
/// added to that list; forgetting it fails to compile where the handler calls `scoped`.
pub trait NamesAccount {
    /// The RPC the request is for, as the proto names it: for the audit log.
    const RPC: &'static str;
    /// The account id, as the client sent it.
    fn account_id(&self) -> &str;
}

/// Implements [`NamesAccount`] for request messages whose account field is `account_id`,
/// as prost generates it.
macro_rules! names_account {
    ($($request:ty => $rpc:literal),* $(,)?) => {
        $(impl NamesAccount for $request {
            const RPC: &'static str = $rpc;
            fn account_id(&self) -> &str {
                &self.account_id
            }
        })*
    };
}

names_account!(
    proto::GetImportRequest => "GetImport",
    proto::WatchImportRequest => "WatchImport",
    proto::ListImportsRequest => "ListImports",
    proto::CancelImportRequest => "CancelImport",
    proto::RevertImportRequest => "RevertImport",
    proto::GetImportErrorReportRequest => "GetImportErrorReport",
    proto::ListUsersRequest => "ListUsers",
    proto::SendInvitationsRequest => "SendInvitations",
    proto::AcceptInvitationRequest => "AcceptInvitation",
);
