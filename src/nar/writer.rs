//! Streaming NAR writer producing exactly the bytes `nix-store --dump` produces.
//!
//! The caller walks its tree depth-first and pushes nodes in NAR order: entries of a
//! directory strictly ascending by name bytes (the writer checks this rather than sorting, so
//! it never buffers a directory). File contents are streamed in with their length announced
//! up front, either all at once from an `AsyncRead` ([`NarWriter::file`]) or in pieces
//! ([`NarWriter::file_start`], [`NarWriter::file_write`], [`NarWriter::file_end`]).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{NarWriteError, check_name, check_target, show};
use super::wire::{self, put_str};

/// See the module docs.
pub struct NarWriter<W> {
    w: W,
    /// One frame per open directory: the name of its last entry.
    stack: Vec<Option<Vec<u8>>>,
    /// An open file: (name for errors, bytes still expected, announced size).
    open_file: Option<(Option<Vec<u8>>, u64, u64)>,
    root_done: bool,
    scratch: Vec<u8>,
    copy_buf: Vec<u8>,
}

const COPY_BUF: usize = 64 * 1024;

impl<W: AsyncWrite + Unpin> NarWriter<W> {
    /// Starts a NAR on `w`, writing the magic.
    pub async fn new(mut w: W) -> Result<Self, NarWriteError> {
        let mut buf = Vec::with_capacity(32);
        put_str(&mut buf, wire::MAGIC);
        w.write_all(&buf).await?;
        Ok(NarWriter { w, stack: Vec::new(), open_file: None, root_done: false, scratch: buf, copy_buf: Vec::new() })
    }

