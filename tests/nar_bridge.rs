//! nar-bridge against the real Nix 2.8 as its client, on the loopback: `nix copy --from` us
//! into fresh stores with our signature required, a substituter setup realising a path from
//! us, `nix copy --to` us (every compression Nix writes) after which a mount shows the paths,
//! Range reads, and the status every kind of bad request gets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tvix_store::access::Rights;
use tvix_store::castore::blobservice::BlobService;
use tvix_store::castore::directoryservice::DirectoryService;
use tvix_store::import::ingest_nar;
use tvix_store::narbridge::{NarBridge, Options, UploadOptions};
use tvix_store::narinfo::{NarInfo, SigningKey};
use tvix_store::pathinfo::PathInfoService;
use tvix_store::store::Store;
use tvix_store::storepath::StorePath;

use crate::cache_common::*;
use crate::nar_common::*;

/// Nix remembers narinfo lookups on disk per cache URL; ports are reused between tests.
const NO_NARINFO_CACHE: [&str; 6] =
    ["--option", "narinfo-cache-negative-ttl", "0", "--option", "narinfo-cache-positive-ttl", "0"];

/// An in-process nar-bridge over memory services on a free loopback port.
struct Bridge {
    url: String,
    blob: Arc<dyn BlobService>,
    directory: Arc<dyn DirectoryService>,
    path_info: Arc<dyn PathInfoService>,
}

async fn serve(options: Options) -> Bridge {
    let store = Store::in_memory();
    let Store { blob, directory, path_info } = store.clone();
    let bridge = NarBridge::new(store, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = bridge.router();
    // Served as the command serves it: through the host layer, which tells each request its peer.
    let forever = tvix_store::host::shutdown_on(std::future::pending());
    tokio::spawn(tvix_store::host::serve_http(tvix_store::host::Listener::Tcp(listener), router, forever));
    Bridge { url, blob, directory, path_info }
}

impl Bridge {
    /// Puts the closure of `path` into the bridge's store as Nix describes it: every narinfo
    /// field (references, deriver, CA, Nix's signatures none) and NAR as `nix copy` writes them.
    async fn load(&self, path: &str) {
        let dir = tempfile::tempdir().unwrap();
        let to = format!("file://{}?compression=none", dir.path().display());
        nix("nix", &["copy".as_ref(), "--to".as_ref(), to.as_ref(), path.as_ref()]);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|e| e != "narinfo") {
                continue;
            }
            let narinfo = NarInfo::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let nar = std::fs::read(dir.path().join(&narinfo.url)).unwrap();
            let ingested = ingest_nar(self.blob.clone(), self.directory.clone(), nar.as_slice(), None).await.unwrap();
            assert_eq!(ingested.nar_sha256, narinfo.nar_hash);
            self.path_info.put(narinfo.to_path_info(ingested.node).unwrap()).await.unwrap();
        }
    }

    async fn get(&self, file: &str) -> reqwest::Response {
        http().get(format!("{}/{file}", self.url)).send().await.unwrap()
    }
}

/// An HTTP client (reqwest is built without a default TLS provider; ours is ring).
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A Nix command (with a fresh narinfo view of every cache).
fn nix_run(program: &str, args: &[&str]) -> std::process::Output {
    nix_command(program).args(args).args(NO_NARINFO_CACHE).output().unwrap()
}

fn signing_key(dir: &Path, name: &str) -> (SigningKey, String) {
    let (secret, public) = keypair(dir, name);
    (SigningKey::from_file(&secret).unwrap(), public)
}

