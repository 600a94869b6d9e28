//! Server of our `tvix_store.admin.v1.StoreAdmin` extension: verify, delete and garbage
//! collection on the store this process holds.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::maintenance::{
    self, Backends, DeleteOptions, GcOptions, MaintenanceError, VerifyEvent, VerifyOptions, wire,
};
use crate::proto::admin as proto;
use crate::store::Store;
use crate::storepath::StorePath;

/// What the admin service works on.
#[derive(Clone)]
pub struct Admin {
    /// The store's services.
    pub store: Store,
    /// Its backends, where this process holds them (delete and garbage collection need them).
    pub backends: Option<Backends>,
}

/// The admin service. Who may call it is the server's gate's decision: every method needs the
/// admin right ([`super::required_right`]).
pub struct AdminServer {
    admin: Admin,
}

impl AdminServer {
    /// Serves `admin`.
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }

    fn backends(&self) -> Result<&Backends, Status> {
        self.admin.backends.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this daemon's services are not each one backend it holds (a cache, a signing wrapper or a remote is in between): run delete and gc where the backends are",
            )
        })
    }
}

fn status(e: MaintenanceError) -> Status {
    match e {
        MaintenanceError::Store(e) => e.into(),
        MaintenanceError::Unknown(_) => Status::not_found(e.to_string()),
        MaintenanceError::Referenced { .. } | MaintenanceError::Broken { .. } => {
            Status::failed_precondition(e.to_string())
        }
        MaintenanceError::Remote(m) => Status::unavailable(m),
    }
}

fn store_paths(paths: &[String]) -> Result<Vec<StorePath>, Status> {
    paths.iter().map(|p| StorePath::parse(p).map_err(|e| Status::invalid_argument(format!("{p:?}: {e}")))).collect()
}

#[tonic::async_trait]
impl proto::store_admin_server::StoreAdmin for AdminServer {
    type VerifyStream = Pin<Box<dyn Stream<Item = Result<proto::VerifyEvent, Status>> + Send>>;

    async fn verify(&self, request: Request<proto::VerifyRequest>) -> Result<Response<Self::VerifyStream>, Status> {
        let request = request.into_inner();
        let options =
            VerifyOptions { paths: store_paths(&request.store_paths)?, contents: request.contents, nar: request.nar };
        let store = self.admin.store.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let events = tx.clone();
            let report = move |event: VerifyEvent| {
                let event = match event {
                    VerifyEvent::Problem(p) => proto::verify_event::Event::Problem(wire::problem_to_proto(p)),
                    VerifyEvent::Progress { done, total } => {
                        proto::verify_event::Event::Progress(proto::Progress { done, total })
                    }
                };
                let _ = events.send(Ok(proto::VerifyEvent { event: Some(event) }));
            };
            let last = match maintenance::verify(&store, &options, &report).await {
                Ok(summary) => Ok(proto::VerifyEvent {
                    event: Some(proto::verify_event::Event::Summary(wire::summary_to_proto(&summary))),
                }),
                Err(e) => Err(status(e)),
            };
            let _ = tx.send(last);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }

    async fn delete(&self, request: Request<proto::DeleteRequest>) -> Result<Response<proto::DeleteResponse>, Status> {
        let request = request.into_inner();
        let backends = self.backends()?;
        let paths = store_paths(&request.store_paths)?;
        let options = DeleteOptions { ignore_liveness: request.ignore_liveness };
        let deleted = maintenance::delete(&self.admin.store, backends, &paths, options).await.map_err(status)?;
        Ok(Response::new(proto::DeleteResponse { deleted: deleted.iter().map(StorePath::to_absolute_path).collect() }))
    }

    async fn collect_garbage(
        &self,
        request: Request<proto::CollectGarbageRequest>,
    ) -> Result<Response<proto::CollectGarbageResponse>, Status> {
        let request = request.into_inner();
        let backends = self.backends()?;
        let options =
            GcOptions { dry_run: request.dry_run, grace: std::time::Duration::from_secs(request.grace_seconds) };
        let report = maintenance::collect_garbage(&self.admin.store, backends, options).await.map_err(status)?;
        tracing::info!(removed = report.removed(), bytes = report.removed_bytes(), "garbage collected");
        Ok(Response::new(wire::report_to_proto(&report)))
    }
}
