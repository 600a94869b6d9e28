//! Streaming, validating NAR reader.
//!
//! The reader is a pull parser: [`NarReader::next`] yields one [`NarEvent`] per node in NAR
//! order. After a [`NarEvent::File`], the file's bytes are available through
//! [`NarReader::contents`], an `AsyncRead` limited to the file's length; whatever the caller
//! leaves unread is skipped by the next call to `next`. No file is ever held in memory.
//!
//! Only the canonical encoding (what `nix-store --dump` writes) is accepted, so that
//! re-encoding an accepted NAR reproduces it byte for byte; that is what makes the NAR hash
//! of an ingested NAR reproducible from the castore nodes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};

use super::error::{MAX_TARGET_LEN, NarReadError, check_name, check_target, show};
use super::wire;

/// One node of the archive, in NAR order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent {
    /// A regular file; its contents follow via [`NarReader::contents`].
    File {
        /// Entry name; `None` for the root node.
        name: Option<Vec<u8>>,
        /// Whether the `executable` marker is set.
        executable: bool,
        /// Length of the contents in bytes.
        size: u64,
    },
    /// A symlink.
    Symlink {
        /// Entry name; `None` for the root node.
        name: Option<Vec<u8>>,
        /// The target, non-empty and without NUL.
        target: Vec<u8>,
    },
    /// A directory begins; its entries follow, sorted, until the matching `DirectoryEnd`.
    DirectoryStart {
        /// Entry name; `None` for the root node.
        name: Option<Vec<u8>>,
    },
    /// The innermost open directory ends.
    DirectoryEnd,
}

enum State {
    Magic,
    /// Inside a regular file's contents.
    Contents {
        remaining: u64,
        size: u64,
    },
    /// A node's closing `)` was read; what follows depends on the enclosing directory.
    NodeDone,
    /// Between entries of the innermost open directory.
    InDirectory,
    Done,
    Failed,
}

/// Pull parser over an async byte stream. See the module docs.
pub struct NarReader<R> {
    inner: BufReader<R>,
    pos: u64,
    state: State,
    /// One frame per open directory: the name of its last entry.
    stack: Vec<Option<Vec<u8>>>,
}

