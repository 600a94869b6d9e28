//! systemd integration with systemd's own tools: the daemon and nar-bridge started by
//! `systemd-socket-activate` serve on every passed socket (unix and TCP at once), send
//! READY=1 to the NOTIFY_SOCKET once they serve and STOPPING=1 on SIGTERM; bad activation
//! setups are a one-line error at start.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::nar_common::{MEMORY_SERVICES as MEMORY, free_port, wait_for_path};

fn tvix_store_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tvix-store")
}

/// A NOTIFY_SOCKET listener.
fn notify_socket(path: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    socket
}

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("no notification within 30 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn activate(sockets: &[&str], notify: &Path, command: &[&str]) -> Child {
    let mut activate = Command::new("systemd-socket-activate");
    for socket in sockets {
        activate.args(["-l", socket]);
    }
    activate
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.display()))
        .arg(tvix_store_bin())
        .args(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate must be installed (Debian package systemd; scripts/setup-debian)")
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // systemd-socket-activate execs the service: the child is the service itself.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().unwrap()
}

#[test]
fn the_socket_activated_daemon_serves_every_passed_socket_and_notifies() {
    let tmp = tempfile::tempdir().unwrap();
    let unix = tmp.path().join("daemon.sock");
    let port = free_port();
    let tcp = format!("127.0.0.1:{port}");
    let notify = notify_socket(&tmp.path().join("notify"));
    let mut command = vec!["daemon"];
    command.extend(MEMORY);
    let mut daemon = activate(&[unix.to_str().unwrap(), &tcp], &tmp.path().join("notify"), &command);
    wait_for_path(&unix, Duration::from_secs(20));
    for addr in [format!("grpc+unix://{}", unix.display()), format!("grpc+http://{tcp}")] {
        // The first connection makes systemd-socket-activate start the daemon.
        let out = Command::new(tvix_store_bin())
            .args(["path-info", "--path-info-service-addr", &addr])
            .args(&MEMORY[..4])
            .arg("/nix/store/00000000000000000000000000000000-nothing")
            .output()
            .unwrap();
        assert!(out.status.success(), "{addr}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"valid\":false"), "{addr}");
    }
    let ready = next_message(&notify);
    assert!(ready.contains("READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=serving on"), "{ready:?}");
    let status = terminate(&mut daemon);
    assert!(next_message(&notify).contains("STOPPING=1"));
    assert!(status.success(), "{status}");
    assert!(unix.exists(), "the daemon removed systemd's socket file");
}

#[test]
fn the_socket_activated_nar_bridge_serves_http_and_notifies() {
    let tmp = tempfile::tempdir().unwrap();
    let unix = tmp.path().join("nar-bridge.sock");
    let notify = notify_socket(&tmp.path().join("notify"));
    let mut command = vec!["nar-bridge"];
    command.extend(MEMORY);
    let mut bridge = activate(&[unix.to_str().unwrap()], &tmp.path().join("notify"), &command);
    wait_for_path(&unix, Duration::from_secs(20));
    let mut stream = std::os::unix::net::UnixStream::connect(&unix).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("StoreDir: /nix/store"), "{answer}");
    assert!(next_message(&notify).contains("READY=1"));
    terminate(&mut bridge);
    assert!(next_message(&notify).contains("STOPPING=1"));
}

#[test]
fn bad_activation_setups_are_one_line_errors_at_start() {
    // sd-listen without sockets.
    let out = Command::new(tvix_store_bin()).args(["daemon", "-l", "sd-listen"]).args(MEMORY).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sd-listen") && stderr.contains("no sockets"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // LISTEN_FDS naming a descriptor that is no socket.
    let script =
        format!("LISTEN_PID=$$ LISTEN_FDS=1 exec {} daemon {} 3</etc/hostname", tvix_store_bin(), MEMORY.join(" "));
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("passed fd 3 is not a"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn mount_and_virtiofs_tell_systemd_when_they_serve_and_when_they_stop() {
    for command in ["mount", "virtiofs"] {
        let tmp = tempfile::tempdir().unwrap();
        let notify = notify_socket(&tmp.path().join("notify"));
        let target = tmp.path().join(command);
        if command == "mount" {
            std::fs::create_dir(&target).unwrap();
        }
        let mut child = Command::new(tvix_store_bin())
            .arg(command)
            .arg(&target)
            .args(MEMORY)
            .env("NOTIFY_SOCKET", tmp.path().join("notify"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ready = next_message(&notify);
        assert!(ready.contains("READY=1"), "{command}: {ready:?}");
        assert!(ready.contains(&format!("STATUS=serving on {}", target.display())), "{command}: {ready:?}");
        // Ready means served: the mount is in the mount table, the socket is there.
        if command == "mount" {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(mounts.contains(&*target.to_string_lossy()), "READY=1 before the mount was there");
        } else {
            assert!(target.exists(), "READY=1 before the socket was there");
        }
        let status = terminate(&mut child);
        assert!(next_message(&notify).contains("STOPPING=1"), "{command}");
        assert!(status.success(), "{command}: {status}");
    }
}

#[test]
fn a_server_raises_its_open_files_limit_to_the_hard_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("limits.sock");
    // A soft limit of 256 under the inherited hard one, as many service managers leave it.
    let script =
        format!("ulimit -Sn 256 && exec {} daemon -l {} {}", tvix_store_bin(), socket.display(), MEMORY.join(" "));
    let mut daemon = Command::new("sh").arg("-c").arg(script).stderr(Stdio::null()).spawn().unwrap();
    wait_for_path(&socket, Duration::from_secs(20));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.id())).unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
    assert_ne!(soft, "256", "{line}");
}
