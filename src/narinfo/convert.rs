//! Conversions between [`NarInfo`] and [`PathInfo`].
//!
//! They live here, not in `pathinfo`, so that `pathinfo` knows nothing of narinfos. The one
//! field spelled differently is the deriver: a narinfo names the `.drv` file
//! (`Deriver: <hash>-<name>.drv`) while a PathInfo keeps the name without `.drv`, as the
//! `tvix.store.v1` wire format does. What a PathInfo lacks (where the NAR file is, how it is
//! compressed, its hash and size) comes in as a [`NarFile`]; what a narinfo lacks (the root
//! node) comes in as a [`Node`].

use super::{Compression, NarInfo};
use crate::castore::Node;
use crate::pathinfo::PathInfo;
use crate::storepath::{InvalidStorePath, StorePath, nixbase32};

/// Why a narinfo and a PathInfo do not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The narinfo's deriver is not a `.drv` path, which a PathInfo cannot hold.
    #[error("{store_path}: deriver {deriver} does not end in .drv")]
    DeriverNotDrv { store_path: StorePath, deriver: StorePath },
    /// The PathInfo's deriver name with `.drv` is not a valid store path name (too long).
    #[error("{store_path}: deriver name {name:?} with .drv is not a valid store path name: {source}")]
    DeriverName { store_path: StorePath, name: String, source: InvalidStorePath },
}

/// Where and how a path's NAR is stored in a binary cache: the narinfo fields a PathInfo has
/// no counterpart for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarFile {
    /// `URL:`, relative to the cache root.
    pub url: String,
    /// `Compression:`.
    pub compression: Compression,
    /// `FileHash:` SHA-256 of the file at `url`.
    pub file_hash: Option<[u8; 32]>,
    /// `FileSize:` size of the file at `url`.
    pub file_size: Option<u64>,
}

impl NarFile {
    /// A NAR file at the URL Nix 2.8 gives it: `nar/<nixbase32 of file hash>.nar` plus the
    /// compression's suffix.
    pub fn new(compression: Compression, file_hash: [u8; 32], file_size: u64) -> Self {
        let url = format!("nar/{}.nar{}", nixbase32::encode(&file_hash), compression.nar_extension());
        Self { url, compression, file_hash: Some(file_hash), file_size: Some(file_size) }
    }
}

impl NarInfo {
    /// The PathInfo of this narinfo's path once its NAR has been ingested into `node`.
    /// The NAR hash and size are taken as the narinfo states them: checking them against the
    /// NAR is the ingester's job.
    pub fn to_path_info(&self, node: Node) -> Result<PathInfo, ConvertError> {
        let deriver = match &self.deriver {
            None => None,
            Some(drv) => {
                let not_drv =
                    || ConvertError::DeriverNotDrv { store_path: self.store_path.clone(), deriver: drv.clone() };
                let name = drv.name().strip_suffix(".drv").ok_or_else(not_drv)?;
                // An empty or otherwise invalid remaining name ("….drv" alone) cannot be held either.
                Some(StorePath::from_parts(*drv.digest(), name).map_err(|_| not_drv())?)
            }
        };
        Ok(PathInfo {
            store_path: self.store_path.clone(),
            node,
            references: self.references.clone(),
            nar_size: self.nar_size,
            nar_sha256: self.nar_hash,
            signatures: self.signatures.clone(),
            deriver,
            ca: self.ca.clone(),
        })
    }

    /// The narinfo that serves `info` from a binary cache whose NAR file is `nar`. It carries
    /// the PathInfo's signatures; add ours with [`SigningKey::sign_narinfo`](super::SigningKey::sign_narinfo).
    pub fn from_path_info(info: &PathInfo, nar: NarFile) -> Result<Self, ConvertError> {
        let deriver = info
            .deriver
            .as_ref()
            .map(|d| {
                let name = format!("{}.drv", d.name());
                StorePath::from_parts(*d.digest(), &name).map_err(|source| ConvertError::DeriverName {
                    store_path: info.store_path.clone(),
                    name,
                    source,
                })
            })
            .transpose()?;
        Ok(NarInfo {
            store_path: info.store_path.clone(),
            url: nar.url,
            compression: nar.compression,
            file_hash: nar.file_hash,
            file_size: nar.file_size,
            nar_hash: info.nar_sha256,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver,
            system: None,
            signatures: info.signatures.clone(),
            ca: info.ca.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ADDED, BUILT};
    use super::*;
    use crate::castore::{B3Digest, Node};

    fn node() -> Node {
        Node::File { digest: B3Digest::from([0; 32]), size: 6, executable: false }
    }

    #[test]
    fn round_trips_through_path_info() {
        for text in [BUILT, ADDED] {
            let info = NarInfo::parse(text).unwrap();
            let pi = info.to_path_info(node()).unwrap();
            assert_eq!(pi.nar_sha256, info.nar_hash);
            assert_eq!(pi.references, info.references);
            assert_eq!(pi.signatures, info.signatures);
            assert_eq!(pi.ca, info.ca);
            let nar = NarFile {
                url: info.url.clone(),
                compression: info.compression.clone(),
                file_hash: info.file_hash,
                file_size: info.file_size,
            };
            assert_eq!(NarFile::new(info.compression.clone(), info.file_hash.unwrap(), info.file_size.unwrap()), nar);
            let back = NarInfo::from_path_info(&pi, nar).unwrap();
            assert_eq!(back, info);
            assert_eq!(back.render(), text);
        }
        let pi = NarInfo::parse(BUILT).unwrap().to_path_info(node()).unwrap();
        assert_eq!(pi.deriver.unwrap().to_basename(), "5jwlmd82xmq41rj1vvc30zk5igzzwmbb-built");
    }

    #[test]
    fn deriver_errors() {
        let mut info = NarInfo::parse(BUILT).unwrap();
        info.deriver = Some(StorePath::from_basename("5jwlmd82xmq41rj1vvc30zk5igzzwmbb-built").unwrap());
        assert!(matches!(info.to_path_info(node()), Err(ConvertError::DeriverNotDrv { .. })));
        info.deriver = Some(StorePath::from_basename("5jwlmd82xmq41rj1vvc30zk5igzzwmbb-.drv").unwrap());
        assert!(matches!(info.to_path_info(node()), Err(ConvertError::DeriverNotDrv { .. })));

        let mut pi = NarInfo::parse(BUILT).unwrap().to_path_info(node()).unwrap();
        pi.deriver = Some(StorePath::from_parts([0; 20], &"a".repeat(211)).unwrap());
        let nar = NarFile::new(Compression::None, [0; 32], 1);
        assert!(matches!(NarInfo::from_path_info(&pi, nar), Err(ConvertError::DeriverName { .. })));
    }
}
