//! The authentication layer: every call but health and reflection needs an API key with the
//! scope its method requires. The caller is handed to the service in the request extensions.

use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use super::status;
use crate::app::auth::{AuthError, Authenticator};
use crate::domain::auth::Scope;

/// The scope a method needs; `None` for the public health and reflection services. Anything
/// not listed as a read needs `write`, so a new RPC is never accidentally open to readers.
pub fn required_scope(path: &str) -> Option<Scope> {
    const PUBLIC: [&str; 3] = [
        "/grpc.health.v1.Health/",
        "/grpc.reflection.v1.ServerReflection/",
        "/grpc.reflection.v1alpha.ServerReflection/",
    ];
    const READS: [&str; 2] = [
        "/coffer.v1.Customers/GetCustomer",
        "/coffer.v1.Customers/ListCustomers",
    ];
    if PUBLIC.iter().any(|p| path.starts_with(p)) {
        None
    } else if READS.contains(&path) {
        Some(Scope::Read)
    } else {
        Some(Scope::Write)
    }
}

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
            let Some(needed) = required_scope(req.uri().path()) else {
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
