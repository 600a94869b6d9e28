//! NAR codec against the real Nix: trees are dumped by `nix-store --dump`, parsed by our
//! reader and re-emitted by our writer (must be identical), and written directly from the
//! file system by our writer (must be identical). Bad inputs get the right error and offset.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use tokio::io::AsyncReadExt;
use tvix_store::nar::{NarEvent, NarReadError, NarReader, NarWriter, transcode};

use crate::nar_common::{nix_dump, trees, write_file};

/// Independent writer check: walks the file system directly, sorted by name bytes.
fn write_tree<'a>(
    w: &'a mut NarWriter<Vec<u8>>,
    path: &'a Path,
    name: Option<&'a [u8]>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
    use std::os::unix::ffi::OsStrExt;
    Box::pin(async move {
        let meta = std::fs::symlink_metadata(path).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).unwrap();
            w.symlink(name, target.as_os_str().as_bytes()).await.unwrap();
        } else if meta.is_dir() {
            w.directory_start(name).await.unwrap();
            let mut names: Vec<_> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for n in names {
                write_tree(w, &path.join(&n), Some(n.as_bytes())).await;
            }
            w.directory_end().await.unwrap();
        } else {
            let exec = meta.permissions().mode() & 0o100 != 0;
            let mut f = tokio::fs::File::open(path).await.unwrap();
            w.file(name, exec, meta.len(), &mut f).await.unwrap();
        }
    })
}

#[tokio::test]
async fn reader_writer_round_trip_matches_nix_dump() {
    let dir = tempfile::tempdir().unwrap();
    for tree in trees(dir.path()) {
        let nar = nix_dump(&tree);
        let out = transcode(nar.as_slice(), Vec::new()).await.unwrap_or_else(|e| panic!("{}: {e}", tree.display()));
        assert!(out == nar, "{}: re-encoded NAR differs from nix-store --dump", tree.display());
    }
}

#[tokio::test]
async fn writer_from_file_system_matches_nix_dump() {
    let dir = tempfile::tempdir().unwrap();
    for tree in trees(dir.path()) {
        let nar = nix_dump(&tree);
        let mut w = NarWriter::new(Vec::new()).await.unwrap();
        write_tree(&mut w, &tree, None).await;
        let out = w.finish().await.unwrap();
        assert!(out == nar, "{}: our NAR differs from nix-store --dump", tree.display());
    }
}

#[tokio::test]
async fn reader_reports_structure_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    std::fs::create_dir(&root).unwrap();
    write_file(&root.join("x"), 100_000, true);
    symlink("tgt", root.join("y")).unwrap();
    let nar = nix_dump(&root);

    let mut r = NarReader::new(nar.as_slice());
    assert_eq!(r.next().await.unwrap(), Some(NarEvent::DirectoryStart { name: None }));
    assert_eq!(
        r.next().await.unwrap(),
        Some(NarEvent::File { name: Some(b"x".to_vec()), executable: true, size: 100_000 })
    );
    let mut buf = Vec::new();
    r.contents().read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, std::fs::read(root.join("x")).unwrap());
    assert_eq!(r.next().await.unwrap(), Some(NarEvent::Symlink { name: Some(b"y".to_vec()), target: b"tgt".to_vec() }));
    assert_eq!(r.next().await.unwrap(), Some(NarEvent::DirectoryEnd));
    assert_eq!(r.next().await.unwrap(), None);
    assert_eq!(r.position(), nar.len() as u64);
}

#[tokio::test]
async fn unread_contents_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    std::fs::create_dir(&root).unwrap();
    write_file(&root.join("a"), 70_000, false);
    write_file(&root.join("b"), 3, false);
    let nar = nix_dump(&root);
    let mut r = NarReader::new(nar.as_slice());
    let mut names = Vec::new();
    while let Some(ev) = r.next().await.unwrap() {
        if let NarEvent::File { name, .. } = ev {
            names.push(name.unwrap());
            // Read only a little of each file.
            let mut small = [0u8; 10];
            let _ = r.contents().read(&mut small).await.unwrap();
        }
    }
    assert_eq!(names, vec![b"a".to_vec(), b"b".to_vec()]);
}

// ---- bad input: hand-built NARs ----

fn s(buf: &mut Vec<u8>, tok: &[u8]) {
    buf.extend_from_slice(&(tok.len() as u64).to_le_bytes());
    buf.extend_from_slice(tok);
    buf.extend(std::iter::repeat_n(0u8, (8 - tok.len() % 8) % 8));
}

