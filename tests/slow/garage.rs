//! A real Garage cluster for the S3 tests, started once per test process by
//! `scripts/garage-test-cluster` and stopped when the process ends. Garage missing is a test
//! failure, never a skip: `scripts/garage-test-cluster install` builds it (CI does).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use tvix_store::compose::url::{S3Credentials, S3Spec};

/// What `garage-test-cluster start` wrote.
pub struct Cluster {
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    pub pids: Vec<u32>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/garage-test-cluster")
}

/// The cluster of `nodes` nodes (1 or 3) of this test process.
pub fn cluster(nodes: usize) -> &'static Cluster {
    static ONE: OnceLock<Cluster> = OnceLock::new();
    static THREE: OnceLock<Cluster> = OnceLock::new();
    let cell = if nodes == 3 { &THREE } else { &ONE };
    cell.get_or_init(|| start(nodes))
}

/// A cluster of `nodes` nodes for one test alone (one that stops or kills all of its nodes),
/// under `name`; stopped when the test process ends.
pub fn own_cluster(nodes: usize, name: &str) -> Cluster {
    start_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("garage-{}-{name}", std::process::id())), nodes)
}

fn start(nodes: usize) -> Cluster {
    start_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("garage-{}-{nodes}", std::process::id())), nodes)
}

fn start_in(dir: PathBuf, nodes: usize) -> Cluster {
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(script()).arg("start").arg(&dir).arg(nodes.to_string()).output().unwrap();
    assert!(
        out.status.success(),
        "could not start a Garage cluster (is Garage built? run scripts/garage-test-cluster install): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stop the nodes when this test process is gone, however it ends: a watcher in the
    // background of a shell that returns at once.
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(while kill -0 {} 2>/dev/null; do sleep 1; done; {} stop {}; rm -rf {}) &",
            std::process::id(),
            script().display(),
            dir.display(),
            dir.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let env: HashMap<String, String> = std::fs::read_to_string(dir.join("env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    Cluster {
        endpoint: env["GARAGE_ENDPOINT"].clone(),
        bucket: env["GARAGE_BUCKET"].clone(),
        key_id: env["AWS_ACCESS_KEY_ID"].clone(),
        secret: env["AWS_SECRET_ACCESS_KEY"].clone(),
        pids: env["GARAGE_PIDS"].split_whitespace().map(|p| p.parse().unwrap()).collect(),
    }
}

impl Cluster {
    /// A store URL for a fresh key prefix of the bucket (so tests never see each other's data).
    pub fn url(&self, prefix: &str) -> String {
        format!("objectstore+s3://{}/{prefix}?endpoint={}&region=garage", self.bucket, self.endpoint)
    }

    /// The same as a spec with this cluster's credentials (no environment needed).
    pub fn spec(&self, prefix: &str) -> S3Spec {
        let url = self.url(prefix);
        let mut spec = match tvix_store::compose::url::parse(tvix_store::compose::Kind::Blob, &url).unwrap() {
            tvix_store::compose::Leaf::S3(spec) => spec,
            other => panic!("{url} parsed as {other:?}"),
        };
        spec.credentials =
            Some(S3Credentials { access_key_id: self.key_id.clone(), secret_access_key: self.secret.clone() });
        spec
    }

    /// Gives a child process this cluster's credentials.
    pub fn credentials(&self, command: &mut Command) {
        command.env("AWS_ACCESS_KEY_ID", &self.key_id).env("AWS_SECRET_ACCESS_KEY", &self.secret);
    }
}

/// A prefix no other test uses.
pub fn unique_prefix(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
