//! The token check of every `ImportService` call, before its handler runs, and so before any
//! byte of an upload is read: UNAUTHENTICATED without a valid token. The caller it finds goes
//! into the request's extensions, for the handler to check the account. Health and reflection
//! are not behind it: probes and grpcurl's listing need no token.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::Authenticator;
use crate::domain::{AccountId, Caller};
use crate::import::ImportError;

#[derive(Clone)]
pub struct CheckToken(pub Arc<Authenticator>);

impl Interceptor for CheckToken {
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
            // The message never quotes the token.
            Err(e) => Err(Status::with_error_details(
                Code::Unauthenticated,
                e.to_string(),
                ErrorDetails::with_error_info("UNAUTHENTICATED", super::error::DOMAIN, []),
            )),
        }
    }
}

/// Who makes `request`, as the token check found.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    // Without the check in front (a wiring mistake), nobody gets in.
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller: the token check did not run"))
}

/// PERMISSION_DENIED unless `caller` may act in `account_id`.
pub fn allow(caller: &Caller, account_id: &AccountId) -> Result<(), Status> {
    if caller.may_act_in(account_id) {
        Ok(())
    } else {
        Err(ImportError::PermissionDenied(account_id.clone()).into())
    }
}
