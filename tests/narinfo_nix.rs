//! The narinfo module against the real Nix 2.8: store paths made by Nix (`nix-store --add` of
//! a file and a directory, `builtins.toFile` with a reference, a derivation built with
//! `nix-build`) are copied with `nix copy --to file://…` under every compression, signed with
//! a key `nix-store --generate-binary-cache-key` made. Every narinfo Nix wrote must parse to
//! what `nix path-info --json` says, render back byte for byte, verify with the public key and
//! not with another, and carry exactly the signature we compute ourselves.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use data_encoding::BASE64;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tvix_store::castore::{B3Digest, Node};
use tvix_store::narinfo::{Compression, NarFile, NarInfo, SigningKey, TrustedKeys, VerifyError, VerifyingKey};
use tvix_store::storepath::StorePath;

use crate::nix_referee::nix;

fn s(v: Vec<u8>) -> String {
    String::from_utf8(v).expect("utf-8").trim().to_string()
}

/// A referee call with string arguments.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    nix(program, &args.iter().map(OsStr::new).collect::<Vec<_>>())
}

/// The store paths under test, made once per test process (two concurrent builds of one
/// derivation disturb each other): the roots given to `nix copy`; their closure adds
/// `tvix-narinfo-a`.
fn store_paths() -> &'static [String] {
    static PATHS: OnceLock<Vec<String>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tvix-narinfo-file");
        std::fs::write(&file, b"a file for the narinfo tests\n").unwrap();
        let tree = dir.path().join("tvix-narinfo-tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("data"), b"data").unwrap();
        std::fs::write(tree.join("run"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(tree.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("data", tree.join("link")).unwrap();
        let mut paths: Vec<String> =
            [&file, &tree].iter().map(|p| s(nix("nix-store", &["--add".as_ref(), p.as_os_str()]))).collect();

        let expr = dir.path().join("narinfo.nix");
        std::fs::write(
            &expr,
            r#"
let
  a = builtins.toFile "tvix-narinfo-a" "hello";
in {
  text = builtins.toFile "tvix-narinfo-text" "refers to ${a}";
  built = derivation {
    name = "tvix-narinfo-built"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${a} > $out" ];
  };
}
"#,
        )
        .unwrap();
        // `--read-write-mode` makes the evaluation write the toFile into the store.
        let expr = expr.display().to_string();
        let text = s(run("nix-instantiate", &["--eval", "--read-write-mode", "--attr", "text", &expr]));
        paths.push(text.trim_matches('"').to_string());
        paths.push(s(run("nix-build", &["--no-out-link", "--attr", "built", &expr])));
        paths
    })
}

/// `nix-store --generate-binary-cache-key NAME` into `dir`: (secret file, public file).
fn generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sec, public) = (dir.join(format!("{name}.sec")), dir.join(format!("{name}.pub")));
    nix("nix-store", &["--generate-binary-cache-key".as_ref(), name.as_ref(), sec.as_os_str(), public.as_os_str()]);
    (sec, public)
}

/// `nix copy --to file://CACHE?compression=…[&secret-key=…] PATHS`.
fn nix_copy(cache: &Path, compression: &str, secret: Option<&Path>, paths: &[String]) {
    let mut url = format!("file://{}?compression={compression}", cache.display());
    if let Some(sec) = secret {
        url.push_str(&format!("&secret-key={}", sec.display()));
    }
    let mut args = vec!["copy", "--to", &url];
    args.extend(paths.iter().map(String::as_str));
    run("nix", &args);
}

/// Every `*.narinfo` in a cache directory: (file text, parsed).
fn narinfos(cache: &Path) -> Vec<(String, NarInfo)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(cache).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&path).unwrap();
            let info = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let hash_part = path.file_stem().unwrap().to_str().unwrap();
            assert!(info.store_path.to_basename().starts_with(hash_part), "{} names another path", path.display());
            out.push((text, info));
        }
    }
    out.sort_by(|a, b| a.1.store_path.cmp(&b.1.store_path));
    out
}

/// `nix path-info --json PATH`, the one entry.
fn nix_path_info(path: &StorePath) -> Value {
    let v: Value = serde_json::from_slice(&run("nix", &["path-info", "--json", &path.to_absolute_path()])).unwrap();
    v[0].clone()
}

