//! The commands end to end on the embedded default store (TVIX_STORE_DIR in a temp dir), with
//! the real Nix as referee: `import` prints `nix-store --add`'s paths, `dump` writes
//! `nix-store --dump`'s bytes, `path-info` prints what `nix path-info --json` prints, and
//! `copy` takes a closure from an `exportReferencesGraph` JSON file Nix itself wrote.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::nar_common::*;

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = tvix_store();
        c.env("TVIX_STORE_DIR", self.dir.path()).args(args);
        for var in ["BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "PATH_INFO_SERVICE_ADDR"] {
            c.env_remove(var);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = self.cmd(args).output().unwrap();
        assert!(out.status.success(), "tvix-store {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn path_info(&self, paths: &[&str]) -> Value {
        let mut args = vec!["path-info"];
        args.extend_from_slice(paths);
        serde_json::from_slice(&self.run(&args)).unwrap()
    }
}

/// `nix path-info --json`, without the fields only a Nix database has.
fn nix_path_info(paths: &[&str]) -> Value {
    let mut args: Vec<&std::ffi::OsStr> = ["path-info", "--json"].into_iter().map(std::ffi::OsStr::new).collect();
    args.extend(paths.iter().map(std::ffi::OsStr::new));
    let mut v: Value = serde_json::from_slice(&nix("nix", &args)).unwrap();
    for e in v.as_array_mut().unwrap() {
        let o = e.as_object_mut().unwrap();
        o.remove("registrationTime");
        o.remove("ultimate");
    }
    v
}

fn s(v: &[u8]) -> String {
    String::from_utf8(v.to_vec()).unwrap()
}

#[test]
fn import_dump_path_info_agree_with_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new();
    let trees = trees(tmp.path());
    let mut args = vec!["import"];
    let tree_strs: Vec<String> = trees.iter().map(|t| t.display().to_string()).collect();
    args.extend(tree_strs.iter().map(String::as_str));
    let printed = s(&store.run(&args));
    let expected: Vec<String> = trees.iter().map(|t| nix_add(t)).collect();
    assert_eq!(printed.lines().collect::<Vec<_>>(), expected);

    for (tree, path) in trees.iter().zip(&expected) {
        let dump = store.run(&["dump", path]);
        assert!(dump == nix_dump(tree), "{}: dump differs from nix-store --dump", tree.display());
    }
    let mut all: Vec<&str> = expected.iter().map(String::as_str).collect();
    let unknown = "/nix/store/00000000000000000000000000000000-not-there";
    all.push(unknown);
    assert_eq!(store.path_info(&all), nix_path_info(&all));
}

#[test]
fn dump_of_an_unknown_path_fails() {
    let store = Store::new();
    let out = store.cmd(&["dump", "/nix/store/00000000000000000000000000000000-nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(s(&out.stderr).contains("not in the store"), "{}", s(&out.stderr));
    assert!(out.stdout.is_empty());
}

/// Builds a small closure with references and a self-reference, and a derivation whose output
/// is the `__structuredAttrs` JSON describing it. Built once per test process: two concurrent
/// builds of one derivation disturb each other.
fn nix_built_attrs_json(_dir: &Path) -> String {
    static BUILT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let expr = dir.path().join("closure.nix");
    std::fs::write(
        &expr,
        r#"
let
  sys = builtins.currentSystem;
  a = builtins.toFile "tvix-test-a" "hello";
  b = derivation { name = "tvix-test-b"; system = sys; builder = "/bin/sh"; args = [ "-c" "echo ${a} > $out" ]; };
  c = derivation {
    name = "tvix-test-c"; system = sys; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir $out; echo ${b} > $out/ref; echo $out > $out/self; /bin/ln -s ${a} $out/link" ];
  };
in derivation {
  name = "tvix-test-attrs"; system = sys; builder = "/bin/bash"; __structuredAttrs = true;
  exportReferencesGraph.closure = [ c ];
  args = [ "-c" "source .attrs.sh; /bin/cp .attrs.json \${outputs[out]}" ];
}
"#,
    )
    .unwrap();
    let out = nix("nix-build", &["--no-out-link".as_ref(), expr.as_os_str()]);
    let path = s(&out).trim().to_string();
    *built = Some(path.clone());
    path
}

#[test]
fn copy_closure_keeps_references() {
    let tmp = tempfile::tempdir().unwrap();
    let attrs = nix_built_attrs_json(tmp.path());
    let doc: Value = serde_json::from_slice(&std::fs::read(&attrs).unwrap()).unwrap();
    let paths: Vec<String> =
        doc["closure"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths.len(), 3);

    let store = Store::new();
    let printed = s(&store.run(&["copy", &attrs]));
    assert_eq!(printed.lines().collect::<Vec<_>>(), paths);
    // Twice is fine: already present paths are kept.
    assert_eq!(s(&store.run(&["copy", &attrs])), printed);

    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let ours = store.path_info(&refs);
    let mut theirs = nix_path_info(&refs);
    for e in theirs.as_array_mut().unwrap() {
        // exportReferencesGraph does not list derivers, so a copy cannot know them.
        e.as_object_mut().unwrap().remove("deriver");
    }
    assert_eq!(ours, theirs);
    let with_self =
        ours.as_array().unwrap().iter().find(|e| e["path"].as_str().unwrap().ends_with("-tvix-test-c")).unwrap();
    assert!(with_self["references"].as_array().unwrap().contains(&with_self["path"]), "self-reference kept");
    for p in &paths {
        assert!(store.run(&["dump", p]) == nix_dump(Path::new(p)), "{p}: dump differs");
    }
}

#[test]
fn copy_refuses_a_wrong_nar_hash_and_registers_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let attrs = nix_built_attrs_json(tmp.path());
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&attrs).unwrap()).unwrap();
    let victim = doc["closure"][0]["path"].as_str().unwrap().to_string();
    doc["closure"][0]["narHash"] = Value::from(format!("sha256:{}", "0".repeat(52)));
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let store = Store::new();
    let out = store.cmd(&["copy", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = s(&out.stderr);
    assert!(err.contains(&victim) && err.contains("NAR hash"), "{err}");
    assert_eq!(store.path_info(&[&victim])[0]["valid"], Value::Bool(false));
}

/// Streams a command's stdout into SHA-256, returning (size, hash).
fn hash_stdout(mut cmd: Command) -> (u64, [u8; 32]) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    assert!(child.wait().unwrap().success(), "{cmd:?} failed");
    (size, hasher.finalize().into())
}

