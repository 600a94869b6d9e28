//! Admitting a PathInfo someone else made (a gRPC client's Put): it is stored only when it is
//! what it claims. Its contents are all present and their NAR has the claimed hash and size,
//! every path it refers to is present, a content address matches the contents and the store
//! path, and a store path that exists already is never given other contents except by a caller
//! allowed to replace it (adding signatures to an existing path is fine).

use sha2::Digest;

use crate::castore::blobservice::BlobReaderExt;
use crate::castore::{Error, Node};
use crate::pathinfo::{CaKind, ContentAddress, NarCalculationService, PathInfo};
use crate::store::Store;
use crate::storepath::{StorePath, fixed_output_path, nixbase32, text_path};

/// Why a PathInfo was not admitted. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The store path exists with other contents or metadata, and the caller may not replace it.
    #[error("{path} is already in the store with other contents; replacing it needs the admin right")]
    Exists {
        /// The store path.
        path: StorePath,
    },
    /// A path it refers to is not in the store.
    #[error("{path} refers to {reference}, which is not in the store (add the closure's paths first)")]
    MissingReference {
        /// The store path.
        path: StorePath,
        /// The missing reference.
        reference: StorePath,
    },
    /// Some of its contents (a directory or blob below its root) are not in the store.
    #[error("the store does not have all of {path}'s contents: {missing}")]
    Incomplete {
        /// The store path.
        path: StorePath,
        /// What is missing.
        missing: String,
    },
    /// The NAR of its contents is not what it claims.
    #[error("{path} claims NAR {what} {claimed}, but its contents have {actual}")]
    Mismatch {
        /// The store path.
        path: StorePath,
        /// `hash` or `size`.
        what: &'static str,
        /// What the PathInfo says.
        claimed: String,
        /// What the contents have.
        actual: String,
    },
    /// Its content address does not match its contents or its store path.
    #[error("{path}: content address {ca}: {reason}")]
    ContentAddress {
        /// The store path.
        path: StorePath,
        /// The content address as written in a narinfo.
        ca: String,
        /// What does not match.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// What [`admit`] may do and check.
#[derive(Clone, Copy)]
pub struct Admission<'a> {
    /// Give an existing store path other contents (the admin right).
    pub may_replace: bool,
    /// Checks the claims against the contents, computing NAR hashes with this; `None` stores
    /// what is claimed (a trusted caller's, or one whose NAR was checked as it arrived).
    pub check_with: Option<&'a dyn NarCalculationService>,
}

/// Stores `info` in `store` if it is what it claims (see the module docs). Returns what was
/// stored (an existing path with the new signatures added, when only those are new).
pub async fn admit(store: &Store, info: PathInfo, admission: Admission<'_>) -> Result<PathInfo, AdmitError> {
    let path = info.store_path.clone();
    if let Some(existing) = store.path_info.get(*path.digest()).await? {
        if same_but_signatures(&existing, &info) {
            let mut merged = existing;
            let before = merged.signatures.len();
            for signature in info.signatures {
                if !merged.signatures.contains(&signature) {
                    merged.signatures.push(signature);
                }
            }
            if merged.signatures.len() == before {
                return Ok(merged);
            }
            return Ok(store.path_info.put(merged).await?);
        }
        if !admission.may_replace {
            return Err(AdmitError::Exists { path });
        }
    }
    let Some(nar) = admission.check_with else {
        return Ok(store.path_info.put(info).await?);
    };
    for reference in info.references.iter().filter(|r| **r != path) {
        if store.path_info.get(*reference.digest()).await?.is_none() {
            return Err(AdmitError::MissingReference { path, reference: reference.clone() });
        }
    }
    let (nar_size, nar_sha256) = nar.calculate_nar(&info.node).await.map_err(|e| match e {
        Error::NotFound(missing) => AdmitError::Incomplete { path: path.clone(), missing },
        other => AdmitError::Store(other),
    })?;
    if nar_size != info.nar_size {
        return Err(AdmitError::Mismatch {
            path,
            what: "size",
            claimed: info.nar_size.to_string(),
            actual: nar_size.to_string(),
        });
    }
    if nar_sha256 != info.nar_sha256 {
        return Err(AdmitError::Mismatch {
            path,
            what: "hash",
            claimed: format!("sha256:{}", nixbase32::encode(&info.nar_sha256)),
            actual: format!("sha256:{}", nixbase32::encode(&nar_sha256)),
        });
    }
    if let Some(ca) = &info.ca {
        check_content_address(store, &info, ca, &nar_sha256).await?;
    }
    Ok(store.path_info.put(info).await?)
}