/// Tokens are at most 13 bytes (`nix-archive-1`); anything longer is rejected before it is
/// read, so a hostile length cannot make us allocate.
const MAX_TOKEN_LEN: u64 = 16;
const BUF_SIZE: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> NarReader<R> {
    /// Wraps a stream positioned at the start of a NAR.
    pub fn new(inner: R) -> Self {
        NarReader { inner: BufReader::with_capacity(BUF_SIZE, inner), pos: 0, state: State::Magic, stack: Vec::new() }
    }

    /// Number of NAR bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying stream. Bytes read ahead but not consumed are dropped; once `next` has
    /// returned `None` there are none, because the reader has seen the end of the stream.
    pub fn into_inner(self) -> R {
        self.inner.into_inner()
    }

    /// Depth of open directories (0 at the root level).
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// The next node, or `None` once the root is complete and the stream has ended.
    pub async fn next(&mut self) -> Result<Option<NarEvent>, NarReadError> {
        match self.step().await {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Contents of the file returned by the last `next`. Reading past a file or with no file
    /// pending yields EOF. Errors are `io::Error`s wrapping a [`NarReadError`]; recover it
    /// with [`NarReadError::from_io`].
    pub fn contents(&mut self) -> FileContents<'_, R> {
        FileContents { reader: self }
    }

    async fn step(&mut self) -> Result<Option<NarEvent>, NarReadError> {
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Magic => {
                    let (offset, tok) = self.read_token("magic").await?;
                    if tok != wire::MAGIC {
                        return Err(NarReadError::BadMagic { offset, found: show(&tok) });
                    }
                    return self.node(None).await.map(Some);
                }
                State::Contents { remaining, size } => {
                    self.skip(remaining).await?;
                    self.read_padding(size).await?;
                    self.expect(wire::CLOSE, "`)` closing the file").await?;
                    self.state = State::NodeDone;
                }
                State::NodeDone => {
                    if self.stack.is_empty() {
                        self.check_eof().await?;
                        self.state = State::Done;
                        return Ok(None);
                    }
                    self.expect(wire::CLOSE, "`)` closing the entry").await?;
                    self.state = State::InDirectory;
                }
                State::InDirectory => {
                    let (offset, tok) = self.read_token("`entry` or `)`").await?;
                    if tok == wire::CLOSE {
                        self.stack.pop();
                        self.state = State::NodeDone;
                        return Ok(Some(NarEvent::DirectoryEnd));
                    }
                    if tok != wire::ENTRY {
                        return Err(unexpected(offset, "`entry` or `)`", &tok));
                    }
                    self.expect(wire::OPEN, "`(` opening the entry").await?;
                    self.expect(wire::NAME, "`name`").await?;
                    let name = self.read_name().await?;
                    self.expect(wire::NODE, "`node`").await?;
                    return self.node(Some(name)).await.map(Some);
                }
                State::Done => {
                    self.state = State::Done;
                    return Ok(None);
                }
                State::Failed => return Err(NarReadError::Poisoned),
            }
        }
    }

    /// Parses a node header up to the point where the node's event is complete.
    async fn node(&mut self, name: Option<Vec<u8>>) -> Result<NarEvent, NarReadError> {
        self.expect(wire::OPEN, "`(` opening a node").await?;
        self.expect(wire::TYPE, "`type`").await?;
        let (offset, tok) = self.read_token("node type").await?;
        match tok.as_slice() {
            wire::REGULAR => {
                let (offset, tok) = self.read_token("`executable` or `contents`").await?;
                let executable = match tok.as_slice() {
                    wire::EXECUTABLE => {
                        self.expect(b"", "empty string after `executable`").await?;
                        self.expect(wire::CONTENTS, "`contents`").await?;
                        true
                    }
                    wire::CONTENTS => false,
                    _ => return Err(unexpected(offset, "`executable` or `contents`", &tok)),
                };
                let size = self.read_u64("file size").await?;
                self.state = State::Contents { remaining: size, size };
                Ok(NarEvent::File { name, executable, size })
            }
            wire::SYMLINK => {
                self.expect(wire::TARGET, "`target`").await?;
                let offset = self.pos;
                let target = self.read_string(MAX_TARGET_LEN as u64, "symlink target").await?;
                check_target(&target).map_err(|reason| NarReadError::InvalidSymlinkTarget { offset, reason })?;
                self.expect(wire::CLOSE, "`)` closing the symlink").await?;
                self.state = State::NodeDone;
                Ok(NarEvent::Symlink { name, target })
            }
            wire::DIRECTORY => {
                self.stack.push(None);
                self.state = State::InDirectory;
                Ok(NarEvent::DirectoryStart { name })
            }
            _ => Err(unexpected(offset, "`regular`, `symlink` or `directory`", &tok)),
        }
    }

    async fn read_name(&mut self) -> Result<Vec<u8>, NarReadError> {
        let offset = self.pos;
        let name = self.read_string(super::error::MAX_NAME_LEN as u64, "entry name").await?;
        if let Err(reason) = check_name(&name) {
            return Err(NarReadError::InvalidName { offset, name: show(&name), reason });
        }
        let Some(prev) = self.stack.last_mut() else {
            unreachable!("entries are only read inside a directory");
        };
        if let Some(p) = prev.as_deref() {
            if name.as_slice() == p {
                return Err(NarReadError::DuplicateEntry { offset, name: show(&name) });
            }
            if name.as_slice() < p {
                return Err(NarReadError::OutOfOrder { offset, name: show(&name), previous: show(p) });
            }
        }
        *prev = Some(name.clone());
        Ok(name)
    }

    async fn expect(&mut self, token: &[u8], what: &'static str) -> Result<(), NarReadError> {
        let (offset, tok) = self.read_token(what).await?;
        if tok != token {
            return Err(unexpected(offset, what, &tok));
        }
        Ok(())
    }

    /// Reads a framing token; over-long lengths are rejected without reading the body.
    async fn read_token(&mut self, what: &'static str) -> Result<(u64, Vec<u8>), NarReadError> {
        let offset = self.pos;
        let len = self.read_u64(what).await?;
        if len > MAX_TOKEN_LEN {
            return Err(NarReadError::UnexpectedToken {
                offset,
                expected: what,
                found: format!("<{len}-byte string>"),
            });
        }
        let mut buf = vec![0; len as usize];
        self.fill(&mut buf, what).await?;
        self.read_padding(len).await?;
        Ok((offset, buf))
    }

    async fn read_string(&mut self, max: u64, what: &'static str) -> Result<Vec<u8>, NarReadError> {
        let offset = self.pos;
        let len = self.read_u64(what).await?;
        if len > max {
            return Err(NarReadError::TooLong { offset, what, len, max });
        }
        let mut buf = vec![0; len as usize];
        self.fill(&mut buf, what).await?;
        self.read_padding(len).await?;
        Ok(buf)
    }

    async fn read_u64(&mut self, what: &'static str) -> Result<u64, NarReadError> {
        let mut buf = [0u8; 8];
        self.fill(&mut buf, what).await?;
        Ok(u64::from_le_bytes(buf))
    }

    async fn read_padding(&mut self, len: u64) -> Result<(), NarReadError> {
        let pad = wire::padding(len);
        if pad == 0 {
            return Ok(());
        }
        let offset = self.pos;
        let mut buf = [0u8; 8];
        self.fill(&mut buf[..pad], "padding").await?;
        if buf[..pad].iter().any(|b| *b != 0) {
            return Err(NarReadError::NonZeroPadding { offset });
        }
        Ok(())
    }

    /// Like `read_exact`, but reports where exactly the stream ended.
    async fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), NarReadError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .inner
                .read(&mut buf[done..])
                .await
                .map_err(|source| NarReadError::Io { offset: self.pos, source })?;
            if n == 0 {
                return Err(NarReadError::Truncated { offset: self.pos, what });
            }
            done += n;
            self.pos += n as u64;
        }
        Ok(())
    }

    async fn skip(&mut self, len: u64) -> Result<(), NarReadError> {
        if len == 0 {
            return Ok(());
        }
        let offset = self.pos;
        let n = tokio::io::copy(&mut (&mut self.inner).take(len), &mut tokio::io::sink())
            .await
            .map_err(|source| NarReadError::Io { offset, source })?;
        self.pos += n;
        if n < len {
            return Err(NarReadError::Truncated { offset: self.pos, what: "file contents" });
        }
        Ok(())
    }

    async fn check_eof(&mut self) -> Result<(), NarReadError> {
        let mut buf = [0u8; 1];
        let n = self.inner.read(&mut buf).await.map_err(|source| NarReadError::Io { offset: self.pos, source })?;
        if n != 0 {
            return Err(NarReadError::TrailingData { offset: self.pos });
        }
        Ok(())
    }
}

