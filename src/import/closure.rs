//! Copying a closure from the local /nix/store, described the way Nix's
//! `exportReferencesGraph` describes it in a `__structuredAttrs` JSON file.

use std::path::Path;
use std::sync::Arc;

use super::{ImportError, Progress, ingest_path};
use crate::narinfo::{parse_ca, parse_sha256};
use crate::pathinfo::{ContentAddress, PathInfo};
use crate::store::Store;
use crate::storepath::{InvalidStorePath, StorePath, nixbase32};

/// One store path of a closure, as `exportReferencesGraph` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureEntry {
    /// The store path.
    pub path: StorePath,
    /// SHA-256 of its NAR, as Nix registered it.
    pub nar_sha256: [u8; 32],
    /// Size of its NAR, as Nix registered it.
    pub nar_size: u64,
    /// Its references.
    pub references: Vec<StorePath>,
    /// Its content address, if it has one.
    pub ca: Option<ContentAddress>,
    /// The derivation that built it, if listed.
    pub deriver: Option<StorePath>,
}

/// Why a closure description or a closure copy was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    /// The file is not JSON.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON has no usable `closure` key.
    #[error("{0}")]
    Shape(String),
    /// A field holds an invalid value.
    #[error("closure entry {index}: {field}: {reason}")]
    Field {
        /// Position in the `closure` list.
        index: usize,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The local copy of a path does not have the NAR hash or size Nix registered.
    #[error("{path}: local contents have NAR {what} {got}, the closure says {expected}")]
    Mismatch {
        /// The store path.
        path: StorePath,
        /// `hash` or `size`.
        what: &'static str,
        /// What we computed.
        got: String,
        /// What the closure description says.
        expected: String,
    },
    /// Ingesting a path failed.
    #[error("{path}: {source}")]
    Import {
        /// The store path.
        path: StorePath,
        /// Why.
        #[source]
        source: ImportError,
    },
    /// Registering a path failed.
    #[error("registering {path}: {source}")]
    Register {
        /// The store path.
        path: StorePath,
        /// Why.
        #[source]
        source: crate::castore::Error,
    },
}

/// Parses the `closure` key of a `__structuredAttrs` JSON document.
pub fn parse_closure(json: &[u8]) -> Result<Vec<ClosureEntry>, ClosureError> {
    let doc: serde_json::Value = serde_json::from_slice(json)?;
    let list = doc
        .get("closure")
        .ok_or_else(|| ClosureError::Shape("no `closure` key (exportReferencesGraph.closure)".into()))?
        .as_array()
        .ok_or_else(|| ClosureError::Shape("`closure` is not a list".into()))?;
    list.iter().enumerate().map(|(index, e)| parse_entry(index, e)).collect()
}

