//! NAR ingestion against the real Nix: `nix-store --dump` output ingests into the same castore
//! nodes as the file system walk, with Nix's NAR hash and size, and renders back to the same
//! bytes. Bad NARs fail with the byte offset and leave nothing visible.

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tvix_store::castore::{B3Digest, Node};
use tvix_store::import::{ImportError, ingest_nar, ingest_path};
use tvix_store::nar::{NarReadError, write_nar};
use tvix_store::store::Store;

use crate::nar_common::*;

#[tokio::test]
async fn nix_dump_ingests_to_walk_nodes_and_renders_back() {
    let dir = tempfile::tempdir().unwrap();
    let Store { blob, directory, .. } = Store::in_memory();
    for tree in trees(dir.path()) {
        let shown = tree.display();
        let nar = nix_dump(&tree);
        let ingested = ingest_nar(blob.clone(), directory.clone(), nar.as_slice(), None)
            .await
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(ingested.nar_size, nar.len() as u64, "{shown}");
        assert_eq!(ingested.nar_sha256, <[u8; 32]>::from(Sha256::digest(&nar)), "{shown}");
        assert_eq!(data_encoding::HEXLOWER.encode(&ingested.nar_sha256), nix_hash(&tree), "{shown}");

        // Independent route to the same content: the file system walk, into other services.
        let Store { blob: blob2, directory: directory2, .. } = Store::in_memory();
        let walked = ingest_path(blob2, directory2, &tree, None).await.unwrap();
        assert_eq!(walked, ingested, "{shown}: NAR ingestion and path ingestion disagree");

        let rendered = write_nar(Vec::new(), &ingested.node, blob.as_ref(), directory.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert!(rendered == nar, "{shown}: NAR -> ingest -> render changed the bytes");
    }
}

#[tokio::test]
async fn many_small_files_are_all_stored() {
    // More files than uploads allowed in flight, so the bounding really waits.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("small");
    std::fs::create_dir(&root).unwrap();
    for i in 0..(tvix_store::import::MAX_UPLOADS * 3) {
        write_file(&root.join(format!("{i:04}")), 1000 + i, false);
    }
    let nar = nix_dump(&root);
    let Store { blob, directory, .. } = Store::in_memory();
    let ingested = ingest_nar(blob.clone(), directory.clone(), nar.as_slice(), None).await.unwrap();
    let Node::Directory { digest, .. } = ingested.node else { panic!("not a directory") };
    let d = directory.get(&digest).await.unwrap().expect("root directory stored");
    for (_, node) in d.entries() {
        let Node::File { digest, .. } = node else { panic!("not a file") };
        assert!(blob.has(digest).await.unwrap(), "blob {digest} missing");
    }
}

// ---- hand-built NARs ----

fn s(buf: &mut Vec<u8>, tok: &[u8]) {
    buf.extend_from_slice(&(tok.len() as u64).to_le_bytes());
    buf.extend_from_slice(tok);
    buf.resize(buf.len() + (8 - tok.len() % 8) % 8, 0);
}

/// A NAR of a directory `{ a/ { f: "hello" } , <rest> }`, where `rest` is appended raw inside
/// the root directory after entry `a`, followed by the root's `)`.
fn nar_with(rest: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = Vec::new();
    for t in [&b"nix-archive-1"[..], b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"node"] {
        s(&mut b, t);
    }
    for t in [&b"("[..], b"type", b"directory", b"entry", b"(", b"name", b"f", b"node"] {
        s(&mut b, t);
    }
    for t in [&b"("[..], b"type", b"regular", b"contents", b"hello", b")", b")", b")", b")"] {
        s(&mut b, t);
    }
    rest(&mut b);
    s(&mut b, b")");
    b
}

fn entry(b: &mut Vec<u8>, name: &[u8], node: &[&[u8]]) {
    for t in [&b"entry"[..], b"(", b"name", name, b"node"] {
        s(b, t);
    }
    for t in node {
        s(b, t);
    }
    s(b, b")");
}

const FILE: &[&[u8]] = &[b"(", b"type", b"regular", b"contents", b"x", b")"];

/// The digest directory `a` gets when the NAR is good.
async fn digest_of_a() -> B3Digest {
    let Store { blob, directory, .. } = Store::in_memory();
    let good = nar_with(|b| entry(b, b"b", FILE));
    let ingested = ingest_nar(blob, directory.clone(), good.as_slice(), None).await.unwrap();
    let Node::Directory { digest, .. } = ingested.node else { panic!("not a directory") };
    let root = directory.get(&digest).await.unwrap().unwrap();
    match root.get(b"a") {
        Some(Node::Directory { digest, .. }) => *digest,
        other => panic!("unexpected {other:?}"),
    }
}

async fn expect_rejected(nar: &[u8], check: impl Fn(&NarReadError) -> bool, offset: u64) {
    let a = digest_of_a().await;
    let Store { blob, directory, .. } = Store::in_memory();
    let err = ingest_nar(blob, directory.clone(), nar, None).await.expect_err("bad NAR accepted");
    let ImportError::Nar(e) = &err else { panic!("expected a NAR error, got {err:?}") };
    assert!(check(e), "wrong error: {e:?}");
    assert_eq!(e.offset(), Some(offset), "{e}");
    assert!(err.to_string().contains(&format!("byte {offset}")), "message lacks the offset: {err}");
    assert_eq!(directory.get(&a).await.unwrap(), None, "a directory of a rejected NAR is visible");
    let mut all = directory.get_recursive(&a);
    assert!(all.try_next().await.is_err(), "directory of a rejected NAR is reachable");
}

/// Offset where the raw `rest` of [`nar_with`] begins.
fn rest_offset() -> u64 {
    (nar_with(|_| {}).len() - 16) as u64
}

#[tokio::test]
async fn truncated_nar() {
    let good = nar_with(|b| entry(b, b"b", FILE));
    for cut in [good.len() - 1, good.len() - 8, rest_offset() as usize + 3] {
        expect_rejected(&good[..cut], |e| matches!(e, NarReadError::Truncated { .. }), cut as u64).await;
    }
}

#[tokio::test]
async fn wrong_magic_and_tags() {
    let mut bad = nar_with(|b| entry(b, b"b", FILE));
    bad[8] = b'X';
    expect_rejected(&bad, |e| matches!(e, NarReadError::BadMagic { .. }), 0).await;
    let o = rest_offset();
    let nar = nar_with(|b| entry(b, b"b", &[b"(", b"type", b"fifo", b")"]));
    // entry ( name <b> node ( type: the type token is 8 tokens of 16 bytes in.
    expect_rejected(&nar, |e| matches!(e, NarReadError::UnexpectedToken { .. }), o + 7 * 16).await;
    let nar = nar_with(|b| s(b, b"entri"));
    expect_rejected(&nar, |e| matches!(e, NarReadError::UnexpectedToken { .. }), o).await;
}

#[tokio::test]
async fn non_zero_padding() {
    let mut nar = nar_with(|b| entry(b, b"b", FILE));
    let o = rest_offset() as usize;
    // The padding of the name `b`: after entry, (, name, and b's length and byte.
    let pad = o + 3 * 16 + 8 + 1;
    nar[pad + 2] = 1;
    expect_rejected(&nar, |e| matches!(e, NarReadError::NonZeroPadding { .. }), pad as u64).await;
}

#[tokio::test]
async fn out_of_order_and_duplicate_entries() {
    let o = rest_offset();
    let name_at = o + 3 * 16;
    let nar = nar_with(|b| entry(b, b"A", FILE));
    expect_rejected(&nar, |e| matches!(e, NarReadError::OutOfOrder { .. }), name_at).await;
    let nar = nar_with(|b| entry(b, b"a", FILE));
    expect_rejected(&nar, |e| matches!(e, NarReadError::DuplicateEntry { .. }), name_at).await;
}

#[tokio::test]
async fn bad_names() {
    let name_at = rest_offset() + 3 * 16;
    for name in [&b"b/c"[..], b"b\0", b".", b"..", b""] {
        let nar = nar_with(|b| entry(b, name, FILE));
        expect_rejected(&nar, |e| matches!(e, NarReadError::InvalidName { .. }), name_at).await;
    }
}

#[tokio::test]
async fn empty_symlink_target() {
    let nar = nar_with(|b| entry(b, b"b", &[b"(", b"type", b"symlink", b"target", b"", b")"]));
    let target_at = rest_offset() + 9 * 16;
    expect_rejected(&nar, |e| matches!(e, NarReadError::InvalidSymlinkTarget { .. }), target_at).await;
}

#[tokio::test]
async fn file_length_beyond_stream() {
    let mut nar = Vec::new();
    for t in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents"] {
        s(&mut nar, t);
    }
    nar.extend_from_slice(&(10_000_000u64).to_le_bytes());
    nar.extend_from_slice(&[7u8; 5000]);
    let Store { blob, directory, .. } = Store::in_memory();
    let err = ingest_nar(blob, directory, nar.as_slice(), None).await.unwrap_err();
    let ImportError::Nar(e @ NarReadError::Truncated { .. }) = &err else { panic!("{err:?}") };
    assert_eq!(e.offset(), Some(nar.len() as u64));

    // The same inside a directory, with a small-blob-sized and a streamed-size file.
    for declared in [100u64, 5_000_000] {
        let nar = nar_with(|b| {
            for t in [&b"entry"[..], b"(", b"name", b"b", b"node", b"(", b"type", b"regular", b"contents"] {
                s(b, t);
            }
            b.extend_from_slice(&declared.to_le_bytes());
            b.extend_from_slice(&[1u8; 50]);
        });
        // nar_with appended a `)` token (16 bytes) that now counts as contents.
        expect_rejected(&nar, |e| matches!(e, NarReadError::Truncated { .. }), nar.len() as u64).await;
    }
}

