//! The store on S3, against a real Garage cluster on the loopback: stateless daemons over one
//! bucket serve one store, and a misconfigured bucket is an error at start naming its URL; and
//! the backend conformance suite (`conformance.rs`) over S3 (`conformance` below).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::garage::{Cluster, cluster, own_cluster, unique_prefix};
use crate::cache_common::MountProcess;
use crate::mount_common;
use crate::nar_common::{free_port, wait_for_path};

fn tvix_store() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tvix-store"))
}

/// A daemon process, killed on drop.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tvix-store daemon` on a unix socket with all three services on `url`.
fn daemon(c: &Cluster, url: &str, socket: &Path) -> Running {
    let mut command = tvix_store();
    c.credentials(&mut command);
    let child = command
        .arg("daemon")
        .args(["--blob-service-addr", url, "--directory-service-addr", url, "--path-info-service-addr", url])
        .arg("-l")
        .arg(socket)
        .stderr(std::fs::File::create(log_of(socket)).unwrap())
        .spawn()
        .unwrap();
    wait_for_path(socket, Duration::from_secs(30));
    Running { child }
}

/// Where [`daemon`] writes the daemon's stderr.
fn log_of(socket: &Path) -> std::path::PathBuf {
    socket.with_extension("log")
}

/// The last lines of a log file, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("--- {} ---\n{}", log.display(), lines[lines.len().saturating_sub(40)..].join("\n"))
}

fn through(socket: &Path) -> Vec<String> {
    let addr = format!("grpc+unix://{}", socket.display());
    ["--blob-service-addr", "--directory-service-addr", "--path-info-service-addr"]
        .iter()
        .flat_map(|flag| [flag.to_string(), addr.clone()])
        .collect()
}

/// Two daemons over one bucket: a tree imported through one is mounted, byte-exact, through the
/// other (neither keeps state of its own).
#[test]
fn two_daemons_over_one_bucket_serve_one_store() {
    let c = cluster(1);
    let tmp = tempfile::tempdir().unwrap();
    let url = c.url(&unique_prefix("two-daemons"));
    let (a, b) = (tmp.path().join("a.sock"), tmp.path().join("b.sock"));
    let _daemon_a = daemon(c, &url, &a);
    let _daemon_b = daemon(c, &url, &b);

    let src = tmp.path().join("s3-tree");
    mount_common::make_tree(&src, 7);
    let store_path = import_through(&a, &src);

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mount = tvix_store();
    mount.arg("mount").args(through(&b)).arg(&mnt);
    let _mount = MountProcess::start(mount, &mnt);
    let read = diff(&src, &mnt.join(store_path.trim_start_matches("/nix/store/")));
    assert!(read.status.success(), "the mount through daemon B differs: {}", said(&read));
}

