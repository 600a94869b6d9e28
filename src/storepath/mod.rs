//! Nix store paths: `/nix/store/<nixbase32 digest>-<name>`, and how Nix computes them.

mod make;
pub mod nixbase32;

pub use make::{compress_hash, fixed_output_path, make_store_path, source_store_path, text_path};

use std::fmt;

/// The store directory every path we serve lives in.
pub const STORE_DIR: &str = "/nix/store";
/// Length of the digest part of a store path.
pub const DIGEST_LEN: usize = 20;
/// Length of the digest part in nixbase32.
pub const ENCODED_DIGEST_LEN: usize = 32;
/// Longest name Nix allows.
pub const MAX_NAME_LEN: usize = 211;

/// A validated store path: 20-byte digest and a name following Nix's rules.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: String,
}

/// Why a string is not a valid store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidStorePath {
    #[error("store path {0:?} is not in {STORE_DIR}")]
    NotInStore(String),
    #[error("store path {0:?} is too short or has no '-' after the hash")]
    Malformed(String),
    #[error("store path {0:?} has an invalid hash: {1}")]
    Hash(String, nixbase32::DecodeError),
    #[error("store path name {0:?} is invalid: {1}")]
    Name(String, &'static str),
    #[error("store path digest has {0} bytes, expected {DIGEST_LEN}")]
    DigestLen(usize),
    /// Nix only gives recursive SHA-256 (`source`) content-addressed paths references.
    #[error("content-addressed path {0:?}: only a recursive SHA-256 path can have references")]
    FixedWithReferences(String),
}

/// Checks a store path name against Nix's rules.
pub fn validate_name(name: &str) -> Result<(), InvalidStorePath> {
    let bad = |why| Err(InvalidStorePath::Name(name.to_string(), why));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 211 characters");
    }
    if name.chars().any(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c))) {
        return bad("it contains a character other than A-Z a-z 0-9 + - . _ ? =");
    }
    if name == "." || name == ".." || name.starts_with(".-") || name.starts_with("..-") {
        return bad("it is '.' or '..' or starts with '.-' or '..-'");
    }
    Ok(())
}

impl StorePath {
    /// A store path from its parts.
    pub fn from_parts(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self, InvalidStorePath> {
        validate_name(name)?;
        Ok(Self { digest, name: name.to_string() })
    }

    /// Parses a basename `<hash>-<name>`.
    pub fn from_basename(basename: &str) -> Result<Self, InvalidStorePath> {
        let malformed = || InvalidStorePath::Malformed(basename.to_string());
        let (hash, name) = basename.split_at_checked(ENCODED_DIGEST_LEN).ok_or_else(malformed)?;
        let name = name.strip_prefix('-').ok_or_else(malformed)?;
        let digest = nixbase32::decode(hash.as_bytes(), DIGEST_LEN)
            .map_err(|e| InvalidStorePath::Hash(basename.to_string(), e))?;
        let digest: [u8; DIGEST_LEN] = digest.try_into().map_err(|_| malformed())?;
        Self::from_parts(digest, name)
    }

    /// Parses a basename given as bytes (e.g. a node name or a FUSE lookup).
    pub fn from_basename_bytes(basename: &[u8]) -> Result<Self, InvalidStorePath> {
        let s = std::str::from_utf8(basename)
            .map_err(|_| InvalidStorePath::Malformed(String::from_utf8_lossy(basename).into_owned()))?;
        Self::from_basename(s)
    }

    /// Parses an absolute path `/nix/store/<hash>-<name>` (trailing sub-paths are rejected).
    pub fn from_absolute_path(path: &str) -> Result<Self, InvalidStorePath> {
        let rest = path
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| InvalidStorePath::NotInStore(path.to_string()))?;
        Self::from_basename(rest.trim_end_matches('/'))
    }

    /// Parses either an absolute store path or a basename.
    pub fn parse(s: &str) -> Result<Self, InvalidStorePath> {
        if s.starts_with('/') { Self::from_absolute_path(s) } else { Self::from_basename(s) }
    }

    /// The 20-byte digest.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`.
    pub fn to_basename(&self) -> String {
        format!("{}-{}", nixbase32::encode(&self.digest), self.name)
    }

    /// `/nix/store/<hash>-<name>`.
    pub fn to_absolute_path(&self) -> String {
        format!("{STORE_DIR}/{}", self.to_basename())
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_absolute_path())
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_absolute_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let p = StorePath::parse("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432").unwrap();
        assert_eq!(p.name(), "net-tools-1.60_p20170221182432");
        assert_eq!(p.to_basename(), "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432");
        for bad in [
            "00bgd045z0d4icpbc2yyz4gx48ak44la",
            "00bgd045z0d4icpbc2yyz4gx48ak44la-",
            "00bgd045z0d4icpbc2yyz4gx48ak44la-a b",
            "00bgd045z0d4icpbc2yyz4gx48ak44la-..",
            "00bgd045z0d4icpbc2yyz4gx48ak44le-x",
            "/tmp/00bgd045z0d4icpbc2yyz4gx48ak44la-x",
        ] {
            assert!(StorePath::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(StorePath::parse("00bgd045z0d4icpbc2yyz4gx48ak44la-.hidden").is_ok());
    }
}
