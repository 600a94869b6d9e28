//! Feeds arbitrary bytes to `castore::Directory::decode` (protobuf `tvix.castore.v1.Directory`
//! plus every rule of the wire contract checkable on one directory). It must never panic, and
//! an accepted directory must survive its canonical encoding: decoding that gives the same
//! directory, re-encoding gives the same bytes, and the digest is BLAKE3 of those bytes. A
//! decoder that let through something its encoder cannot express (or the reverse) would give
//! one directory two addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tvix_store::castore::{B3Digest, Directory};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = Directory::decode(data) else {
        return;
    };
    let canonical = dir.encode();
    let again = Directory::decode(&canonical).expect("the canonical encoding of an accepted directory is refused");
    assert_eq!(again, dir, "decode(encode(d)) != d");
    assert_eq!(again.encode(), canonical, "the canonical encoding is not a fixed point");
    assert_eq!(dir.digest(), B3Digest::of(&canonical));
    // Sizes are peer-supplied; from_proto refused sums that wrap, so size() is the exact sum.
    let exact = dir.entries().try_fold(dir.len() as u64, |acc, (_, node)| match node {
        tvix_store::castore::Node::Directory { size, .. } => size.checked_add(1).and_then(|s| acc.checked_add(s)),
        _ => acc.checked_add(1),
    });
    assert_eq!(exact, Some(dir.size()), "an accepted directory's size overflows");
    if data == canonical.as_slice() {
        assert_eq!(dir.digest(), B3Digest::of(data));
    }
});