/// `nix copy --from` us into a fresh store, our key the only one trusted and signatures
/// required: the copies are what Nix had. Under another key, the built (input-addressed) path
/// is refused, so the signature really is what let it in.
#[tokio::test(flavor = "multi_thread")]
async fn nix_copies_from_us_with_our_signature_required() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(tmp.path(), "nar-bridge-test-1");
    let (_, other) = keypair(tmp.path(), "nar-bridge-test-other");
    let bridge = serve(Options { signing_key: Some(key), ..Options::default() }).await;
    bridge.load(&c.top).await;

    let root = tmp.path().join("root");
    let copy = |keys: &str| {
        nix_run(
            "nix",
            &[
                "copy",
                "--from",
                &bridge.url,
                "--store",
                root.to_str().unwrap(),
                "--option",
                "require-sigs",
                "true",
                "--option",
                "trusted-public-keys",
                keys,
                &c.top,
            ],
        )
    };
    let refused = copy(&other);
    assert!(!refused.status.success(), "nix accepted {} signed by a key it does not trust", c.top);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("signature"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let copied = copy(&public);
    assert!(copied.status.success(), "nix copy --from failed: {}", String::from_utf8_lossy(&copied.stderr));
    for path in [&c.top, &c.dep] {
        let copy = root.join(path.trim_start_matches('/'));
        assert!(nix_dump(&copy) == nix_dump(Path::new(path)), "{path}: the copy differs from the original");
    }
}

/// The substituter setup of a Nix user: `substituters = <us>`, our key trusted; realising the
/// path in a store that lacks it fetches it (and its closure) from us.
#[tokio::test(flavor = "multi_thread")]
async fn a_substituter_setup_realises_a_path_from_us() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(tmp.path(), "nar-bridge-test-2");
    let bridge = serve(Options { signing_key: Some(key), ..Options::default() }).await;
    bridge.load(&c.top).await;
    let root = tmp.path().join("root");
    let out = nix_run(
        "nix-store",
        &[
            "--store",
            root.to_str().unwrap(),
            "--realise",
            &c.top,
            "--option",
            "substituters",
            &bridge.url,
            "--option",
            "trusted-public-keys",
            &public,
        ],
    );
    assert!(out.status.success(), "nix-store --realise failed: {}", String::from_utf8_lossy(&out.stderr));
    for path in [&c.top, &c.dep] {
        assert!(nix_dump(&root.join(path.trim_start_matches('/'))) == nix_dump(Path::new(path)), "{path}");
    }
}

/// `nix copy --to` us with each compression Nix 2.8 writes: the paths become PathInfos with
/// Nix's NAR hash, references and signatures, and render back to Nix's bytes.
#[tokio::test(flavor = "multi_thread")]
async fn nix_copies_to_us_with_every_compression() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = keypair(tmp.path(), "nar-bridge-test-3");
    for compression in ["xz", "zstd", "bzip2", "br", "none"] {
        let bridge = serve(Options { uploads: Some(UploadOptions { max_body: 1 << 30 }), ..Options::default() }).await;
        let to = format!("{}?compression={compression}&secret-key={}", bridge.url, secret.display());
        let out = nix_run("nix", &["copy", "--to", &to, &c.top]);
        assert!(out.status.success(), "{compression}: nix copy --to failed: {}", String::from_utf8_lossy(&out.stderr));
        for path in [&c.top, &c.dep] {
            let info = bridge
                .path_info
                .get(*StorePath::from_absolute_path(path).unwrap().digest())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{compression}: {path} not stored"));
            assert!(info.signatures.iter().any(|s| s.name == "nar-bridge-test-3"), "{compression}: {path}: signature");
            let nar = bridge
                .get(&format!(
                    "nar/{}-{}.nar",
                    hash_of(path),
                    tvix_store::storepath::nixbase32::encode(&info.nar_sha256)
                ))
                .await;
            assert_eq!(nar.status(), 200, "{compression}: {path}");
            assert!(nar.bytes().await.unwrap() == nix_dump(Path::new(path)), "{compression}: {path}: NAR differs");
        }
        let refs =
            bridge.path_info.get(*StorePath::from_absolute_path(&c.top).unwrap().digest()).await.unwrap().unwrap();
        assert_eq!(refs.references, vec![StorePath::from_absolute_path(&c.dep).unwrap()], "{compression}");
    }
}

