//! A single name inside a directory.

use std::fmt;

use bytes::Bytes;

/// Longest name we accept, as Linux filesystems do (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// A validated directory entry name: non-empty, at most 255 bytes, no `/` or NUL, not `.`/`..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathComponent(Bytes);

/// Why a byte string is not a valid entry name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("name is empty")]
    Empty,
    #[error("name {0:?} is `.` or `..`")]
    Dot(String),
    #[error("name {0:?} contains a '/'")]
    Slash(String),
    #[error("name {0:?} contains a NUL byte")]
    Nul(String),
    #[error("name {0:?}... is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
}

impl PathComponent {
    /// The raw name bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as shared bytes.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl TryFrom<Bytes> for PathComponent {
    type Error = InvalidName;

    fn try_from(name: Bytes) -> Result<Self, Self::Error> {
        let shown = || String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned();
        if name.is_empty() {
            return Err(InvalidName::Empty);
        }
        if name.as_ref() == b"." || name.as_ref() == b".." {
            return Err(InvalidName::Dot(shown()));
        }
        if name.contains(&b'/') {
            return Err(InvalidName::Slash(shown()));
        }
        if name.contains(&0) {
            return Err(InvalidName::Nul(shown()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(InvalidName::TooLong(shown()));
        }
        Ok(Self(name))
    }
}

impl TryFrom<&[u8]> for PathComponent {
    type Error = InvalidName;

    fn try_from(name: &[u8]) -> Result<Self, Self::Error> {
        Self::try_from(Bytes::copy_from_slice(name))
    }
}

impl TryFrom<&str> for PathComponent {
    type Error = InvalidName;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::try_from(name.as_bytes())
    }
}

impl AsRef<[u8]> for PathComponent {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_names() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256][..]] {
            assert!(PathComponent::try_from(bad).is_err(), "{bad:?} accepted");
        }
        for good in [&b"a"[..], b"...", b".hidden", "ünïcode space".as_bytes(), &[b'x'; 255][..]] {
            assert!(PathComponent::try_from(good).is_ok(), "{good:?} rejected");
        }
    }
}
