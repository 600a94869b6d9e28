//! Substituting from real Nix binary caches: caches written by Nix 2.8 itself (`nix copy --to
//! 'file://DIR?compression=…&secret-key=…'`), served by a real HTTP server on the loopback
//! (Python's http.server) or read as a directory, including tampered narinfos and NARs. What
//! comes out must be what Nix has: `nix-store --dump` bytes, NAR hash, references, signatures.

mod nar_common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nar_common::*;
use tvix_store::castore::Error;
use tvix_store::castore::blobservice::BlobService;
use tvix_store::castore::directoryservice::DirectoryService;
use tvix_store::compose::{self, Kind};
use tvix_store::nar::write_nar;
use tvix_store::pathinfo::{PathInfo, PathInfoService};
use tvix_store::storepath::StorePath;

/// Two store paths built by Nix: `top` refers to `dep`. Built once per test process.
struct Closure {
    dep: String,
    top: String,
}

fn closure() -> &'static Closure {
    static BUILT: std::sync::OnceLock<Closure> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("substitute-dep-src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        write_file(&src.join("lib/data.bin"), 3_000_000, false);
        write_file(&src.join("run"), 100, true);
        std::os::unix::fs::symlink("lib/data.bin", src.join("link")).unwrap();
        let dep = nix_add(&src);
        let expr = dir.path().join("top.nix");
        std::fs::write(
            &expr,
            format!(
                r#"let dep = builtins.storePath "{dep}"; in derivation {{
  name = "substitute-top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/bin/mkdir $out; echo ${{dep}} > $out/dep; /bin/ln -s ${{dep}}/run $out/run" ];
}}"#
            ),
        )
        .unwrap();
        let top = String::from_utf8(nix("nix-build", &["--no-out-link".as_ref(), expr.as_os_str()])).unwrap();
        Closure { dep, top: top.trim().to_string() }
    })
}

/// A signing key pair made by Nix: (secret key file, public key).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = dir.join(format!("{name}.sec"));
    let public = dir.join(format!("{name}.pub"));
    nix("nix-store", &["--generate-binary-cache-key".as_ref(), name.as_ref(), secret.as_os_str(), public.as_os_str()]);
    (secret, std::fs::read_to_string(&public).unwrap().trim().to_string())
}

/// A binary cache in `dir` holding the closure of `path`, written by `nix copy`.
fn nix_copy_to_cache(dir: &Path, path: &str, compression: &str, secret: &Path) {
    let to = format!("file://{}?compression={compression}&secret-key={}", dir.display(), secret.display());
    nix("nix", &["copy".as_ref(), "--to".as_ref(), to.as_ref(), path.as_ref()]);
}

/// Python's http.server on a free loopback port, serving `dir`; killed on drop.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn serve(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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
    nix_copy_to_cache(&dir, &c.dep, "xz", &secret);
    let file = |keys: &str| format!("nix+file://{}?trusted-public-keys={}", dir.display(), keys);
    assert!(store_over(&file(&other_public)).get(&c.dep).await.unwrap().is_none(), "signed by an untrusted key");
    assert!(store_over(&file(&public)).get(&c.dep).await.unwrap().is_some());
    // No trusted keys: signatures are not checked.
    assert!(store_over(&format!("nix+file://{}", dir.display())).get(&c.dep).await.unwrap().is_some());

    // A narinfo whose fingerprint changed (another NarSize) no longer verifies: not there.
    let narinfo = narinfo_file(&dir, &c.dep);
    let text = std::fs::read_to_string(&narinfo).unwrap();
    let nar_size = text.lines().find_map(|l| l.strip_prefix("NarSize: ")).unwrap().to_string();
    std::fs::write(&narinfo, text.replace(&format!("NarSize: {nar_size}"), "NarSize: 12")).unwrap();
    assert!(store_over(&file(&public)).get(&c.dep).await.unwrap().is_none(), "a tampered narinfo verified");
}

fn narinfo_file(cache: &Path, path: &str) -> PathBuf {
    let basename = path.trim_start_matches("/nix/store/");
    cache.join(format!("{}.narinfo", &basename[..32]))
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
    let _mount = MountProcess {
        child: tvix_store()
            .env("TVIX_STORE_DIR", tmp.path().join("store"))
            .args(["mount", "--substituter", &server.url, "--trusted-public-key", &public])
            .arg(&mnt)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        path: mnt.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mounted = || std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&mnt.display().to_string());
    while !mounted() {
        assert!(Instant::now() < deadline, "mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    for path in [&c.top, &c.dep] {
        let basename = path.trim_start_matches("/nix/store/");
        let status =
            Command::new("diff").args(["-r", "--no-dereference"]).arg(path).arg(mnt.join(basename)).status().unwrap();
        assert!(status.success(), "{path} differs in the mount");
    }
    assert!(!mnt.join("00000000000000000000000000000000-not-there").exists());
}

/// A `tvix-store mount` child, killed and unmounted on drop (also when a check failed).
struct MountProcess {
    child: Child,
    path: PathBuf,
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).stderr(Stdio::null()).status();
    }
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
    let ours = |args: &[&str]| {
        let out = tvix_store().env("TVIX_STORE_DIR", &store_dir).args(args).output().unwrap();
        assert!(out.status.success(), "tvix-store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = ours(&["substitute", "--substituter", &cache, "--trusted-public-key", &public, &c.top]);
    let mut printed: Vec<&str> = printed.lines().collect();
    printed.sort();
    let mut want = vec![c.dep.as_str(), c.top.as_str()];
    want.sort();
    assert_eq!(printed, want);

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
