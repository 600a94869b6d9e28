//! Request counts and latencies of the gRPC server, per RPC, for `--metrics-listen`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

/// Tower layer recording `tvix_grpc_requests_total` and `tvix_grpc_request_seconds` (until the
/// response starts: for a streamed response, its first message) by method.
#[derive(Clone, Copy, Default)]
pub(crate) struct RpcMetrics;

impl<S> tower::Layer<S> for RpcMetrics {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner }
    }
}

/// The service [`RpcMetrics`] wraps around the router.
#[derive(Clone)]
pub(crate) struct RpcMetricsService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Only our services' methods become labels: a client cannot grow the label set.
        let path = request.uri().path();
        let method =
            if path.starts_with("/tvix.") || path.starts_with("/grpc.") { path.to_string() } else { "other".into() };
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            metrics::counter!("tvix_grpc_requests_total", "method" => method.clone()).increment(1);
            metrics::histogram!("tvix_grpc_request_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}
