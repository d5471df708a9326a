//! The authentication layer: every call but health and reflection needs an API key with the
//! scope its method's policy requires. The caller is handed to the service in the request
//! extensions. A path with no policy is answered UNIMPLEMENTED at once, without looking at its
//! key, so made-up methods cost no database work.

use std::collections::HashMap;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::{policy, status};
use crate::app::auth::{AuthError, Authenticator, LOOKUP_RETRY_AFTER};

/// The reason of RESOURCE_EXHAUSTED when a key could not be checked because the budget of key
/// lookups was spent (see `app::auth`).
pub const REASON_KEY_LOOKUPS_EXHAUSTED: &str = "KEY_LOOKUPS_EXHAUSTED";

#[derive(Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone is not ready; take the ready one and leave the clone behind (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let Some(policy) = policy::of(req.uri().path()) else {
                // Like tonic's own answer for an unknown method: no details.
                return Ok(Status::unimplemented("unknown method").into_http());
            };
            let Some(needed) = policy.scope else {
                return inner.call(req).await;
            };
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let caller = match auth.authenticate(header).await {
                Ok(Ok(caller)) => caller,
                Ok(Err(AuthError::Missing)) => {
                    return Ok(status::unauthenticated(
                        "missing api key: send \"authorization: Bearer <api key>\"",
                    )
                    .into_http());
                }
                Ok(Err(AuthError::Invalid)) => {
                    return Ok(status::unauthenticated("invalid or revoked api key").into_http());
                }
                Ok(Err(AuthError::Busy)) => return Ok(lookups_exhausted().into_http()),
                Err(e) => return Ok(tonic::Status::from(e).into_http()),
            };
            if !caller.scopes.allows(needed) {
                return Ok(status::permission_denied(format!(
                    "this api key lacks the {:?} scope",
                    needed.as_str()
                ))
                .into_http());
            }
            req.extensions_mut().insert(caller);
            inner.call(req).await
        })
    }
}

fn lookups_exhausted() -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(REASON_KEY_LOOKUPS_EXHAUSTED, status::DOMAIN, HashMap::new());
    details.set_retry_info(Some(LOOKUP_RETRY_AFTER));
    Status::with_error_details(
        Code::ResourceExhausted,
        "too many api keys being checked at once, retry shortly",
        details,
    )
}
