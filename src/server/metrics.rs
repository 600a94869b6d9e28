//! Request counts and latencies of the gRPC server, per RPC, for `--metrics-listen`.
//!
//! The `method` label comes from the server's own route table, never from the request: a
//! client may send any path (issue #26: 5,000 made-up method names made a scrape 22 MB), and
//! every path that is not a method of a service we serve is counted as `other`. The table is
//! read from the descriptor sets of the services the router registers, so a method added to a
//! `.proto` file is labelled without a list to keep up to date.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;
use tonic::codegen::http;

/// The descriptor sets of every service the router serves: ours, health, and the two
/// reflection versions (which register their own descriptors with themselves).
pub(crate) const SERVED_DESCRIPTOR_SETS: [&[u8]; 4] = [
    crate::proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// The label of a path that is no method we serve.
const OTHER: &str = "other";

/// Every method path the server serves (`/package.Service/Method`).
static ROUTES: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut routes = HashSet::new();
    for set in SERVED_DESCRIPTOR_SETS {
        match method_paths(set) {
            Ok(paths) => routes.extend(paths),
            // Built into the binary, so this is a bug (the unit test catches it); its methods
            // are then counted as `other`, which is wrong but bounded.
            Err(e) => tracing::error!("metrics: cannot read a built-in descriptor set: {e}"),
        }
    }
    routes
});

/// The method paths of every service in an encoded `FileDescriptorSet`.
fn method_paths(set: &[u8]) -> Result<Vec<String>, prost::DecodeError> {
    let set = prost_types::FileDescriptorSet::decode(set)?;
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let service_name =
                if package.is_empty() { service.name().to_string() } else { format!("{package}.{}", service.name()) };
            for method in &service.method {
                paths.push(format!("/{service_name}/{}", method.name()));
            }
        }
    }
    Ok(paths)
}

/// The `method` label of a request for `path`: the path itself when it is one of our routes,
/// else [`OTHER`]. Borrowed from the route table, so a label costs no allocation.
pub(crate) fn method_label(path: &str) -> &'static str {
    ROUTES.get(path).map_or(OTHER, String::as_str)
}

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
        // Only our routes become labels: a client cannot grow the label set.
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            metrics::counter!("tvix_grpc_requests_total", "method" => method).increment(1);
            metrics::histogram!("tvix_grpc_request_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::server::NamedService;

    use super::*;
    use crate::proto::admin::store_admin_server::StoreAdminServer;
    use crate::proto::castore::blob_service_server::BlobServiceServer;
    use crate::proto::castore::directory_service_server::DirectoryServiceServer;
    use crate::proto::ext::blob_batch_service_server::BlobBatchServiceServer;
    use crate::proto::ext::path_info_graph_service_server::PathInfoGraphServiceServer;
    use crate::proto::store::path_info_service_server::PathInfoServiceServer;
    use crate::server::{
        AdminServer, BlobBatchServer, BlobServer, DirectoryServer, PathInfoGraphServer, PathInfoServer,
    };

    #[test]
    fn every_descriptor_set_decodes() {
        for set in SERVED_DESCRIPTOR_SETS {
            assert!(!method_paths(set).unwrap().is_empty());
        }
    }

    /// Every service the router adds has its methods in the table (by the name tonic routes
    /// it under), and the paths are exactly what clients send.
    #[test]
    fn the_route_table_covers_every_served_service() {
        let services = [
            <BlobServiceServer<BlobServer> as NamedService>::NAME,
            <DirectoryServiceServer<DirectoryServer> as NamedService>::NAME,
            <PathInfoServiceServer<PathInfoServer> as NamedService>::NAME,
            <BlobBatchServiceServer<BlobBatchServer> as NamedService>::NAME,
            <PathInfoGraphServiceServer<PathInfoGraphServer> as NamedService>::NAME,
            <StoreAdminServer<AdminServer> as NamedService>::NAME,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ];
        for service in services {
            assert!(ROUTES.iter().any(|r| r.starts_with(&format!("/{service}/"))), "{service} has no routes");
        }
        for path in [
            "/tvix.castore.v1.BlobService/Read",
            "/tvix.castore.v1.BlobService/Stat",
            "/tvix.castore.v1.BlobService/Put",
            "/tvix.castore.v1.DirectoryService/Get",
            "/tvix.store.v1.PathInfoService/CalculateNAR",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(path), path);
        }
    }

    #[test]
    fn anything_else_is_other() {
        for path in [
            "/tvix.castore.v1.BlobService/xyz-1",
            "/tvix.castore.v1.BlobService/",
            "/tvix.castore.v1.Nothing/Read",
            "/grpc.health.v1.Health/Check/extra",
            "/grpc.made.up/X",
            "/elsewhere",
            "",
            "tvix.castore.v1.BlobService/Read",
        ] {
            assert_eq!(method_label(path), OTHER, "{path}");
        }
    }
}
