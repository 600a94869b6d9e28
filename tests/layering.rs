//! The layers of the README are the layers of the code: the rules are read from the README's
//! `layers` block and every `crate::…` (and, in the binary, `tvix_store::…`) path in `src/` is
//! checked against them. A module the README does not place fails the test too, so a new module
//! cannot slip in unplaced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rules of the README's `layers` block.
struct Rules {
    /// Top-level module → (layer index, group index within the layer, position in the group).
    place: BTreeMap<String, (usize, usize, usize)>,
    /// Module → the only modules it may use (narrower than its layer).
    only: BTreeMap<String, BTreeSet<String>>,
    /// The modules that may use `tonic::`.
    tonic: BTreeSet<String>,
}

impl Rules {
    fn from_readme() -> Self {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
        let block = readme
            .split("```layers\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README.md has a ```layers block");
        let mut rules = Rules { place: BTreeMap::new(), only: BTreeMap::new(), tonic: BTreeSet::new() };
        let mut layer = 0;
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            let (head, rest) = line.split_once(char::is_whitespace).expect("a line is a name and its modules");
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.first() == Some(&"only") {
                let allowed = words[1..].iter().map(|w| w.to_string()).collect();
                if head == "tonic" {
                    rules.tonic = allowed;
                } else {
                    rules.only.insert(head.to_string(), allowed);
                }
                continue;
            }
            for (group, modules) in rest.split('|').enumerate() {
                for (position, module) in modules.split_whitespace().enumerate() {
                    let earlier = rules.place.insert(module.to_string(), (layer, group, position));
                    assert!(earlier.is_none(), "README places {module} twice");
                }
            }
            layer += 1;
        }
        assert!(layer >= 5 && rules.place.len() > 15, "the layers block was not read: {:?}", rules.place);
        rules
    }

    /// Why `from` may not use `to`, if it may not.
    fn offence(&self, from: &str, to: &str) -> Option<String> {
        if let Some(only) = self.only.get(from)
            && !only.contains(to)
        {
            return Some(format!("{from} may use only {only:?}"));
        }
        let (Some(&(fl, fg, fp)), Some(&(tl, tg, tp))) = (self.place.get(from), self.place.get(to)) else {
            return Some(format!("the README's layers do not place {from} or {to}"));
        };
        // Layers are listed top first: a higher index is a lower layer.
        let allowed = tl > fl || (tl == fl && tg == fg && tp > fp);
        (!allowed).then(|| format!("{from} is not above {to}"))
    }
}

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

/// The top-level module a file of `src/` belongs to (`cli` for the binary's files).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    match first.strip_suffix(".rs") {
        Some("main") => "cli".into(),
        Some(name) => name.into(),
        None => first,
    }
}

/// The modules a line of code names as `prefix<module>`.
fn named_modules<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    code.match_indices(prefix).filter_map(move |(at, _)| {
        let rest = &code[at + prefix.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

#[test]
fn every_module_uses_only_what_the_readme_layers_allow() {
    let rules = Rules::from_readme();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offences = Vec::new();
    let mut modules = BTreeSet::new();
    for file in &files {
        let module = module_of(&src, file);
        if ["lib"].contains(&module.as_str()) {
            continue;
        }
        modules.insert(module.clone());
        let prefix = if module == "cli" { "tvix_store::" } else { "crate::" };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for used in named_modules(code, prefix) {
                if used == module {
                    continue;
                }
                if let Some(why) = rules.offence(&module, used) {
                    offences.push(format!("{}:{}: uses {used}: {why}", file.display(), n + 1));
                }
            }
            if code.contains("tonic::") && !rules.tonic.contains(&module) {
                offences.push(format!("{}:{}: uses tonic outside {:?}", file.display(), n + 1, rules.tonic));
            }
        }
    }
    let unplaced: Vec<_> = modules.iter().filter(|m| !rules.place.contains_key(*m)).collect();
    assert!(unplaced.is_empty(), "modules the README's layers do not place: {unplaced:?}");
    assert!(offences.is_empty(), "uses the README's layers do not allow:\n{}", offences.join("\n"));
}

#[test]
fn the_rules_catch_what_they_forbid() {
    // The checker itself: a filesystem that reaches for the builder, a lower layer reaching
    // up, a frontend using another, are all refused; what the layers allow passes.
    let rules = Rules::from_readme();
    assert!(rules.offence("fs", "compose").is_some());
    assert!(rules.offence("fs", "pathinfo").is_some(), "the filesystem core sees castore only");
    assert!(rules.offence("castore", "pathinfo").is_some());
    assert!(rules.offence("server", "compose").is_some());
    assert!(rules.offence("server", "grpc").is_some(), "servers import no client");
    assert!(rules.offence("compose", "fs").is_some());
    assert!(rules.offence("narinfo", "nar").is_some());
    assert!(rules.offence("virtiofs", "fs").is_none());
    assert!(rules.offence("host", "compose").is_none());
    assert!(rules.offence("compose", "grpc").is_none());
    assert!(rules.offence("pathinfo", "castore").is_none());
    assert!(rules.offence("nowhere", "castore").is_some());
}

#[test]
fn the_binary_cache_server_and_source_know_no_schemes() {
    // nar-bridge serves whatever store it is handed, and the substituter reads the cache it is
    // given: only compose builds services from URLs, only the CLI picks them.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for module in ["narbridge", "substitute"] {
        rust_files(&src.join(module), &mut files);
    }
    assert!(files.len() >= 4, "found only {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if !code.starts_with("//") && ["grpc+", "objectstore+", "redb://"].iter().any(|s| code.contains(s)) {
                panic!("{}:{}: {}", file.display(), n + 1, line.trim());
            }
        }
    }
}
