//! Local path ingestion against the real Nix: `import` gives `nix-store --add`'s store path,
//! the NAR hash and size agree with `nix-hash` and `nix-store --dump`, and rendering the
//! stored tree gives `nix-store --dump`'s bytes. Bad trees fail naming the path, with nothing
//! registered.

use std::path::Path;

use futures::TryStreamExt;
use tvix_store::castore::Node;
use tvix_store::import::{ImportError, import_path, ingest_path};
use tvix_store::nar::{NarCalculator, write_nar};
use tvix_store::pathinfo::NarCalculationService;
use tvix_store::store::Store;
use tvix_store::storepath::nixbase32;

use crate::nar_common::*;

#[tokio::test]
async fn import_matches_nix_store_add_and_dump() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_memory();
    let Store { blob, directory, path_info } = store.clone();
    let calculator = NarCalculator::new(blob.clone(), directory.clone());
    for tree in trees(dir.path()) {
        let info = import_path(&store, &tree, None).await.unwrap_or_else(|e| panic!("{}: {e}", tree.display()));
        let shown = tree.display();
        assert_eq!(info.store_path.to_absolute_path(), nix_add(&tree), "{shown}: store path");
        let dump = nix_dump(&tree);
        assert_eq!(info.nar_size, dump.len() as u64, "{shown}: NAR size");
        assert_eq!(data_encoding::HEXLOWER.encode(&info.nar_sha256), nix_hash(&tree), "{shown}: NAR hash");
        assert_eq!(
            info.ca.as_ref().map(|c| c.to_nix_string()),
            Some(format!("fixed:r:sha256:{}", nixbase32::encode(&info.nar_sha256))),
        );
        let stored = path_info.get(*info.store_path.digest()).await.unwrap().expect("registered");
        assert_eq!(stored, info);

        let rendered = write_nar(Vec::new(), &info.node, blob.as_ref(), directory.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{shown}: render: {e}"));
        assert!(rendered == dump, "{shown}: rendered NAR differs from nix-store --dump");
        let (size, sha) = calculator.calculate_nar(&info.node).await.unwrap();
        assert_eq!((size, sha), (info.nar_size, info.nar_sha256), "{shown}: NarCalculator");
    }
}

#[tokio::test]
async fn cli_import_prints_nix_store_paths() {
    let dir = tempfile::tempdir().unwrap();
    let all = trees(dir.path());
    let picked: Vec<_> = all.iter().filter(|p| !p.ends_with("many")).collect();
    let out = tvix_store()
        .arg("import")
        .args(&picked)
        .args(["--blob-service-addr", "memory://"])
        .args(["--directory-service-addr", "memory://"])
        .args(["--path-info-service-addr", "memory://"])
        .output()
        .unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    let expected: String = picked.iter().map(|p| nix_add(p) + "\n").collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    assert!(out.stderr.is_empty(), "stderr is not a terminal: no progress output expected");
}

/// Ingests `good` alone into fresh services: the digest its directory gets.
async fn directory_digest_of(good: &Path) -> tvix_store::castore::B3Digest {
    let Store { blob, directory, .. } = Store::in_memory();
    match ingest_path(blob, directory, good, None).await.unwrap().node {
        Node::Directory { digest, .. } => digest,
        other => panic!("expected a directory, got {other:?}"),
    }
}

#[tokio::test]
async fn special_files_fail_naming_the_path_and_register_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("with-special");
    // "a-good" sorts first, so it is completely ingested before the walk reaches the bad entry.
    std::fs::create_dir_all(root.join("a-good/inner")).unwrap();
    write_file(&root.join("a-good/inner/f"), 100, false);
    let fifo = root.join("b-fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let good_digest = directory_digest_of(&root.join("a-good")).await;

    let store = Store::in_memory();
    let err = import_path(&store, &root, None).await.expect_err("a FIFO cannot be imported");
    assert!(matches!(&err, ImportError::UnsupportedType { path, kind: "FIFO" } if *path == fifo), "{err:?}");
    assert!(err.to_string().contains(&*fifo.to_string_lossy()), "{err}");
    assert!(store.path_info.list().try_collect::<Vec<_>>().await.unwrap().is_empty());
    assert_eq!(store.directory.get(&good_digest).await.unwrap(), None, "partial tree became visible");

    let sock_dir = dir.path().join("with-socket");
    std::fs::create_dir(&sock_dir).unwrap();
    let sock = sock_dir.join("s");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = import_path(&store, &sock_dir, None).await.expect_err("a socket cannot be imported");
    assert!(matches!(&err, ImportError::UnsupportedType { path, kind: "socket" } if *path == sock), "{err:?}");

    let err = import_path(&store, Path::new("/dev/null"), None).await.expect_err("a device cannot be imported");
    assert!(err.to_string().contains("/dev/null") && err.to_string().contains("character device"), "{err}");
}

