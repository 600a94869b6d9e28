//! [`WholeReader`]: the reader of a blob held whole in memory, already verified (a small blob
//! read with one call, a chunk read from a cache).

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::BlobReader;

/// Reads a blob from one buffer of all its bytes, which whoever made it verified against the
/// blob's digest: pieces are slices of that buffer, never copies.
pub struct WholeReader {
    data: Bytes,
    pos: u64,
}

impl WholeReader {
    /// A reader of `verified`, all of a blob's bytes, checked against its digest.
    pub fn new(verified: Bytes) -> Self {
        Self { data: verified, pos: 0 }
    }

    /// The bytes from the position on, at most `max`; moves past them.
    fn take(&mut self, max: usize) -> Bytes {
        let start = usize::try_from(self.pos).unwrap_or(usize::MAX).min(self.data.len());
        let end = start + max.min(self.data.len() - start);
        self.pos = end as u64;
        self.data.slice(start..end)
    }
}

impl AsyncRead for WholeReader {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let piece = self.take(buf.remaining());
        buf.put_slice(&piece);
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for WholeReader {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => (self.data.len() as u64).checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek to a negative or overflowing position"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

impl BlobReader for WholeReader {
    fn poll_piece(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        Poll::Ready(Ok(self.take(max)))
    }

    fn whole(&self) -> Option<Bytes> {
        Some(self.data.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::castore::blobservice::BlobReaderExt;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    #[tokio::test]
    async fn pieces_are_slices_and_seeks_move_them() {
        let data = Bytes::from_static(b"0123456789");
        let mut r = WholeReader::new(data.clone());
        let first = r.piece(4).await.unwrap();
        assert_eq!(&first[..], b"0123");
        assert_eq!(first.as_ptr(), data.as_ptr(), "a piece is a slice of the buffer, not a copy");
        r.seek(SeekFrom::Start(8)).await.unwrap();
        assert_eq!(&r.piece(100).await.unwrap()[..], b"89");
        assert!(r.piece(1).await.unwrap().is_empty(), "empty at the end");
        r.seek(SeekFrom::Start(100)).await.unwrap();
        assert!(r.piece(1).await.unwrap().is_empty(), "empty past the end");
        let mut rest = Vec::new();
        r.seek(SeekFrom::End(-3)).await.unwrap();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"789");
        assert_eq!(r.whole(), Some(data));
    }
}
