//! The composition file (`--store-config FILE`, TOML): named services per kind, wired into
//! layered setups. See docs/composition.md.
//!
//! ```toml
//! [blobservices.root]
//! type = "cache"
//! near = "local"
//! far = "central"
//!
//! [blobservices.local]
//! url = "objectstore+file:///var/cache/tvix-store/blobs"
//!
//! [blobservices.central]
//! url = "grpc+http://store.internal:8000"
//! ```
//!
//! The file is read by hand from a TOML table rather than through serde's derive, so that every
//! mistake gets a one-line message naming its entry (serde's untagged enums say only "did not
//! match any variant").

use std::collections::BTreeMap;
use std::path::Path;

use super::graph::{Entry, Graph};
use super::url;
use super::{ComposeError, Kind};
use crate::castore::CacheWrites;

/// The services a composition file sets; a kind it has no table for is left to the flags.
#[derive(Debug, Default)]
pub struct Composition {
    /// `[blobservices.*]`.
    pub blob: Option<Graph>,
    /// `[directoryservices.*]`.
    pub directory: Option<Graph>,
    /// `[pathinfoservices.*]`.
    pub path_info: Option<Graph>,
}

/// Reads and checks the composition file at `path`; nothing is opened.
pub fn load(path: &Path) -> Result<Composition, ComposeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ComposeError::ReadConfig { path: path.to_path_buf(), source })?;
    parse(&text, &path.display().to_string())
}

/// Parses and checks a composition file's text; `name` names the file in messages.
pub fn parse(text: &str, name: &str) -> Result<Composition, ComposeError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        let message = e.message().trim().replace('\n', " ");
        ComposeError::Entry {
            entry: match line {
                Some(line) => format!("{name}:{line}"),
                None => name.to_string(),
            },
            reason: format!("invalid TOML: {message}"),
        }
    })?;
    let mut composition = Composition::default();
    for (key, value) in table {
        let kind = match key.as_str() {
            "blobservices" => Kind::Blob,
            "directoryservices" => Kind::Directory,
            "pathinfoservices" => Kind::PathInfo,
            _ => {
                return Err(ComposeError::Entry {
                    entry: format!("{name}: {key}"),
                    reason: "unknown table (expected blobservices, directoryservices, pathinfoservices)".into(),
                });
            }
        };
        let origin = format!("{name}: {key}");
        let toml::Value::Table(entries) = value else {
            return Err(ComposeError::Entry { entry: origin, reason: "must be a table of named services".into() });
        };
        let entries = entries
            .into_iter()
            .map(|(entry, value)| {
                let at = format!("{origin}.{entry}");
                Ok((entry, parse_entry(kind, &at, value)?))
            })
            .collect::<Result<BTreeMap<_, _>, ComposeError>>()?;
        let graph = Graph::new(kind, origin, entries);
        graph.check()?;
        *match kind {
            Kind::Blob => &mut composition.blob,
            Kind::Directory => &mut composition.directory,
            Kind::PathInfo => &mut composition.path_info,
        } = Some(graph);
    }
    Ok(composition)
}

