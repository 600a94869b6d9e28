//! Typed errors of the NAR codec. Every reader error carries the byte offset in the NAR
//! stream where the problem starts, so a bad archive can be inspected with `xxd -s`.

use std::io;

/// Why a NAR stream was rejected by [`super::NarReader`].
#[derive(Debug, thiserror::Error)]
pub enum NarReadError {
    /// The underlying stream failed.
    #[error("I/O error at NAR byte {offset}: {source}")]
    Io {
        /// Offset of the first byte we could not read.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The stream ended before the archive was complete.
    #[error("truncated NAR: stream ended at byte {offset} while reading {what}")]
    Truncated {
        /// Offset where the stream ended.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// The first token is not `nix-archive-1`.
    #[error("not a NAR: wrong magic at byte {offset} (found {found:?})")]
    BadMagic {
        /// Always 0 in practice: where the magic should start.
        offset: u64,
        /// The token found instead (lossy UTF-8, shortened).
        found: String,
    },
    /// A framing token other than the one the grammar allows here.
    #[error("unexpected token at NAR byte {offset}: expected {expected}, found {found:?}")]
    UnexpectedToken {
        /// Offset of the token's length field.
        offset: u64,
        /// What the grammar allows at this point.
        expected: &'static str,
        /// The token found (lossy UTF-8, shortened).
        found: String,
    },
    /// A padding byte after a string or file contents is not zero.
    #[error("non-zero padding at NAR byte {offset}")]
    NonZeroPadding {
        /// Offset of the first padding byte of that field.
        offset: u64,
    },
    /// A length field is larger than the limit for that field.
    #[error("{what} at NAR byte {offset} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Offset of the length field.
        offset: u64,
        /// The field.
        what: &'static str,
        /// The declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A directory entry name that cannot be a file name.
    #[error("invalid entry name {name:?} at NAR byte {offset}: {reason}")]
    InvalidName {
        /// Offset of the name's length field.
        offset: u64,
        /// The name (lossy UTF-8).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Entry names of a directory are not strictly ascending by bytes.
    #[error("entry {name:?} at NAR byte {offset} is not sorted after {previous:?}")]
    OutOfOrder {
        /// Offset of the name's length field.
        offset: u64,
        /// The name (lossy UTF-8).
        name: String,
        /// The previous entry's name (lossy UTF-8).
        previous: String,
    },
    /// Two entries of a directory have the same name.
    #[error("duplicate entry {name:?} at NAR byte {offset}")]
    DuplicateEntry {
        /// Offset of the second name's length field.
        offset: u64,
        /// The name (lossy UTF-8).
        name: String,
    },
    /// A symlink target that is empty or contains NUL.
    #[error("invalid symlink target at NAR byte {offset}: {reason}")]
    InvalidSymlinkTarget {
        /// Offset of the target's length field.
        offset: u64,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Bytes follow the root node.
    #[error("trailing data after the NAR root at byte {offset}")]
    TrailingData {
        /// Offset of the first extra byte.
        offset: u64,
    },
    /// The reader was used again after it returned an error.
    #[error("NAR reader used after an earlier error")]
    Poisoned,
}

impl NarReadError {
    /// Byte offset of the problem, if it has one.
    pub fn offset(&self) -> Option<u64> {
        use NarReadError::*;
        match self {
            Io { offset, .. }
            | Truncated { offset, .. }
            | BadMagic { offset, .. }
            | UnexpectedToken { offset, .. }
            | NonZeroPadding { offset }
            | TooLong { offset, .. }
            | InvalidName { offset, .. }
            | OutOfOrder { offset, .. }
            | DuplicateEntry { offset, .. }
            | InvalidSymlinkTarget { offset, .. }
            | TrailingData { offset } => Some(*offset),
            Poisoned => None,
        }
    }

    /// Recovers the typed error from an `io::Error` returned by a file contents reader,
    /// which has to speak `io::Error` because it implements `AsyncRead`.
    pub fn from_io(err: io::Error, offset: u64) -> Self {
        if err.get_ref().is_some_and(|e| e.is::<NarReadError>()) {
            match err.into_inner().map(|e| e.downcast::<NarReadError>()) {
                Some(Ok(e)) => return *e,
                Some(Err(e)) => return NarReadError::Io { offset, source: io::Error::other(e) },
                None => unreachable!("checked get_ref above"),
            }
        }
        NarReadError::Io { offset, source: err }
    }

    pub(crate) fn into_io(self) -> io::Error {
        let kind = match self {
            NarReadError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            NarReadError::Io { ref source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// Why [`super::NarWriter`] refused a call.
#[derive(Debug, thiserror::Error)]
pub enum NarWriteError {
    /// The sink failed.
    #[error("I/O error writing NAR: {0}")]
    Io(#[from] io::Error),
    /// Reading file contents to copy into the NAR failed.
    #[error("reading contents of {name:?}: {source}")]
    ContentsRead {
        /// The entry name (lossy UTF-8), empty for the root.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// File contents ended before the announced size.
    #[error("contents of {name:?} ended after {got} of {expected} bytes")]
    ShortContents {
        /// The entry name (lossy UTF-8), empty for the root.
        name: String,
        /// Bytes actually read.
        got: u64,
        /// Announced size.
        expected: u64,
    },
    /// The entry name cannot be a file name.
    #[error("invalid entry name {name:?}: {reason}")]
    InvalidName {
        /// The name (lossy UTF-8).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Entries must be pushed in strictly ascending byte order.
    #[error("entry {name:?} pushed after {previous:?}: entries must be strictly ascending")]
    OutOfOrder {
        /// The name (lossy UTF-8).
        name: String,
        /// The previous entry's name (lossy UTF-8).
        previous: String,
    },
    /// The symlink target is empty or contains NUL.
    #[error("invalid symlink target {target:?}: {reason}")]
    InvalidSymlinkTarget {
        /// The target (lossy UTF-8).
        target: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A call that does not fit the tree structure (e.g. a name at the root, none inside a
    /// directory, a node after the root was complete, finishing with open directories).
    #[error("NAR writer misuse: {0}")]
    Misuse(&'static str),
}

/// Longest entry name we accept: Linux's NAME_MAX, so that every NAR we accept can be
/// restored on Linux. Nix 2.8 itself does not limit it when parsing.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target we accept: Linux's PATH_MAX minus the terminating NUL.
pub const MAX_TARGET_LEN: usize = 4095;

/// Checks an entry name against the castore and Nix rules, returning the broken rule.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name == b"." || name == b".." {
        Err("`.` and `..` are not allowed")
    } else if name.contains(&b'/') {
        Err("contains `/`")
    } else if name.contains(&0) {
        Err("contains NUL")
    } else if name.len() > MAX_NAME_LEN {
        Err("longer than 255 bytes")
    } else {
        Ok(())
    }
}

/// Checks a symlink target, returning the broken rule.
pub fn check_target(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        Err("empty target")
    } else if target.contains(&0) {
        Err("contains NUL")
    } else if target.len() > MAX_TARGET_LEN {
        Err("longer than 4095 bytes")
    } else {
        Ok(())
    }
}

/// Lossy, shortened rendering of raw bytes for error messages.
pub(crate) fn show(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        s.push('…');
    }
    s
}