/// Whether two PathInfos of one store path differ in their signatures at most.
fn same_but_signatures(a: &PathInfo, b: &PathInfo) -> bool {
    PathInfo { signatures: Vec::new(), ..a.clone() } == PathInfo { signatures: Vec::new(), ..b.clone() }
}

/// Checks that `ca` is the address of `info`'s contents and that the store path is the one Nix
/// derives from it (`nar_sha256`: of the contents, computed).
async fn check_content_address(
    store: &Store,
    info: &PathInfo,
    ca: &ContentAddress,
    nar_sha256: &[u8; 32],
) -> Result<(), AdmitError> {
    let wrong = |reason: String| AdmitError::ContentAddress {
        path: info.store_path.clone(),
        ca: format!("{}:{}", ca.kind.prefix(), nixbase32::encode(&ca.digest)),
        reason,
    };
    let digest = match ca.kind {
        CaKind::NarSha256 => nar_sha256.to_vec(),
        CaKind::TextSha256 | CaKind::FlatSha1 | CaKind::FlatMd5 | CaKind::FlatSha256 | CaKind::FlatSha512 => {
            let Node::File { digest, .. } = &info.node else {
                return Err(wrong("the contents are not a single file".into()));
            };
            file_hash(store, digest, ca.kind).await?
        }
        // Recursive hashes other than SHA-256 would need the NAR hashed again; Nix itself makes
        // these only for fixed-output derivations, whose outputs come signed from a builder.
        CaKind::NarSha1 | CaKind::NarSha512 | CaKind::NarMd5 => {
            return Err(wrong("recursive content addresses other than sha256 are not checked, so not accepted".into()));
        }
    };
    if digest[..] != ca.digest[..] {
        return Err(wrong("the contents have another hash".into()));
    }
    let name = info.store_path.name();
    let others: Vec<StorePath> = info.references.iter().filter(|r| **r != info.store_path).cloned().collect();
    let self_reference = others.len() != info.references.len();
    let expected = match ca.kind {
        CaKind::TextSha256 => {
            let sha256: [u8; 32] = digest.try_into().map_err(|_| wrong("not a SHA-256".into()))?;
            text_path(&sha256, name, &others)
        }
        kind => fixed_output_path(kind == CaKind::NarSha256, kind.algorithm(), &digest, name, &others, self_reference),
    }
    .map_err(|e| wrong(e.to_string()))?;
    if expected != info.store_path {
        return Err(wrong(format!("it gives the store path {expected}")));
    }
    Ok(())
}

/// The hash a flat (or text) content address names, of the file blob `digest`.
async fn file_hash(store: &Store, digest: &crate::castore::B3Digest, kind: CaKind) -> Result<Vec<u8>, AdmitError> {
    let mut reader = store.blob.open_read(digest).await?.ok_or_else(|| Error::NotFound(format!("blob {digest}")))?;
    let mut sha1 = sha1::Sha1::new();
    let mut md5 = md5::Md5::new();
    let mut sha256 = sha2::Sha256::new();
    let mut sha512 = sha2::Sha512::new();
    // The reader's verified buffers, hashed as they are.
    loop {
        let piece = reader.piece(1 << 20).await.map_err(|e| Error::from_io(digest, e))?;
        if piece.is_empty() {
            break;
        }
        match kind {
            CaKind::FlatSha1 => sha1.update(&piece),
            CaKind::FlatMd5 => md5.update(&piece),
            CaKind::FlatSha512 => sha512.update(&piece),
            _ => sha256.update(&piece),
        }
    }
    Ok(match kind {
        CaKind::FlatSha1 => sha1.finalize().to_vec(),
        CaKind::FlatMd5 => md5.finalize().to_vec(),
        CaKind::FlatSha512 => sha512.finalize().to_vec(),
        _ => sha256.finalize().to_vec(),
    })
}
