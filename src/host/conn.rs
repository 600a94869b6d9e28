//! Accepted connections: the one accept loop every listener of every server goes through, and
//! who is on the other end of each connection ([`Peer`], in every request's extensions).
//!
//! This is the seam for what applies to every network face alike (transport security, who the
//! peer is, connection limits): it is set here once, not in each server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::Listener;

/// Who is on the other end of a connection, as the operating system tells it (nothing the
/// client claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A unix socket peer, by its credentials when it connected (`SO_PEERCRED`); `None` where
    /// the kernel did not tell them.
    Unix(Option<Credentials>),
    /// A TCP peer's address.
    Tcp(SocketAddr),
}

/// A unix socket peer's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id, where known.
    pub pid: Option<i32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix(Some(c)) => write!(f, "uid {} on a unix socket", c.uid),
            Peer::Unix(None) => f.write_str("a unix socket peer"),
            Peer::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// An accepted connection, with its peer.
pub struct Conn {
    stream: Io,
    peer: Peer,
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Who is on the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Applies what every connection gets, whatever serves it: no Nagle delay on TCP (a
    /// response goes out in several writes, and the last small one would wait for the
    /// client's delayed ACK: that held nar-bridge to 820 small NARs/s at half a CPU), and a send
    /// buffer on unix sockets wide enough for 1 MiB messages.
    fn tcp(stream: TcpStream, addr: SocketAddr) -> Self {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %addr, "cannot set TCP_NODELAY on a connection: {e}");
        }
        Self { stream: Io::Tcp(stream), peer: Peer::Tcp(addr) }
    }

    fn unix(stream: UnixStream) -> Self {
        crate::tuning::widen_send_buffer(&stream);
        let credentials = stream.peer_cred().ok().map(|c| Credentials { uid: c.uid(), gid: c.gid(), pid: c.pid() });
        Self { stream: Io::Unix(stream), peer: Peer::Unix(credentials) }
    }
}

/// The connections a listener accepts, as a stream that never ends and never fails: an
/// error accepting one connection is logged and the next one awaited. (Its items are
/// `Result`s because that is what servers take.)
pub fn incoming(listener: &Listener) -> impl Stream<Item = io::Result<Conn>> + Send + '_ {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            let accepted = match listener {
                Listener::Tcp(l) => l.accept().await.map(|(stream, addr)| Conn::tcp(stream, addr)),
                Listener::Unix(l, _) => l.accept().await.map(|(stream, _)| Conn::unix(stream)),
            };
            match accepted {
                Ok(conn) => return Some((Ok(conn), listener)),
                Err(e) => accept_failed(listener, e).await,
            }
        }
    })
}

/// After a failed accept: a connection the peer gave up on is nothing; anything else (out of
/// descriptors, out of memory) would fail again at once, so it waits a moment.
async fn accept_failed(listener: &Listener, e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!(listener = %listener.describe(), "accepting a connection: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}