fn toks(tokens: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for t in tokens {
        s(&mut b, t);
    }
    b
}

/// A NAR of a directory with the given entries, each a one-byte file.
fn dir_nar(names: &[&[u8]]) -> Vec<u8> {
    let mut b = toks(&[b"nix-archive-1", b"(", b"type", b"directory"]);
    for n in names {
        b.extend(toks(&[b"entry", b"(", b"name", n, b"node", b"(", b"type", b"regular"]));
        b.extend(toks(&[b"contents", b"x", b")", b")"]));
    }
    b.extend(toks(&[b")"]));
    b
}

/// Offset of the `index`-th entry's name length field in `dir_nar`.
fn dir_nar_name_offset(names: &[&[u8]], index: usize) -> u64 {
    let mut prefix = dir_nar(&names[..index]);
    prefix.truncate(prefix.len() - 16); // drop the closing ")"
    prefix.extend(toks(&[b"entry", b"(", b"name"]));
    prefix.len() as u64
}

async fn parse(nar: &[u8]) -> Result<(), NarReadError> {
    let mut r = NarReader::new(nar);
    while let Some(ev) = r.next().await? {
        if let NarEvent::File { .. } = ev {
            let mut sink = Vec::new();
            r.contents().read_to_end(&mut sink).await.map_err(|e| NarReadError::from_io(e, 0))?;
        }
    }
    Ok(())
}

fn file_nar(contents: &[u8]) -> Vec<u8> {
    toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", contents, b")"])
}

#[tokio::test]
async fn valid_hand_built_nars_parse() {
    parse(&file_nar(b"hello")).await.unwrap();
    parse(&dir_nar(&[b"a", b"b", b"c"])).await.unwrap();
}

#[tokio::test]
async fn truncated_stream() {
    let nar = file_nar(b"hello world");
    for cut in [0, 3, 8, 20, 60, nar.len() - 1] {
        let err = parse(&nar[..cut]).await.unwrap_err();
        assert!(matches!(err, NarReadError::Truncated { offset, .. } if offset == cut as u64), "cut at {cut}: {err}");
    }
}

#[tokio::test]
async fn file_length_beyond_stream() {
    let mut nar = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    let len_at = nar.len() as u64;
    nar.extend_from_slice(&1_000_000u64.to_le_bytes());
    nar.extend_from_slice(b"short");
    let err = parse(&nar).await.unwrap_err();
    assert!(
        matches!(err, NarReadError::Truncated { offset, what: "file contents" } if offset == len_at + 8 + 5),
        "{err}"
    );
    // Same when the caller does not read the contents itself.
    let mut r = NarReader::new(nar.as_slice());
    assert!(matches!(r.next().await.unwrap(), Some(NarEvent::File { size: 1_000_000, .. })));
    let err = r.next().await.unwrap_err();
    assert!(matches!(err, NarReadError::Truncated { offset, .. } if offset == len_at + 13), "{err}");
    assert!(matches!(r.next().await.unwrap_err(), NarReadError::Poisoned));
}

#[tokio::test]
async fn absurd_token_length() {
    let mut nar = toks(&[b"nix-archive-1", b"("]);
    let at = nar.len() as u64;
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::UnexpectedToken { offset, .. } if offset == at), "{err}");
}

#[tokio::test]
async fn wrong_magic() {
    let nar = toks(&[b"nix-archive-2", b"(", b"type", b"regular", b"contents", b"", b")"]);
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::BadMagic { offset: 0, .. }), "{err}");
    let err = parse(b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0").await.unwrap_err();
    assert!(matches!(err, NarReadError::BadMagic { offset: 0, .. }), "{err}");
}

#[tokio::test]
async fn unknown_tags() {
    let head = toks(&[b"nix-archive-1", b"(", b"type"]);
    let mut nar = head.clone();
    nar.extend(toks(&[b"fifo", b")"]));
    let err = parse(&nar).await.unwrap_err();
    assert!(
        matches!(err, NarReadError::UnexpectedToken { offset, ref found, .. } if offset == head.len() as u64 && found == "fifo"),
        "{err}"
    );

    // Unknown token where a directory expects `entry` or `)`.
    let mut nar = toks(&[b"nix-archive-1", b"(", b"type", b"directory"]);
    let at = nar.len() as u64;
    nar.extend(toks(&[b"entri"]));
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::UnexpectedToken { offset, .. } if offset == at), "{err}");

    // Non-empty value after `executable`.
    let mut nar = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"executable"]);
    let at = nar.len() as u64;
    nar.extend(toks(&[b"1", b"contents", b"", b")"]));
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::UnexpectedToken { offset, .. } if offset == at), "{err}");

    // Missing `executable` value: `contents` where "" belongs is rejected too.
    let mut nar = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"executable"]);
    nar.extend(toks(&[b"contents", b"", b")"]));
    assert!(matches!(parse(&nar).await.unwrap_err(), NarReadError::UnexpectedToken { .. }));
}