#[test]
fn multi_hundred_megabyte_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("big-tree");
    std::fs::create_dir(&tree).unwrap();
    // Content that does not repeat within a chunk, so every chunk is distinct.
    let mut f = std::io::BufWriter::new(std::fs::File::create(tree.join("big")).unwrap());
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..300 {
        for b in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.copy_from_slice(&state.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    drop(f);
    write_file(&tree.join("small"), 10, true);

    let store = Store::new();
    let printed = s(&store.run(&["import", tree.to_str().unwrap()]));
    let path = nix_add(&tree);
    assert_eq!(printed.trim_end(), path);
    let mut nix_cmd = nix_command("nix-store");
    nix_cmd.arg("--dump").arg(&tree);
    let theirs = hash_stdout(nix_cmd);
    assert!(theirs.0 > 300 << 20);
    assert_eq!(hash_stdout(store.cmd(&["dump", &path])), theirs, "dump differs from nix-store --dump");
}

/// The referee never depends on how the machine's Nix is configured: Debian's compiled-in
/// `build-users-group = nixbld` names a group a fresh machine lacks, and its default
/// substituter is out of reach here. If the referee read the machine's settings, this fails.
#[test]
fn referee_runs_under_the_tests_own_nix_configuration() {
    let shown = s(&nix("nix", &["show-config".as_ref()]));
    let setting = |name: &str| -> String {
        let line = shown
            .lines()
            .find(|l| l.starts_with(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{shown}"));
        line[name.len() + 3..].trim().to_string()
    };
    assert_eq!(setting("build-users-group"), "", "the referee must not need a build users group");
    assert_eq!(setting("substituters"), "", "the referee must not substitute");
    assert_eq!(setting("sandbox"), "false");
}

/// The default store's backends are built from its directory as paths: a directory name with
/// characters that mean something in a URL (`#`, `?`, `%`, a space) is used as it is.
#[test]
fn a_store_directory_named_with_url_characters_is_used_as_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store #1 ?x=%41");
    let tree = tmp.path().join("url-chars");
    write_file(&tree, 100, false);
    let run = |args: &[&str]| {
        let out = tvix_store().env("TVIX_STORE_DIR", &dir).args(args).output().unwrap();
        assert!(out.status.success(), "tvix-store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let path = s(&run(&["import", tree.to_str().unwrap()])).trim().to_string();
    assert!(dir.join("blobs/chunks").is_dir() && dir.join("pathinfo.redb").is_file(), "store files not in {dir:?}");
    assert!(!tmp.path().join("store ").exists(), "a URL fragment cut the directory name");
    assert!(run(&["dump", &path]) == nix_dump(&tree), "dump differs from nix-store --dump");
}
