//! Client of our `tvix_store.admin.v1.StoreAdmin` extension: verify, delete and garbage
//! collection run by the daemon that holds the store's backends. Also the conversions between
//! its messages and the maintenance types, which the server shares.

use super::channel::GrpcChannel;
use futures::StreamExt;
use tonic::{Code, Status};

use crate::maintenance::{
    GcOptions, GcReport, MaintenanceError, Problem, Swept, VerifyEvent, VerifyOptions, VerifySummary,
};
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
                Some(proto::verify_event::Event::Problem(p)) => report(VerifyEvent::Problem(problem_from_proto(p))),
                Some(proto::verify_event::Event::Progress(p)) => {
                    report(VerifyEvent::Progress { done: p.done, total: p.total })
                }
                Some(proto::verify_event::Event::Summary(s)) => return Ok(summary_from_proto(&s)),
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
        Ok(report_from_proto(&response))
    }
}

/// A problem as sent.
pub(crate) fn problem_to_proto(p: Problem) -> proto::Problem {
    proto::Problem { store_path: p.store_path, digest: p.digest.unwrap_or_default(), what: p.what }
}

fn problem_from_proto(p: proto::Problem) -> Problem {
    Problem { store_path: p.store_path, digest: Some(p.digest).filter(|d| !d.is_empty()), what: p.what }
}

/// A verify summary as sent.
pub(crate) fn summary_to_proto(s: &VerifySummary) -> proto::VerifySummary {
    proto::VerifySummary {
        paths: s.paths,
        directories: s.directories,
        blobs: s.blobs,
        bytes_hashed: s.bytes_hashed,
        problems: s.problems,
    }
}

fn summary_from_proto(s: &proto::VerifySummary) -> VerifySummary {
    VerifySummary {
        paths: s.paths,
        directories: s.directories,
        blobs: s.blobs,
        bytes_hashed: s.bytes_hashed,
        problems: s.problems,
    }
}

fn swept_to_proto(s: &Swept) -> proto::Swept {
    proto::Swept { live: s.live, removed: s.removed, removed_bytes: s.removed_bytes, recent: s.recent }
}

fn swept_from_proto(s: Option<&proto::Swept>) -> Swept {
    s.map(|s| Swept { live: s.live, removed: s.removed, removed_bytes: s.removed_bytes, recent: s.recent })
        .unwrap_or_default()
}

/// A collection's report as sent.
pub(crate) fn report_to_proto(r: &GcReport) -> proto::CollectGarbageResponse {
    proto::CollectGarbageResponse {
        paths: r.paths,
        directories: Some(swept_to_proto(&r.directories)),
        chunk_lists: Some(swept_to_proto(&r.chunk_lists)),
        chunks: Some(swept_to_proto(&r.chunks)),
        leftovers: r.leftovers,
        leftover_bytes: r.leftover_bytes,
    }
}

fn report_from_proto(r: &proto::CollectGarbageResponse) -> GcReport {
    GcReport {
        paths: r.paths,
        directories: swept_from_proto(r.directories.as_ref()),
        chunk_lists: swept_from_proto(r.chunk_lists.as_ref()),
        chunks: swept_from_proto(r.chunks.as_ref()),
        leftovers: r.leftovers,
        leftover_bytes: r.leftover_bytes,
    }
}
