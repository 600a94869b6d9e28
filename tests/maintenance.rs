//! `tvix-store verify`, `delete` and `gc` end to end on the embedded default store: run by this
//! process on the store's files, and through a daemon owning the store (the admin extension
//! over its socket), with problems made by hand in the files and through the gRPC API.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use tvix_store::castore::{B3Digest, Node};
use tvix_store::pathinfo::{PathInfo, PathInfoService};
use tvix_store::storepath::StorePath;

use crate::grpc_common::{Daemon, data};
use crate::nar_common::{self, nix_dump, tvix_store};

fn run(store: &Path, args: &[&str]) -> Output {
    nar_common::run_on_store(store, args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Imports `path`, returning its store path.
fn import(store: &Path, path: &Path) -> String {
    let out = run(store, &["import", &path.display().to_string()]);
    assert!(out.status.success(), "import of {} failed", path.display());
    stdout(&out).trim().to_string()
}

/// A directory `name` under `base` holding one file per `(name, len, seed)`.
fn tree(base: &Path, name: &str, files: &[(&str, usize, u32)]) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, len, seed) in files {
        std::fs::write(dir.join(file), data(*len, *seed)).unwrap();
    }
    dir
}

/// The file a chunk (or single-chunk blob) is kept in.
fn chunk_file(store: &Path, digest: &B3Digest) -> PathBuf {
    let hex = digest.to_hex();
    store.join("blobs/chunks").join(&hex[..2]).join(hex)
}