/// The binary: `tvix-store nar-bridge --allow-uploads` on the default store, `nix copy --to`
/// it, and a mount of the same store (a client of the bridge's store) shows the paths.
#[test]
fn nix_copy_to_the_binary_then_a_mount_shows_the_paths() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // Uploads need a credential: without one the bridge refuses to start, saying how to give one.
    let refused = tvix_store()
        .env("TVIX_STORE_DIR", &store)
        .args(["nar-bridge", "--allow-uploads", "-l", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no client may upload"), "{refused:?}");
    // Nix sends the token from its netrc file, as HTTP basic authentication.
    let token = tmp.path().join("upload.token");
    std::fs::write(&token, "netrc-secret\n").unwrap();
    let netrc = tmp.path().join("netrc");
    std::fs::write(&netrc, "machine 127.0.0.1 login nix password netrc-secret\n").unwrap();
    let mut bridge = tvix_store()
        .env("TVIX_STORE_DIR", &store)
        .args(["nar-bridge", "--allow-uploads", "-l", &format!("127.0.0.1:{port}")])
        .arg("--upload-token-file")
        .arg(&token)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nar-bridge did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = nix_run("nix", &["copy", "--to", &url, &c.top, "--option", "netrc-file", netrc.to_str().unwrap()]);
    let uploaded = out.status.success();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(uploaded, "nix copy --to failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut mount = tvix_store();
        mount.env("TVIX_STORE_DIR", &store).arg("mount").arg(&mnt);
        let _mount = MountProcess::start(mount, &mnt);
        for path in [&c.top, &c.dep] {
            assert_same_tree(path, &mnt);
        }
    });
    let _ = bridge.kill();
    let _ = bridge.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Range reads of a NAR equal the same bytes of `nix-store --dump`: a head, a middle, a tail
/// by suffix length, a range running past the end; beyond the end is 416 with the size. HEAD
/// announces the length without a body, and zstd is served to a client that asks.
#[tokio::test(flavor = "multi_thread")]
async fn ranges_heads_and_zstd() {
    let c = closure();
    let bridge = serve(Options::default()).await;
    bridge.load(&c.top).await;
    let dump = nix_dump(Path::new(&c.dep));
    let len = dump.len();
    let narinfo = bridge.get(&format!("{}.narinfo", hash_of(&c.dep))).await.text().await.unwrap();
    let narinfo = NarInfo::parse(&narinfo).unwrap();
    let url = format!("{}/{}", bridge.url, narinfo.url);
    let client = http();
    let range = |r: String| client.get(&url).header("Range", r).send();
    for (header, want) in [
        ("bytes=0-99".to_string(), 0..100),
        (format!("bytes={}-{}", len / 2, len / 2 + 70_000), len / 2..len / 2 + 70_001),
        ("bytes=-1000".to_string(), len - 1000..len),
        (format!("bytes={}-{}", len - 10, len + 100), len - 10..len),
        (format!("bytes={}-", len - 1), len - 1..len),
    ] {
        let response = range(header.clone()).await.unwrap();
        assert_eq!(response.status(), 206, "{header}");
        let content_range = format!("bytes {}-{}/{len}", want.start, want.end - 1);
        assert_eq!(response.headers()["content-range"], content_range.as_str(), "{header}");
        assert!(response.bytes().await.unwrap() == dump[want.clone()], "{header}: bytes differ");
    }
    let beyond = range(format!("bytes={len}-")).await.unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.headers()["content-range"], format!("bytes */{len}").as_str());

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], len.to_string().as_str());
    assert_eq!(head.headers()["accept-ranges"], "bytes");

    let zstd = client.get(&url).header("Accept-Encoding", "zstd").send().await.unwrap();
    assert_eq!(zstd.headers()["content-encoding"], "zstd");
    let compressed = zstd.bytes().await.unwrap();
    assert!(compressed.len() < len);
    let mut plain = Vec::new();
    let mut decoder = async_compression::tokio::bufread::ZstdDecoder::new(compressed.as_ref());
    tokio::io::AsyncReadExt::read_to_end(&mut decoder, &mut plain).await.unwrap();
    assert!(plain == dump, "zstd body differs once decompressed");

    // The listing is Nix's.
    let cache = tempfile::tempdir().unwrap();
    let to = format!("file://{}?write-nar-listing=true&compression=none", cache.path().display());
    nix("nix", &["copy".as_ref(), "--to".as_ref(), to.as_ref(), c.top.as_ref()]);
    for path in [&c.top, &c.dep] {
        let ours = bridge.get(&format!("{}.ls", hash_of(path))).await.text().await.unwrap();
        let theirs = std::fs::read_to_string(cache.path().join(format!("{}.ls", hash_of(path)))).unwrap();
        assert_eq!(ours, theirs, "{path}: listing");
    }

    // Many clients at once all get the whole NAR.
    let fetches = (0..16).map(|_| async { client.get(&url).send().await.unwrap().bytes().await.unwrap() });
    for body in futures::future::join_all(fetches).await {
        assert!(body == dump, "a concurrent download differs");
    }
}

