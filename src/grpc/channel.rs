//! The gRPC channel our clients talk over, to a unix socket or a TCP address.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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
/// Largest HTTP/2 frame the server may send us. The default (16 KiB) cuts a 1 MiB chunk into
/// 64 frames, each with its own bookkeeping on both sides; 1 MiB frames carry a chunk whole.
pub(crate) const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Window shared by all calls of the connection: several chunk reads run in parallel.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Where a gRPC channel connects to (parsed from a `grpc+unix://` or `grpc+http://` store URL
/// by the composition layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcTarget {
    /// A unix socket path.
    Unix(std::path::PathBuf),
    /// A TCP host (name, IPv4, or bracketed IPv6) and port.
    Tcp {
        /// Host name or address, as it goes into an `http://` URI.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl std::fmt::Display for GrpcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcTarget::Unix(path) => write!(f, "grpc+unix://{}", path.display()),
            GrpcTarget::Tcp { host, port } => write!(f, "grpc+http://{host}:{port}"),
        }
    }
}

/// Builds a channel to `target`.
///
/// The channel connects lazily (a command starts even while the daemon is not up yet), and
/// reconnects on the next call after the connection was lost.
pub fn channel(target: &GrpcTarget) -> Result<Channel, String> {
    match target {
        GrpcTarget::Unix(path) => {
            let path = path.clone();
            // The URI is a placeholder: our connector dials the socket path itself.
            let endpoint = configure(Endpoint::from_static("http://tvix-store.sock"));
            Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&path).await?;
                    // Uploads (Put) send 1 MiB messages; see widen_send_buffer.
                    widen_send_buffer(&stream);
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            })))
        }
        GrpcTarget::Tcp { host, port } => {
            let endpoint = Endpoint::from_shared(format!("http://{host}:{port}")).map_err(|e| e.to_string())?;
            Ok(configure(endpoint).tcp_nodelay(true).connect_lazy())
        }
    }
}

/// The settings every channel of ours uses, whatever it connects over.
fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
}

/// Send buffer asked for on unix socket connections, by client and server. The kernel's default (~200 KiB) holds less
/// than one 1 MiB chunk message, so a chunk crossed the socket in several pieces, each a sleep
/// and a wake-up of both sides: a 1 GiB read moved at ~0.6 GB/s with both processes mostly
/// idle. The kernel caps the value at `net.core.wmem_max`.
const UNIX_SEND_BUFFER: libc::c_int = 4 * 1024 * 1024;

/// Asks for a [`UNIX_SEND_BUFFER`]-sized send buffer on a unix socket; on failure the default
/// stays, which only costs speed.
pub(crate) fn widen_send_buffer(socket: &impl std::os::fd::AsRawFd) {
    let size = UNIX_SEND_BUFFER;
    // SAFETY: a valid descriptor and a pointer to a c_int of the length given.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!("cannot widen a unix socket's send buffer: {}", std::io::Error::last_os_error());
    }
}
