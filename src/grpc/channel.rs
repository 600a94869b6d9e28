//! The gRPC channel our clients talk over, from a `grpc+http://` or `grpc+unix://` address.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::url::AddrError;

/// Largest gRPC message we send or accept. Blob messages are at most 1 MiB of data, but a
/// Directory or a chunk list of a large blob may be bigger; 64 MiB leaves ample room while still
/// bounding what a broken peer can make us buffer.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// A failed TCP connect (unreachable host) gives up after this long, so commands report an
/// absent daemon promptly instead of waiting for the kernel's much longer SYN timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on an open connection, also while idle: when the daemon dies or hangs, calls in
/// flight fail within interval + timeout (about 3 s) instead of hanging, which the FUSE mount
/// relies on to return EIO rather than blocking a reader forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-call flow-control window: room for one full 1 MiB message and most of the next, so a
/// chunk (at most 1 MiB) arrives without waiting for a window update (the HTTP/2 default of
/// 64 KiB would cost a round trip per 64 KiB). Kept that small on purpose: it bounds what a
/// server pushes ahead on a call we may cancel, e.g. the whole-blob read `open_read` tries
/// first, which a large blob turns into chunk reads after its second message.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Window shared by all calls of the connection: several chunk reads run in parallel.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Builds a channel for `grpc+http://host:port` or `grpc+unix:///path/to/socket`.
///
/// The channel connects lazily (a command starts even while the daemon is not up yet), and
/// reconnects on the next call after the connection was lost.
pub fn channel(addr: &str) -> Result<Channel, AddrError> {
    let url = crate::url::parse(addr)?;
    let endpoint = match url.scheme() {
        "grpc+unix" => {
            let path = crate::url::local_path(&url)?;
            let path = path
                .to_str()
                .ok_or_else(|| AddrError::Parse(addr.to_string(), "socket path is not UTF-8".into()))?;
            Endpoint::from_shared(format!("unix://{path}"))
        }
        "grpc+http" => {
            let host = url
                .host_str()
                .ok_or_else(|| AddrError::Parse(addr.to_string(), "no host given".into()))?;
            let port = url
                .port()
                .ok_or_else(|| AddrError::Parse(addr.to_string(), "no port given".into()))?;
            if url.path() != "" && url.path() != "/" {
                return Err(AddrError::Parse(addr.to_string(), "grpc+http takes no path".into()));
            }
            Endpoint::from_shared(format!("http://{host}:{port}"))
        }
        other => return Err(AddrError::UnsupportedScheme(other.to_string(), "gRPC")),
    }
    .map_err(|e| AddrError::Parse(addr.to_string(), e.to_string()))?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_both_schemes_and_rejects_others() {
        assert!(channel("grpc+unix:///run/x.sock").is_ok());
        assert!(channel("grpc+http://127.0.0.1:8000").is_ok());
        assert!(channel("grpc+http://[::1]:8000").is_ok());
        assert!(channel("grpc+http://localhost").is_err());
        assert!(channel("grpc+unix://").is_err());
        assert!(channel("http://localhost:1").is_err());
    }
}