/// Every chunk file of the store.
fn chunk_files(store: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for fan_out in std::fs::read_dir(store.join("blobs/chunks")).unwrap() {
        for file in std::fs::read_dir(fan_out.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if !path.to_string_lossy().ends_with(".tmp") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A copy of `info` under another store path name, changed by `change`.
fn variant(info: &PathInfo, name: &str, change: impl FnOnce(&mut PathInfo)) -> PathInfo {
    let mut digest = *info.store_path.digest();
    digest[0] ^= 0xff;
    digest[1] = name.len() as u8;
    let mut copy = info.clone();
    copy.store_path = StorePath::from_parts(digest, name).unwrap();
    change(&mut copy);
    copy
}

async fn path_info(service: &dyn PathInfoService, path: &str) -> PathInfo {
    let path = StorePath::parse(path).unwrap();
    service.get(*path.digest()).await.unwrap().expect("path is in the store")
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_every_problem_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    let good = import(&store, &tree(&src, "good", &[("a", 5000, 1), ("big", 3_000_000, 2)]));
    let corrupt = import(&store, &tree(&src, "corrupt", &[("flipped", 10_000, 3)]));
    let missing = import(&store, &tree(&src, "missing", &[("gone", 20_000, 4)]));
    let before = chunk_files(&store);
    let lost_chunk = import(&store, &tree(&src, "lost-chunk", &[("large", 4_000_000, 5)]));
    let new_chunks: Vec<_> = chunk_files(&store).into_iter().filter(|f| !before.contains(f)).collect();
    assert!(new_chunks.len() > 1, "a 4 MB file is several chunks");

    let flipped = B3Digest::of(&data(10_000, 3));
    let mut bytes = std::fs::read(chunk_file(&store, &flipped)).unwrap();
    bytes[1234] ^= 1;
    std::fs::write(chunk_file(&store, &flipped), bytes).unwrap();
    std::fs::remove_file(chunk_file(&store, &B3Digest::of(&data(20_000, 4)))).unwrap();
    std::fs::remove_file(&new_chunks[0]).unwrap();

    // PathInfos with a wrong NAR hash, a missing root directory, a reference to a path the
    // store lacks, put straight into the (unowned) store's database.
    let (wrong_nar, no_tree, dangling) = {
        let service =
            tvix_store::compose::path_info_service(&format!("redb://{}", store.join("pathinfo.redb").display()))
                .unwrap();
        let info = path_info(service.as_ref(), &good).await;
        let wrong_nar = variant(&info, "wrong-nar", |i| i.nar_sha256[0] ^= 1);
        let no_tree = variant(&info, "no-tree", |i| i.node = Node::directory(B3Digest::of(b"no such directory"), 1));
        let absent = variant(&info, "absent", |_| {});
        let dangling = variant(&info, "dangling", |i| i.references = vec![absent.store_path.clone()]);
        for info in [&wrong_nar, &no_tree, &dangling] {
            service.put(info.clone()).await.unwrap();
        }
        (wrong_nar.store_path.to_absolute_path(), no_tree.store_path.to_absolute_path(), dangling.store_path)
    };

    let out = run(&store, &["verify", "--nar"]);
    assert!(!out.status.success(), "verify of a broken store must fail");
    let report = stdout(&out);
    let lines_about = |path: &str| report.lines().filter(|l| l.starts_with(path)).count();
    assert_eq!(lines_about(&good), 0, "the intact path is reported:\n{report}");
    // The flipped byte is found only by re-hashing (or rendering the NAR).
    assert!(
        report.contains(&format!("{missing}/gone: {}: blob is missing", B3Digest::of(&data(20_000, 4)))),
        "{report}"
    );
    assert!(report.lines().any(|l| l.starts_with(&format!("{lost_chunk}/large")) && l.contains("chunk")), "{report}");
    assert!(report.lines().any(|l| l.starts_with(&wrong_nar) && l.contains("NAR is")), "{report}");
    assert!(
        report.lines().any(|l| l.starts_with(&no_tree)
            && l.contains("incomplete")
            && l.contains(&B3Digest::of(b"no such directory").to_string())),
        "{report}"
    );
    assert!(
        report.lines().any(|l| l.starts_with(&dangling.to_absolute_path()) && l.contains("not in the store")),
        "{report}"
    );
    assert!(stderr(&out).contains("problems"), "no summary");

    let out = run(&store, &["verify", "--contents", &corrupt, &good]);
    assert!(!out.status.success());
    let report = stdout(&out);
    assert!(report.contains(&format!("{corrupt}/flipped: {flipped}")), "{report}");
    assert_eq!(report.lines().count(), 1, "only the flipped chunk is wrong among these two paths:\n{report}");

    let out = run(&store, &["verify", "--contents", "--nar", &good]);
    assert!(out.status.success(), "an intact path verifies");
    let out = run(&store, &["verify", "/nix/store/00000000000000000000000000000000-unknown"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("not in the store"));

    // Garbage collection cannot tell what is live below a missing directory: it refuses.
    let files = chunk_files(&store);
    let out = run(&store, &["gc", "--grace", "0s"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("garbage collection refused") && stderr(&out).contains(&no_tree), "{}", stderr(&out));
    assert_eq!(chunk_files(&store), files, "a refused collection removed something");
}

/// Sets a file's last write time `ago` in the past.
fn age(path: &Path, ago: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_and_gc_through_the_owning_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    let kept_src = tree(&src, "kept", &[("a", 7000, 10), ("b", 2_500_000, 11)]);
    let gone_src = tree(&src, "gone", &[("c", 9000, 12), ("d", 3_500_000, 13)]);
    let daemon = Daemon::default_store(&store);
    let kept = import(&store, &kept_src);
    let gone = import(&store, &gone_src);
    let paths = tvix_store::compose::path_info_service(&daemon.addr).unwrap();

    // A path referring to `kept` keeps it from being deleted alone.
    let referrer = variant(&path_info(paths.as_ref(), &kept).await, "referrer", |i| {
        i.references = vec![StorePath::parse(&kept).unwrap()];
    });
    paths.put(referrer.clone()).await.unwrap();
    let referrer = referrer.store_path.to_absolute_path();
    let out = run(&store, &["delete", &kept]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot delete {kept}: still referenced by {referrer}")),
        "{}",
        stderr(&out)
    );
    assert!(run(&store, &["verify", &kept]).status.success(), "a refused delete removed the path");
    let out = run(&store, &["delete", "/nix/store/00000000000000000000000000000000-unknown"]);
    assert!(!out.status.success() && stderr(&out).contains("is not in the store"), "{}", stderr(&out));
    let out = run(&store, &["delete", &referrer, &gone]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 2);
    assert!(paths.get(*StorePath::parse(&gone).unwrap().digest()).await.unwrap().is_none());

    // Leftovers of a dead writer: a temporary file, and a chunk nothing refers to, both old.
    let fan_out = store.join("blobs/chunks/00");
    let temporary = fan_out.join("0000.1.1.tmp");
    std::fs::write(&temporary, b"torn").unwrap();
    age(&temporary, Duration::from_secs(7200));
    let orphan = data(1000, 99);
    let orphan_file = chunk_file(&store, &B3Digest::of(&orphan));
    std::fs::write(&orphan_file, &orphan).unwrap();
    age(&orphan_file, Duration::from_secs(7200));

    let files = chunk_files(&store);
    let out = run(&store, &["gc", "--dry-run", "--grace", "0s"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("would remove"), "{}", stdout(&out));
    assert_eq!(chunk_files(&store), files, "a dry run removed chunks");
    assert!(temporary.exists());

    // Within the default grace period of an hour only the old orphan goes.
    let out = run(&store, &["gc"]);
    assert!(out.status.success());
    assert!(!orphan_file.exists(), "an old unreferenced chunk survived gc");
    assert!(!temporary.exists(), "an old temporary file survived gc");
    assert!(stdout(&out).contains("temporary files: removed 1"), "{}", stdout(&out));
    assert_eq!(chunk_files(&store).len(), files.len() - 1, "gc removed recent chunks within the grace period");

    let out = run(&store, &["gc", "--grace", "0s"]);
    assert!(out.status.success());
    let remaining = chunk_files(&store);
    assert!(remaining.len() < files.len() - 1, "the deleted path's chunks were not removed");
    assert!(!chunk_file(&store, &B3Digest::of(&data(9000, 12))).exists(), "a blob only the deleted path had survived");
    let out = run(&store, &["gc", "--dry-run", "--grace", "0s"]);
    assert!(stdout(&out).contains("would remove 0 objects"), "a second gc still finds garbage: {}", stdout(&out));

    // What is left is intact and byte-exact.
    assert!(run(&store, &["verify", "--contents", "--nar"]).status.success());
    let dump = run(&store, &["dump", &kept]);
    assert!(dump.status.success());
    assert!(dump.stdout == nix_dump(&kept_src), "the kept path's NAR changed");
    drop(daemon);

    // The same commands on the store's files, with no daemon.
    let out = run(&store, &["delete", &kept]);
    assert!(out.status.success());
    let out = run(&store, &["gc", "--grace", "0s"]);
    assert!(out.status.success());
    assert!(chunk_files(&store).is_empty(), "an empty store kept chunks: {:?}", chunk_files(&store));
}

#[test]
fn admin_calls_over_tcp_need_the_admin_right() {
    let flags = |addr: &str| {
        vec![
            "--blob-service-addr".to_string(),
            addr.to_string(),
            "--directory-service-addr".into(),
            addr.into(),
            "--path-info-service-addr".into(),
            addr.into(),
        ]
    };
    let tmp = tempfile::tempdir().unwrap();
    let command = |daemon: &Daemon, name: &str| {
        let mut args = vec![name.to_string()];
        args.extend(flags(&daemon.addr));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(tmp.path(), &args)
    };
    let readers = Daemon::tcp_rights("read,write");
    for name in ["gc", "verify"] {
        let out = command(&readers, name);
        assert!(!out.status.success(), "{name} without the admin right");
        assert!(stderr(&out).contains("lacks the admin right"), "{name}: {}", stderr(&out));
    }
    let admins = Daemon::tcp_rights("read,admin");
    assert!(command(&admins, "verify").status.success(), "verify with the admin right");
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_written_again_count_as_new_so_gc_spares_them() {
    // What keeps an import in flight safe from a collection: before its PathInfo exists, the
    // data it writes that was already stored (old and unreferenced, e.g. from a deleted path)
    // counts as written again, so the grace period covers it.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let contents = [data(3000, 20), data(3_000_000, 21)];
    let src = tree(&tmp.path().join("src"), "again", &[("small", 3000, 20), ("large", 3_000_000, 21)]);
    let path = import(&store, &src);
    assert!(run(&store, &["delete", &path]).status.success());
    let files = chunk_files(&store);
    for file in &files {
        age(file, Duration::from_secs(7200));
    }
    {
        // An import that has stored its blobs again but not yet its PathInfo.
        use tokio::io::AsyncWriteExt;
        let blobs = tvix_store::compose::blob_service(&format!("objectstore+file://{}", store.join("blobs").display()))
            .unwrap();
        for content in &contents {
            let mut writer = blobs.open_write().await;
            writer.write_all(content).await.unwrap();
            assert_eq!(writer.close().await.unwrap(), B3Digest::of(content));
        }
    }
    let out = run(&store, &["gc", "--grace", "1h"]);
    assert!(out.status.success());
    assert_eq!(chunk_files(&store), files, "gc removed chunks an import in flight wrote again");
    let out = run(&store, &["gc", "--grace", "0s"]);
    assert!(out.status.success());
    assert!(chunk_files(&store).is_empty(), "without a grace period the unreferenced chunks go");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_of_a_broken_path_is_eio_and_logs_the_digest_as_a_field() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let good = import(&store, &tree(&tmp.path().join("src"), "good", &[("a", 100, 30)]));
    let missing = B3Digest::of(b"a directory nobody stored");
    let broken = {
        let service =
            tvix_store::compose::path_info_service(&format!("redb://{}", store.join("pathinfo.redb").display()))
                .unwrap();
        let info =
            variant(&path_info(service.as_ref(), &good).await, "broken", |i| i.node = Node::directory(missing, 1));
        service.put(info.clone()).await.unwrap();
        info.store_path.to_basename()
    };
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("mount.log");
    let mut mount = tvix_store()
        .env("TVIX_STORE_DIR", &store)
        .env("RUST_LOG", "warn")
        .args(["--log-format", "json", "mount"])
        .arg(&mnt)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&mnt.display().to_string()) {
        assert!(std::time::Instant::now() < deadline, "the mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let listed = std::fs::read_dir(mnt.join(&broken)).map(|entries| entries.count());
    let _ = std::process::Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = mount.kill();
    let _ = mount.wait();
    assert_eq!(listed.expect_err("a path with a missing tree listed").raw_os_error(), Some(libc::EIO));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines.iter().any(|l| l["level"] == "WARN" && l["fields"]["digest"] == missing.to_string()),
        "no warning carries the missing digest as a field:\n{text}"
    );
}
