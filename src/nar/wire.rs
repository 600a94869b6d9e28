//! The NAR framing tokens and padding rule, shared by reader and writer.

pub(crate) const MAGIC: &[u8] = b"nix-archive-1";
pub(crate) const OPEN: &[u8] = b"(";
pub(crate) const CLOSE: &[u8] = b")";
pub(crate) const TYPE: &[u8] = b"type";
pub(crate) const REGULAR: &[u8] = b"regular";
pub(crate) const SYMLINK: &[u8] = b"symlink";
pub(crate) const DIRECTORY: &[u8] = b"directory";
pub(crate) const EXECUTABLE: &[u8] = b"executable";
pub(crate) const CONTENTS: &[u8] = b"contents";
pub(crate) const TARGET: &[u8] = b"target";
pub(crate) const ENTRY: &[u8] = b"entry";
pub(crate) const NAME: &[u8] = b"name";
pub(crate) const NODE: &[u8] = b"node";

/// Zero bytes that follow a field of `len` bytes to reach a multiple of 8.
pub(crate) fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Appends a length-prefixed, zero-padded string.
pub(crate) fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s);
    buf.extend_from_slice(&[0u8; 8][..padding(s.len() as u64)]);
}
