//! A blob writer that hands the bytes to a storing task over a channel. The task (local chunking
//! and storing, or a gRPC Put) runs concurrently with the producer, and its result is the blob's
//! digest.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

use super::BlobWriter;
use crate::castore::{B3Digest, Error};

/// Writes are gathered into messages of this size before they go to the storing task, so a
/// producer writing in small pieces (e.g. 8 KiB from `tokio::io::copy`) costs few channel hops.
const MESSAGE_SIZE: usize = 256 * 1024;
/// Messages queued between producer and storing task: bounds memory per open writer.
const QUEUE_DEPTH: usize = 8;

/// The bytes of a blob being written, as its storing task receives them. The end of the blob is
/// an explicit message: a writer dropped unclosed must never look like a finished blob, even to
/// a storing task that is running at the very moment of the drop.
pub struct IncomingBlob {
    receiver: mpsc::Receiver<Option<Bytes>>,
}

impl IncomingBlob {
    /// The next piece of the blob; `Ok(None)` once the writer closed it, an error when the writer
    /// was dropped unclosed (then nothing may be stored under a digest).
    pub async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        match self.receiver.recv().await {
            Some(piece) => Ok(piece),
            None => Err(Error::InvalidRequest("the blob writer was dropped before close".into())),
        }
    }
}

/// A [`BlobWriter`] feeding a storing task.
pub struct ChannelBlobWriter {
    sender: PollSender<Option<Bytes>>,
    /// Whether the end-of-blob message has been sent.
    ended: bool,
    staging: BytesMut,
    task: Option<JoinHandle<Result<B3Digest, Error>>>,
    result: Option<Result<B3Digest, Error>>,
}

impl ChannelBlobWriter {
    /// Spawns `store`, which receives the blob's bytes in order until their end and returns the
    /// digest once they are durable.
    pub fn spawn<F, Fut>(store: F) -> Self
    where
        F: FnOnce(IncomingBlob) -> Fut,
        Fut: Future<Output = Result<B3Digest, Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        Self {
            sender: PollSender::new(tx),
            ended: false,
            staging: BytesMut::new(),
            task: Some(tokio::spawn(store(IncomingBlob { receiver: rx }))),
            result: None,
        }
    }

    fn poll_send_staging(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.staging.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.sender.poll_reserve(cx)).map_err(|_| hung_up())?;
        let message = self.staging.split().freeze();
        self.sender.send_item(Some(message)).map_err(|_| hung_up())?;
        Poll::Ready(Ok(()))
    }

    /// Sends what is staged, then the end-of-blob message.
    fn poll_send_end(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_staging(cx))?;
        if !self.ended {
            ready!(self.sender.poll_reserve(cx)).map_err(|_| hung_up())?;
            self.sender.send_item(None).map_err(|_| hung_up())?;
            self.ended = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// The storing task only hangs up when it failed; close() reports its error.
fn hung_up() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "blob store task ended early")
}

impl AsyncWrite for ChannelBlobWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.task.is_none() {
            return Poll::Ready(Err(io::Error::other("blob writer already closed")));
        }
        if self.staging.len() >= MESSAGE_SIZE {
            ready!(self.poll_send_staging(cx))?;
        }
        // A short write keeps every message at most MESSAGE_SIZE, however large the caller's
        // buffer: one message must never exceed what a gRPC peer accepts, nor hold a whole blob.
        let n = buf.len().min(MESSAGE_SIZE - self.staging.len());
        self.staging.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send_staging(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send_end(cx)
    }
}

#[async_trait]
impl BlobWriter for ChannelBlobWriter {
    async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        if self.task.is_none() {
            return Err(io::Error::other("blob writer already closed"));
        }
        if data.len() < MESSAGE_SIZE / 4 && self.staging.len() + data.len() <= MESSAGE_SIZE {
            // Small pieces are still gathered: one channel hop for many of them.
            self.staging.extend_from_slice(&data);
            return Ok(());
        }
        std::future::poll_fn(|cx| self.poll_send_staging(cx)).await?;
        std::future::poll_fn(|cx| self.sender.poll_reserve(cx)).await.map_err(|_| hung_up())?;
        self.sender.send_item(Some(data)).map_err(|_| hung_up())
    }

    async fn close(&mut self) -> Result<B3Digest, Error> {
        if let Some(result) = &self.result {
            return result.clone();
        }
        // A failed send means the task already ended; its own error is the one to report.
        let _ = std::future::poll_fn(|cx| self.poll_send_end(cx)).await;
        let result = match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(Error::Storage(format!("blob store task failed: {e}")))),
            None => Err(Error::Storage("blob writer closed twice".into())),
        };
        self.result = Some(result.clone());
        result
    }
}

impl Drop for ChannelBlobWriter {
    fn drop(&mut self) {
        // An abandoned writer must not leave a task storing a half blob in the background.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