/// Sends raw bytes and returns the status line's code, the server having answered or closed.
/// A server refusing a body may answer and close before all of it is written: a failed write
/// is not an error here, the answer is what counts.
fn raw(addr: &str, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Every kind of bad request gets its status and a one-line reason, nothing of a rejected
/// upload is stored, and the server keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_their_status_and_store_nothing() {
    let c = closure();
    let tmp = tempfile::tempdir().unwrap();
    let reads = serve(Options::default()).await;
    reads.load(&c.dep).await;
    let status = |b: &Bridge, file: &str| {
        let url = format!("{}/{file}", b.url);
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(&reads, "abc.narinfo").await, 400);
    assert_eq!(status(&reads, "00000000000000000000000000000000.narinfo").await, 404);
    assert_eq!(status(&reads, "00000000000000000000000000000000.ls").await, 404);
    assert_eq!(status(&reads, "nar/garbage.nar").await, 400);
    assert_eq!(status(&reads, "nothing-here").await, 404);
    let reason = reads.get("abc.narinfo").await.text().await.unwrap();
    assert_eq!(reason.lines().count(), 1, "{reason:?}");
    assert!(reason.contains("abc"), "{reason:?}");
    // A NAR URL whose NAR hash is not the path's (any more): 404.
    let wrong = format!("nar/{}-{}.nar", hash_of(&c.dep), "0".repeat(52));
    assert_eq!(status(&reads, &wrong).await, 404);
    let client = http();
    let put = client.put(format!("{}/{}.narinfo", reads.url, hash_of(&c.dep))).body("x").send().await.unwrap();
    assert_eq!(put.status(), 403, "uploads are off by default");

    // Uploads on, behind a token, with a small limit; another token may also replace paths.
    let mut tokens = tvix_store::host::Tokens::default();
    tokens.add_secret("upload", "read,write".parse().unwrap(), "s3cret");
    tokens.add_secret("ops", "all".parse().unwrap(), "0ps");
    let gate = tvix_store::host::AccessPolicy::new(Rights::READ, Rights::READ, tokens);
    let uploads = serve(Options {
        uploads: Some(UploadOptions { max_body: 2_000_000 }),
        gate: Arc::new(gate),
        ..Options::default()
    })
    .await;
    let dep_nar = nix_dump(Path::new(&c.dep));
    let small = nix_dump(&{
        let f = tmp.path().join("small");
        std::fs::write(&f, b"small file").unwrap();
        f
    });
    let sha = |data: &[u8]| {
        use sha2::Digest;
        tvix_store::storepath::nixbase32::encode(&sha2::Sha256::digest(data))
    };
    let upload = |name: String, body: Vec<u8>, token: Option<&'static str>| {
        let mut request = client.put(format!("{}/{name}", uploads.url)).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let small_url = format!("nar/{}.nar", sha(&small));
    assert_eq!(upload(small_url.clone(), small.clone(), None).await, 401);
    assert_eq!(upload(small_url.clone(), small.clone(), Some("wrong")).await, 403);
    // A body that does not hash to its name.
    let misnamed = format!("nar/{}.nar", sha(b"something else"));
    assert_eq!(upload(misnamed.clone(), small.clone(), Some("s3cret")).await, 400);
    assert_eq!(client.head(format!("{}/{misnamed}", uploads.url)).send().await.unwrap().status(), 404);
    // Not a NAR at all; a compression we cannot read; a suffix nobody knows.
    assert_eq!(upload(format!("nar/{}.nar", sha(b"junk")), b"junk".to_vec(), Some("s3cret")).await, 400);
    assert_eq!(upload(format!("nar/{}.nar.lz4", sha(&small)), small.clone(), Some("s3cret")).await, 415);
    assert_eq!(upload(format!("nar/{}.nar.rar", sha(&small)), small.clone(), Some("s3cret")).await, 400);
    // Over the limit, announced or not. (The announced case is answered before the body is
    // read, so it is sent without one: a client still writing would see a broken pipe.)
    let host = uploads.url.trim_start_matches("http://").to_string();
    let announced = format!(
        "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        sha(&dep_nar),
        dep_nar.len()
    );
    assert_eq!(raw(&host, announced.as_bytes()), Some(413));
    let chunked = format!(
        "PUT /nar/{}.nar HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        sha(&dep_nar),
        dep_nar.len()
    );
    let mut request = chunked.into_bytes();
    request.extend_from_slice(&dep_nar);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(raw(&host, &request), Some(413));
    // Neither a length nor chunks: 411.
    let no_length =
        format!("PUT /{small_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(&host, no_length.as_bytes()), Some(411));
    // A client hanging up mid-upload: nothing arrives, the server serves on.
    let partial = format!(
        "PUT /{small_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: {}\r\n\r\n",
        small.len()
    );
    let mut stream = TcpStream::connect(&host).unwrap();
    stream.write_all(partial.as_bytes()).unwrap();
    stream.write_all(&small[..small.len() / 2]).unwrap();
    // Hanging up is the end of the stream mid-body (a FIN, as a closed socket sends); the
    // server has handled it once it closes its side: an answer, if any, then the end.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close a connection that hung up mid-upload: {e}"),
    }
    assert!(
        answer.is_empty() || !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 2"),
        "a truncated upload was accepted: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(client.head(format!("{}/{small_url}", uploads.url)).send().await.unwrap().status(), 404);

    // A narinfo whose NAR never arrived; then one that disagrees with the NAR that did.
    let info_text = reads.get(&format!("{}.narinfo", hash_of(&c.dep))).await.text().await.unwrap();
    let mut narinfo = NarInfo::parse(&info_text).unwrap();
    let name = format!("{}.narinfo", hash_of(&c.dep));
    narinfo.url = small_url.clone();
    narinfo.file_hash = None;
    narinfo.file_size = None;
    assert_eq!(upload(name.clone(), narinfo.render().into_bytes(), Some("s3cret")).await, 400);
    assert_eq!(upload(small_url.clone(), small.clone(), Some("s3cret")).await, 200);
    assert_eq!(client.head(format!("{}/{small_url}", uploads.url)).send().await.unwrap().status(), 200);
    assert_eq!(upload(name.clone(), narinfo.render().into_bytes(), Some("s3cret")).await, 400, "NarHash differs");
    // A narinfo for another path than its name says; a malformed one.
    assert_eq!(
        upload("00000000000000000000000000000000.narinfo".into(), narinfo.render().into_bytes(), Some("s3cret")).await,
        400
    );
    assert_eq!(upload(name.clone(), b"StorePath: nonsense\n".to_vec(), Some("s3cret")).await, 400);
    assert!(uploads.path_info.get(*StorePath::from_absolute_path(&c.dep).unwrap().digest()).await.unwrap().is_none());

    // A new path from the write token; then the same path with other contents: refused for
    // it, what is served stays the first upload's; the admin token may replace it.
    let replaced_path = "/nix/store/7777777777777777777777777777777z-uploaded";
    let narinfo_of = |nar: &[u8], url: &str| {
        format!(
            "StorePath: {replaced_path}\nURL: {url}\nCompression: none\nNarHash: sha256:{}\nNarSize: {}\nReferences: \n",
            sha(nar),
            nar.len()
        )
        .into_bytes()
    };
    let replaced_name = format!("{}.narinfo", &replaced_path[11..43]);
    assert_eq!(upload(replaced_name.clone(), narinfo_of(&small, &small_url), Some("s3cret")).await, 200);
    let other = nix_dump(&{
        let f = tmp.path().join("other");
        std::fs::write(&f, b"other contents").unwrap();
        f
    });
    let other_url = format!("nar/{}.nar", sha(&other));
    assert_eq!(upload(other_url.clone(), other.clone(), Some("s3cret")).await, 200);
    assert_eq!(upload(replaced_name.clone(), narinfo_of(&other, &other_url), Some("s3cret")).await, 403);
    let served = || async {
        let text = client.get(format!("{}/{replaced_name}", uploads.url)).send().await.unwrap().text().await.unwrap();
        NarInfo::parse(&text).unwrap().nar_hash
    };
    let sha256 = |data: &[u8]| -> [u8; 32] {
        sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), data)).into()
    };
    assert_eq!(served().await, sha256(&small), "a write token replaced a path's contents");
    assert_eq!(upload(replaced_name.clone(), narinfo_of(&other, &other_url), Some("0ps")).await, 200);
    assert_eq!(served().await, sha256(&other), "the admin's replacement is served");

    // And the server still serves.
    assert_eq!(status(&uploads, "nix-cache-info").await, 200);
}

