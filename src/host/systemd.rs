//! systemd integration: listening on sockets passed by socket activation (`LISTEN_FDS`,
//! `LISTEN_PID`), and telling the service manager when we are ready (`Type=notify`), when we
//! stop, and that we are alive (the watchdog).

use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use super::{HostError, Listener};

/// The sockets systemd passed to this process, as listeners; empty when none were passed (or
/// they were meant for another process: `LISTEN_PID` differs).
pub fn activated() -> Result<Vec<Listener>, HostError> {
    let fds = sd_notify::listen_fds().map_err(|e| HostError::Activation(format!("LISTEN_FDS: {e}")))?;
    fds.map(listener).collect()
}

/// Whether systemd passed this process sockets.
pub fn has_activated_sockets() -> bool {
    sd_notify::listen_fds().is_ok_and(|fds| fds.len() > 0)
}

/// A passed descriptor as a listener: it must be a listening stream socket, TCP or unix.
fn listener(fd: RawFd) -> Result<Listener, HostError> {
    let option = |name: libc::c_int| -> Result<libc::c_int, HostError> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which has that size.
        let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut value).cast(), &mut len) };
        if rc != 0 {
            return Err(HostError::Activation(format!(
                "passed fd {fd} is not a socket: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(value)
    };
    if option(libc::SO_TYPE)? != libc::SOCK_STREAM || option(libc::SO_ACCEPTCONN)? != 1 {
        return Err(HostError::Activation(format!("passed fd {fd} is not a listening stream socket")));
    }
    let nonblocking = |e: std::io::Error| HostError::Activation(format!("passed fd {fd}: {e}"));
    match option(libc::SO_DOMAIN)? {
        libc::AF_UNIX => {
            // SAFETY: systemd passed us this descriptor to own; each passed fd is taken once.
            let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            std.set_nonblocking(true).map_err(nonblocking)?;
            let listener = tokio::net::UnixListener::from_std(std).map_err(nonblocking)?;
            // The socket file is systemd's: it stays when we stop.
            Ok(Listener::Unix(listener, None))
        }
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: as above.
            let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            std.set_nonblocking(true).map_err(nonblocking)?;
            Ok(Listener::Tcp(tokio::net::TcpListener::from_std(std).map_err(nonblocking)?))
        }
        other => Err(HostError::Activation(format!("passed fd {fd} is a socket of family {other}, not TCP or unix"))),
    }
}

/// Tells systemd we serve (`READY=1`, with a status line), and keeps its watchdog fed if it
/// set one. Without `NOTIFY_SOCKET` this does nothing.
pub fn ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]) {
        tracing::warn!("telling systemd we are ready: {e}");
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        // Twice per interval, as sd_watchdog_enabled(3) advises.
        let period = (interval / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

/// Tells systemd we are shutting down (`STOPPING=1`).
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}