#[tokio::test]
async fn missing_path_and_bad_names_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_memory();
    let missing = dir.path().join("does-not-exist");
    let err = import_path(&store, &missing, None).await.unwrap_err();
    assert!(matches!(&err, ImportError::Io { path, .. } if *path == missing), "{err:?}");

    let spaced = dir.path().join("has space");
    std::fs::write(&spaced, b"x").unwrap();
    let err = import_path(&store, &spaced, None).await.unwrap_err();
    assert!(matches!(err, ImportError::Name { .. }), "{err:?}");
}

/// A DirectoryService that refuses to store a directory graph while a file it names is not
/// yet visible in the blob service: ingestion writes blobs with deferred durability, and must
/// sync them before any directory refers to them.
struct RequiresBlobsFirst {
    inner: std::sync::Arc<dyn tvix_store::castore::directoryservice::DirectoryService>,
    blob: std::sync::Arc<dyn tvix_store::castore::blobservice::BlobService>,
    checked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

struct CheckingPutter<'a> {
    inner: Box<dyn tvix_store::castore::directoryservice::DirectoryPutter + 'a>,
    blob: std::sync::Arc<dyn tvix_store::castore::blobservice::BlobService>,
    files: Vec<tvix_store::castore::B3Digest>,
    checked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl tvix_store::castore::directoryservice::DirectoryService for RequiresBlobsFirst {
    async fn get(
        &self,
        digest: &tvix_store::castore::B3Digest,
    ) -> Result<Option<tvix_store::castore::Directory>, tvix_store::castore::Error> {
        self.inner.get(digest).await
    }
    fn get_recursive(
        &self,
        root: &tvix_store::castore::B3Digest,
    ) -> futures::stream::BoxStream<'_, Result<tvix_store::castore::Directory, tvix_store::castore::Error>> {
        self.inner.get_recursive(root)
    }
    fn put_multiple_start(&self) -> Box<dyn tvix_store::castore::directoryservice::DirectoryPutter + '_> {
        Box::new(CheckingPutter {
            inner: self.inner.put_multiple_start(),
            blob: self.blob.clone(),
            files: Vec::new(),
            checked: self.checked.clone(),
        })
    }
}

#[async_trait::async_trait]
impl tvix_store::castore::directoryservice::DirectoryPutter for CheckingPutter<'_> {
    async fn put(&mut self, directory: tvix_store::castore::Directory) -> Result<(), tvix_store::castore::Error> {
        for (_, node) in directory.entries() {
            if let Node::File { digest, .. } = node {
                self.files.push(*digest);
            }
        }
        self.inner.put(directory).await
    }
    async fn close(&mut self) -> Result<tvix_store::castore::B3Digest, tvix_store::castore::Error> {
        for digest in &self.files {
            if !self.blob.has(digest).await? {
                return Err(tvix_store::castore::Error::InvalidRequest(format!(
                    "directory stored before its blob {digest} is durable"
                )));
            }
            self.checked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_are_durable_before_directories_refer_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    // Multi-chunk blobs (their chunk lists only appear with the sync) on both upload paths:
    // read whole in the background, and streamed.
    let bytes = |len: usize, seed: u32| -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
    };
    std::fs::write(tree.join("sub/background"), bytes(3_000_000, 1)).unwrap();
    std::fs::write(tree.join("sub/streamed"), bytes(9_000_000, 2)).unwrap();
    std::fs::write(tree.join("small"), b"small").unwrap();
    let Store { blob, directory: inner, .. } = Store::in_memory();
    let checked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let directory = std::sync::Arc::new(RequiresBlobsFirst { inner, blob: blob.clone(), checked: checked.clone() });
    let ingested = ingest_path(blob.clone(), directory.clone(), &tree, None).await.unwrap();
    assert_eq!(checked.load(std::sync::atomic::Ordering::SeqCst), 3, "every file checked at the directory upload");

    // The same through NAR ingestion.
    checked.store(0, std::sync::atomic::Ordering::SeqCst);
    let Store { blob: blob2, directory: inner2, .. } = Store::in_memory();
    let directory2 =
        std::sync::Arc::new(RequiresBlobsFirst { inner: inner2, blob: blob2.clone(), checked: checked.clone() });
    let nar = write_nar(Vec::new(), &ingested.node, blob.as_ref(), directory.as_ref()).await.unwrap();
    let again = tvix_store::import::ingest_nar(blob2, directory2, &nar[..], None).await.unwrap();
    assert_eq!(again.node, ingested.node);
    assert_eq!(checked.load(std::sync::atomic::Ordering::SeqCst), 3, "every file checked at the directory upload");
}

