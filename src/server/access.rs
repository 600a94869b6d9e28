//! The gRPC services' door: every call's [`Caller`] is established by the server's
//! [`Gate`], and a call whose caller lacks the right the method needs is refused before any
//! service sees it (UNAUTHENTICATED for an invalid credential, PERMISSION_DENIED for a missing
//! right), with one log line naming the caller and the method.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

use crate::access::{Caller, Gate, Right};

/// The right a gRPC method needs; `None` for what anybody may ask (health).
pub fn required_right(path: &str) -> Option<Right> {
    match path {
        "/tvix.castore.v1.BlobService/Put"
        | "/tvix.castore.v1.DirectoryService/Put"
        | "/tvix.store.v1.PathInfoService/Put" => Some(Right::Write),
        p if p.starts_with("/tvix_store.admin.v1.StoreAdmin/") => Some(Right::Admin),
        p if p.starts_with("/grpc.health.v1.Health/") => None,
        _ => Some(Right::Read),
    }
}

/// Tower layer putting [`Door`] in front of the router.
#[derive(Clone)]
pub(crate) struct Guard {
    gate: Arc<dyn Gate>,
}

impl Guard {
    pub(crate) fn new(gate: Arc<dyn Gate>) -> Self {
        Self { gate }
    }
}

impl<S> tower::Layer<S> for Guard {
    type Service = Door<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Door { inner, gate: self.gate.clone() }
    }
}

/// The service [`Guard`] wraps around the router.
#[derive(Clone)]
pub(crate) struct Door<S> {
    inner: S,
    gate: Arc<dyn Gate>,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Door<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let refused = match self.gate.caller(request.extensions(), request.headers()) {
            Err(refusal) => {
                tracing::warn!(%method, "refused: {refusal}");
                Some(tonic::Status::unauthenticated(format!("{refusal}: refused")))
            }
            Ok(caller) => match required_right(&method) {
                Some(right) if !caller.rights.has(right) => {
                    tracing::warn!(caller = %caller.identity, %method, "refused: lacks the {} right", right.name());
                    Some(tonic::Status::permission_denied(lacking(&caller, right, &method)))
                }
                _ => {
                    request.extensions_mut().insert(caller);
                    None
                }
            },
        };
        if let Some(status) = refused {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// What a caller is told when it lacks a right.
fn lacking(caller: &Caller, right: Right, method: &str) -> String {
    format!(
        "{} lacks the {} right for {method}: use a token that has it, or ask the operator for it (see docs/access.md)",
        caller.identity,
        right.name()
    )
}

/// The caller of a call, as the door established it; a call that did not come through a door
/// (a service embedded in a program serving it itself) is [`Caller::embedded`].
pub(crate) fn caller_of<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or_else(Caller::embedded)
}
