//! The gRPC channel our clients talk over, to a unix socket or a TCP address, or to the first
//! reachable of several daemons serving one store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::codegen::http::HeaderValue;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

pub use crate::proto::{MAX_FRAME_SIZE, MAX_MESSAGE_SIZE};

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
/// [`STREAM_WINDOW`] over TCP, where the daemon may be a network away: a call moves at most one
/// window per round trip, and 2 MiB per 50 ms held a 16 MiB file's read to 40 MB/s. 8 MiB lets
/// a call run at 160 MB/s across 50 ms, at the price of up to 8 MiB pushed for a cancelled call.
const TCP_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
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
    /// Several daemons serving the same store (e.g. stateless daemons over one bucket), in
    /// order of preference: calls go to one, and move to the next when it cannot be reached.
    Failover(Vec<GrpcTarget>),
}

impl std::fmt::Display for GrpcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcTarget::Unix(path) => write!(f, "grpc+unix://{}", path.display()),
            GrpcTarget::Tcp { host, port } => write!(f, "grpc+http://{host}:{port}"),
            GrpcTarget::Failover(targets) => {
                let names: Vec<String> = targets.iter().map(ToString::to_string).collect();
                write!(f, "{}", names.join(" or "))
            }
        }
    }
}

/// Builds a channel to `target`.
///
/// The channel connects lazily (a command starts even while the daemon is not up yet), and
/// reconnects on the next call after the connection was lost.
pub fn channel(target: &GrpcTarget) -> Result<GrpcChannel, String> {
    let authorization = authorization()?;
    match target {
        GrpcTarget::Failover(targets) => {
            let channels = targets.iter().map(single_channel).collect::<Result<Vec<_>, _>>()?;
            if channels.is_empty() {
                return Err("no daemon address given".into());
            }
            Ok(GrpcChannel { channels: channels.into(), current: Arc::default(), authorization })
        }
        single => Ok(GrpcChannel { authorization, ..single_channel(single)?.into() }),
    }
}

/// Names a file holding the token our clients present to daemons (`Authorization: Bearer`),
/// for the rights it gives them (docs/access.md). A file, so the secret is in no URL,
/// command line or environment listing.
pub const TOKEN_FILE_VAR: &str = "TVIX_STORE_TOKEN_FILE";

/// The `authorization` value of [`TOKEN_FILE_VAR`]'s token, if it is set.
fn authorization() -> Result<Option<HeaderValue>, String> {
    let Some(path) = std::env::var_os(TOKEN_FILE_VAR).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(path);
    let token = std::fs::read_to_string(&path).map_err(|e| format!("{TOKEN_FILE_VAR} {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("{TOKEN_FILE_VAR} {}: the file is empty", path.display()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| format!("{TOKEN_FILE_VAR} {}: the token is not one line of visible characters", path.display()))?;
    // Kept out of debug output and header compression tables.
    value.set_sensitive(true);
    Ok(Some(value))
}

/// A channel to one daemon; `Failover` is refused (see [`channel`]).
pub fn single_channel(target: &GrpcTarget) -> Result<Channel, String> {
    match target {
        GrpcTarget::Failover(_) => Err("several daemon addresses need a failover channel".into()),
        GrpcTarget::Unix(path) => {
            let path = path.clone();
            // The URI is a placeholder: our connector dials the socket path itself.
            let endpoint = configure(Endpoint::from_static("http://tvix-store.sock"), STREAM_WINDOW);
            Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&path).await?;
                    // Uploads (Put) send 1 MiB messages; see widen_send_buffer.
                    crate::tuning::widen_send_buffer(&stream);
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            })))
        }
        GrpcTarget::Tcp { host, port } => {
            let endpoint = Endpoint::from_shared(format!("http://{host}:{port}")).map_err(|e| e.to_string())?;
            Ok(configure(endpoint, TCP_STREAM_WINDOW).tcp_nodelay(true).connect_lazy())
        }
    }
}

/// What our clients talk over: one daemon's channel, or several daemons' in order of
/// preference. Calls go to the current one; a call that cannot reach it (connect refused or
/// timed out, connection broken before an answer) fails, and later calls go to the next, so a
/// reader sees one failed call (EIO in a mount) when a daemon goes away and the rest succeed.
/// tonic's own balancing was measured unfit for this: with one of three endpoints dead, 17 of
/// 40 calls failed, and a call never moved off the dead endpoint.
#[derive(Clone)]
pub struct GrpcChannel {
    channels: Arc<[Channel]>,
    /// Index of the channel calls go to.
    current: Arc<AtomicUsize>,
    /// Sent with every call: the token of [`TOKEN_FILE_VAR`].
    authorization: Option<HeaderValue>,
}

impl GrpcChannel {
    /// How many daemons calls may go to.
    pub(crate) fn daemons(&self) -> usize {
        self.channels.len()
    }

    /// The index of the daemon calls go to now.
    pub(crate) fn current_daemon(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.channels.len()
    }
}

impl From<Channel> for GrpcChannel {
    fn from(channel: Channel) -> Self {
        Self { channels: Arc::from([channel]), current: Arc::default(), authorization: None }
    }
}

impl Service<tonic::codegen::http::Request<tonic::body::Body>> for GrpcChannel {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited on the chosen channel in `call`: which one is only known then.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(authorization) = &self.authorization {
            request.headers_mut().insert(tonic::codegen::http::header::AUTHORIZATION, authorization.clone());
        }
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        let mut channel = self.channels[index].clone();
        let current = self.current.clone();
        let count = self.channels.len();
        Box::pin(async move {
            let answer = match channel.ready().await {
                Ok(ready) => ready.call(request).await,
                Err(e) => Err(e),
            };
            if answer.is_err() && count > 1 {
                // Only the first caller to see this channel fail moves everyone on.
                let next = (index + 1) % count;
                if current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    tracing::warn!(from = index, to = next, "daemon unreachable; failing over to the next address");
                }
            }
            answer
        })
    }
}

/// The settings every channel of ours uses, whatever it connects over.
fn configure(endpoint: Endpoint, stream_window: u32) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
}