#[tokio::test]
async fn non_zero_padding() {
    // In a token.
    let mut nar = file_nar(b"abc");
    let magic_pad = 8 + 13;
    nar[magic_pad] = 1;
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::NonZeroPadding { offset } if offset == magic_pad as u64), "{err}");

    // After file contents.
    let mut nar = file_nar(b"abc");
    let head = toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]).len();
    let pad_at = head + 8 + 3;
    nar[pad_at + 2] = 0xff;
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::NonZeroPadding { offset } if offset == pad_at as u64), "{err}");
}

#[tokio::test]
async fn entries_out_of_order_or_duplicated() {
    let names: &[&[u8]] = &[b"a", b"c", b"b"];
    let err = parse(&dir_nar(names)).await.unwrap_err();
    let at = dir_nar_name_offset(names, 2);
    assert!(matches!(err, NarReadError::OutOfOrder { offset, .. } if offset == at), "{err}");

    let names: &[&[u8]] = &[b"a", b"b", b"b"];
    let err = parse(&dir_nar(names)).await.unwrap_err();
    let at = dir_nar_name_offset(names, 2);
    assert!(matches!(err, NarReadError::DuplicateEntry { offset, .. } if offset == at), "{err}");

    // Byte order, not locale order: "B" (0x42) sorts before "a" (0x61).
    let names: &[&[u8]] = &[b"a", b"B"];
    assert!(matches!(parse(&dir_nar(names)).await.unwrap_err(), NarReadError::OutOfOrder { .. }));
}

#[tokio::test]
async fn invalid_names() {
    let long = vec![b'n'; 256];
    for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
        let names: &[&[u8]] = &[b"a", bad];
        let err = parse(&dir_nar(names)).await.unwrap_err();
        let at = dir_nar_name_offset(names, 1);
        assert!(matches!(err, NarReadError::InvalidName { offset, .. } if offset == at), "{bad:?}: {err}");
    }
    let names: &[&[u8]] = &[&long];
    let err = parse(&dir_nar(names)).await.unwrap_err();
    let at = dir_nar_name_offset(names, 0);
    assert!(matches!(err, NarReadError::TooLong { offset, len: 256, .. } if offset == at), "{err}");
    // 255 bytes is fine.
    parse(&dir_nar(&[&long[..255]])).await.unwrap();
}

#[tokio::test]
async fn invalid_symlink_targets() {
    let head = toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target"]);
    for bad in [&b""[..], b"a\0b"] {
        let mut nar = head.clone();
        nar.extend(toks(&[bad, b")"]));
        let err = parse(&nar).await.unwrap_err();
        assert!(
            matches!(err, NarReadError::InvalidSymlinkTarget { offset, .. } if offset == head.len() as u64),
            "{bad:?}: {err}"
        );
    }
    let mut nar = head.clone();
    nar.extend(toks(&[&vec![b'x'; 4096], b")"]));
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::TooLong { offset, .. } if offset == head.len() as u64), "{err}");
}

#[tokio::test]
async fn trailing_data_after_root() {
    let mut nar = file_nar(b"abc");
    let at = nar.len() as u64;
    nar.push(0);
    let err = parse(&nar).await.unwrap_err();
    assert!(matches!(err, NarReadError::TrailingData { offset } if offset == at), "{err}");
}

#[tokio::test]
async fn writer_rejects_misuse() {
    let mut w = NarWriter::new(Vec::new()).await.unwrap();
    w.directory_start(None).await.unwrap();
    w.symlink(Some(b"b"), b"t").await.unwrap();
    assert!(w.symlink(Some(b"a"), b"t").await.is_err(), "out of order accepted");
    assert!(w.symlink(Some(b"b"), b"t").await.is_err(), "duplicate accepted");
    assert!(w.symlink(Some(b".."), b"t").await.is_err(), "`..` accepted");
    assert!(w.symlink(Some(b"c"), b"").await.is_err(), "empty target accepted");
    assert!(w.symlink(None, b"t").await.is_err(), "nameless entry accepted");
    let mut short: &[u8] = b"ab";
    assert!(w.file(Some(b"d"), false, 3, &mut short).await.is_err(), "short contents accepted");
}