// ---- the NAR layout: ranges, listings, depth ----

/// Every range of a rendered NAR equals the same bytes of Nix's dump: ranges starting just
/// before, at and inside each file's contents (so blobs are skipped, sliced and sought into),
/// and ranges ending there.
#[tokio::test]
async fn layout_ranges_equal_slices_of_the_nix_dump() {
    use tvix_store::nar::NarLayout;
    let dir = tempfile::tempdir().unwrap();
    let Store { blob, directory, .. } = Store::in_memory();
    for tree in trees(dir.path()).into_iter().filter(|t| !t.ends_with("many")) {
        let shown = tree.display();
        let nar = nix_dump(&tree);
        let ingested = ingest_nar(blob.clone(), directory.clone(), nar.as_slice(), None).await.unwrap();
        let layout = NarLayout::of(&ingested.node, directory.as_ref()).await.unwrap();
        assert_eq!(layout.size(), nar.len() as u64, "{shown}");
        let files: Vec<(u64, u64)> = layout.files().collect();
        let len = nar.len() as u64;
        let mut cuts = vec![0, 1, 7, 8, len / 2, len - 1, len];
        for (offset, size) in files {
            cuts.extend([offset.saturating_sub(1), offset, offset + size / 2, offset + size, offset + size + 1]);
        }
        cuts.retain(|c| *c <= len);
        cuts.sort();
        cuts.dedup();
        for &start in &cuts {
            for &end in [len, start + 1, start + 9, start + 200_000].iter().filter(|e| **e <= len && **e >= start) {
                let got = layout.write_range(Vec::new(), blob.as_ref(), start..end).await.unwrap();
                assert!(got == nar[start as usize..end as usize], "{shown}: bytes {start}..{end} differ");
            }
        }
    }
}

