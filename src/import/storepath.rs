//! Store path computation for content-addressed paths, exactly as Nix 2.8 does it.

use sha2::{Digest, Sha256};

use crate::storepath::{DIGEST_LEN, InvalidStorePath, STORE_DIR, StorePath};

/// The store path `nix-store --add` gives a tree whose NAR has SHA-256 `nar_sha256`
/// (recursive ingestion, SHA-256): Nix's `makeFixedOutputPath` with `FileIngestionMethod::
/// Recursive`, which for SHA-256 is the `source` path type. `references` are only non-empty for
/// a source path that refers to other paths (our `import` never does).
pub fn source_store_path(
    name: &str,
    nar_sha256: &[u8; 32],
    references: &[StorePath],
) -> Result<StorePath, InvalidStorePath> {
    crate::storepath::validate_name(name)?;
    let mut ty = String::from("source");
    let mut refs: Vec<String> = references.iter().map(StorePath::to_absolute_path).collect();
    // Nix keeps references in a sorted set.
    refs.sort();
    for r in refs {
        ty.push(':');
        ty.push_str(&r);
    }
    let fingerprint = format!("{ty}:sha256:{}:{STORE_DIR}:{name}", data_encoding::HEXLOWER.encode(nar_sha256));
    let hash: [u8; 32] = Sha256::digest(fingerprint.as_bytes()).into();
    StorePath::from_parts(compress_hash(&hash), name)
}

/// Nix's `compressHash`: XOR-folds a digest into 20 bytes.
pub fn compress_hash(hash: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    for (i, b) in hash.iter().enumerate() {
        out[i % DIGEST_LEN] ^= b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_path_nix_computed() {
        // `nix-store --add foo` of a directory `foo` holding a file `a` with "hi\n" gave
        // /nix/store/l4kfad8bgk1j5qfhj0nrk8cs97bl036j-foo; the NAR hash is from `nix-hash --type
        // sha256 foo`.
        let nar_sha256 = data_encoding::HEXLOWER.decode(NAR_SHA256_OF_FOO.as_bytes()).expect("hex constant");
        let p = source_store_path("foo", &nar_sha256.try_into().expect("32 bytes"), &[]).expect("valid");
        assert_eq!(p.to_absolute_path(), "/nix/store/l4kfad8bgk1j5qfhj0nrk8cs97bl036j-foo");
    }

    const NAR_SHA256_OF_FOO: &str = "878832cd22b5e038e117b701378558f8a9b6cad7381a0e6d57a9e865d34f85a6";
}
