//! BLAKE3 digests, the addresses of blobs, chunks and directories.

use std::fmt;

use data_encoding::BASE64;

/// Length in bytes of a BLAKE3 digest.
pub const B3_LEN: usize = 32;

/// A BLAKE3 digest (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct B3Digest([u8; B3_LEN]);

/// How often bytes were hashed to each digest, in unit tests: the read path's tests count that
/// a byte is hashed once on its way to the reader. Keyed by the result, so tests running side
/// by side on other data do not disturb each other.
#[cfg(test)]
pub(crate) mod hash_count {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};

    use super::B3Digest;

    static COUNTS: LazyLock<Mutex<HashMap<B3Digest, u64>>> = LazyLock::new(Default::default);

    pub(super) fn note(digest: &B3Digest) {
        *COUNTS.lock().unwrap_or_else(|e| e.into_inner()).entry(*digest).or_default() += 1;
    }

    /// How often bytes were hashed to `digest` so far.
    pub(crate) fn of(digest: &B3Digest) -> u64 {
        COUNTS.lock().unwrap_or_else(|e| e.into_inner()).get(digest).copied().unwrap_or(0)
    }
}

/// A byte string that is not 32 bytes long was offered as a BLAKE3 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest length: {0} bytes, expected {B3_LEN}")]
pub struct InvalidDigestLen(pub usize);

impl B3Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let digest = Self(*blake3::hash(data).as_bytes());
        #[cfg(test)]
        hash_count::note(&digest);
        digest
    }

    /// The digest an incremental hash of a blob's bytes arrived at.
    pub fn of_hasher(hasher: &blake3::Hasher) -> Self {
        let digest = Self(*hasher.finalize().as_bytes());
        #[cfg(test)]
        hash_count::note(&digest);
        digest
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; B3_LEN] {
        &self.0
    }

    /// Lower-case hex, used for file names in on-disk layouts.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }

    /// The digest a file of an on-disk layout is named by: exactly 64 lower-case hex
    /// characters ([`B3Digest::to_hex`]); `None` for any other name (temporary files).
    pub fn from_hex(name: &str) -> Option<Self> {
        if name.len() != 2 * B3_LEN {
            return None;
        }
        let raw = data_encoding::HEXLOWER.decode(name.as_bytes()).ok()?;
        Self::try_from(raw.as_slice()).ok()
    }
}

impl From<[u8; B3_LEN]> for B3Digest {
    fn from(value: [u8; B3_LEN]) -> Self {
        Self(value)
    }
}

impl From<blake3::Hash> for B3Digest {
    fn from(value: blake3::Hash) -> Self {
        Self(*value.as_bytes())
    }
}

impl TryFrom<&[u8]> for B3Digest {
    type Error = InvalidDigestLen;

    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        let bytes: [u8; B3_LEN] = value.try_into().map_err(|_| InvalidDigestLen(value.len()))?;
        Ok(Self(bytes))
    }
}

impl TryFrom<&bytes::Bytes> for B3Digest {
    type Error = InvalidDigestLen;

    fn try_from(value: &bytes::Bytes) -> Result<Self, Self::Error> {
        Self::try_from(value.as_ref())
    }
}

impl From<B3Digest> for bytes::Bytes {
    fn from(value: B3Digest) -> Self {
        bytes::Bytes::copy_from_slice(&value.0)
    }
}

impl fmt::Display for B3Digest {
    // Same textual form as tvix (`b3:` + standard base64), so digests in our logs and errors
    // can be compared with theirs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", BASE64.encode(&self.0))
    }
}

impl fmt::Debug for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for B3Digest {
    type Err = String;

    /// Parses `b3:<base64>` or 64 hex characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = if let Some(b64) = s.strip_prefix("b3:") {
            BASE64.decode(b64.as_bytes()).map_err(|e| format!("invalid digest {s:?}: {e}"))?
        } else {
            data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).map_err(|e| format!("invalid digest {s:?}: {e}"))?
        };
        Self::try_from(raw.as_slice()).map_err(|e| format!("invalid digest {s:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_text_forms() {
        let d = B3Digest::of(b"hello");
        assert_eq!(d.to_string().parse::<B3Digest>().unwrap(), d);
        assert_eq!(d.to_hex().parse::<B3Digest>().unwrap(), d);
        assert_eq!(B3Digest::try_from(&[0u8; 31][..]), Err(InvalidDigestLen(31)));
    }
}
