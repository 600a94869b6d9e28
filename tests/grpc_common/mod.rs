//! Shared helpers of the gRPC tests: the real `tvix-store daemon` binary as a child process,
//! our server in the test's own process, a recorder of the calls an in-process test server
//! receives, a wait for the tasks a test set going, and deterministic test data.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tvix_store::host::{self, ListenAddr, Listener};
use tvix_store::server::{Handlers, NoNarCalculation};
use tvix_store::store::Store;

/// A `tvix-store daemon` child process, killed when dropped.
pub struct Daemon {
    child: Child,
    /// The gRPC address clients use (`grpc+unix://...` or `grpc+http://...`).
    pub addr: String,
    listen: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// The temporary directory holding the socket and the on-disk backends, if the daemon has one.
    _tmp: Option<tempfile::TempDir>,
}

/// Backend arguments: blobs on disk in `dir`, directories and PathInfo in memory.
fn backend_args(dir: &Path) -> Vec<String> {
    vec![
        "--blob-service-addr".into(),
        format!("objectstore+file://{}/blobs", dir.display()),
        "--directory-service-addr".into(),
        "memory://".into(),
        "--path-info-service-addr".into(),
        "memory://".into(),
    ]
}

impl Daemon {
    /// A daemon on a unix socket in a fresh temporary directory.
    pub fn unix() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let socket = dir.join("test.sock");
        let mut args = backend_args(&dir);
        args.extend(["-l".into(), socket.display().to_string()]);
        Self::start(args, vec![], format!("grpc+unix://{}", socket.display()), socket.display().to_string(), Some(tmp))
    }

    /// A daemon on a free loopback TCP port whose clients may do everything: these tests
    /// exercise the services, tests/access.rs who may use them.
    pub fn tcp() -> Self {
        Self::tcp_rights("all")
    }

    /// A daemon on a free loopback TCP port whose clients have `rights` (`--tcp-rights`).
    pub fn tcp_rights(rights: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = backend_args(&dir);
        args.extend(["-l".into(), listen.clone(), "--tcp-rights".into(), rights.into()]);
        Self::start(args, vec![], format!("grpc+http://{listen}"), listen, Some(tmp))
    }

    /// A daemon on a free loopback TCP port over the given service flags.
    pub fn tcp_with(services: &[String]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = services.to_vec();
        args.extend(["-l".into(), listen.clone(), "--tcp-rights".into(), "all".into()]);
        Self::start(args, vec![], format!("grpc+http://{listen}"), listen, Some(tmp))
    }

    /// `tvix-store daemon` with no addresses on the default store in `store_dir`.
    pub fn default_store(store_dir: &Path) -> Self {
        let socket = store_dir.join("daemon.sock");
        Self::start(
            vec![],
            vec![("TVIX_STORE_DIR".into(), store_dir.display().to_string())],
            format!("grpc+unix://{}", socket.display()),
            socket.display().to_string(),
            None,
        )
    }

    fn start(
        args: Vec<String>,
        envs: Vec<(String, String)>,
        addr: String,
        listen: String,
        tmp: Option<tempfile::TempDir>,
    ) -> Self {
        let child = spawn(&args, &envs);
        let mut daemon = Self { child, addr, listen, args, envs, _tmp: tmp };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = if self.listen.contains('/') {
                std::os::unix::net::UnixStream::connect(&self.listen).is_ok()
            } else {
                std::net::TcpStream::connect(&self.listen).is_ok()
            };
            if up {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tvix-store daemon exited before listening on {}: {status}", self.listen);
            }
            assert!(Instant::now() < deadline, "tvix-store daemon did not listen on {} within 30 s", self.listen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Stops the daemon with SIGSTOP and waits until the kernel reports it stopped (the signal
    /// is delivered asynchronously; a call made before could still be answered).
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc/PID/stat");
            // The state is the field after the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
            if state == Some(Some('T')) {
                return;
            }
            assert!(Instant::now() < deadline, "daemon did not stop after SIGSTOP: {stat}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the daemon with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the daemon to exit (at most 20 s) and returns its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "tvix-store daemon did not exit within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same daemon again (same arguments, same address) after it was killed.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.args, &self.envs);
        self.wait_ready();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[String], envs: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tvix-store"))
        .arg("daemon")
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("BLOB_SERVICE_ADDR")
        .env_remove("DIRECTORY_SERVICE_ADDR")
        .env_remove("PATH_INFO_SERVICE_ADDR")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn tvix-store daemon")
}

/// Our gRPC server as the daemon serves it (`host::serve_grpc`) over `store`, but in this process,
/// on a unix socket in `dir`: for a test that instruments the backends, or that waits for the
/// server's side of its calls (those tasks run in the test's runtime, see [`tasks_end_at_most`]).
/// Returns the address and a handle that stops the server when dropped.
pub async fn serve_in_process(store: Store, dir: &Path) -> (String, oneshot::Sender<()>) {
    let socket = dir.join("grpc.sock");
    let listener = Listener::bind(&ListenAddr::Unix(socket.clone())).await.unwrap();
    let handlers = Handlers { nar: Arc::new(NoNarCalculation), ..Handlers::new(store) };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(host::serve_grpc(
        listener,
        handlers,
        host::shutdown_on(async move {
            let _ = stopped.await;
        }),
    ));
    (format!("grpc+unix://{}", socket.display()), stop)
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Deterministic, incompressible-looking bytes; `seed` makes different blobs.
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// The paths (`/package.Service/Method`) of the calls a test server received.
pub type Calls = std::sync::Arc<parking_lot::Mutex<Vec<String>>>;

/// How many of `calls` start with `prefix` (a service's `/package.Service/` or a full path).
pub fn count(calls: &Calls, prefix: &str) -> usize {
    calls.lock().iter().filter(|p| p.starts_with(prefix)).count()
}

/// A server layer that records into `calls` the path of every call reaching the server,
/// whether the server has that service or not.
pub fn call_recorder(
    calls: &Calls,
) -> tower::util::MapRequestLayer<
    impl Fn(tonic::codegen::http::Request<tonic::body::Body>) -> tonic::codegen::http::Request<tonic::body::Body>
    + Clone
    + use<>,
> {
    let calls = calls.clone();
    tower::util::MapRequestLayer::new(move |request: tonic::codegen::http::Request<tonic::body::Body>| {
        calls.lock().push(request.uri().path().to_string());
        request
    })
}

/// The number of tasks alive in the test's runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Waits until the test's runtime has at most `tasks` tasks alive (a count from
/// [`alive_tasks`]): everything set going since that count (a writer's storing task, a client's
/// call, an in-process server's handling of it) has ended, one way or the other. Fails the test
/// after 10 s.
pub async fn tasks_end_at_most(tasks: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive_tasks() > tasks {
        assert!(Instant::now() < deadline, "{} tasks still alive after 10 s, expected at most {tasks}", alive_tasks());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