/// Our `.ls` listing is the one Nix writes with `write-nar-listing=true`, byte for byte.
#[tokio::test]
async fn layout_listing_equals_the_listing_nix_writes() {
    use tvix_store::nar::NarLayout;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let Store { blob, directory, .. } = Store::in_memory();
    for tree in trees(dir.path()).into_iter().filter(|t| t.ends_with("mixed") || t.ends_with("root-exec")) {
        let store_path = nix_add(&tree);
        let to = format!("file://{}?write-nar-listing=true&compression=none", cache.display());
        nix("nix", &["copy".as_ref(), "--to".as_ref(), to.as_ref(), store_path.as_ref()]);
        let hash = &store_path["/nix/store/".len()..][..32];
        let expected = std::fs::read_to_string(cache.join(format!("{hash}.ls"))).unwrap();
        let ingested = ingest_nar(blob.clone(), directory.clone(), nix_dump(&tree).as_slice(), None).await.unwrap();
        let layout = NarLayout::with_listing(&ingested.node, directory.as_ref()).await.unwrap();
        assert_eq!(layout.listing_json(), Some(expected.as_str()), "{}", tree.display());
    }
}

/// A tree nested far deeper than any stack would carry recursively renders, and ingests back.
#[tokio::test]
async fn very_deep_trees_render_without_recursion() {
    use tvix_store::castore::{Directory, PathComponent};
    let Store { blob, directory, .. } = Store::in_memory();
    let mut putter = directory.put_multiple_start();
    let mut node = Node::Symlink { target: b"bottom".as_slice().try_into().unwrap() };
    for _ in 0..20_000 {
        let mut d = Directory::new();
        d.add(PathComponent::try_from("d").unwrap(), node).unwrap();
        let size = d.size();
        let digest = d.digest();
        putter.put(d).await.unwrap();
        node = Node::directory(digest, size);
    }
    putter.close().await.unwrap();
    let nar = write_nar(Vec::new(), &node, blob.as_ref(), directory.as_ref()).await.unwrap();
    let back = ingest_nar(blob.clone(), directory.clone(), nar.as_slice(), None).await.unwrap();
    assert_eq!(back.node, node);
    assert_eq!(back.nar_size, nar.len() as u64);
}
