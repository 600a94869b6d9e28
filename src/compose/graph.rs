//! One service's wiring: named entries (backends named by store URLs, and cache combinators
//! referring to other entries), checked whole before anything is opened, then built from `root`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::url::{self, Leaf};
use super::{ComposeError, Kind};
use crate::castore::CacheWrites;

/// The entry a command uses.
pub const ROOT: &str = "root";

/// One named entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A backend named by a store URL.
    Leaf {
        /// The URL as given, for messages.
        url: String,
        /// What it names.
        leaf: Leaf,
    },
    /// Reads `near` first and fills it from `far` on a miss.
    Cache {
        /// The entry read first and filled.
        near: String,
        /// The entry read on a miss.
        far: String,
        /// Where new data goes.
        writes: CacheWrites,
    },
    /// Signs what is put into `inner` with a Nix secret key (path-info services only).
    Signing {
        /// The entry signed PathInfos go to.
        inner: String,
        /// The secret key file, as `nix-store --generate-binary-cache-key` writes it.
        keyfile: std::path::PathBuf,
    },
}

impl Entry {
    /// The entries this one refers to, with the key naming each.
    fn references(&self) -> Vec<(&'static str, &str)> {
        match self {
            Entry::Leaf { .. } => Vec::new(),
            Entry::Cache { near, far, .. } => vec![("near", near), ("far", far)],
            Entry::Signing { inner, .. } => vec![("inner", inner)],
        }
    }
}

/// Wraps a built service in a signing one, given the key file.
pub type Sign<'a, T> = &'a dyn Fn(Arc<T>, &std::path::Path) -> Result<Arc<T>, String>;

/// How a graph's combinators become services of type `T`.
pub struct Combinators<'a, T: ?Sized> {
    /// Reads `near` first and fills it from `far`.
    pub cache: &'a dyn Fn(Arc<T>, Arc<T>, CacheWrites) -> Arc<T>,
    /// Signs with the key in the file what is put into the service.
    pub sign: Sign<'a, T>,
}

/// The entries of one service, built from [`ROOT`].
#[derive(Debug, Clone)]
pub struct Graph {
    kind: Kind,
    /// How entries are named in messages: `--blob-service-addr`, `FILE: blobservices`.
    origin: String,
    /// Made of one URL (a flag's, the default store's): its origin names the entry.
    single: bool,
    entries: BTreeMap<String, Entry>,
}

impl Graph {
    /// The graph of a single store URL given as `origin` (a flag, or "the default store").
    pub fn single(kind: Kind, origin: &str, addr: &str) -> Result<Self, ComposeError> {
        let leaf = url::parse(kind, addr).map_err(|reason| ComposeError::Url {
            entry: origin.to_string(),
            url: addr.to_string(),
            reason,
        })?;
        Ok(Self::of_leaf(kind, origin, addr.to_string(), leaf))
    }

    /// The graph of one backend named `url` in messages.
    pub fn of_leaf(kind: Kind, origin: &str, url: String, leaf: Leaf) -> Self {
        Self {
            kind,
            origin: origin.to_string(),
            single: true,
            entries: BTreeMap::from([(ROOT.to_string(), Entry::Leaf { url, leaf })]),
        }
    }

    /// A graph of named entries; checked by [`Graph::check`].
    pub fn new(kind: Kind, origin: String, entries: BTreeMap<String, Entry>) -> Self {
        Self { kind, origin, single: false, entries }
    }

    /// The name of entry `name` in messages.
    pub fn describe(&self, name: &str) -> String {
        if self.single {
            return self.origin.clone();
        }
        format!("{}.{name}", self.origin)
    }

    /// The backend the graph is, when its root is one (no combinator in between).
    pub fn root_leaf(&self) -> Option<&Leaf> {
        match self.entries.get(ROOT) {
            Some(Entry::Leaf { leaf, .. }) => Some(leaf),
            _ => None,
        }
    }