fn parse_entry(index: usize, e: &serde_json::Value) -> Result<ClosureEntry, ClosureError> {
    let err = |field: &'static str, reason: String| ClosureError::Field { index, field, reason };
    let string = |field: &'static str| -> Result<&str, ClosureError> {
        e.get(field).and_then(|v| v.as_str()).ok_or_else(|| err(field, "missing or not a string".into()))
    };
    let store_path = |field: &'static str, s: &str| {
        StorePath::from_absolute_path(s).map_err(|e: InvalidStorePath| err(field, e.to_string()))
    };
    let path = store_path("path", string("path")?)?;
    let nar_sha256 = parse_sha256(string("narHash")?).map_err(|e| err("narHash", e.to_string()))?;
    let nar_size =
        e.get("narSize").and_then(|v| v.as_u64()).ok_or_else(|| err("narSize", "missing or not a number".into()))?;
    let references = e
        .get("references")
        .and_then(|v| v.as_array())
        .ok_or_else(|| err("references", "missing or not a list".into()))?
        .iter()
        .map(|r| {
            r.as_str().ok_or_else(|| err("references", "not a string".into())).and_then(|s| store_path("references", s))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ca = match e.get("ca").and_then(|v| v.as_str()) {
        Some(s) => Some(parse_ca(s).map_err(|e| err("ca", e.to_string()))?),
        None => None,
    };
    let deriver = match e.get("deriver").and_then(|v| v.as_str()) {
        Some(s) => {
            // PathInfo keeps the deriver's name without `.drv`, as the wire format does.
            let drv = store_path("deriver", s)?;
            let name = drv.name().strip_suffix(".drv").unwrap_or(drv.name());
            Some(StorePath::from_parts(*drv.digest(), name).map_err(|e| err("deriver", e.to_string()))?)
        }
        None => None,
    };
    Ok(ClosureEntry { path, nar_sha256, nar_size, references, ca, deriver })
}

/// The indices of `closure` with every path after the paths of the closure it refers to: a
/// store that admits a path only when its references are present (a daemon) takes them in this
/// order. Among paths that do not refer to each other, the closure's order is kept.
fn references_first(closure: &[ClosureEntry]) -> Vec<usize> {
    let index: std::collections::HashMap<&StorePath, usize> =
        closure.iter().enumerate().map(|(i, e)| (&e.path, i)).collect();
    let mut order = Vec::with_capacity(closure.len());
    let mut state = vec![0u8; closure.len()]; // 0 new, 1 on the way, 2 placed
    for start in 0..closure.len() {
        // Depth first, without recursion: (entry, next reference to look at).
        let mut stack = vec![(start, 0)];
        while let Some((at, next)) = stack.pop() {
            if state[at] == 2 {
                continue;
            }
            state[at] = 1;
            let reference = closure[at].references.get(next).and_then(|r| index.get(r)).copied();
            match reference {
                // A reference still to place (not the path itself, nor one on the way: Nix
                // closures have no cycles but self-references).
                Some(r) if state[r] == 0 => {
                    stack.push((at, next + 1));
                    stack.push((r, 0));
                }
                _ if next < closure[at].references.len() => stack.push((at, next + 1)),
                _ => {
                    state[at] = 2;
                    order.push(at);
                }
            }
        }
    }
    order
}

/// Copies `closure` from the local store directory `store_dir` (normally `/nix/store`):
/// each path is ingested from the file system, checked against the NAR hash and size Nix
/// registered, and registered with its references, after them. Paths already registered with
/// the same NAR hash are skipped. Returns the PathInfo of every path, in `closure` order.
pub async fn copy_closure(
    store: &Store,
    closure: &[ClosureEntry],
    store_dir: &Path,
    progress: Option<Arc<Progress>>,
) -> Result<Vec<PathInfo>, ClosureError> {
    let mut registered: Vec<Option<PathInfo>> = vec![None; closure.len()];
    for at in references_first(closure) {
        let entry = &closure[at];
        let out = &mut registered[at];
        let register = |source| ClosureError::Register { path: entry.path.clone(), source };
        if let Some(known) = store.path_info.get(*entry.path.digest()).await.map_err(register)?
            && known.nar_sha256 == entry.nar_sha256
        {
            *out = Some(known);
            continue;
        }
        let local = store_dir.join(entry.path.to_basename());
        let ingested = ingest_path(store.blob.clone(), store.directory.clone(), &local, progress.clone())
            .await
            .map_err(|source| ClosureError::Import { path: entry.path.clone(), source })?;
        if ingested.nar_sha256 != entry.nar_sha256 {
            return Err(ClosureError::Mismatch {
                path: entry.path.clone(),
                what: "hash",
                got: format!("sha256:{}", nixbase32::encode(&ingested.nar_sha256)),
                expected: format!("sha256:{}", nixbase32::encode(&entry.nar_sha256)),
            });
        }
        if ingested.nar_size != entry.nar_size {
            return Err(ClosureError::Mismatch {
                path: entry.path.clone(),
                what: "size",
                got: ingested.nar_size.to_string(),
                expected: entry.nar_size.to_string(),
            });
        }
        let info = PathInfo {
            store_path: entry.path.clone(),
            node: ingested.node,
            references: entry.references.clone(),
            nar_size: ingested.nar_size,
            nar_sha256: ingested.nar_sha256,
            signatures: Vec::new(),
            deriver: entry.deriver.clone(),
            ca: entry.ca.clone(),
        };
        *out = Some(store.path_info.put(info).await.map_err(register)?);
    }
    Ok(registered.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, references: &[u8]) -> ClosureEntry {
        let path = |n: u8| StorePath::from_parts([n; 20], "p").unwrap();
        ClosureEntry {
            path: path(n),
            nar_sha256: [0; 32],
            nar_size: 0,
            references: references.iter().map(|r| path(*r)).collect(),
            ca: None,
            deriver: None,
        }
    }

    #[test]
    fn references_come_first_and_self_references_and_outsiders_are_ignored() {
        // 1 -> 2 -> 3, 1 -> 3, 4 refers to itself and to a path outside the closure.
        let closure = [entry(1, &[2, 3]), entry(4, &[4, 9]), entry(2, &[3, 2]), entry(3, &[])];
        let order = references_first(&closure);
        assert_eq!(order.len(), closure.len());
        let position = |n: u8| order.iter().position(|&i| closure[i].path.digest()[0] == n).unwrap();
        assert!(position(3) < position(2) && position(2) < position(1), "{order:?}");
        assert!(position(1) < position(4), "unrelated paths keep their order: {order:?}");
    }
}
