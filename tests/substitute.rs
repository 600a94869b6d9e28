//! Substituting from real Nix binary caches: caches written by Nix 2.8 itself (`nix copy --to
//! 'file://DIR?compression=…&secret-key=…'`), served by a real HTTP server on the loopback
//! (Python's http.server) or read as a directory, including tampered narinfos and NARs. What
//! comes out must be what Nix has: `nix-store --dump` bytes, NAR hash, references, signatures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_store::castore::Error;
use tvix_store::castore::blobservice::BlobService;
use tvix_store::castore::directoryservice::DirectoryService;
use tvix_store::compose::{self, Kind};
use tvix_store::nar::write_nar;
use tvix_store::pathinfo::{PathInfo, PathInfoService};
use tvix_store::storepath::StorePath;

use crate::cache_common::*;
use crate::nar_common::*;

/// Python's http.server on a free loopback port, serving `dir`; killed on drop.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn serve(dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 must be installed (scripts/setup-debian installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Store {
    blob: Arc<dyn BlobService>,
    directory: Arc<dyn DirectoryService>,
    near: Arc<dyn PathInfoService>,
    path_info: Arc<dyn PathInfoService>,
}

/// Memory services with the binary cache at `url` (a store URL) behind a cache combinator.
fn store_over(url: &str) -> Store {
    let blob = compose::blob_service("memory://").unwrap();
    let directory = compose::directory_service("memory://").unwrap();
    let near = compose::path_info_service("memory://").unwrap();
    let graph = compose::Graph::single(Kind::PathInfo, "test", url).unwrap();
    let far = compose::build_path_info(&graph, &blob, &directory).unwrap();
    let path_info: Arc<dyn PathInfoService> = Arc::new(tvix_store::pathinfo::CachePathInfoService::new(
        near.clone(),
        far,
        tvix_store::castore::CacheWrites::Near,
    ));
    Store { blob, directory, near, path_info }
}

impl Store {
    async fn get(&self, path: &str) -> Result<Option<PathInfo>, Error> {
        self.path_info.get(*StorePath::from_absolute_path(path).unwrap().digest()).await
    }

    async fn dump(&self, info: &PathInfo) -> Vec<u8> {
        let mut out = Vec::new();
        write_nar(&mut out, &info.node, self.blob.as_ref(), self.directory.as_ref()).await.unwrap();
        out
    }
}

