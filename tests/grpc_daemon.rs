//! The `tvix-store daemon` process: health and reflection, clean shutdown, stale and busy
//! sockets, clients surviving a daemon crash, and the embedded default store shared between a
//! running daemon and other commands.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tvix_store::castore::blobservice::BlobService;
use tvix_store::castore::{B3Digest, Error};

use crate::grpc_common::{Daemon, data};

const OUR_SERVICES: [&str; 5] = [
    "tvix.castore.v1.BlobService",
    "tvix.castore.v1.DirectoryService",
    "tvix.store.v1.PathInfoService",
    // Our own extensions, each in its own package.
    "tvix_store.admin.v1.StoreAdmin",
    "tvix_store.ext.v1.BlobBatchService",
];

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    for daemon in [Daemon::unix(), Daemon::tcp()] {
        let mut health = HealthClient::new(tvix_store::compose::channel(&daemon.addr).unwrap());
        for service in std::iter::once("").chain(OUR_SERVICES) {
            let response = health
                .check(HealthCheckRequest { service: service.to_string() })
                .await
                .unwrap_or_else(|s| panic!("health check of {service:?}: {s:?}"))
                .into_inner();
            assert_eq!(response.status, ServingStatus::Serving as i32, "health of {service:?}");
        }
        let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_and_v1alpha_list_and_describe_our_services() {
    let daemon = Daemon::unix();
    let channel = tvix_store::compose::channel(&daemon.addr).unwrap();

    use tonic_reflection::pb::v1 as r1;
    /// Sends one v1 reflection request and returns the answer.
    async fn ask_v1(
        channel: &tonic::transport::Channel,
        request: r1::server_reflection_request::MessageRequest,
    ) -> Option<r1::server_reflection_response::MessageResponse> {
        let request = r1::ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let mut responses = r1::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        responses.message().await.unwrap().expect("a reflection response").message_response
    }
    let answer = ask_v1(&channel, r1::server_reflection_request::MessageRequest::ListServices(String::new())).await;
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = answer else {
        panic!("expected a service list, got {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in OUR_SERVICES.into_iter().chain(["grpc.health.v1.Health"]) {
        assert!(names.iter().any(|n| n == service), "v1 reflection must list {service}: {names:?}");
    }

    // Describing a service needs its file descriptor: what grpcurl does for `describe`.
    let symbol =
        r1::server_reflection_request::MessageRequest::FileContainingSymbol("tvix.store.v1.PathInfoService".into());
    let answer = ask_v1(&channel, symbol).await;
    let Some(r1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) = answer else {
        panic!("expected file descriptors, got {answer:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    use tonic_reflection::pb::v1alpha as ra;
    let request = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = ra::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("a reflection response");
    let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) = response.message_response
    else {
        panic!("expected a service list, got {:?}", response.message_response);
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in OUR_SERVICES {
        assert!(names.iter().any(|n| n == service), "v1alpha reflection must list {service}: {names:?}");
    }
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly_and_remove_the_socket() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut daemon = Daemon::unix();
        let socket = daemon.addr.trim_start_matches("grpc+unix://").to_string();
        assert!(Path::new(&socket).exists());
        daemon.signal(signal);
        let status = daemon.wait_exit();
        assert!(status.success(), "daemon exit after signal {signal}: {status}");
        assert!(!Path::new(&socket).exists(), "socket {socket} must be removed on shutdown");
    }
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_is_not() {
    let mut first = Daemon::unix();
    let socket = first.addr.trim_start_matches("grpc+unix://").to_string();
    // SIGKILL leaves the socket file behind; a new daemon must take its place.
    first.kill();
    assert!(Path::new(&socket).exists(), "a killed daemon cannot remove its socket");
    first.restart();
    // While it runs, a second daemon on the same socket must refuse to start.
    let out = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .args(["daemon", "--blob-service-addr", "memory://", "--directory-service-addr", "memory://"])
        .args(["--path-info-service-addr", "memory://", "-l", &socket])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second daemon on a live socket must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already listening"), "stderr: {stderr}");
    // Nor does it replace a file that is not a socket.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .args(["daemon", "--blob-service-addr", "memory://", "--directory-service-addr", "memory://"])
        .args(["--path-info-service-addr", "memory://", "-l"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

async fn put(service: &dyn BlobService, content: &[u8]) -> Result<B3Digest, Error> {
    let mut w = service.open_write().await;
    w.write_all(content).await.map_err(|e| Error::Storage(e.to_string()))?;
    w.close().await
}

/// Runs `call` and requires it to fail (not hang) within 10 s; returns how long it took.
async fn fails_promptly<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Duration {
    let start = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Err(_) => panic!("{what}: hung for 10 s instead of failing"),
        Ok(Ok(v)) => panic!("{what}: succeeded without a daemon: {v:?}"),
        Ok(Err(e)) => assert!(matches!(e, Error::Unavailable(_)), "{what}: {e:?}"),
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_fail_promptly_when_the_daemon_dies_and_recover_when_it_returns() {
    for mut daemon in [Daemon::unix(), Daemon::tcp()] {
        let client = tvix_store::compose::blob_service(&daemon.addr).unwrap();
        let content = data(3_000_000, 3);
        let digest = put(client.as_ref(), &content).await.unwrap();

        daemon.kill();
        fails_promptly("has() after SIGKILL", client.has(&digest)).await;
        fails_promptly("put() after SIGKILL", put(client.as_ref(), b"x")).await;

        daemon.restart();
        // Same client object: it reconnects by itself. (The daemon's blobs are on disk.)
        assert!(client.has(&digest).await.unwrap());
        assert_eq!(put(client.as_ref(), &content).await.unwrap(), digest);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_to_a_hung_daemon_fail_instead_of_hanging() {
    let daemon = Daemon::unix();
    let client = tvix_store::compose::blob_service(&daemon.addr).unwrap();
    let digest = put(client.as_ref(), b"hello").await.unwrap();
    // A stopped process keeps its socket open but never answers: only HTTP/2 keepalive notices.
    daemon.stop();
    let took = fails_promptly("has() on a stopped daemon", client.has(&digest)).await;
    eprintln!("call to a stopped daemon failed after {took:?}");
    // A new client, which has to connect first, must not hang either.
    let fresh = tvix_store::compose::blob_service(&daemon.addr).unwrap();
    let took = fails_promptly("has() on a stopped daemon, new connection", fresh.has(&digest)).await;
    eprintln!("new connection to a stopped daemon failed after {took:?}");
    daemon.signal(libc::SIGCONT);
    let mut recovered = false;
    for _ in 0..50 {
        if client.has(&digest).await.unwrap_or(false) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "client must work again once the daemon continues");
}

/// Runs a tvix-store command on the default store in `store_dir`. A command that did not find
/// the owner's socket would wait for the store lock forever: it gets 60 s, then fails the test.
fn tvix_store(store_dir: &Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .args(args)
        .env("TVIX_STORE_DIR", store_dir)
        .env_remove("BLOB_SERVICE_ADDR")
        .env_remove("DIRECTORY_SERVICE_ADDR")
        .env_remove("PATH_INFO_SERVICE_ADDR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tvix-store");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("tvix-store {args:?} hung (waiting for the store lock?): {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

fn import(store_dir: &Path, path: &Path) -> String {
    let out = tvix_store(store_dir, &["import", path.to_str().unwrap()]);
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn path_info_ok(store_dir: &Path, store_path: &str) -> bool {
    let out = tvix_store(store_dir, &["path-info", store_path]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("path-info output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    json[0]["valid"] != serde_json::Value::Bool(false) && json[0]["narHash"].is_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn default_store_is_shared_between_the_daemon_and_other_commands() {
    let store = tempfile::tempdir().unwrap();
    let store_dir = store.path();
    let src = tempfile::tempdir().unwrap();
    let file_a = src.path().join("a.txt");
    let file_b = src.path().join("b.txt");
    std::fs::write(&file_a, b"imported while the daemon owns the store\n").unwrap();
    std::fs::write(&file_b, b"imported with no daemon running\n").unwrap();

    // With a daemon owning the store, other commands go through its socket: they would
    // otherwise block waiting for the store lock the daemon holds.
    let mut daemon = Daemon::default_store(store_dir);
    assert!(store_dir.join("daemon.sock").exists());
    let path_a = import(store_dir, &file_a);
    assert!(path_a.starts_with("/nix/store/"), "{path_a}");
    assert!(path_info_ok(store_dir, &path_a));
    // What the command stored went to the daemon, which serves it on the store's socket.
    let path_info =
        tvix_store::compose::path_info_service(&tvix_store::compose::defaultstore::socket_addr(store_dir)).unwrap();
    let basename = path_a.trim_start_matches("/nix/store/");
    let sp = tvix_store::storepath::StorePath::from_basename(basename).unwrap();
    let info = path_info.get(*sp.digest()).await.unwrap().expect("PathInfo via the owner's socket");
    assert_eq!(info.store_path, sp);

    // Clean shutdown releases the lock and removes the socket ...
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success());
    assert!(!store_dir.join("daemon.sock").exists());
    // ... and then a command opens the store's files itself.
    let path_b = import(store_dir, &file_b);
    assert!(path_info_ok(store_dir, &path_a), "data written through the daemon persists");
    assert!(path_info_ok(store_dir, &path_b));

    // A new daemon serves what the command stored on its own.
    daemon.restart();
    assert!(path_info_ok(store_dir, &path_b));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_of_several_daemons_fails_over_when_one_goes_away() {
    // Two stateless daemons over one blob store (as two daemons over one bucket would be).
    let shared = tempfile::tempdir().unwrap();
    let services = [
        "--blob-service-addr".to_string(),
        format!("objectstore+file://{}", shared.path().display()),
        "--directory-service-addr".into(),
        "memory://".into(),
        "--path-info-service-addr".into(),
        "memory://".into(),
    ];
    let mut first = Daemon::tcp_with(&services);
    let second = Daemon::tcp_with(&services);
    let addr = format!("{}?fallback={}", first.addr, second.addr.trim_start_matches("grpc+http://"));
    let blobs = tvix_store::compose::blob_service(&addr).unwrap();
    let content = data(200_000, 5);
    let mut w = blobs.open_write().await;
    w.write_all(&content).await.unwrap();
    let digest = w.close().await.unwrap();

    first.kill();
    // The call that finds the first daemon gone fails; every later one goes to the second.
    let mut failed = 0;
    for _ in 0..20 {
        match blobs.has(&digest).await {
            Ok(found) => assert!(found, "the second daemon does not see the shared blob"),
            Err(Error::Unavailable(_)) => failed += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(failed <= 1, "{failed} of 20 calls failed after the first daemon went away");
    let mut back = Vec::new();
    use tokio::io::AsyncReadExt;
    blobs.open_read(&digest).await.unwrap().unwrap().read_to_end(&mut back).await.unwrap();
    assert!(back == content);

    // A single address without fallbacks keeps failing, as before.
    let alone = tvix_store::compose::blob_service(&first.addr).unwrap();
    assert!(matches!(alone.has(&digest).await, Err(Error::Unavailable(_))));
}

#[test]
fn a_daemon_and_a_mount_waiting_for_the_store_lock_end_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let store = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store.path()).unwrap();
    // Another process holds the store's lock (flock(2), as ours takes it) without serving.
    // -o: the lock stays with flock itself, so killing flock releases it.
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(store.path().join("lock"))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock (util-linux) is installed");
    let mount_point = mnt.path().display().to_string();
    for args in [vec!["daemon"], vec!["mount", mount_point.as_str()]] {
        let mut waiting = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
            .args(&args)
            .env("TVIX_STORE_DIR", store.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(waiting.stderr.take().unwrap());
        let mut line = String::new();
        // Observable: it says it waits (the lock is taken, the holder does not serve).
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("waiting for another tvix-store process"), "{args:?}: {line}");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(waiting.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = waiting.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{args:?} still waiting 10 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{args:?}: {status}");
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&mount_point), "it mounted anyway");

    // A tvix-store process holding the lock is named by its pid.
    let daemon = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .arg("daemon")
        .env("TVIX_STORE_DIR", store.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Guard(daemon);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !store.path().join("daemon.sock").exists() {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .arg("daemon")
        .env("TVIX_STORE_DIR", store.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(second.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains(&format!("(pid {})", daemon.0.id())), "{line}");
    second.kill().unwrap();
    second.wait().unwrap();
    drop(daemon);
}

/// Kills the child when dropped (a failed assertion must not leave a daemon behind).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
