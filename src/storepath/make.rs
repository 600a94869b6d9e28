//! Computing store paths the way Nix 2.8 does (`Store::makeStorePath` and the functions built
//! on it): a fingerprint `<type>:<algo>:<hex digest>:/nix/store:<name>` is hashed with SHA-256,
//! XOR-folded to 20 bytes and becomes the digest part of the path. Only the pure arithmetic
//! lives here; which path a narinfo's content address should give is `narinfo`'s business.

use sha2::{Digest, Sha256};

use super::{DIGEST_LEN, InvalidStorePath, STORE_DIR, StorePath, validate_name};

/// Nix's `compressHash`: XOR-folds a digest into 20 bytes.
pub fn compress_hash(hash: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    for (i, b) in hash.iter().enumerate() {
        out[i % DIGEST_LEN] ^= b;
    }
    out
}

/// Nix's `makeStorePath`: the path called `name` whose fingerprint has type `path_type` and
/// the digest `digest` of algorithm `algo` (`sha256`, `sha1`, ...).
pub fn make_store_path(path_type: &str, algo: &str, digest: &[u8], name: &str) -> Result<StorePath, InvalidStorePath> {
    validate_name(name)?;
    let fingerprint = format!("{path_type}:{algo}:{}:{STORE_DIR}:{name}", data_encoding::HEXLOWER.encode(digest));
    let hash: [u8; 32] = Sha256::digest(fingerprint.as_bytes()).into();
    StorePath::from_parts(compress_hash(&hash), name)
}

/// Nix's `makeType`: `base` followed by `:<absolute path>` per reference, in sorted order
/// (Nix keeps references in a sorted set), and `:self` for a path that refers to itself.
fn path_type(base: &str, references: &[StorePath], self_reference: bool) -> String {
    let mut refs: Vec<String> = references.iter().map(StorePath::to_absolute_path).collect();
    refs.sort();
    refs.dedup();
    let mut ty = String::from(base);
    for r in refs {
        ty.push(':');
        ty.push_str(&r);
    }
    if self_reference {
        ty.push_str(":self");
    }
    ty
}

/// The store path `nix-store --add` gives a tree whose NAR has SHA-256 `nar_sha256`
/// (recursive ingestion, SHA-256): the `source` path type of Nix's `makeFixedOutputPath`.
/// `references` are only non-empty for a source path that refers to other paths (our `import`
/// never does).
pub fn source_store_path(
    name: &str,
    nar_sha256: &[u8; 32],
    references: &[StorePath],
) -> Result<StorePath, InvalidStorePath> {
    make_store_path(&path_type("source", references, false), "sha256", nar_sha256, name)
}

/// Nix's `makeFixedOutputPath`: the path of content ingested flat (`recursive == false`: the
/// digest is of the file's contents) or recursively (the digest is of its NAR), hashed with
/// `algo`. Recursive SHA-256 is the `source` type and may have references; everything else
/// is an `output:out` path over the inner fingerprint `fixed:out:[r:]<algo>:<hex>:` and
/// cannot have references (Nix asserts that; here it is an error).
pub fn fixed_output_path(
    recursive: bool,
    algo: &str,
    digest: &[u8],
    name: &str,
    references: &[StorePath],
    self_reference: bool,
) -> Result<StorePath, InvalidStorePath> {
    if recursive && algo == "sha256" {
        return make_store_path(&path_type("source", references, self_reference), algo, digest, name);
    }
    if !references.is_empty() || self_reference {
        return Err(InvalidStorePath::FixedWithReferences(name.to_string()));
    }
    let method = if recursive { "r:" } else { "" };
    let inner = format!("fixed:out:{method}{algo}:{}:", data_encoding::HEXLOWER.encode(digest));
    let inner_hash: [u8; 32] = Sha256::digest(inner.as_bytes()).into();
    make_store_path("output:out", "sha256", &inner_hash, name)
}