/// Checks one narinfo Nix wrote against Nix's own view of the path and the NAR file.
fn check_against_nix(cache: &Path, compression: &str, text: &str, info: &NarInfo) {
    let what = format!("{compression}: {}", info.store_path);
    assert_eq!(info.render(), text, "{what}: render differs from Nix's file");

    let theirs = nix_path_info(&info.store_path);
    assert_eq!(theirs["narHash"], format!("sha256-{}", BASE64.encode(&info.nar_hash)), "{what}");
    assert_eq!(theirs["narSize"], info.nar_size, "{what}");
    let mut refs: Vec<String> = info.references.iter().map(StorePath::to_absolute_path).collect();
    refs.sort();
    assert_eq!(theirs["references"], serde_json::json!(refs), "{what}");
    assert_eq!(theirs["ca"].as_str(), info.ca.as_ref().map(|c| c.to_nix_string()).as_deref(), "{what}");
    assert_eq!(theirs["deriver"].as_str(), info.deriver.as_ref().map(StorePath::to_absolute_path).as_deref(), "{what}");

    assert_eq!(info.compression, Compression::from_word(compression), "{what}");
    let (file_hash, file_size) = (info.file_hash.unwrap(), info.file_size.unwrap());
    assert_eq!(NarFile::new(info.compression.clone(), file_hash, file_size).url, info.url, "{what}: URL scheme");
    let nar = std::fs::read(cache.join(&info.url)).unwrap_or_else(|e| panic!("{what}: {}: {e}", info.url));
    assert_eq!(nar.len() as u64, file_size, "{what}");
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&nar)), file_hash, "{what}");
    if compression == "none" {
        assert_eq!((file_hash, file_size), (info.nar_hash, info.nar_size), "{what}: uncompressed file is the NAR");
    }

    // Both conversions: through a PathInfo and back gives Nix's file again.
    let node = Node::File { digest: B3Digest::from([0; 32]), size: 0, executable: false };
    let path_info = info.to_path_info(node).unwrap();
    let nar_file = NarFile {
        url: info.url.clone(),
        compression: info.compression.clone(),
        file_hash: Some(file_hash),
        file_size: Some(file_size),
    };
    assert_eq!(NarInfo::from_path_info(&path_info, nar_file).unwrap().render(), text, "{what}: via PathInfo");
}

#[test]
fn narinfos_nix_writes_parse_render_and_verify() {
    let paths = store_paths();
    let tmp = tempfile::tempdir().unwrap();
    let (sec, public) = generate_key(tmp.path(), "test-key-1");
    // Same name, other key: a signature check must use the key, not only its name.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (other_sec, _) = generate_key(&other, "test-key-1");
    let (_, stranger_pub) = generate_key(tmp.path(), "stranger-1");

    let signing = SigningKey::from_file(&sec).unwrap();
    let trusted = TrustedKeys::new([VerifyingKey::from_file(&public).unwrap()]);
    assert_eq!(signing.verifying_key().to_nix_string(), std::fs::read_to_string(&public).unwrap().trim());
    let impostor = TrustedKeys::new([SigningKey::from_file(&other_sec).unwrap().verifying_key()]);
    let strangers = TrustedKeys::new([VerifyingKey::from_file(&stranger_pub).unwrap()]);

    let mut seen = std::collections::BTreeSet::new();
    for compression in ["xz", "none", "zstd", "bzip2"] {
        let cache = tmp.path().join(format!("cache-{compression}"));
        nix_copy(&cache, compression, Some(&sec), paths);
        let infos = narinfos(&cache);
        assert_eq!(infos.len(), paths.len() + 1, "{compression}: the roots and tvix-narinfo-a");
        for (text, info) in &infos {
            let what = format!("{compression}: {}", info.store_path);
            check_against_nix(&cache, compression, text, info);
            seen.insert(info.store_path.name().to_string());

            assert_eq!(info.signatures.len(), 1, "{what}");
            assert_eq!(signing.sign(&info.fingerprint()), info.signatures[0], "{what}: our signature is Nix's");
            assert_eq!(trusted.verify(info), Ok("test-key-1"), "{what}");
            assert!(matches!(impostor.verify(info), Err(VerifyError::Invalid { .. })), "{what}");
            assert!(matches!(strangers.verify(info), Err(VerifyError::Untrusted { .. })), "{what}");
            let mut tampered = info.clone();
            tampered.nar_size += 1;
            assert!(matches!(trusted.verify(&tampered), Err(VerifyError::Invalid { .. })), "{what}");
            let mut tampered = info.clone();
            tampered.references.push(info.store_path.clone());
            assert!(matches!(trusted.verify(&tampered), Err(VerifyError::Invalid { .. })), "{what}");
            // A tampered file fails just the same once parsed.
            let edited =
                text.replace(&format!("NarSize: {}\n", info.nar_size), &format!("NarSize: {}\n", info.nar_size + 1));
            assert!(trusted.verify(&NarInfo::parse(&edited).unwrap()).is_err(), "{what}");
        }
    }
    for name in ["tvix-narinfo-file", "tvix-narinfo-tree", "tvix-narinfo-a", "tvix-narinfo-text", "tvix-narinfo-built"]
    {
        assert!(seen.contains(name), "{name} not among {seen:?}");
    }
}

#[test]
fn signing_an_unsigned_narinfo_gives_the_file_nix_signs() {
    let paths = store_paths();
    let tmp = tempfile::tempdir().unwrap();
    let (sec, _) = generate_key(tmp.path(), "test-key-1");
    let (signed, unsigned) = (tmp.path().join("signed"), tmp.path().join("unsigned"));
    nix_copy(&signed, "zstd", Some(&sec), paths);
    nix_copy(&unsigned, "zstd", None, paths);
    let key = SigningKey::from_file(&sec).unwrap();
    let (signed, unsigned) = (narinfos(&signed), narinfos(&unsigned));
    assert_eq!(signed.len(), unsigned.len());
    for ((signed_text, _), (unsigned_text, mut info)) in signed.into_iter().zip(unsigned) {
        assert_eq!(info.render(), unsigned_text);
        assert!(info.signatures.is_empty() && !unsigned_text.contains("Sig:"), "{unsigned_text}");
        assert!(matches!(TrustedKeys::new([key.verifying_key()]).verify(&info), Err(VerifyError::Unsigned { .. })));
        key.sign_narinfo(&mut info);
        assert_eq!(info.render(), signed_text);
    }
}
