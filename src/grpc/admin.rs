//! Client of our `tvix_store.admin.v1.StoreAdmin` extension: verify, delete and garbage
//! collection run by the daemon that holds the store's backends.

use super::channel::GrpcChannel;
use futures::StreamExt;
use tonic::{Code, Status};

use crate::maintenance::{GcOptions, GcReport, MaintenanceError, VerifyEvent, VerifyOptions, VerifySummary, wire};
use crate::proto::admin as proto;
use crate::proto::admin::store_admin_client::StoreAdminClient;
use crate::storepath::StorePath;

/// The admin service of the daemon at the other end of a channel.
pub struct GrpcAdmin {
    client: StoreAdminClient<GrpcChannel>,
    /// The daemon's address, for messages.
    addr: String,
}

impl GrpcAdmin {
    /// The admin service on `channel`, to the daemon at `addr`.
    pub fn new(channel: impl Into<GrpcChannel>, addr: impl Into<String>) -> Self {
        Self { client: StoreAdminClient::new(channel.into()), addr: addr.into() }
    }

    fn error(&self, status: Status) -> MaintenanceError {
        MaintenanceError::Remote(match status.code() {
            Code::Unimplemented => format!(
                "the daemon at {} does not offer tvix-store's admin service (a tvix daemon, or an older tvix-store)",
                self.addr
            ),
            _ => format!("the daemon at {}: {}", self.addr, status.message()),
        })
    }

    /// Runs `verify` on the daemon, calling `report` for what it streams back.
    pub async fn verify(
        &self,
        options: &VerifyOptions,
        report: &(dyn Fn(VerifyEvent) + Send + Sync),
    ) -> Result<VerifySummary, MaintenanceError> {
        let request = proto::VerifyRequest {
            store_paths: options.paths.iter().map(StorePath::to_absolute_path).collect(),
            contents: options.contents,
            nar: options.nar,
        };
        let mut events = self.client.clone().verify(request).await.map_err(|s| self.error(s))?.into_inner();
        while let Some(event) = events.next().await {
            match event.map_err(|s| self.error(s))?.event {
                Some(proto::verify_event::Event::Problem(p)) => {
                    report(VerifyEvent::Problem(wire::problem_from_proto(p)))
                }
                Some(proto::verify_event::Event::Progress(p)) => {
                    report(VerifyEvent::Progress { done: p.done, total: p.total })
                }
                Some(proto::verify_event::Event::Summary(s)) => return Ok(wire::summary_from_proto(&s)),
                None => {}
            }
        }
        Err(MaintenanceError::Remote(format!("the daemon at {} ended verify without a summary", self.addr)))
    }

    /// Deletes the PathInfos of `paths` on the daemon; returns the paths removed.
    pub async fn delete(&self, paths: &[StorePath], ignore_liveness: bool) -> Result<Vec<String>, MaintenanceError> {
        let request = proto::DeleteRequest {
            store_paths: paths.iter().map(StorePath::to_absolute_path).collect(),
            ignore_liveness,
        };
        Ok(self.client.clone().delete(request).await.map_err(|s| self.error(s))?.into_inner().deleted)
    }

    /// Collects garbage on the daemon.
    pub async fn collect_garbage(&self, options: GcOptions) -> Result<GcReport, MaintenanceError> {
        let request = proto::CollectGarbageRequest { dry_run: options.dry_run, grace_seconds: options.grace.as_secs() };
        let response = self.client.clone().collect_garbage(request).await.map_err(|s| self.error(s))?.into_inner();
        Ok(wire::report_from_proto(&response))
    }
}
