//! Telling a finished upload from one the client broke off.
//!
//! tonic hands a server handler the end of a client stream the same way whether the client
//! finished it (END_STREAM) or cancelled the call (RST_STREAM CANCEL, e.g. it dropped a
//! half-done upload): the stream just ends. A Put that stored what it had received would then
//! make a truncated upload visible; for a directory graph sent leaves first, a prefix is itself
//! a valid graph. This layer watches every request body and records in the request's extensions
//! whether it ended in an error, which the Put handlers check before storing anything.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::codegen::http;

/// Set once the request body ended in an error (a reset or broken connection).
#[derive(Clone, Default)]
pub(crate) struct BodyBroken(Arc<AtomicBool>);

impl BodyBroken {
    /// Whether the body of the request carrying this flag broke off.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Self {
        request.extensions().get::<BodyBroken>().cloned().unwrap_or_default()
    }

    /// Whether the body broke off.
    pub(crate) fn is_broken(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Tower layer adding a [`BodyBroken`] flag to every request.
#[derive(Clone, Copy, Default)]
pub(crate) struct WatchUploads;

impl<S> tower::Layer<S> for WatchUploads {
    type Service = WatchUploadsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WatchUploadsService { inner }
    }
}

/// The service [`WatchUploads`] wraps around the router.
#[derive(Clone)]
pub(crate) struct WatchUploadsService<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for WatchUploadsService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let flag = BodyBroken::default();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(flag.clone());
        let body = tonic::body::Body::new(Watched { inner: body, flag });
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

struct Watched {
    inner: tonic::body::Body,
    flag: BodyBroken,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.flag.0.store(true, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