fn unexpected(offset: u64, expected: &'static str, found: &[u8]) -> NarReadError {
    NarReadError::UnexpectedToken { offset, expected, found: show(found) }
}

/// The contents of the current file, limited to its length. See [`NarReader::contents`].
pub struct FileContents<'a, R> {
    reader: &'a mut NarReader<R>,
}

impl<R> FileContents<'_, R> {
    /// Bytes of the current file not yet read.
    pub fn remaining(&self) -> u64 {
        match self.reader.state {
            State::Contents { remaining, .. } => remaining,
            _ => 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FileContents<'_, R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let r = &mut *self.get_mut().reader;
        if matches!(r.state, State::Failed) {
            return Poll::Ready(Err(NarReadError::Poisoned.into_io()));
        }
        let State::Contents { remaining, .. } = &mut r.state else {
            return Poll::Ready(Ok(()));
        };
        if *remaining == 0 || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let max = (*remaining).min(buf.remaining() as u64) as usize;
        let dst = buf.initialize_unfilled_to(max);
        let mut sub = ReadBuf::new(dst);
        if let Err(source) = ready!(Pin::new(&mut r.inner).poll_read(cx, &mut sub)) {
            let err = NarReadError::Io { offset: r.pos, source };
            r.state = State::Failed;
            return Poll::Ready(Err(err.into_io()));
        }
        let n = sub.filled().len();
        if n == 0 {
            let err = NarReadError::Truncated { offset: r.pos, what: "file contents" };
            r.state = State::Failed;
            return Poll::Ready(Err(err.into_io()));
        }
        *remaining -= n as u64;
        r.pos += n as u64;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}
