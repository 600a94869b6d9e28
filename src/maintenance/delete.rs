//! `delete`: removes PathInfos, refusing one that another remaining path still refers to. The
//! data they kept alive stays until the next garbage collection.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;

use super::{Backends, MaintenanceError};
use crate::store::Store;
use crate::storepath::{DIGEST_LEN, StorePath};

/// How to delete.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions {
    /// Delete even paths that other remaining paths refer to (leaving their closures
    /// incomplete).
    pub ignore_liveness: bool,
}

/// Deletes the PathInfos of `paths`. Every path is checked before any is removed: an unknown
/// path, or one still referred to by a path not being deleted, fails the whole call with
/// nothing removed. Returns the paths removed.
pub async fn delete(
    store: &Store,
    backends: &Backends,
    paths: &[StorePath],
    options: DeleteOptions,
) -> Result<Vec<StorePath>, MaintenanceError> {
    for path in paths {
        if store.path_info.get(*path.digest()).await?.is_none() {
            return Err(MaintenanceError::Unknown(path.clone()));
        }
    }
    let deleting: HashSet<[u8; DIGEST_LEN]> = paths.iter().map(|p| *p.digest()).collect();
    if !options.ignore_liveness {
        // Referrers by deleted path, in a stable order for the message.
        let mut referrers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut all = store.path_info.list();
        while let Some(info) = all.next().await {
            let info = info?;
            if deleting.contains(info.store_path.digest()) {
                continue;
            }
            for reference in &info.references {
                if deleting.contains(reference.digest()) {
                    referrers.entry(reference.to_absolute_path()).or_default().push(info.store_path.to_absolute_path());
                }
            }
        }
        if let Some((path, mut by)) = referrers.into_iter().next() {
            by.sort();
            return Err(MaintenanceError::Referenced { path, by });
        }
    }
    let mut removed = Vec::new();
    for path in paths {
        if backends.path_infos.remove(*path.digest()).await? {
            removed.push(path.clone());
        }
    }
    Ok(removed)
}