/// Nix's `makeTextPath`: the path of a text file (`builtins.toFile`, a `.drv`) whose contents
/// have SHA-256 `sha256` and which refers to `references`.
pub fn text_path(sha256: &[u8; 32], name: &str, references: &[StorePath]) -> Result<StorePath, InvalidStorePath> {
    make_store_path(&path_type("text", references, false), "sha256", sha256, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storepath::nixbase32;

    fn digest(s: &str) -> Vec<u8> {
        nixbase32::decode(s.as_bytes(), s.len() * 5 / 8).expect("nixbase32 constant")
    }

    fn path(s: &str) -> StorePath {
        StorePath::from_absolute_path(s).expect("store path constant")
    }

    #[test]
    fn source_path_matches_nix() {
        // `nix-store --add foo` of a directory `foo` holding a file `a` with "hi\n" gave
        // /nix/store/l4kfad8bgk1j5qfhj0nrk8cs97bl036j-foo; the NAR hash is from `nix-hash --type
        // sha256 foo`.
        let nar_sha256 = data_encoding::HEXLOWER
            .decode(b"878832cd22b5e038e117b701378558f8a9b6cad7381a0e6d57a9e865d34f85a6")
            .expect("hex constant");
        let p = source_store_path("foo", &nar_sha256.try_into().expect("32 bytes"), &[]).expect("valid");
        assert_eq!(p.to_absolute_path(), "/nix/store/l4kfad8bgk1j5qfhj0nrk8cs97bl036j-foo");
    }

    // The paths and CA lines below are what Nix 2.8 wrote (`nix copy --to file://…` of each):
    // a file with "hello flat\n" added with `nix-store --add-fixed sha256` and `--add-fixed
    // sha1`, a directory `tree` (file `a` with "x\n") with `nix-store --add` and `--add-fixed
    // --recursive sha512`, and `builtins.toFile` texts, one referring to the other.

    #[test]
    fn fixed_output_paths_match_nix() {
        let cases: [(bool, &str, &str, &str, &str); 4] = [
            (
                false,
                "sha256",
                "1gx7n0havshff7pl45pids6mqpqbljn5hy6ar7z33f03cdfys47m",
                "flat.txt",
                "/nix/store/8nmfz2pirapl5nhg0yscsr399v4m861k-flat.txt",
            ),
            (
                false,
                "sha1",
                "8lds4vycjkqib24xbr2f8sxlqvixspc9",
                "flat.txt",
                "/nix/store/cq0r3wcqzy22x3wkpfbd8c61i5b5bqda-flat.txt",
            ),
            (
                true,
                "sha256",
                "16bgv7k5078n3n4zg41hnybrc4fa0j6q8cyx31qc9p2qwp9xsgib",
                "tree",
                "/nix/store/q5dawkbbkpcrg1jwy6y22jkyc0x8j0yr-tree",
            ),
            (
                true,
                "sha512",
                "3v21rqyvf2lc6j2myzczcj7y25l5cfcpfgp36igvwalg2n59pyg8nwj30gbxjdwzpxkkj3var5ww0cb8x9ddayadkgg566m2p0fxr8c",
                "tree",
                "/nix/store/lnhbygjzngmwhwsmjmf6jbsasdrsi90p-tree",
            ),
        ];
        for (recursive, algo, hash, name, want) in cases {
            let got = fixed_output_path(recursive, algo, &digest(hash), name, &[], false).expect("valid");
            assert_eq!(got.to_absolute_path(), want, "{algo} recursive={recursive}");
        }
        // Any other name, digest or method gives another path.
        let flat = fixed_output_path(false, "sha256", &digest(cases[0].2), "flat.txt", &[], false).expect("valid");
        assert_ne!(
            fixed_output_path(true, "sha256", &digest(cases[0].2), "flat.txt", &[], false).expect("valid"),
            flat
        );
        assert_ne!(
            fixed_output_path(false, "sha256", &digest(cases[0].2), "flat.tx", &[], false).expect("valid"),
            flat
        );
        let refs = [path(want_text())];
        assert!(matches!(
            fixed_output_path(false, "sha256", &digest(cases[0].2), "flat.txt", &refs, false),
            Err(InvalidStorePath::FixedWithReferences(_))
        ));
    }

    fn want_text() -> &'static str {
        "/nix/store/wjyh4wr314cnwn2pjaalp2pq2dgr3mfl-tvix-text"
    }

    #[test]
    fn text_paths_match_nix() {
        let plain = digest("19hyd1ia8nwcby9mgzv17zfn660hcfwvg8513bcbsxmjszf5ygm2");
        let got = text_path(&plain.try_into().expect("32 bytes"), "tvix-text", &[]).expect("valid");
        assert_eq!(got.to_absolute_path(), want_text());
        let referring: [u8; 32] =
            digest("08lb7ivib865m5gpsk6hqc3gm34f2lkvsxb2dj90v8whimc57v55").try_into().expect("32 bytes");
        let got = text_path(&referring, "tvix-text3", &[path(want_text())]).expect("valid");
        assert_eq!(got.to_absolute_path(), "/nix/store/wjmfq6wqh6218h899n52mji8nfq8s0ax-tvix-text3");
        // The same contents without the reference: the path Nix gave `tvix-text2`, whose
        // string named the path without string context.
        let got = text_path(&referring, "tvix-text2", &[]).expect("valid");
        assert_eq!(got.to_absolute_path(), "/nix/store/3c6nabw4v6382k6f5cjysnz74468s0mm-tvix-text2");
    }
}