/// One entry: `{ url = "..." }`, `{ type = "cache", near = "...", far = "...", write = "..." }`,
/// `{ type = "disk-cache", dir = "...", size = "10G", far = "..." }` or a signing one.
fn parse_entry(kind: Kind, at: &str, value: toml::Value) -> Result<Entry, ComposeError> {
    let err = |reason: String| ComposeError::Entry { entry: at.to_string(), reason };
    let toml::Value::Table(mut fields) = value else {
        return Err(err("must be a table (e.g. url = \"memory://\")".into()));
    };
    let mut take_string = |key: &str| -> Result<Option<String>, ComposeError> {
        match fields.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(err(format!("{key} must be a string, not {}", other.type_str()))),
        }
    };
    let ty = take_string("type")?;
    let entry = match ty.as_deref() {
        None | Some("url") => {
            let addr = take_string("url")?
                .ok_or_else(|| err("needs url = \"<store URL>\" (or a type such as \"cache\")".into()))?;
            let leaf = url::parse(kind, &addr).map_err(|reason| ComposeError::Url {
                entry: at.to_string(),
                url: addr.clone(),
                reason,
            })?;
            Entry::Leaf { url: addr, leaf }
        }
        Some("cache") => {
            let near = take_string("near")?.ok_or_else(|| err("a cache needs near = \"<entry>\"".into()))?;
            let far = take_string("far")?.ok_or_else(|| err("a cache needs far = \"<entry>\"".into()))?;
            let writes = match take_string("write")?.as_deref() {
                None | Some("far") => CacheWrites::Far,
                Some("near") => CacheWrites::Near,
                Some(other) => return Err(err(format!("write = {other:?}: expected \"far\" or \"near\""))),
            };
            Entry::Cache { near, far, writes }
        }
        Some("disk-cache") => {
            let dir = take_string("dir")?.ok_or_else(|| err("a disk-cache needs dir = \"<directory>\"".into()))?;
            let far = take_string("far")?.ok_or_else(|| err("a disk-cache needs far = \"<entry>\"".into()))?;
            let size = match fields.remove("size") {
                None => crate::castore::diskcache::DEFAULT_SIZE,
                Some(toml::Value::String(s)) => {
                    crate::castore::diskcache::parse_size(&s).map_err(|e| err(format!("size: {e}")))?
                }
                Some(toml::Value::Integer(n)) if n > 0 => n as u64,
                Some(other) => {
                    return Err(err(format!(
                        "size must be a size such as \"10G\" or a positive number of bytes, not {other:?}"
                    )));
                }
            };
            Entry::DiskCache { dir: dir.into(), size, far }
        }
        Some("keyfile-signing") if kind != Kind::PathInfo => {
            return Err(err("keyfile-signing signs PathInfos: it belongs under [pathinfoservices]".into()));
        }
        Some("keyfile-signing") => {
            let inner = take_string("inner")?.ok_or_else(|| err("keyfile-signing needs inner = \"<entry>\"".into()))?;
            let keyfile = take_string("keyfile")?
                .ok_or_else(|| err("keyfile-signing needs keyfile = \"<Nix secret key file>\"".into()))?;
            Entry::Signing { inner, keyfile: keyfile.into() }
        }
        Some(other) => {
            return Err(err(format!("unknown type {other:?} (known: url, cache, disk-cache, keyfile-signing)")));
        }
    };
    if let Some(key) = fields.keys().next() {
        return Err(err(format!("unknown key {key:?}")));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text, "s.toml").unwrap_err().to_string()
    }

    #[test]
    fn reads_the_worked_example() {
        let c = parse(
            r#"
            [blobservices.root]
            type = "cache"
            near = "local"
            far = "central"
            [blobservices.local]
            url = "objectstore+file:///var/cache/tvix-store/blobs"
            [blobservices.central]
            url = "grpc+http://store.internal:8000"
            [pathinfoservices.root]
            url = "memory://"
            "#,
            "s.toml",
        )
        .unwrap();
        assert!(c.blob.is_some() && c.path_info.is_some() && c.directory.is_none());
    }

    #[test]
    fn reads_a_disk_cache_entry() {
        let c = parse(
            r#"
            [blobservices.root]
            type = "disk-cache"
            dir = "/var/cache/tvix-store"
            size = "2G"
            far = "central"
            [blobservices.central]
            url = "grpc+http://store.internal:8000"
            [directoryservices.root]
            type = "disk-cache"
            dir = "/var/cache/tvix-store"
            size = 1048576
            far = "central"
            [directoryservices.central]
            url = "grpc+http://store.internal:8000"
            "#,
            "s.toml",
        )
        .unwrap();
        let blob = format!("{:?}", c.blob.unwrap());
        assert!(blob.contains("DiskCache") && blob.contains("size: 2147483648"), "{blob}");
        assert!(format!("{:?}", c.directory.unwrap()).contains("size: 1048576"));
    }

    #[test]
    fn every_mistake_is_one_line_naming_its_entry() {
        let cases = [
            ("[blobservices.root]\ntype = \"cachee\"\n", "s.toml: blobservices.root: unknown type \"cachee\""),
            (
                "[blobservices.root]\nurl = \"s3://x\"\n",
                "s.toml: blobservices.root: invalid store URL \"s3://x\": unsupported scheme",
            ),
            (
                "[blobservices.root]\nurl = \"memory://\"\ncolour = 1\n",
                "s.toml: blobservices.root: unknown key \"colour\"",
            ),
            ("[blobservices.root]\n", "s.toml: blobservices.root: needs url"),
            ("[blobservices.root]\ntype = \"cache\"\nnear = \"a\"\nfar = \"b\"\n", "names no entry"),
            (
                "[blobservices.root]\ntype = \"cache\"\nnear = \"root\"\nfar = \"root\"\n",
                "cycle: s.toml: blobservices.root -> s.toml: blobservices.root",
            ),
            ("[blobservices.m]\nurl = \"memory://\"\n", "s.toml: blobservices: no entry named \"root\""),
            ("[blobservice.root]\nurl = \"memory://\"\n", "s.toml: blobservice: unknown table"),
            ("[directoryservices.root]\nurl = \"objectstore+file:///x\"\n", "for a directory service"),
            ("[blobservices.root]\nurl = memory\n", "s.toml:2: invalid TOML"),
            (
                "[blobservices.root]\ntype = \"cache\"\nnear = \"a\"\nfar = \"a\"\nwrite = \"both\"\n",
                "write = \"both\"",
            ),
            (
                "[blobservices.root]\ntype = \"keyfile-signing\"\ninner = \"a\"\nkeyfile = \"/k\"\n",
                "s.toml: blobservices.root: keyfile-signing signs PathInfos",
            ),
            ("[pathinfoservices.root]\ntype = \"keyfile-signing\"\ninner = \"a\"\n", "needs keyfile"),
            (
                "[blobservices.root]\ntype = \"disk-cache\"\nfar = \"a\"\n",
                "s.toml: blobservices.root: a disk-cache needs dir",
            ),
            ("[blobservices.root]\ntype = \"disk-cache\"\ndir = \"/c\"\n", "a disk-cache needs far"),
            (
                "[blobservices.root]\ntype = \"disk-cache\"\ndir = \"/c\"\nfar = \"root\"\nsize = \"10Q\"\n",
                "size: disk cache size \"10Q\": unknown unit",
            ),
            ("[blobservices.root]\ntype = \"disk-cache\"\ndir = \"/c\"\nfar = \"root\"\nsize = 0\n", "size must be"),
            (
                "[directoryservices.root]\ntype = \"disk-cache\"\ndir = \"/c\"\nfar = \"x\"\n",
                "far = \"x\" names no entry",
            ),
            ("[pathinfoservices.root]\ntype = \"keyfile-signing\"\nkeyfile = \"/k\"\n", "needs inner"),
            (
                "[pathinfoservices.root]\ntype = \"keyfile-signing\"\ninner = \"x\"\nkeyfile = \"/k\"\n",
                "inner = \"x\" names no entry",
            ),
        ];
        for (text, want) in cases {
            let got = error(text);
            assert!(got.contains(want), "{text:?}: got {got:?}, want {want:?}");
            assert!(!got.contains('\n'), "{text:?}: not one line: {got:?}");
        }
    }
}