/// What `nix path-info --json` says of `path`.
fn nix_info(path: &str) -> serde_json::Value {
    let out = nix("nix", &["path-info".as_ref(), "--json".as_ref(), "--sigs".as_ref(), path.as_ref()]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn substitutes_every_compression_nix_writes_over_http_byte_exact() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(tmp.path(), "tvix-test-1");
    for compression in ["none", "xz", "zstd", "bzip2"] {
        let dir = tmp.path().join(compression);
        nix_copy_to_cache(&dir, &c.top, compression, &secret);
        let server = HttpServer::serve(&dir);
        let url = format!("nix+{}?trusted-public-keys={}", server.url, public);
        let store = store_over(&url);
        for path in [&c.top, &c.dep] {
            let info =
                store.get(path).await.unwrap().unwrap_or_else(|| panic!("{compression}: {path} not substituted"));
            assert!(
                store.dump(&info).await == nix_dump(Path::new(path)),
                "{compression}: {path}: NAR differs from nix-store --dump"
            );
            let theirs = nix_info(path);
            assert_eq!(info.nar_size, theirs["narSize"].as_u64().unwrap(), "{compression}: {path}");
            let refs: Vec<String> = info.references.iter().map(StorePath::to_absolute_path).collect();
            let their_refs: Vec<String> =
                theirs["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
            assert_eq!(refs, their_refs, "{compression}: {path}: references");
            assert!(info.signatures.iter().any(|s| s.name == "tvix-test-1"), "{compression}: {path}: signature kept");
            let deriver = info.deriver.as_ref().map(|d| format!("{}.drv", d.to_absolute_path()));
            assert_eq!(deriver.as_deref(), theirs["deriver"].as_str(), "{compression}: {path}: deriver");
            // Kept in the near service: the next lookup is local.
            assert!(store.near.get(*info.store_path.digest()).await.unwrap().is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_trusted_keys_only_validly_signed_paths_exist() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(tmp.path(), "tvix-test-2");
    let (_, other_public) = keypair(tmp.path(), "tvix-test-other");
    let dir = tmp.path().join("cache");
    // top, not dep: dep is content-addressed and needs no signature (see
    // unsigned_content_addressed_paths_substitute_under_trusted_keys).
    nix_copy_to_cache(&dir, &c.top, "xz", &secret);
    let file = |keys: &str| format!("nix+file://{}?trusted-public-keys={}", dir.display(), keys);
    assert!(store_over(&file(&other_public)).get(&c.top).await.unwrap().is_none(), "signed by an untrusted key");
    assert!(store_over(&file(&public)).get(&c.top).await.unwrap().is_some());
    // No trusted keys: signatures are not checked.
    assert!(store_over(&format!("nix+file://{}", dir.display())).get(&c.top).await.unwrap().is_some());

    // A narinfo whose fingerprint changed (another NarSize) no longer verifies: not there.
    let narinfo = narinfo_file(&dir, &c.top);
    let text = std::fs::read_to_string(&narinfo).unwrap();
    let nar_size = text.lines().find_map(|l| l.strip_prefix("NarSize: ")).unwrap().to_string();
    std::fs::write(&narinfo, text.replace(&format!("NarSize: {nar_size}"), "NarSize: 12")).unwrap();
    assert!(store_over(&file(&public)).get(&c.top).await.unwrap().is_none(), "a tampered narinfo verified");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_narinfos_and_nars_are_refused_and_retried() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keypair(tmp.path(), "tvix-test-3");
    let dir = tmp.path().join("cache");
    nix_copy_to_cache(&dir, &c.dep, "none", &secret);
    let store = store_over(&format!("nix+file://{}", dir.display()));
    let narinfo = narinfo_file(&dir, &c.dep);
    let original = std::fs::read_to_string(&narinfo).unwrap();

    // A NarHash that disagrees with the NAR (without compression, FileHash and the URL carry
    // the same hash: only the NarHash line changes).
    let nar_hash = original.lines().find_map(|l| l.strip_prefix("NarHash: sha256:")).unwrap().to_string();
    let wrong = format!("{}{}", if nar_hash.starts_with('0') { "1" } else { "0" }, &nar_hash[1..]);
    std::fs::write(
        &narinfo,
        original.replace(&format!("NarHash: sha256:{nar_hash}"), &format!("NarHash: sha256:{wrong}")),
    )
    .unwrap();
    let err = store.get(&c.dep).await.expect_err("a wrong NarHash was accepted");
    assert!(err.to_string().contains("NarHash disagrees") && err.to_string().contains(&c.dep), "{err}");
    assert!(store.near.get(*StorePath::from_absolute_path(&c.dep).unwrap().digest()).await.unwrap().is_none());

    // A narinfo naming another store path.
    std::fs::write(&narinfo, original.replace(&c.dep, &c.top)).unwrap();
    let err = store.get(&c.dep).await.expect_err("a narinfo of another path was accepted");
    assert!(err.to_string().contains("names another store path"), "{err}");

    // A malformed narinfo.
    std::fs::write(&narinfo, "StorePath: not a path\n").unwrap();
    assert!(store.get(&c.dep).await.is_err());

    // A NAR with a flipped byte.
    std::fs::write(&narinfo, &original).unwrap();
    let url = original.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    let nar = dir.join(url);
    let good = std::fs::read(&nar).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    std::fs::write(&nar, &bad).unwrap();
    let err = store.get(&c.dep).await.expect_err("a corrupt NAR was accepted");
    assert!(err.to_string().contains(&c.dep), "{err}");
    // A truncated NAR.
    std::fs::write(&nar, &good[..good.len() - 1000]).unwrap();
    let err = store.get(&c.dep).await.expect_err("a truncated NAR was accepted");
    assert!(err.to_string().contains(&c.dep), "{err}");

    // Errors are not remembered: with the cache repaired, the next lookup succeeds.
    std::fs::write(&nar, &good).unwrap();
    let info = store.get(&c.dep).await.unwrap().expect("substituted after the repair");
    assert!(store.dump(&info).await == nix_dump(Path::new(&c.dep)));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_lookups_share_one_download_and_misses_are_none() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keypair(tmp.path(), "tvix-test-4");
    let dir = tmp.path().join("cache");
    nix_copy_to_cache(&dir, &c.dep, "xz", &secret);
    let store = Arc::new(store_over(&format!("nix+file://{}", dir.display())));
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let path = c.dep.clone();
            tokio::spawn(async move { store.get(&path).await })
        })
        .collect();
    for lookup in lookups {
        assert!(lookup.await.unwrap().unwrap().is_some());
    }
    assert_eq!(store.get("/nix/store/00000000000000000000000000000000-not-there").await.unwrap(), None);
}

/// The usual setup in one flag pair: an empty default store, a mount whose only source of
/// paths is a binary cache over HTTP.
#[test]
fn a_mount_with_a_substituter_shows_paths_nobody_imported() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(tmp.path(), "tvix-test-5");
    let dir = tmp.path().join("cache");
    nix_copy_to_cache(&dir, &c.top, "zstd", &secret);
    let server = HttpServer::serve(&dir);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mount = tvix_store();
    mount
        .env("TVIX_STORE_DIR", tmp.path().join("store"))
        .args(["mount", "--substituter", &server.url, "--trusted-public-key", &public])
        .arg(&mnt);
    let _mount = MountProcess::start(mount, &mnt);
    for path in [&c.top, &c.dep] {
        let basename = path.trim_start_matches("/nix/store/");
        let status =
            Command::new("diff").args(["-r", "--no-dereference"]).arg(path).arg(mnt.join(basename)).status().unwrap();
        assert!(status.success(), "{path} differs in the mount");
    }
    assert!(!mnt.join("00000000000000000000000000000000-not-there").exists());
}

/// `tvix-store substitute` copies a closure ahead of time; what the store then says of it is
/// what Nix says after `nix copy --from` of the same cache into a fresh store of its own.
#[test]
fn the_substitute_command_copies_a_closure_as_nix_copy_from_does() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(tmp.path(), "tvix-test-6");
    let dir = tmp.path().join("cache");
    nix_copy_to_cache(&dir, &c.top, "xz", &secret);
    let cache = format!("file://{}", dir.display());
    let store_dir = tmp.path().join("store");
    let run = |args: &[&str]| {
        let out = tvix_store().env("TVIX_STORE_DIR", &store_dir).args(args).output().unwrap();
        assert!(out.status.success(), "tvix-store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let ours = |args: &[&str]| run(args).0;
    let substitute = ["substitute", "--substituter", &cache, "--trusted-public-key", &public, &c.top];
    let (printed, summary) = run(&substitute);
    let mut printed: Vec<&str> = printed.lines().collect();
    printed.sort();
    let mut want = vec![c.dep.as_str(), c.top.as_str()];
    want.sort();
    assert_eq!(printed, want);
    // `2 paths in the store: <NAR> of NAR, <fetched> downloaded, <new> new in the blob store`:
    // the first run fetches (xz makes the test data small) and stores dep's 3 MB file, the
    // second finds everything local.
    let figures = |summary: &str| -> (String, String, String) {
        let line = summary.lines().last().unwrap_or_default().to_string();
        let rest = line.strip_prefix("2 paths in the store: ").unwrap_or_else(|| panic!("summary: {line:?}"));
        let parts: Vec<&str> = rest.split(", ").collect();
        assert_eq!(parts.len(), 3, "summary: {line:?}");
        let figure = |part: &str, suffix: &str| {
            part.strip_suffix(suffix).unwrap_or_else(|| panic!("summary: {line:?}")).to_string()
        };
        (figure(parts[0], " of NAR"), figure(parts[1], " downloaded"), figure(parts[2], " new in the blob store"))
    };
    let (nar, downloaded, stored) = figures(&summary);
    assert!(nar.ends_with("MiB") && downloaded != "0 B" && stored.ends_with("MiB"), "{summary}");
    let (nar_again, downloaded, stored) = figures(&run(&substitute).1);
    assert_eq!((nar_again, downloaded.as_str(), stored.as_str()), (nar, "0 B", "0 B"), "second run");

    // Nix's own copy of the same closure, into a fresh store of its own.
    let nix_root = tmp.path().join("nix-root");
    let nix_store = format!("local?root={}", nix_root.display());
    nix(
        "nix",
        &["copy", "--option", "trusted-public-keys", &public, "--from", &cache, "--to", &nix_store, &c.top]
            .map(std::ffi::OsStr::new),
    );
    let theirs = nix("nix", &["path-info", "--json", "--store", &nix_store, &c.top, &c.dep].map(std::ffi::OsStr::new));
    let mut theirs: serde_json::Value = serde_json::from_slice(&theirs).unwrap();
    // Later lookups are local: no substituter given.
    let mut ours: serde_json::Value = serde_json::from_str(&ours(&["path-info", &c.top, &c.dep])).unwrap();
    for list in [&mut theirs, &mut ours] {
        let entries = list.as_array_mut().unwrap();
        for e in entries.iter_mut() {
            // Only a Nix database has these.
            let o = e.as_object_mut().unwrap();
            o.remove("registrationTime");
            o.remove("ultimate");
        }
        entries.sort_by_key(|e| e["path"].as_str().unwrap().to_string());
    }
    assert_eq!(ours, theirs);
}

/// A binary cache in `dir` holding the closure of `path`, written by `nix copy` without a
/// secret key: no narinfo has a signature.
fn nix_copy_unsigned(dir: &Path, path: &str, compression: &str) {
    let to = format!("file://{}?compression={compression}", dir.display());
    nix("nix", &["copy".as_ref(), "--to".as_ref(), to.as_ref(), path.as_ref()]);
}

/// What a [`FaultServer`] does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Serves every file as it is.
    Healthy,
    /// Reads a narinfo request and never answers it (the connection stays open).
    HangNarinfo,
    /// Sends a NAR's headers (full Content-Length, no Accept-Ranges) and this many bytes of it,
    /// then nothing more, the connection open.
    HangNar(usize),
    /// Sends a NAR's headers with its full Content-Length and closes the connection after this
    /// many bytes. With `ranges`, it offers `Accept-Ranges: bytes` and answers a `Range:
    /// bytes=N-` request with 206 and the rest.
    BreakNar { after: usize, ranges: bool },
}

/// Every request a [`FaultServer`] got: its path and where its `Range: bytes=N-` started.
type RequestLog = Arc<std::sync::Mutex<Vec<(String, Option<u64>)>>>;

/// A minimal HTTP/1.1 server on the loopback serving a cache directory with a [`Fault`]
/// (Python's http.server knows no ranges and cannot misbehave on purpose). One request per
/// connection (`Connection: close`). A hanging connection is closed when the fault is changed,
/// as a server that is restarted would. Stops, dropping every connection, on drop.
struct FaultServer {
    url: String,
    fault: tokio::sync::watch::Sender<Fault>,
    requests: RequestLog,
    task: tokio::task::JoinHandle<()>,
}

impl FaultServer {
    /// Starts serving `dir` on the current tokio runtime.
    async fn start(dir: &Path, fault: Fault) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fault = tokio::sync::watch::Sender::new(fault);
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (dir, f, r) = (dir.to_path_buf(), fault.clone(), requests.clone());
        let task = tokio::spawn(async move {
            // Held by the accept loop: aborting it drops every connection, hanging ones too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                connections.spawn(serve_one(stream, dir.clone(), f.subscribe(), r.clone()));
                while connections.try_join_next().is_some() {}
            }
        });
        Self { url, fault, requests, task }
    }

    fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The `Range` starts of the requests for paths under `nar/`, in order.
    fn nar_ranges(&self) -> Vec<Option<u64>> {
        self.requests.lock().unwrap().iter().filter(|(p, _)| p.starts_with("/nar/")).map(|(_, r)| *r).collect()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    dir: PathBuf,
    mut faults: tokio::sync::watch::Receiver<Fault>,
    requests: RequestLog,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The fault when the connection came; a change of fault ends a hang.
    let fault = *faults.borrow_and_update();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("/").to_string();
    let range = lines.find_map(|l| {
        let l = l.to_ascii_lowercase();
        l.strip_prefix("range: bytes=")?.trim().strip_suffix('-')?.parse::<u64>().ok()
    });
    requests.lock().unwrap().push((path.clone(), range));
    let headers = |status: &str, length: usize, extra: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n{extra}\r\n")
    };
    let Ok(body) = tokio::fs::read(dir.join(path.trim_start_matches('/'))).await else {
        let _ = stream.write_all(headers("404 Not Found", 0, "").as_bytes()).await;
        return;
    };
    let is_nar = path.starts_with("/nar/");
    let (head, body): (String, &[u8]) = match fault {
        Fault::HangNarinfo if path.ends_with(".narinfo") => {
            let _ = faults.changed().await;
            return;
        }
        Fault::HangNar(after) if is_nar => {
            let _ = stream.write_all(headers("200 OK", body.len(), "").as_bytes()).await;
            let _ = stream.write_all(&body[..after.min(body.len())]).await;
            let _ = stream.flush().await;
            // `stream` stays open, and silent, until the fault changes.
            let _ = faults.changed().await;
            return;
        }
        Fault::BreakNar { after, ranges } if is_nar => match range {
            Some(from) if ranges => {
                let from = (from as usize).min(body.len());
                let extra = format!(
                    "Accept-Ranges: bytes\r\nContent-Range: bytes {from}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                );
                (headers("206 Partial Content", body.len() - from, &extra), &body[from..])
            }
            _ => {
                let extra = if ranges { "Accept-Ranges: bytes\r\n" } else { "" };
                let _ = stream.write_all(headers("200 OK", body.len(), extra).as_bytes()).await;
                let _ = stream.write_all(&body[..after.min(body.len())]).await;
                let _ = stream.shutdown().await;
                return;
            }
        },
        _ => (headers("200 OK", body.len(), ""), &body[..]),
    };
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

/// Bound for a lookup against a misbehaving server with `?timeout=1`: four attempts of a
/// second each plus 1.4 s of backoff, generously; the point is that it ends.
const ENDS_WITHIN: Duration = Duration::from_secs(30);

fn digest_of(path: &str) -> [u8; 20] {
    *StorePath::from_absolute_path(path).unwrap().digest()
}

/// The hash part of a store path, which every error of its lookup names.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_cache_fails_in_bounded_time_and_the_next_lookup_succeeds() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    nix_copy_unsigned(&dir, &c.dep, "none");
    for fault in [Fault::HangNarinfo, Fault::HangNar(500_000)] {
        let server = FaultServer::start(&dir, fault).await;
        let store = store_over(&format!("nix+{}?timeout=1", server.url));
        let started = Instant::now();
        let err = store.get(&c.dep).await.expect_err("a hanging cache answered");
        assert!(started.elapsed() < ENDS_WITHIN, "{fault:?}: took {:?}", started.elapsed());
        assert!(err.to_string().contains(hash_of(&c.dep)), "{fault:?}: {err}");
        assert!(store.near.get(digest_of(&c.dep)).await.unwrap().is_none(), "{fault:?}: stored");

        server.set(Fault::Healthy);
        let info = store.get(&c.dep).await.unwrap().unwrap_or_else(|| panic!("{fault:?}: not substituted"));
        assert!(store.dump(&info).await == nix_dump(Path::new(&c.dep)), "{fault:?}: NAR differs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nar_download_that_breaks_off_is_resumed_with_a_range_request() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    nix_copy_unsigned(&dir, &c.dep, "none");
    let server = FaultServer::start(&dir, Fault::BreakNar { after: 1_000_000, ranges: true }).await;
    let store = store_over(&format!("nix+{}?timeout=5", server.url));
    let info = store.get(&c.dep).await.unwrap().expect("substituted despite the break");
    assert!(store.dump(&info).await == nix_dump(Path::new(&c.dep)), "the resumed NAR differs");
    assert_eq!(server.nar_ranges(), [None, Some(1_000_000)], "one resumption at the byte it broke off");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_or_truncated_nar_without_ranges_fails_and_is_tried_again() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    nix_copy_unsigned(&dir, &c.dep, "none");
    let nar_len =
        std::fs::read_dir(dir.join("nar")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>();
    let server = FaultServer::start(&dir, Fault::Healthy).await;
    let store = store_over(&format!("nix+{}?timeout=5", server.url));
    // Cut early, and cut just before the end (a truncated NAR).
    for after in [1_000_000, nar_len as usize - 1000] {
        server.set(Fault::BreakNar { after, ranges: false });
        let before = server.nar_ranges().len();
        let err = store.get(&c.dep).await.expect_err("a broken NAR was accepted");
        assert!(err.to_string().contains(&c.dep), "{err}");
        assert!(server.nar_ranges()[before..].iter().all(Option::is_none), "resumed without Accept-Ranges");
        assert!(store.near.get(digest_of(&c.dep)).await.unwrap().is_none(), "stored after a broken NAR");
    }
    server.set(Fault::Healthy);
    let info = store.get(&c.dep).await.unwrap().expect("substituted once the server is healthy");
    assert!(store.dump(&info).await == nix_dump(Path::new(&c.dep)));
}

/// A mount over a hanging cache answers EIO within its `--timeout`, stays up, and shows the
/// path once the cache answers. The cache's own timeout is long (20 s a request, four
/// attempts), so an answer within [`ENDS_WITHIN`] comes from the mount's bound.
#[test]
fn a_mount_over_a_hanging_cache_answers_eio_and_recovers() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    nix_copy_unsigned(&dir, &c.dep, "zstd");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(FaultServer::start(&dir, Fault::HangNarinfo));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mount = tvix_store();
    mount
        .env("TVIX_STORE_DIR", tmp.path().join("store"))
        .args(["mount", "--timeout", "2", "--substituter", &format!("{}?timeout=20", server.url)])
        .arg(&mnt);
    let _mount = MountProcess::start(mount, &mnt);
    let entry = mnt.join(c.dep.trim_start_matches("/nix/store/"));
    let started = Instant::now();
    let err = std::fs::metadata(&entry).expect_err("a path of a hanging cache exists");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(started.elapsed() < ENDS_WITHIN, "took {:?}", started.elapsed());
    assert!(std::fs::metadata(&mnt).unwrap().is_dir(), "the mount went away");

    // The hanging lookup runs on in the mount. Healthy again, the server closes the hanging
    // connection: the lookup retries and succeeds; accesses meanwhile join it (EIO).
    server.set(Fault::Healthy);
    let deadline = Instant::now() + ENDS_WITHIN;
    loop {
        match std::fs::metadata(&entry) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                assert!(Instant::now() < deadline, "still failing: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let status = Command::new("diff").args(["-r", "--no-dereference"]).arg(&c.dep).arg(&entry).status().unwrap();
    assert!(status.success(), "{} differs in the mount", c.dep);
    drop(server);
}

/// Store paths Nix made content-addressed in three ways, each written to no cache yet.
struct CaPaths {
    /// `nix-store --add-fixed sha256 FILE`: `fixed:sha256`.
    flat: String,
    /// `nix-store --add-fixed --recursive sha512 DIR`: `fixed:r:sha512`.
    recursive_sha512: String,
    /// `nix-store --add-fixed sha1 FILE`: `fixed:sha1`.
    flat_sha1: String,
    /// `nix-store --add-fixed --recursive md5 DIR`: `fixed:r:md5` (hashed over the NAR again).
    recursive_md5: String,
    /// `builtins.toFile`: `text:sha256`, referring to `text_dep`.
    text: String,
    text_dep: String,
}

fn ca_paths(dir: &Path) -> CaPaths {
    let file = dir.join("ca-flat-file");
    write_file(&file, 70_000, false);
    let tree = dir.join("ca-sha512-tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    write_file(&tree.join("sub/file"), 5_000, true);
    let add = |args: &[&std::ffi::OsStr]| String::from_utf8(nix("nix-store", args)).unwrap().trim().to_string();
    let flat = add(&["--add-fixed".as_ref(), "sha256".as_ref(), file.as_os_str()]);
    let flat_sha1 = add(&["--add-fixed".as_ref(), "sha1".as_ref(), file.as_os_str()]);
    let recursive_sha512 = add(&["--add-fixed".as_ref(), "--recursive".as_ref(), "sha512".as_ref(), tree.as_os_str()]);
    let recursive_md5 = add(&["--add-fixed".as_ref(), "--recursive".as_ref(), "md5".as_ref(), tree.as_os_str()]);
    let eval = |expr: &str| {
        let out = nix("nix-instantiate", &["--read-write-mode", "--eval", "--expr", expr].map(std::ffi::OsStr::new));
        String::from_utf8(out).unwrap().trim().trim_matches('"').to_string()
    };
    let dep_expr = r#"builtins.toFile "tvix-ca-text-dep" "some text\n""#;
    let text_dep = eval(dep_expr);
    let text = eval(&format!(r#"builtins.toFile "tvix-ca-text" "refers to ${{{dep_expr}}}\n""#));
    CaPaths { flat, recursive_sha512, flat_sha1, recursive_md5, text, text_dep }
}

/// Nix 2.8 trusts a path without a signature when its CA gives its store path; so do we, and
/// only then, and only with contents that match the CA.
#[tokio::test(flavor = "multi_thread")]
async fn unsigned_content_addressed_paths_substitute_under_trusted_keys() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (_, unrelated) = keypair(tmp.path(), "tvix-test-unrelated");
    let ca = ca_paths(tmp.path());
    let dir = tmp.path().join("cache");
    // dep is `nix-store --add` (fixed:r:sha256); top is built, input-addressed.
    for path in [&c.top, &ca.flat, &ca.flat_sha1, &ca.recursive_md5, &ca.recursive_sha512, &ca.text] {
        nix_copy_unsigned(&dir, path, "xz");
    }
    let url = format!("nix+file://{}?trusted-public-keys={unrelated}", dir.display());
    let store = store_over(&url);
    for path in [&c.dep, &ca.flat, &ca.flat_sha1, &ca.recursive_md5, &ca.recursive_sha512, &ca.text, &ca.text_dep] {
        let info = store.get(path).await.unwrap().unwrap_or_else(|| panic!("{path}: unsigned CA path refused"));
        assert!(info.signatures.is_empty());
        assert!(info.ca.is_some(), "{path}: CA kept");
        assert!(store.dump(&info).await == nix_dump(Path::new(path)), "{path}: NAR differs");
    }
    assert_eq!(store.get(&c.top).await.unwrap(), None, "an unsigned input-addressed path was trusted");
    for (path, ca) in [
        (&ca.flat, "fixed:sha256:"),
        (&ca.flat_sha1, "fixed:sha1:"),
        (&ca.recursive_md5, "fixed:r:md5:"),
        (&ca.recursive_sha512, "fixed:r:sha512:"),
        (&ca.text, "text:sha256:"),
    ] {
        let line = std::fs::read_to_string(narinfo_file(&dir, path)).unwrap();
        assert!(line.contains(&format!("\nCA: {ca}")), "{path}: Nix wrote no {ca} CA:\n{line}");
    }

    // A CA that does not give the path (another digest) makes it unsigned: refused.
    let narinfo = narinfo_file(&dir, &c.dep);
    let original = std::fs::read_to_string(&narinfo).unwrap();
    let ca_line = original.lines().find(|l| l.starts_with("CA: fixed:r:sha256:")).unwrap().to_string();
    let flipped = format!("{}{}", &ca_line[..ca_line.len() - 1], if ca_line.ends_with('0') { '1' } else { '0' });
    std::fs::write(&narinfo, original.replace(&ca_line, &flipped)).unwrap();
    assert_eq!(store_over(&url).get(&c.dep).await.unwrap(), None, "a CA of another path was trusted");

    // The right CA over another NAR (the narinfo's hashes and sizes all agreeing with that
    // NAR): the contents do not hash to the CA, so it is refused as corrupt.
    let other = std::fs::read_to_string(narinfo_file(&dir, &ca.text_dep)).unwrap();
    let forged: String = other
        .lines()
        .map(|l| {
            if l.starts_with("StorePath: ") {
                format!("StorePath: {}\n", c.dep)
            } else if l.starts_with("CA: ") {
                format!("{ca_line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&narinfo, forged).unwrap();
    let store = store_over(&url);
    let err = store.get(&c.dep).await.expect_err("contents other than the CA's were accepted");
    assert!(err.to_string().contains(&c.dep) && err.to_string().contains("content address"), "{err}");
    assert!(store.near.get(digest_of(&c.dep)).await.unwrap().is_none());
}

/// The counters behind the `substitute` summary: bytes fetched are the narinfos and NAR files
/// as the cache has them; bytes stored are file contents the blob service did not have.
#[tokio::test(flavor = "multi_thread")]
async fn substitution_counts_bytes_downloaded_and_new_blobs() {
    use tvix_store::substitute::{BinaryCache, CacheOptions, SubstituteStats, Transport};
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    nix_copy_unsigned(&dir, &c.top, "xz");
    let cache_bytes: u64 = ["", "nar"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).unwrap())
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file() && e.file_name() != "nix-cache-info")
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let blob = compose::blob_service("memory://").unwrap();
    let directory = compose::directory_service("memory://").unwrap();
    let cache = |stats: &Arc<SubstituteStats>| {
        BinaryCache::new(
            Transport::File { dir: dir.clone() },
            CacheOptions::default(),
            blob.clone(),
            directory.clone(),
            stats.clone(),
        )
    };
    let first = Arc::new(SubstituteStats::default());
    let cache1 = cache(&first);
    for path in [&c.top, &c.dep] {
        assert!(cache1.get(digest_of(path)).await.unwrap().is_some());
    }
    assert_eq!(first.downloaded(), cache_bytes, "every narinfo and NAR file, once");
    // dep holds a 3 MB and a 100 byte file; top only a small one (its `dep` file: a path
    // and a newline) besides a symlink.
    assert_eq!(first.stored(), 3_000_000 + 100 + c.dep.len() as u64 + 1);

    // The same paths again into the same blob service: downloaded again, nothing new stored.
    let again = Arc::new(SubstituteStats::default());
    let cache2 = cache(&again);
    for path in [&c.top, &c.dep] {
        assert!(cache2.get(digest_of(path)).await.unwrap().is_some());
    }
    assert_eq!(again.downloaded(), cache_bytes);
    assert_eq!(again.stored(), 0);
}

/// Where an endless narinfo stops: far beyond any limit, so a test that ends did so because
/// the client hung up.
const ENDLESS_CAP: u64 = 200 << 20;

/// A binary cache on the loopback whose every narinfo never ends: `200 OK` without a length,
/// then narinfo-looking lines as fast as the client takes them (up to [`ENDLESS_CAP`], or until
/// it hangs up). Anything else is 404. Counts the bytes it sent and the connections it closed.
struct EndlessServer {
    url: String,
    sent: Arc<std::sync::atomic::AtomicU64>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EndlessServer {
    async fn start() -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, c) = (sent.clone(), closed.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let (sent, closed) = (s.clone(), c.clone());
                connections.spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
                    if !line.contains(".narinfo ") {
                        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
                        return;
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await;
                    let block: Vec<u8> = format!("References: {}\n", "a".repeat(1000)).into_bytes().repeat(64);
                    let mut total = 0u64;
                    while total < ENDLESS_CAP {
                        if stream.write_all(&block).await.is_err() {
                            break;
                        }
                        total += block.len() as u64;
                        sent.fetch_add(block.len() as u64, Ordering::Relaxed);
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { url, sent, closed, task }
    }

    /// Waits until `n` narinfo connections have ended (the client hung up), at most 20 s;
    /// then the bytes sent in all.
    async fn sent_once_closed(&self, n: usize) -> u64 {
        use std::sync::atomic::Ordering;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.closed.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the client kept the endless narinfo open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for EndlessServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a finished child said, its peak RSS (KiB, its `ru_maxrss`) and how long it ran.
struct Measured {
    success: bool,
    stdout: String,
    stderr: String,
    max_rss_kib: i64,
    elapsed: Duration,
}

/// Runs `command` to the end under GNU time, measuring its peak resident set size (`%M`: the
/// command's `ru_maxrss`, which time gets from `wait4`). Not from our own `wait4`: the kernel
/// charges a child the peak of the address space it leaves at exec, which for a child spawned
/// by the test process is the test process's (whatever the tests running beside it allocated,
/// hundreds of MiB); time is a small process, and the command starts from its address space.
fn run_measured(command: Command) -> Measured {
    let rss = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("--format=%M").arg("--output").arg(rss.path()).arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    let started = Instant::now();
    let out = timed
        .output()
        .unwrap_or_else(|e| panic!("/usr/bin/time must be installed (Debian package time, scripts/setup-debian): {e}"));
    let elapsed = started.elapsed();
    // Before the figure, time writes a line saying how a failed command ended.
    let written = std::fs::read_to_string(rss.path()).unwrap();
    let max_rss_kib = written
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("GNU time wrote no peak RSS: {written:?}"));
    Measured {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        max_rss_kib,
        elapsed,
    }
}

/// Peak RSS a `tvix-store substitute` may reach under an endless narinfo (issue #26's bound
/// for a process under one attack).
const RSS_BOUND_KIB: i64 = 256 * 1024;

/// An endless narinfo (issue #26: `substitute` grew to 3 GiB and aborted) is refused once
/// 1 MiB is in: within seconds, a one-line error naming the cache, the narinfo and the limit,
/// a peak RSS far below 256 MiB; and with a good cache after it, the same process
/// substitutes the path from there.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_narinfo_is_cut_off_at_the_limit_and_the_next_cache_answers() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    nix_copy_unsigned(&good, &c.dep, "zstd");
    let endless = EndlessServer::start().await;
    let narinfo = format!("{}.narinfo", hash_of(&c.dep));

    let mut alone = tvix_store();
    alone.env("TVIX_STORE_DIR", tmp.path().join("store1")).args(["substitute", "--substituter", &endless.url, &c.dep]);
    let run = tokio::task::spawn_blocking(move || run_measured(alone)).await.unwrap();
    eprintln!("alone: {:?}, peak RSS {} KiB\n{}", run.elapsed, run.max_rss_kib, run.stderr);
    assert!(!run.success, "substituted from an endless narinfo");
    let error = run.stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("error: "), "{}", run.stderr);
    for part in [&endless.url as &str, &narinfo, "limit of 1048576 bytes", hash_of(&c.dep)] {
        assert!(error.contains(part), "the error does not name {part:?}: {error}");
    }
    assert!(run.elapsed < Duration::from_secs(10), "took {:?}", run.elapsed);
    assert!(run.max_rss_kib < RSS_BOUND_KIB, "peak RSS {} KiB", run.max_rss_kib);
    let sent = endless.sent_once_closed(1).await;
    eprintln!("the endless server sent {sent} bytes before the client hung up");
    assert!(sent < 64 << 20, "the client took {sent} bytes of an endless narinfo");

    // The endless cache first, a good one after it: the path comes from the good one.
    let mut both = tvix_store();
    both.env("TVIX_STORE_DIR", tmp.path().join("store2")).args([
        "substitute",
        "--substituter",
        &format!("{}?priority=10", endless.url),
        "--substituter",
        &format!("file://{}?priority=20", good.display()),
        &c.dep,
    ]);
    let run = tokio::task::spawn_blocking(move || run_measured(both)).await.unwrap();
    eprintln!("both: {:?}, peak RSS {} KiB\n{}", run.elapsed, run.max_rss_kib, run.stderr);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), c.dep);
    assert!(run.max_rss_kib < RSS_BOUND_KIB, "peak RSS {} KiB", run.max_rss_kib);
    endless.sent_once_closed(2).await;
}

/// In the library: the lookup fails with the limit named and holds no more than the limit.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_narinfo_fails_the_lookup_in_process() {
    let c = closure();
    let endless = EndlessServer::start().await;
    let store = store_over(&format!("nix+{}", endless.url));
    let started = Instant::now();
    let err = store.get(&c.dep).await.expect_err("an endless narinfo answered");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let text = err.to_string();
    assert!(text.contains("limit of 1048576 bytes") && text.contains(&endless.url), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert!(store.near.get(digest_of(&c.dep)).await.unwrap().is_none());
}

/// A cache directory's narinfo that never ends (a symlink to /dev/zero) or is just too large
/// is refused the same way; the symlink is not even opened (it leads out of the directory).
#[tokio::test(flavor = "multi_thread")]
async fn a_file_cache_narinfo_is_bounded_and_not_followed_out() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    nix_copy_unsigned(&dir, &c.dep, "none");
    let narinfo = narinfo_file(&dir, &c.dep);
    let original = std::fs::read(&narinfo).unwrap();
    let url = format!("nix+file://{}", dir.display());

    std::fs::remove_file(&narinfo).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &narinfo).unwrap();
    let err = store_over(&url).get(&c.dep).await.expect_err("a narinfo symlinked to /dev/zero").to_string();
    assert!(err.contains("resolves outside the cache directory") && err.contains(&*dir.to_string_lossy()), "{err}");

    std::fs::remove_file(&narinfo).unwrap();
    let mut huge = original.clone();
    huge.resize(2 << 20, b'\n');
    std::fs::write(&narinfo, &huge).unwrap();
    let err = store_over(&url).get(&c.dep).await.expect_err("a 2 MiB narinfo").to_string();
    assert!(err.contains("limit of 1048576 bytes") && err.contains(hash_of(&c.dep)), "{err}");

    std::fs::write(&narinfo, &original).unwrap();
    assert!(store_over(&url).get(&c.dep).await.unwrap().is_some(), "the repaired cache");
}

/// The narinfo of `path` in `dir` with its `URL:` replaced by `url`.
fn set_nar_url(dir: &Path, path: &str, url: &str) {
    let narinfo = narinfo_file(dir, path);
    let text = std::fs::read_to_string(&narinfo).unwrap();
    let old = text.lines().find(|l| l.starts_with("URL: ")).unwrap().to_string();
    std::fs::write(&narinfo, text.replace(&old, &format!("URL: {url}"))).unwrap();
}

/// The `URL:` of `path`'s narinfo in `dir`.
fn nar_url(dir: &Path, path: &str) -> String {
    let text = std::fs::read_to_string(narinfo_file(dir, path)).unwrap();
    text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_string()
}

impl FaultServer {
    /// The paths of every request so far.
    fn paths(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|(p, _)| p.clone()).collect()
    }
}

/// A narinfo's absolute URL pointing at another server (issue #26: fetched as given) is
/// refused, naming the cache and the URL, and that server hears nothing; with
/// `allow-absolute-urls=true` it is fetched from there, as Nix would.
#[tokio::test(flavor = "multi_thread")]
async fn absolute_nar_urls_are_refused_unless_allowed() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    nix_copy_unsigned(&real, &c.dep, "none");
    let other = FaultServer::start(&real, Fault::Healthy).await;
    let relative = nar_url(&real, &c.dep);

    let pointing = tmp.path().join("pointing");
    std::fs::create_dir(&pointing).unwrap();
    std::fs::copy(narinfo_file(&real, &c.dep), narinfo_file(&pointing, &c.dep)).unwrap();
    let absolute = format!("{}/{relative}", other.url);
    set_nar_url(&pointing, &c.dep, &absolute);
    let cache = FaultServer::start(&pointing, Fault::Healthy).await;

    let store = store_over(&format!("nix+{}", cache.url));
    let err = store.get(&c.dep).await.expect_err("an absolute URL was followed").to_string();
    assert!(err.contains(&cache.url) && err.contains(&absolute) && err.contains("absolute URL"), "{err}");
    assert!(err.contains(&c.dep), "{err}");
    assert_eq!(other.paths(), Vec::<String>::new(), "the other server was asked");
    assert!(store.near.get(digest_of(&c.dep)).await.unwrap().is_none());

    let store = store_over(&format!("nix+{}?allow-absolute-urls=true", cache.url));
    let info = store.get(&c.dep).await.unwrap().expect("substituted through the allowed absolute URL");
    assert!(store.dump(&info).await == nix_dump(Path::new(&c.dep)));
    assert_eq!(other.paths(), [format!("/{relative}")], "one NAR request to the other server");
}

/// A cache below a prefix (`http://host/cache/`): a URL whose `..` climbs above the prefix,
/// or that starts with `/`, is refused and never requested, even where a valid NAR sits there.
#[tokio::test(flavor = "multi_thread")]
async fn nar_urls_climbing_out_of_an_http_cache_are_refused() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    nix_copy_unsigned(&cache_dir, &c.dep, "none");
    let relative = nar_url(&cache_dir, &c.dep);
    // The real NAR, outside the cache's prefix but on the same server.
    std::fs::create_dir_all(tmp.path().join("secret/nar")).unwrap();
    std::fs::rename(cache_dir.join(&relative), tmp.path().join("secret").join(&relative)).unwrap();
    let server = FaultServer::start(tmp.path(), Fault::Healthy).await;
    let base = format!("{}/cache", server.url);

    for (url, why) in
        [(format!("../secret/{relative}"), "leaves the cache's base"), (format!("/secret/{relative}"), "absolute path")]
    {
        set_nar_url(&cache_dir, &c.dep, &url);
        let err = store_over(&format!("nix+{base}")).get(&c.dep).await.expect_err("a URL out of the cache").to_string();
        assert!(err.contains(&base) && err.contains(&url) && err.contains(why), "{err}");
        assert!(!server.paths().iter().any(|p| p.starts_with("/secret/")), "requested: {:?}", server.paths());
    }
    // `..` never, even with absolute URLs allowed; an absolute path then is.
    set_nar_url(&cache_dir, &c.dep, &format!("../secret/{relative}"));
    let store = store_over(&format!("nix+{base}?allow-absolute-urls=true"));
    assert!(store.get(&c.dep).await.is_err());
    assert!(!server.paths().iter().any(|p| p.starts_with("/secret/")));
    set_nar_url(&cache_dir, &c.dep, &format!("/secret/{relative}"));
    let info = store.get(&c.dep).await.unwrap().expect("an allowed absolute path");
    assert!(store.dump(&info).await == nix_dump(Path::new(&c.dep)));
}

/// A `file://` cache never reads outside its directory: not through `..` in the URL (even
/// with absolute URLs allowed), not through a symlink that leads out; a symlink that stays
/// inside is followed. The files outside are the real NAR, so reading them would have
/// succeeded: the refusal is what stops it.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_cache_never_reads_outside_its_directory() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    nix_copy_unsigned(&dir, &c.dep, "none");
    let relative = nar_url(&dir, &c.dep);
    let secret = tmp.path().join("secret/nar");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::copy(dir.join(&relative), tmp.path().join("secret").join(&relative)).unwrap();
    let url = format!("nix+file://{}", dir.display());
    let shown = dir.display().to_string();

    for options in ["", "?allow-absolute-urls=true"] {
        set_nar_url(&dir, &c.dep, &format!("../secret/{relative}"));
        let store = store_over(&format!("{url}{options}"));
        let err = store.get(&c.dep).await.expect_err("`..` out of the cache").to_string();
        assert!(err.contains(&shown) && err.contains("../secret/") && err.contains("leaves the cache's base"), "{err}");
        assert!(store.near.get(digest_of(&c.dep)).await.unwrap().is_none());
    }

    // The NAR in the cache replaced by a symlink to the copy outside.
    set_nar_url(&dir, &c.dep, &relative);
    let nar = dir.join(&relative);
    std::fs::remove_file(&nar).unwrap();
    std::os::unix::fs::symlink(format!("../../secret/{relative}"), &nar).unwrap();
    let store = store_over(&url);
    let err = store.get(&c.dep).await.expect_err("a symlink out of the cache").to_string();
    assert!(err.contains(&shown) && err.contains(&relative) && err.contains("outside the cache directory"), "{err}");
    assert!(store.near.get(digest_of(&c.dep)).await.unwrap().is_none());

    // A symlink that stays inside: followed.
    std::fs::remove_file(&nar).unwrap();
    std::fs::create_dir(dir.join("moved")).unwrap();
    std::fs::rename(tmp.path().join("secret").join(&relative), dir.join("moved/nar")).unwrap();
    std::os::unix::fs::symlink("../moved/nar", &nar).unwrap();
    let info = store.get(&c.dep).await.unwrap().expect("a symlink inside the cache");
    assert!(store.dump(&info).await == nix_dump(Path::new(&c.dep)));
}