/// Issue #26: a tree that someone else can write, with one entry swapped over and over (by
/// atomic renames) between a regular file, a symlink to a secret file of the same size, and a
/// FIFO, while it is imported again and again. The secret's bytes never come in as the file's
/// contents (a symlink is imported as a symlink, a swap between look and open is refused), a
/// FIFO is refused, and no import waits (each is bounded to 10 s, all of them to 60 s).
#[test]
fn an_entry_swapped_during_import_is_never_read_through_and_nothing_hangs() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, b"secret!").unwrap();
    std::fs::write(root.join("entry"), b"benign!").unwrap();
    let secret_digest = tvix_store::castore::B3Digest::of(b"secret!");
    let benign_digest = tvix_store::castore::B3Digest::of(b"benign!");

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, root, staging, secret) = (stop.clone(), root.clone(), staging.clone(), secret.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let next = staging.join("next");
                match swaps % 3 {
                    0 => std::os::unix::fs::symlink(&secret, &next).unwrap(),
                    1 => {
                        let c = std::ffi::CString::new(next.as_os_str().as_encoded_bytes()).unwrap();
                        // SAFETY: a valid NUL-terminated path.
                        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
                    }
                    _ => std::fs::write(&next, b"benign!").unwrap(),
                }
                // Atomic: the entry always exists, as one thing or another.
                std::fs::rename(&next, root.join("entry")).unwrap();
                swaps += 1;
            }
            swaps
        })
    };

    // Never dropped on a failure: dropping a runtime waits for a blocking import that hangs.
    let rt = std::mem::ManuallyDrop::new(tokio::runtime::Runtime::new().unwrap());
    let started = Instant::now();
    let (mut files, mut symlinks, mut refused, mut fifos) = (0, 0, 0, 0);
    let mut imports = 0;
    // For a while rather than a count: the swaps and the imports race on however many cores
    // there are.
    while started.elapsed() < Duration::from_secs(3) || imports < 100 {
        imports += 1;
        let Store { blob, directory, .. } = Store::in_memory();
        let import = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), ingest_path(blob, directory.clone(), &root, None)).await
        });
        let Ok(result) = import else {
            stop.store(true, Ordering::Relaxed);
            panic!("an import of the swapped tree hung");
        };
        match result {
            Ok(ingested) => {
                let Node::Directory { digest, .. } = ingested.node else { panic!("not a directory") };
                let listing = rt.block_on(directory.get(&digest)).unwrap().unwrap();
                let (_, node) = listing.entries().next().unwrap();
                match node {
                    Node::File { digest, .. } => {
                        assert_ne!(*digest, secret_digest, "the secret was read through a swapped entry");
                        assert_eq!(*digest, benign_digest);
                        files += 1;
                    }
                    Node::Symlink { target } => {
                        assert_eq!(target.as_bytes(), secret.as_os_str().as_encoded_bytes());
                        symlinks += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            Err(ImportError::Replaced { path, .. }) => {
                assert_eq!(path, root.join("entry"));
                refused += 1;
            }
            Err(ImportError::UnsupportedType { path, kind: "FIFO" }) => {
                assert_eq!(path, root.join("entry"));
                fifos += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "{imports} imports in {elapsed:?} under {swaps} swaps: {files} files, {symlinks} symlinks, {fifos} FIFOs, {refused} swaps caught between look and open"
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    std::mem::ManuallyDrop::into_inner(rt).shutdown_background();
}
