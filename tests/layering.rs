//! The layering the composition layer rests on: the service traits and their generic
//! implementations (`castore`, `pathinfo`, `storepath`) import nothing above them. Only
//! `compose` knows store URL schemes and builds backends; a lower module reaching up would bring
//! the scheme arms back into the traits.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn lower_layers_import_nothing_above_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let higher =
        ["crate::compose", "crate::grpc", "crate::redb", "crate::server", "crate::fs", "crate::cli", "tonic::"];
    let mut files = Vec::new();
    for layer in ["castore", "pathinfo", "storepath"] {
        rust_files(&src.join(layer), &mut files);
    }
    assert!(files.len() > 10, "found only {files:?}");
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for h in higher {
                if line.contains(h) {
                    offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "lower layers import higher ones:\n{}", offences.join("\n"));
}

#[test]
fn narinfo_imports_only_the_data_layers() {
    // narinfo is shared by the substituter and the binary-cache server; it may build on
    // pathinfo, castore and storepath, and on nothing that does I/O on their behalf.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let higher = [
        "crate::compose",
        "crate::grpc",
        "crate::redb",
        "crate::server",
        "crate::fs",
        "crate::cli",
        "crate::import",
        "crate::nar",
        "crate::virtiofs",
        "tonic::",
    ];
    let mut files = Vec::new();
    rust_files(&src.join("narinfo"), &mut files);
    assert!(!files.is_empty());
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            // `crate::nar` is a prefix of `crate::narinfo`, which the module may name itself.
            if higher.iter().any(|h| code.contains(h) && !code.contains("crate::narinfo")) {
                offences.push(format!("{}:{}: {}", file.display(), n + 1, code));
            }
        }
    }
    assert!(offences.is_empty(), "narinfo imports higher layers:\n{}", offences.join("\n"));
    // And nothing below imports narinfo.
    let mut lower = Vec::new();
    for layer in ["castore", "pathinfo", "storepath"] {
        rust_files(&src.join(layer), &mut lower);
    }
    for file in &lower {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains("crate::narinfo"), "{} imports narinfo", file.display());
    }
}

#[test]
fn the_binary_cache_server_and_source_know_no_schemes() {
    // nar-bridge serves whatever services it is handed, and the substituter reads the cache it
    // is given: only compose builds services from URLs, only the CLI picks them.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for module in ["narbridge", "substitute"] {
        rust_files(&src.join(module), &mut files);
    }
    assert!(files.len() >= 4, "found only {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("//") && (line.contains("crate::compose") || line.contains("crate::cli"))
            {
                panic!("{}:{}: {}", file.display(), n + 1, line.trim());
            }
        }
    }
}

#[test]
fn maintenance_works_on_the_traits_only() {
    // verify, delete and gc run the same on the embedded store and inside a daemon: they see the
    // services and the backend seams, never which backend or transport is behind them.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let higher =
        ["crate::compose", "crate::grpc", "crate::redb", "crate::server", "crate::fs", "crate::cli", "tonic::"];
    let mut files = Vec::new();
    rust_files(&src.join("maintenance"), &mut files);
    assert!(files.len() >= 4, "found only {files:?}");
    let offences: Vec<String> = files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//") && higher.iter().any(|h| line.contains(h)))
                .map(|(n, line)| format!("{}:{}: {}", file.display(), n + 1, line.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(offences.is_empty(), "maintenance imports higher layers:\n{}", offences.join("\n"));
}