    /// Every backend of the graph: its name in messages, its URL, what it names.
    pub fn leaves(&self) -> impl Iterator<Item = (String, &str, &Leaf)> + '_ {
        self.entries.iter().filter_map(|(name, entry)| match entry {
            Entry::Leaf { url, leaf } => Some((self.describe(name), url.as_str(), leaf)),
            _ => None,
        })
    }

    /// Checks that `root` exists, every reference names an entry, and no entry reaches itself.
    pub fn check(&self) -> Result<(), ComposeError> {
        if !self.entries.contains_key(ROOT) {
            return Err(ComposeError::Entry {
                entry: self.origin.clone(),
                reason: format!("no entry named {ROOT:?} (the {} service a command uses)", self.kind.noun()),
            });
        }
        for (name, entry) in &self.entries {
            for (key, target) in entry.references() {
                if !self.entries.contains_key(target) {
                    return Err(ComposeError::Entry {
                        entry: self.describe(name),
                        reason: format!("{key} = {target:?} names no entry of {}", self.origin),
                    });
                }
            }
        }
        // Every entry is a start, so a cycle among entries the root does not reach is found too.
        let mut done: Vec<&str> = Vec::new();
        for start in self.entries.keys() {
            let mut path: Vec<&str> = Vec::new();
            self.find_cycle(start, &mut path, &mut done)?;
        }
        Ok(())
    }

    /// Depth-first from `name`; `path` holds the entries on the way to it.
    fn find_cycle<'a>(
        &'a self,
        name: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Result<(), ComposeError> {
        if done.contains(&name) {
            return Ok(());
        }
        if let Some(at) = path.iter().position(|p| *p == name) {
            let mut cycle: Vec<String> = path[at..].iter().map(|p| self.describe(p)).collect();
            cycle.push(self.describe(name));
            return Err(ComposeError::Cycle(cycle.join(" -> ")));
        }
        path.push(name);
        if let Some(entry) = self.entries.get(name) {
            for (_, target) in entry.references() {
                self.find_cycle(target, path, done)?;
            }
        }
        path.pop();
        done.push(name);
        Ok(())
    }

    /// Builds the root entry (each entry once, however often it is referred to: a redb file
    /// cannot be opened twice). `leaf` opens a backend; `combine` makes the combinators.
    pub fn build<T: ?Sized>(
        &self,
        leaf: &mut dyn FnMut(&Leaf) -> Result<Arc<T>, String>,
        combine: &Combinators<'_, T>,
    ) -> Result<Arc<T>, ComposeError> {
        let mut built: HashMap<String, Arc<T>> = HashMap::new();
        self.build_entry(ROOT, leaf, combine, &mut built)
    }

    fn build_entry<T: ?Sized>(
        &self,
        name: &str,
        leaf: &mut dyn FnMut(&Leaf) -> Result<Arc<T>, String>,
        combine: &Combinators<'_, T>,
        built: &mut HashMap<String, Arc<T>>,
    ) -> Result<Arc<T>, ComposeError> {
        if let Some(service) = built.get(name) {
            return Ok(service.clone());
        }
        // `check` ran before: every name refers to an entry, and the recursion ends.
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ComposeError::Entry { entry: self.describe(name), reason: "no such entry".into() })?;
        let service = match entry {
            Entry::Leaf { url, leaf: spec } => leaf(spec).map_err(|reason| ComposeError::Open {
                entry: self.describe(name),
                url: url.clone(),
                reason,
            })?,
            Entry::Cache { near, far, writes } => {
                let near = self.build_entry(near, leaf, combine, built)?;
                let far = self.build_entry(far, leaf, combine, built)?;
                (combine.cache)(near, far, *writes)
            }
            Entry::Signing { inner, keyfile } => {
                let inner = self.build_entry(inner, leaf, combine, built)?;
                (combine.sign)(inner, keyfile).map_err(|reason| ComposeError::Entry {
                    entry: self.describe(name),
                    reason: format!("keyfile {}: {reason}", keyfile.display()),
                })?
            }
        };
        built.insert(name.to_string(), service.clone());
        Ok(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(entries: &[(&str, Entry)]) -> Graph {
        let entries = entries.iter().map(|(n, e)| (n.to_string(), e.clone())).collect();
        Graph::new(Kind::Blob, "store.toml: blobservices".into(), entries)
    }

    fn cache(near: &str, far: &str) -> Entry {
        Entry::Cache { near: near.into(), far: far.into(), writes: CacheWrites::Far }
    }

    fn memory() -> Entry {
        Entry::Leaf { url: "memory://".into(), leaf: Leaf::Memory }
    }

    #[test]
    fn finds_cycles_missing_references_and_a_missing_root() {
        let cycle =
            graph(&[("root", cache("a", "m")), ("a", cache("b", "m")), ("b", cache("a", "m")), ("m", memory())]);
        assert_eq!(
            cycle.check().unwrap_err().to_string(),
            "cycle: store.toml: blobservices.a -> store.toml: blobservices.b -> store.toml: blobservices.a"
        );
        let missing = graph(&[("root", cache("m", "remote")), ("m", memory())]);
        assert_eq!(
            missing.check().unwrap_err().to_string(),
            "store.toml: blobservices.root: far = \"remote\" names no entry of store.toml: blobservices"
        );
        let no_root = graph(&[("m", memory())]);
        assert!(no_root.check().unwrap_err().to_string().contains("no entry named \"root\""));
        let unreachable_cycle = graph(&[("root", memory()), ("x", cache("x", "root"))]);
        assert!(unreachable_cycle.check().is_err());
    }

    #[test]
    fn builds_each_entry_once() {
        let g = graph(&[("root", cache("m", "m")), ("m", memory())]);
        g.check().unwrap();
        let mut opened = 0;
        let built: Arc<String> = g
            .build(
                &mut |_| {
                    opened += 1;
                    Ok(Arc::new("m".to_string()))
                },
                &Combinators {
                    cache: &|near, far, _| Arc::new(format!("cache({near}, {far})")),
                    sign: &|inner, key| Ok(Arc::new(format!("sign({inner}, {})", key.display()))),
                },
            )
            .unwrap();
        assert_eq!(*built, "cache(m, m)");
        assert_eq!(opened, 1);
    }
}