    /// Writes a regular file node, copying exactly `size` bytes from `contents`.
    pub async fn file<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
        contents: &mut R,
    ) -> Result<(), NarWriteError> {
        self.file_start(name, executable, size).await?;
        if self.copy_buf.is_empty() {
            self.copy_buf = vec![0; COPY_BUF];
        }
        let mut left = size;
        while left > 0 {
            let want = left.min(self.copy_buf.len() as u64) as usize;
            let n = contents
                .read(&mut self.copy_buf[..want])
                .await
                .map_err(|source| NarWriteError::ContentsRead { name: show(name.unwrap_or_default()), source })?;
            if n == 0 {
                return Err(NarWriteError::ShortContents {
                    name: show(name.unwrap_or_default()),
                    got: size - left,
                    expected: size,
                });
            }
            self.w.write_all(&self.copy_buf[..n]).await?;
            left -= n as u64;
        }
        if let Some(f) = self.open_file.as_mut() {
            f.1 = 0;
        }
        self.file_end().await
    }

    /// Begins a regular file node of `size` bytes; follow with `file_write` calls totalling
    /// exactly `size` bytes, then `file_end`.
    pub async fn file_start(&mut self, name: Option<&[u8]>, executable: bool, size: u64) -> Result<(), NarWriteError> {
        let mut buf = self.begin_node(name)?;
        put_str(&mut buf, wire::REGULAR);
        if executable {
            put_str(&mut buf, wire::EXECUTABLE);
            put_str(&mut buf, b"");
        }
        put_str(&mut buf, wire::CONTENTS);
        buf.extend_from_slice(&size.to_le_bytes());
        self.open_file = Some((name.map(<[u8]>::to_vec), size, size));
        self.flush_scratch(buf).await
    }

    /// Appends contents to the open file.
    pub async fn file_write(&mut self, data: &[u8]) -> Result<(), NarWriteError> {
        let Some((name, left, size)) = self.open_file.as_mut() else {
            return Err(NarWriteError::Misuse("file_write without file_start"));
        };
        if data.len() as u64 > *left {
            return Err(NarWriteError::ShortContents {
                name: show(name.as_deref().unwrap_or_default()),
                got: *size - *left + data.len() as u64,
                expected: *size,
            });
        }
        *left -= data.len() as u64;
        self.w.write_all(data).await?;
        Ok(())
    }

    /// Marks the open file's contents as supplied outside this writer: [`NarLayout`](super::NarLayout)
    /// records where they go and splices the blob in when rendering.
    pub fn file_contents_elsewhere(&mut self) -> Result<(), NarWriteError> {
        let Some((_, left, _)) = self.open_file.as_mut() else {
            return Err(NarWriteError::Misuse("file_contents_elsewhere without file_start"));
        };
        *left = 0;
        Ok(())
    }

    /// The sink.
    pub fn get_ref(&self) -> &W {
        &self.w
    }

    /// The sink, to take what was written so far (a `Vec<u8>` sink, for a layout).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Closes the open file, which must have received exactly its announced size.
    pub async fn file_end(&mut self) -> Result<(), NarWriteError> {
        let Some((name, left, size)) = self.open_file.take() else {
            return Err(NarWriteError::Misuse("file_end without file_start"));
        };
        if left != 0 {
            return Err(NarWriteError::ShortContents {
                name: show(name.as_deref().unwrap_or_default()),
                got: size - left,
                expected: size,
            });
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(&[0u8; 8][..wire::padding(size)]);
        put_str(&mut buf, wire::CLOSE);
        self.end_node(&mut buf);
        self.flush_scratch(buf).await
    }

    /// Writes a symlink node.
    pub async fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> Result<(), NarWriteError> {
        check_target(target).map_err(|reason| NarWriteError::InvalidSymlinkTarget { target: show(target), reason })?;
        let mut buf = self.begin_node(name)?;
        put_str(&mut buf, wire::SYMLINK);
        put_str(&mut buf, wire::TARGET);
        put_str(&mut buf, target);
        put_str(&mut buf, wire::CLOSE);
        self.end_node(&mut buf);
        self.flush_scratch(buf).await
    }

    /// Opens a directory node; its entries follow, then [`NarWriter::directory_end`].
    pub async fn directory_start(&mut self, name: Option<&[u8]>) -> Result<(), NarWriteError> {
        let mut buf = self.begin_node(name)?;
        put_str(&mut buf, wire::DIRECTORY);
        self.stack.push(None);
        self.flush_scratch(buf).await
    }

    /// Closes the innermost open directory.
    pub async fn directory_end(&mut self) -> Result<(), NarWriteError> {
        if self.open_file.is_some() {
            return Err(NarWriteError::Misuse("directory_end while a file is open"));
        }
        if self.stack.pop().is_none() {
            return Err(NarWriteError::Misuse("directory_end without an open directory"));
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        put_str(&mut buf, wire::CLOSE);
        self.end_node(&mut buf);
        self.flush_scratch(buf).await
    }

    /// Checks the archive is complete, flushes and returns the sink.
    pub async fn finish(mut self) -> Result<W, NarWriteError> {
        if !self.root_done {
            return Err(NarWriteError::Misuse("finish before the root node is complete"));
        }
        self.w.flush().await?;
        Ok(self.w)
    }

    /// Validates placement and name, returning the scratch buffer holding the node's
    /// preamble up to and including `type`.
    fn begin_node(&mut self, name: Option<&[u8]>) -> Result<Vec<u8>, NarWriteError> {
        if self.root_done {
            return Err(NarWriteError::Misuse("node after the root was complete"));
        }
        if self.open_file.is_some() {
            return Err(NarWriteError::Misuse("node while a file is open"));
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        match (self.stack.last_mut(), name) {
            (None, None) => {}
            (None, Some(_)) => return Err(NarWriteError::Misuse("the root node has no name")),
            (Some(_), None) => {
                return Err(NarWriteError::Misuse("an entry inside a directory needs a name"));
            }
            (Some(prev), Some(name)) => {
                check_name(name).map_err(|reason| NarWriteError::InvalidName { name: show(name), reason })?;
                if let Some(p) = prev.as_deref()
                    && name <= p
                {
                    return Err(NarWriteError::OutOfOrder { name: show(name), previous: show(p) });
                }
                *prev = Some(name.to_vec());
                put_str(&mut buf, wire::ENTRY);
                put_str(&mut buf, wire::OPEN);
                put_str(&mut buf, wire::NAME);
                put_str(&mut buf, name);
                put_str(&mut buf, wire::NODE);
            }
        }
        put_str(&mut buf, wire::OPEN);
        put_str(&mut buf, wire::TYPE);
        Ok(buf)
    }

    /// After a node's own `)`: close the enclosing entry, or mark the archive complete.
    fn end_node(&mut self, buf: &mut Vec<u8>) {
        if self.stack.is_empty() {
            self.root_done = true;
        } else {
            put_str(buf, wire::CLOSE);
        }
    }

    async fn flush_scratch(&mut self, buf: Vec<u8>) -> Result<(), NarWriteError> {
        let res = self.w.write_all(&buf).await;
        self.scratch = buf;
        Ok(res?)
    }
}