/// `keyfile-signing` in a composition file: a PathInfo put through the daemon (by an import)
/// is stored with a signature by the key, valid under Nix's fingerprint rules.
#[test]
fn keyfile_signing_signs_what_is_put_through_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keypair(tmp.path(), "nar-bridge-test-4");
    let t = tmp.path().display();
    let config = tmp.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "[blobservices.root]\nurl = \"objectstore+file://{t}/blobs\"\n\
             [directoryservices.root]\nurl = \"redb://{t}/directories.redb\"\n\
             [pathinfoservices.root]\ntype = \"keyfile-signing\"\ninner = \"db\"\nkeyfile = \"{}\"\n\
             [pathinfoservices.db]\nurl = \"redb://{t}/pathinfo.redb\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let socket = tmp.path().join("daemon.sock");
    let mut daemon = tvix_store()
        .arg("daemon")
        .arg("--store-config")
        .arg(&config)
        .arg("-l")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_path(&socket, Duration::from_secs(20));
    let src = tmp.path().join("signed-src");
    std::fs::write(&src, b"signed by the daemon\n").unwrap();
    let addr = format!("grpc+unix://{}", socket.display());
    let out = tvix_store()
        .arg("import")
        .args(["--blob-service-addr", &addr, "--directory-service-addr", &addr, "--path-info-service-addr", &addr])
        .arg(&src)
        .output()
        .unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    let path = StorePath::from_absolute_path(String::from_utf8(out.stdout).unwrap().trim()).unwrap();

    let stored = tvix_store::compose::path_info_service(&format!("redb://{t}/pathinfo.redb")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let info = runtime.block_on(stored.get(*path.digest())).unwrap().expect("the import's PathInfo");
    let key = tvix_store::narinfo::VerifyingKey::parse(&public).unwrap();
    let fingerprint =
        tvix_store::narinfo::fingerprint(&info.store_path, &info.nar_sha256, info.nar_size, &info.references);
    let signature = info.signatures.iter().find(|s| s.name == "nar-bridge-test-4").expect("signed by the key");
    assert!(key.verify(&fingerprint, signature), "the signature does not verify");
}

/// `-l PATH` serves on a unix socket (for a reverse proxy in front).
#[test]
fn the_binary_serves_on_a_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("nar-bridge.sock");
    let mut bridge = tvix_store()
        .env("TVIX_STORE_DIR", tmp.path().join("store"))
        .arg("nar-bridge")
        .arg("-l")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) {
            stream.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "nar-bridge did not listen on {}", socket.display());
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = bridge.kill();
    let _ = bridge.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("StoreDir: /nix/store\n"), "{answer}");
}
