//! The file names of the binary cache we serve: which store path a narinfo or listing name
//! means, which PathInfo and NAR a served NAR URL means, and what an uploaded NAR's name says
//! about its hash and compression.

use crate::narinfo::Compression;
use crate::storepath::{DIGEST_LEN, nixbase32};

/// Characters of a store path hash in nixbase32.
const PATH_HASH_LEN: usize = 32;
/// Characters of a SHA-256 in nixbase32.
const SHA256_LEN: usize = 52;

/// The store path digest a `<hash>.<suffix>` name (e.g. `<hash>.narinfo`) is about; `None`
/// when the name has another suffix. An invalid hash is an `Err` naming it.
pub fn path_hash(file: &str, suffix: &str) -> Option<Result<[u8; DIGEST_LEN], String>> {
    let hash = file.strip_suffix(suffix)?;
    Some(decode(hash, PATH_HASH_LEN).ok_or_else(|| format!("{hash:?} is not a store path hash")))
}

/// The URL a served narinfo names for its NAR: the store path hash and the NAR hash, so the
/// URL names one immutable NAR (a PathInfo replaced by another NAR does not answer the old URL).
pub fn served_nar_url(path: &[u8; DIGEST_LEN], nar_sha256: &[u8; 32]) -> String {
    format!("nar/{}-{}.nar", nixbase32::encode(path), nixbase32::encode(nar_sha256))
}

/// A NAR file name under `nar/`, as we serve them or as `nix copy --to` uploads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarName {
    /// `<path hash>-<NAR hash>.nar`: rendered from the castore.
    Served {
        /// The store path's digest.
        path: [u8; DIGEST_LEN],
        /// The NAR's SHA-256.
        nar_sha256: [u8; 32],
    },
    /// `<file hash>.nar[.xz|.zst|…]`, Nix's name for an uploaded NAR file.
    Upload {
        /// SHA-256 of the (compressed) file.
        file_hash: [u8; 32],
        /// How it is compressed, from its suffix. No suffix is `none` as Nix names it, but
        /// also what Nix names compressions it has no suffix for (gzip): the uploader looks
        /// at the bytes.
        compression: Compression,
    },
}

impl NarName {
    /// Parses a name under `nar/`; the `Err` says what is wrong with it.
    pub fn parse(file: &str) -> Result<Self, String> {
        let bad = || format!("nar/{file} is not a NAR file name of this cache");
        let (stem, ext) = file.split_once(".nar").ok_or_else(bad)?;
        if let Some((path, nar)) = stem.split_once('-') {
            if !ext.is_empty() {
                return Err(bad());
            }
            let path = decode(path, PATH_HASH_LEN).ok_or_else(bad)?;
            let nar_sha256 = decode(nar, SHA256_LEN).ok_or_else(bad)?;
            return Ok(NarName::Served { path, nar_sha256 });
        }
        let file_hash = decode(stem, SHA256_LEN).ok_or_else(bad)?;
        let compression = match ext {
            "" => Compression::None,
            ".xz" => Compression::Xz,
            ".bz2" => Compression::Bzip2,
            ".zst" => Compression::Zstd,
            ".br" => Compression::Br,
            ".lzip" => Compression::Lzip,
            ".lz4" => Compression::Lz4,
            other => return Err(format!("nar/{file}: unknown compression suffix {other:?}")),
        };
        Ok(NarName::Upload { file_hash, compression })
    }
}

fn decode<const N: usize>(s: &str, chars: usize) -> Option<[u8; N]> {
    if s.len() != chars {
        return None;
    }
    nixbase32::decode(s.as_bytes(), N).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "rjr4mcpx3jqh9gkha5shim4dvlz3jyp0";
    const SHA: &str = "1r0sf44mznagkn9flpx0n2yfwfyx2izn1r08bbvkd6k52hqaiq97";

    #[test]
    fn names_round_trip_and_bad_names_say_why() {
        let digest = path_hash(&format!("{PATH}.narinfo"), ".narinfo").unwrap().unwrap();
        assert_eq!(nixbase32::encode(&digest), PATH);
        assert!(path_hash("nix-cache-info", ".narinfo").is_none());
        assert!(path_hash("abc.narinfo", ".narinfo").unwrap().unwrap_err().contains("\"abc\""));
        // 'e' is not in Nix's alphabet.
        assert!(path_hash(&format!("{}e.ls", &PATH[..31]), ".ls").unwrap().is_err());

        let nar = decode::<32>(SHA, SHA256_LEN).unwrap();
        let url = served_nar_url(&digest, &nar);
        assert_eq!(
            NarName::parse(url.strip_prefix("nar/").unwrap()),
            Ok(NarName::Served { path: digest, nar_sha256: nar })
        );
        assert_eq!(
            NarName::parse(&format!("{SHA}.nar.xz")),
            Ok(NarName::Upload { file_hash: nar, compression: Compression::Xz })
        );
        assert_eq!(
            NarName::parse(&format!("{SHA}.nar")),
            Ok(NarName::Upload { file_hash: nar, compression: Compression::None })
        );
        assert!(NarName::parse(&format!("{SHA}.nar.rar")).unwrap_err().contains("unknown compression"));
        assert!(NarName::parse(&format!("{PATH}-{SHA}.nar.xz")).is_err());
        assert!(NarName::parse("x.nar").is_err());
        assert!(NarName::parse(SHA).is_err());
    }
}
