//! `--metrics-listen`: a mount's Prometheus endpoint serves valid text whose counters move
//! after a read through the mount; an address in use is an error at start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use crate::cache_common::MountProcess;
use crate::nar_common::{MEMORY_SERVICES, free_port, sample, scrape, tvix_store, wait_for_path};

/// Every line is a comment or `name{labels} value` (the Prometheus text format).
fn assert_valid_exposition(text: &str) {
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        assert!(value == "+Inf" || value == "NaN" || value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels in {line:?}");
        }
    }
}

/// `src` imported into a fresh default store under `tmp`, mounted with metrics served on a
/// free port: the mount (alive while held), the port, and the store path's directory in it.
fn import_and_mount(tmp: &std::path::Path, src: &std::path::Path) -> (MountProcess, u16, std::path::PathBuf) {
    let store = tmp.join("store");
    let out = tvix_store().env("TVIX_STORE_DIR", &store).arg("import").arg(src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store_path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = free_port();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mount = tvix_store();
    mount.env("TVIX_STORE_DIR", &store).args(["mount", "--metrics-listen", &format!("127.0.0.1:{port}")]).arg(&mnt);
    let mount = MountProcess::start(mount, &mnt);
    (mount, port, mnt.join(store_path.trim_start_matches("/nix/store/")))
}

#[test]
fn a_mounts_counters_move_after_a_read() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("measured.bin");
    std::fs::write(&src, vec![7u8; 300_000]).unwrap();
    let (_mount, port, mounted) = import_and_mount(tmp.path(), &src);
    let mnt = tmp.path().join("mnt");

    let before = scrape(port);
    let reads_before = sample(&before, "tvix_fs_operations_total", &["op=\"read\""]).unwrap_or(0.0);
    let data = std::fs::read(&mounted).unwrap();
    assert_eq!(data.len(), 300_000);
    let after = scrape(port);
    assert_valid_exposition(&after);
    let reads =
        sample(&after, "tvix_fs_operations_total", &["op=\"read\"", "outcome=\"ok\""]).expect("no read counter");
    assert!(reads > reads_before, "reads did not move: {reads_before} -> {reads}\n{after}");
    let bytes = sample(&after, "tvix_fs_read_bytes_total", &[]).expect("no byte counter");
    assert!(bytes >= 300_000.0, "{bytes} bytes read");
    assert!(sample(&after, "tvix_fs_operation_seconds_count", &["op=\"lookup\""]).unwrap_or(0.0) >= 1.0, "{after}");
    assert!(sample(&after, "tvix_fs_inodes", &[]).unwrap_or(0.0) >= 1.0, "{after}");
    // A lookup of something missing is counted with its outcome.
    assert!(!mnt.join("00000000000000000000000000000000-missing").exists());
    let missing = scrape(port);
    assert!(
        sample(&missing, "tvix_fs_operations_total", &["op=\"lookup\"", "outcome=\"not_found\""]).unwrap_or(0.0) >= 1.0
    );
}

#[test]
fn prefetch_hits_are_counted_when_a_directory_is_read_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("small-files");
    std::fs::create_dir(&src).unwrap();
    for i in 0..40u32 {
        std::fs::write(src.join(format!("f{i:02}")), vec![i as u8; 2000 + i as usize]).unwrap();
    }
    let (_mount, port, mounted) = import_and_mount(tmp.path(), &src);
    // tar reads the files in listing order (into a file: writing to /dev/null, GNU tar skips reading the files at all).
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(tmp.path().join("out.tar"))
        .arg("-C")
        .arg(&mounted)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let after = scrape(port);
    let hits = sample(&after, "tvix_fs_prefetch_reads_total", &["result=\"hit\""]).unwrap_or(0.0);
    assert!(hits >= 1.0, "no read of 40 small files in order found its bytes prefetched:\n{after}");
}

