//! An `AsyncWrite` sink that only measures what is written: its SHA-256 and length. Feeding
//! a [`super::NarWriter`] into it yields a NAR hash and size without materialising the NAR.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

/// SHA-256 and byte count of everything written.
#[derive(Default, Clone)]
pub struct NarHasher {
    hasher: Sha256,
    size: u64,
}

impl NarHasher {
    /// An empty hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes synchronously.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.size += data.len() as u64;
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The (size, sha256) of everything written.
    pub fn finalize(self) -> (u64, [u8; 32]) {
        (self.size, self.hasher.finalize().into())
    }
}

impl AsyncWrite for NarHasher {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().update(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
