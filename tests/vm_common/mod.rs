//! `tvix-store virtiofs` as a child process, shared by the tests of its socket (no VM) and the
//! QEMU guest tests of the slow tier (`slow/guest.rs` has the guest harness).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits until a unix socket exists at `path`, or panics.
pub fn wait_for_socket(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "no socket at {} after {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `tvix-store` binary under test.
pub fn tvix_store_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tvix-store"))
}

/// A running `tvix-store virtiofs` over the default store in a directory; SIGTERM on drop.
pub struct TvixVirtiofs {
    child: Option<Child>,
    /// Its vhost-user socket.
    pub socket: PathBuf,
}

impl TvixVirtiofs {
    /// Starts the daemon with the default store in `store_dir` and waits for its socket.
    pub fn start(store_dir: &Path, socket: &Path, extra_args: &[&str]) -> Self {
        use std::os::unix::fs::MetadataExt;
        // A stale socket file may be there already; wait for the daemon's own.
        let inode_of = |p: &Path| fs::symlink_metadata(p).ok().map(|m| m.ino());
        let stale = inode_of(socket);
        let child = Command::new(tvix_store_bin())
            .arg("virtiofs")
            .arg(socket)
            .args(extra_args)
            .env("TVIX_STORE_DIR", store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tvix-store virtiofs");
        let mut d = TvixVirtiofs { child: Some(child), socket: socket.to_owned() };
        let start = Instant::now();
        while inode_of(socket).is_none() || inode_of(socket) == stale {
            if let Some(status) = d.child_mut().try_wait().expect("poll daemon") {
                panic!("tvix-store virtiofs exited with {status} before creating its socket");
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no socket at {} after 30 s", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("daemon handle present until terminate")
    }

    /// Panics unless the daemon is still running.
    pub fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child_mut().try_wait().expect("poll daemon") {
            panic!("tvix-store virtiofs died ({status}) {when}");
        }
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon handle");
        signal_and_wait(&mut child)
    }
}

fn signal_and_wait(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll daemon") {
            return status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tvix-store virtiofs did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TvixVirtiofs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