#[test]
fn a_metrics_address_in_use_is_an_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .args(["daemon", "-l", "127.0.0.1:0", "--metrics-listen", &addr])
        .args(MEMORY_SERVICES)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot serve metrics on {addr}")), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn the_daemon_counts_rpcs_and_nar_bridge_counts_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("d.sock");
    let port = free_port();
    let memory = MEMORY_SERVICES;
    let mut daemon = tvix_store()
        .args(["daemon", "--metrics-listen", &format!("127.0.0.1:{port}"), "-l"])
        .arg(&socket)
        .args(memory)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_path(&socket, std::time::Duration::from_secs(20));
    let addr = format!("grpc+unix://{}", socket.display());
    let out = tvix_store()
        .args(["path-info", "--path-info-service-addr", &addr])
        .args(&memory[..4])
        .arg("/nix/store/00000000000000000000000000000000-x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = scrape(port);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_valid_exposition(&text);
    let gets = sample(&text, "tvix_grpc_requests_total", &["method=\"/tvix.store.v1.PathInfoService/Get\""]);
    assert!(gets.unwrap_or(0.0) >= 1.0, "{text}");

    let http = free_port();
    let metrics = free_port();
    let mut bridge = tvix_store()
        .args(["nar-bridge", "-l", &format!("127.0.0.1:{http}"), "--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(memory)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut stream = loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", http)) {
            break stream;
        }
        assert!(std::time::Instant::now() < deadline, "nar-bridge did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    stream
        .write_all(b"GET /00000000000000000000000000000000.narinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let text = scrape(metrics);
    let _ = bridge.kill();
    let _ = bridge.wait();
    assert_valid_exposition(&text);
    let misses = sample(&text, "tvix_http_requests_total", &["kind=\"narinfo\"", "status=\"404\""]);
    assert!(misses.unwrap_or(0.0) >= 1.0, "{text}");
}

/// A daemon process, killed on drop (also when a check failed).
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Made-up method names (issue #26: 5,000 of them made the scrape 22 MB) are one `other`
/// series however many there are; real methods keep their own label.
#[test]
fn made_up_method_names_share_one_other_series() {
    use futures::StreamExt;
    use tvix_store::proto::castore::StatBlobRequest;
    use tvix_store::proto::castore::blob_service_client::BlobServiceClient;
    const CALLS: usize = 2_000;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("d.sock");
    let port = free_port();
    let _daemon = Daemon(
        tvix_store()
            .args(["daemon", "--metrics-listen", &format!("127.0.0.1:{port}"), "-l"])
            .arg(&socket)
            .args(MEMORY_SERVICES)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_path(&socket, std::time::Duration::from_secs(20));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The channel's connector spawns on the runtime it is made in.
    let _inside = rt.enter();
    let channel = tvix_store::compose::channel(&format!("grpc+unix://{}", socket.display())).unwrap();

    // One real call first: its label is there before the flood.
    let stat = StatBlobRequest { digest: vec![7u8; 32].into(), send_chunks: false, send_bao: false };
    let status = rt.block_on(BlobServiceClient::new(channel.clone()).stat(stat)).unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let before = scrape(port);

    let made_up = |i: usize| match i % 4 {
        0 => format!("/tvix.castore.v1.BlobService/xyz-{i}"),
        1 => format!("/grpc.health.v1.Health/xyz-{i}"),
        2 => format!("/tvix_store.admin.v1.StoreAdmin/xyz-{i}"),
        _ => format!("/tvix.madeup{i}.v1.Service/Read"),
    };
    let codes: Vec<tonic::Code> = rt.block_on(
        futures::stream::iter(0..CALLS)
            .map(|i| {
                let channel = channel.clone();
                let path = made_up(i);
                async move {
                    let mut grpc = tonic::client::Grpc::new(channel);
                    grpc.ready().await.unwrap();
                    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().unwrap();
                    let codec = tonic_prost::ProstCodec::<(), ()>::default();
                    grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err().code()
                }
            })
            .buffer_unordered(32)
            .collect(),
    );
    assert!(codes.iter().all(|c| *c == tonic::Code::Unimplemented), "{:?}", &codes[..4]);
    let after = scrape(port);
    eprintln!("scrape: {} bytes before {CALLS} made-up calls, {} bytes after", before.len(), after.len());
    assert_valid_exposition(&after);
    assert_eq!(sample(&after, "tvix_grpc_requests_total", &["method=\"other\""]), Some(CALLS as f64), "{after}");
    assert!(!after.contains("xyz-") && !after.contains("madeup"), "a made-up name became a label:\n{after}");
    // One more series (a counter and a histogram's few lines), whatever the number of calls.
    assert!(after.len() < before.len() + 4096, "{} bytes after, {} before", after.len(), before.len());
    let stats = sample(&after, "tvix_grpc_requests_total", &["method=\"/tvix.castore.v1.BlobService/Stat\""]);
    assert_eq!(stats, Some(1.0), "{after}");
}
