//! The admin extension's wire form (`tvix_store.admin.v1`) of what the maintenance operations
//! report: one place for both directions, used by the server (to) and the client (from).

use super::{GcReport, Problem, Swept, VerifySummary};
use crate::proto::admin as proto;

/// A problem as sent.
pub fn problem_to_proto(p: Problem) -> proto::Problem {
    proto::Problem { store_path: p.store_path, digest: p.digest.unwrap_or_default(), what: p.what }
}

/// A problem as received.
pub fn problem_from_proto(p: proto::Problem) -> Problem {
    Problem { store_path: p.store_path, digest: Some(p.digest).filter(|d| !d.is_empty()), what: p.what }
}

/// A verify summary as sent.
pub fn summary_to_proto(s: &VerifySummary) -> proto::VerifySummary {
    proto::VerifySummary {
        paths: s.paths,
        directories: s.directories,
        blobs: s.blobs,
        bytes_hashed: s.bytes_hashed,
        problems: s.problems,
    }
}

/// A verify summary as received.
pub fn summary_from_proto(s: &proto::VerifySummary) -> VerifySummary {
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
pub fn report_to_proto(r: &GcReport) -> proto::CollectGarbageResponse {
    proto::CollectGarbageResponse {
        paths: r.paths,
        directories: Some(swept_to_proto(&r.directories)),
        chunk_lists: Some(swept_to_proto(&r.chunk_lists)),
        chunks: Some(swept_to_proto(&r.chunks)),
        leftovers: r.leftovers,
        leftover_bytes: r.leftover_bytes,
    }
}

/// A collection's report as received.
pub fn report_from_proto(r: &proto::CollectGarbageResponse) -> GcReport {
    GcReport {
        paths: r.paths,
        directories: swept_from_proto(r.directories.as_ref()),
        chunk_lists: swept_from_proto(r.chunk_lists.as_ref()),
        chunks: swept_from_proto(r.chunks.as_ref()),
        leftovers: r.leftovers,
        leftover_bytes: r.leftover_bytes,
    }
}