/// Runs `tvix-store daemon` over `url` expecting it to refuse to start; returns its stderr.
fn refused_at_start(c: &Cluster, url: &str, secret: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = tvix_store()
        .env("AWS_ACCESS_KEY_ID", &c.key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .arg("daemon")
        .args([
            "--blob-service-addr",
            url,
            "--directory-service-addr",
            "memory://",
            "--path-info-service-addr",
            "memory://",
        ])
        .arg("-l")
        .arg(tmp.path().join("d.sock"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the daemon started over {url}: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "refusing took {:?}", started.elapsed());
    assert!(stderr.contains(url), "the error does not name the URL: {stderr}");
    assert!(!stderr.contains(&c.secret), "the error shows the secret: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    stderr
}

#[test]
fn a_misconfigured_bucket_is_an_error_at_start_naming_its_url() {
    let c = cluster(1);
    let wrong_secret =
        refused_at_start(c, &c.url("x"), "0000000000000000000000000000000000000000000000000000000000000000");
    assert!(wrong_secret.contains("access denied"), "{wrong_secret}");
    let missing = c.url("x").replace(&format!("//{}/", c.bucket), "//no-such-bucket/");
    assert!(refused_at_start(c, &missing, &c.secret).contains("no such bucket"));
    let port = free_port();
    let nobody = format!("objectstore+s3://{}/x?endpoint=http://127.0.0.1:{port}&region=garage", c.bucket);
    refused_at_start(c, &nobody, &c.secret);
}

fn import_through(socket: &Path, src: &Path) -> String {
    let out = tvix_store().arg("import").args(through(socket)).arg(src).output().unwrap();
    assert!(out.status.success(), "import of {} failed: {}", src.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn diff(src: &Path, mounted: &Path) -> std::process::Output {
    Command::new("diff").args(["-r", "--no-dereference"]).arg(src).arg(mounted).output().unwrap()
}

/// What a failed `diff` said: the differences, and its errors (an EIO from the mount shows
/// only there).
fn said(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Three nodes, replication factor 3: one node killed (SIGKILL) while a mount reads a tree in
/// full goes unnoticed by the reader, and an import with the node down completes and reads
/// back byte-exact.
#[test]
fn one_of_three_nodes_dying_during_a_read_and_an_import_goes_unnoticed() {
    let c = cluster(3);
    let tmp = tempfile::tempdir().unwrap();
    let url = c.url(&unique_prefix("node-loss"));
    let socket = tmp.path().join("d.sock");
    let _daemon = daemon(c, &url, &socket);
    let first = tmp.path().join("before-loss");
    mount_common::make_tree(&first, 21);
    std::fs::write(first.join("large.bin"), mount_common::data(24 << 20, 22)).unwrap();
    let first_path = import_through(&socket, &first);

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mount = tvix_store();
    mount.arg("mount").args(through(&socket)).arg(&mnt);
    let mount_log = tmp.path().join("mount.log");
    let _mount = MountProcess::start_logged(mount, &mnt, &mount_log);
    let logs = || format!("{}\n{}", tail(&mount_log), tail(&log_of(&socket)));
    let mounted = mnt.join(first_path.trim_start_matches("/nix/store/"));
    let reader = {
        let (first, mounted) = (first.clone(), mounted.clone());
        std::thread::spawn(move || (diff(&first, &mounted), Instant::now()))
    };
    std::thread::sleep(Duration::from_millis(100));
    let victim = c.pids[2];
    // SAFETY: kill(2) of a Garage node this test process started.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let killed = Instant::now();
    let (read, finished) = reader.join().unwrap();
    // Otherwise the test proved nothing about reading through the loss.
    assert!(finished > killed, "the read ended before the node was killed; read more");
    assert!(read.status.success(), "the read during the node loss differs: {}\n{}", said(&read), logs());

    let second = tmp.path().join("after-loss");
    mount_common::make_tree(&second, 23);
    let second_path = import_through(&socket, &second);
    let read = diff(&second, &mnt.join(second_path.trim_start_matches("/nix/store/")));
    assert!(read.status.success(), "the import with a node down differs: {}\n{}", said(&read), logs());
}

/// `tvix-store ARGS` with all three services on `url` and the cluster's credentials.
fn on_bucket(c: &Cluster, url: &str, args: &[&str]) -> std::process::Output {
    let mut command = tvix_store();
    c.credentials(&mut command);
    let out = command
        .args(args)
        .args(["--blob-service-addr", url, "--directory-service-addr", url, "--path-info-service-addr", url])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "{args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// kill -9 of the daemon during imports into the bucket: whatever import returned is intact,
/// no PathInfo refers to a missing object (`verify --contents` on the bucket itself), and gc
/// then removes the interrupted imports' objects.
#[test]
fn a_daemon_killed_during_imports_to_s3_leaves_a_verifiable_store() {
    let c = cluster(1);
    let tmp = tempfile::tempdir().unwrap();
    let url = c.url(&unique_prefix("kill-during-import"));
    let socket = tmp.path().join("d.sock");
    let mut interrupted = 0;
    let mut imported = Vec::new();
    for (round, delay) in [150u64, 500, 1200].into_iter().enumerate() {
        let src = tmp.path().join(format!("tree-{round}"));
        mount_common::make_tree(&src, 40 + round as u32);
        std::fs::write(src.join("large.bin"), mount_common::data(12 << 20, 50 + round as u32)).unwrap();
        // A killed daemon leaves its socket file; the next must not be taken as listening early.
        let _ = std::fs::remove_file(&socket);
        let daemon = daemon(c, &url, &socket);
        let import = tvix_store()
            .arg("import")
            .args(through(&socket))
            .arg(&src)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        drop(daemon);
        let out = import.wait_with_output().unwrap();
        if out.status.success() {
            imported.push((String::from_utf8(out.stdout).unwrap().trim().to_string(), src));
        } else {
            interrupted += 1;
        }
    }
    assert!(interrupted > 0, "no import was interrupted: the test did not test a crash");
    assert!(on_bucket(c, &url, &["verify", "--contents"]).status.success(), "the bucket does not verify");
    let out = on_bucket(c, &url, &["gc", "--grace", "0s"]);
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!report.contains("removed 0 objects"), "interrupted imports left nothing behind? {report}");
    let mut args = vec!["verify", "--contents", "--nar"];
    args.extend(imported.iter().map(|(p, _)| p.as_str()));
    assert!(on_bucket(c, &url, &args).status.success(), "gc broke a path whose import returned");
    let out = on_bucket(c, &url, &["gc", "--dry-run", "--grace", "0s"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("would remove 0 objects"), "gc left debris");
}

/// Every node of the cluster stopped (SIGSTOP: the engine hangs, as an unreachable one would):
/// a mount's read fails with EIO within its call timeout, the mount and the daemon stay up, and
/// reads succeed byte-exact once the nodes run again.
#[test]
fn all_nodes_down_is_eio_within_the_timeout_and_reads_recover() {
    let c = own_cluster(1, "all-down");
    let tmp = tempfile::tempdir().unwrap();
    let url = c.url(&unique_prefix("all-down"));
    let socket = tmp.path().join("d.sock");
    let mut daemon = daemon(&c, &url, &socket);
    let src = tmp.path().join("tree");
    mount_common::make_tree(&src, 60);
    let store_path = import_through(&socket, &src);

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let timeout = 3;
    let mut mount = tvix_store();
    mount.arg("mount").args(through(&socket)).args(["--timeout", &timeout.to_string()]).arg(&mnt);
    let _mount = MountProcess::start(mount, &mnt);
    let mounted = mnt.join(store_path.trim_start_matches("/nix/store/"));
    let signal_all = |signal| {
        for pid in &c.pids {
            // SAFETY: kill(2) of Garage nodes this test started.
            unsafe { libc::kill(*pid as libc::pid_t, signal) };
        }
    };
    signal_all(libc::SIGSTOP);
    let started = Instant::now();
    let read = std::fs::read(mounted.join("bin/data-exe"));
    let took = started.elapsed();
    signal_all(libc::SIGCONT);
    let err = read.expect_err("a read with every node stopped succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The call timeout plus the kernel's round trip; a hang would be far longer.
    assert!(took < Duration::from_secs(timeout * 3), "EIO took {took:?}");
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon died");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let again = diff(&src, &mounted);
        if again.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "reads did not recover: {}", String::from_utf8_lossy(&again.stdout));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `tvix-store ARGS… --*-service-addr URL` with no AWS variable of the test's environment and
/// `vars` instead (HOME, AWS_PROFILE, the files' variables).
fn with_only(vars: &[(&str, &Path)], profile: Option<&str>, url: &str, args: &[&str]) -> std::process::Output {
    let mut command = tvix_store();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    if let Some(profile) = profile {
        command.env("AWS_PROFILE", profile);
    }
    command
        .args(args)
        .args(["--blob-service-addr", url, "--directory-service-addr", url, "--path-info-service-addr", url])
        .output()
        .unwrap()
}

/// With the AWS key variables unset, a profile file alone gives key, region and endpoint: an
/// import through a named profile in `~/.aws` and a dump through the default profile of files
/// named by AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE reach the same bucket as the
/// environment's key does; a profile that does not exist is a one-line error at start naming
/// the profile and both files, without the secret.
#[test]
fn aws_profile_files_alone_reach_the_bucket() {
    let c = cluster(1);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".aws/credentials"),
        format!("[default]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n\n[tvix]\naws_access_key_id = {}\naws_secret_access_key = {}\n", c.key_id, c.secret),
    )
    .unwrap();
    std::fs::write(
        home.join(".aws/config"),
        format!(
            "[default]\nregion = garage\nendpoint_url = {0}\n\n[profile tvix]\nregion = garage\nendpoint_url = {0}\n",
            c.endpoint
        ),
    )
    .unwrap();
    let (credentials, config) = (tmp.path().join("creds"), tmp.path().join("conf"));
    std::fs::write(
        &credentials,
        format!("[default]\naws_access_key_id={}\naws_secret_access_key={}\n", c.key_id, c.secret),
    )
    .unwrap();
    std::fs::write(&config, format!("[default]\nregion=garage\nendpoint_url={}\n", c.endpoint)).unwrap();
    // The URL names only bucket and prefix: endpoint and region come from the profile.
    let url = format!("objectstore+s3://{}/{}", c.bucket, unique_prefix("profile"));
    let src = tmp.path().join("hello");
    std::fs::write(&src, b"read through a profile file\n").unwrap();

    let out = with_only(&[("HOME", &home)], Some("tvix"), &url, &["import", src.to_str().unwrap()]);
    assert!(out.status.success(), "import with a profile: {}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let files: [(&str, &Path); 3] =
        [("HOME", &home), ("AWS_SHARED_CREDENTIALS_FILE", &credentials), ("AWS_CONFIG_FILE", &config)];
    let through_files = with_only(&files, None, &url, &["dump", &path]);
    assert!(through_files.status.success(), "dump: {}", String::from_utf8_lossy(&through_files.stderr));
    let endpoint_url = format!("{url}?endpoint={}&region=garage", c.endpoint);
    let through_env = on_bucket(c, &endpoint_url, &["dump", &path]);
    assert!(through_env.status.success());
    assert_eq!(through_files.stdout, through_env.stdout);
    let needle = b"read through a profile file\n";
    assert!(through_env.stdout.windows(needle.len()).any(|w| w == needle), "the NAR does not hold the file");

    // `default` in ~/.aws has a wrong key: the profile chosen is the one used.
    let wrong = with_only(&[("HOME", &home)], None, &url, &["dump", &path]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && stderr.contains("access denied"),
        "the default profile's key was not used: {stderr}"
    );

    let started = Instant::now();
    let missing = with_only(&[("HOME", &home)], Some("no-such-profile"), &url, &["import", src.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&missing.stderr).to_string();
    assert!(!missing.status.success(), "import with a missing profile succeeded");
    assert!(started.elapsed() < Duration::from_secs(30), "refusing took {:?}", started.elapsed());
    assert!(stderr.contains("\"no-such-profile\""), "the error does not name the profile: {stderr}");
    assert!(stderr.contains(".aws/credentials") && stderr.contains(".aws/config"), "no file named: {stderr}");
    assert!(stderr.contains(&url), "the error does not name the URL: {stderr}");
    assert!(!stderr.contains(&c.secret), "the error shows the secret: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
}

/// The conformance suite's S3 entries: each a leaf on the Garage cluster of this process, under
/// a fresh key prefix.
mod conformance {
    use tvix_store::castore::blobservice::BlobService;
    use tvix_store::castore::directoryservice::DirectoryService;
    use tvix_store::compose::{self, Graph, Kind};
    use tvix_store::pathinfo::PathInfoService;

    use crate::conformance::{Under, blob, directory, path_info, seams};
    use crate::slow::garage;

    fn s3_graph(kind: Kind) -> Graph {
        let spec = garage::cluster(1).spec(&garage::unique_prefix("conformance"));
        Graph::of_leaf(kind, "s3", spec.url.clone(), compose::Leaf::S3(spec))
    }

    async fn s3_blob() -> Under<dyn BlobService> {
        Under { service: compose::build_blob(&s3_graph(Kind::Blob)).unwrap(), _keep: Vec::new() }
    }

    async fn s3_directory() -> Under<dyn DirectoryService> {
        Under { service: compose::build_directory(&s3_graph(Kind::Directory)).unwrap(), _keep: Vec::new() }
    }

    async fn s3_path_info() -> Under<dyn PathInfoService> {
        let blobs = compose::blob_service("memory://").unwrap();
        let directories = compose::directory_service("memory://").unwrap();
        let service = compose::build_path_info(&s3_graph(Kind::PathInfo), &blobs, &directories).unwrap();
        Under { service, _keep: Vec::new() }
    }

    async fn s3_store() -> compose::Opened {
        compose::open_graphs(s3_graph(Kind::Blob), s3_graph(Kind::Directory), s3_graph(Kind::PathInfo)).await.unwrap()
    }

    mod store_seams {
        use super::*;

        #[tokio::test(flavor = "multi_thread")]
        async fn s3() {
            seams::list_and_remove(&s3_store().await).await
        }
    }

    blob_backends! {
        s3 => s3_blob();
    }

    directory_backends! {
        s3 => s3_directory();
    }

    path_info_backends! {
        s3 => s3_path_info();
    }
}
