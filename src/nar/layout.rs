//! A NAR's byte layout, computed from the directory graph alone: every byte of framing, and
//! where each file's contents go, without reading a single blob. From it a NAR is rendered
//! whole or from any byte range (a binary cache answering `Range:`, a resumed download), its
//! size is known before the first byte is sent, and Nix's NAR listing (`.ls`, with each file's
//! `narOffset`) is written along the way.
//!
//! The framing is produced by [`NarWriter`] itself (contents left out), so the layout and a NAR
//! written directly cannot disagree. The walk is iterative: a tree nested thousands of levels
//! deep renders without growing the stack.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::{NarWriter, RenderError};
use crate::castore::blobservice::{BlobReader, BlobService, WholeBlob};
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{B3Digest, Directory, Node, PathComponent};

/// Blobs up to this size are read ahead whole; larger ones are opened ahead and streamed.
const READ_AHEAD_WHOLE: u64 = 1024 * 1024;
/// Files fetched ahead of the one being written: small files are mostly round trips, and 16
/// in flight kept a daemon-backed render at the speed of a local one (issue 2's measurements).
const READ_AHEAD: usize = 16;
/// Bytes copied from a streamed blob per write.
const COPY_BUF: usize = 64 * 1024;

/// One stretch of the NAR: framing (names, types, lengths, padding) or a file's contents.
#[derive(Debug, Clone)]
enum Segment {
    /// `framing[start..start + len]` of the layout.
    Framing { offset: u64, start: usize, len: usize },
    /// The contents of one file (possibly empty, so every file has its `narOffset`).
    Contents { offset: u64, digest: B3Digest, size: u64 },
}

impl Segment {
    fn offset(&self) -> u64 {
        match self {
            Segment::Framing { offset, .. } | Segment::Contents { offset, .. } => *offset,
        }
    }

    fn len(&self) -> u64 {
        match self {
            Segment::Framing { len, .. } => *len as u64,
            Segment::Contents { size, .. } => *size,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct NarLayout {
    framing: Bytes,
    segments: Vec<Segment>,
    size: u64,
    listing: Option<String>,
}

/// A directory being walked: the entries left, and whether one was listed already.
struct Frame<'a> {
    rest: Box<dyn Iterator<Item = (&'a PathComponent, &'a Node)> + Send + 'a>,
    listed_any: bool,
}

impl NarLayout {
    /// The layout of `root`'s NAR, fetching its directories (one recursive request).
    pub async fn of(root: &Node, directory: &dyn DirectoryService) -> Result<Self, RenderError> {
        Self::build(root, &fetch_directories(root, directory).await?, false).await
    }

    /// The layout of `root`'s NAR with its listing ([`NarLayout::listing_json`]).
    pub async fn with_listing(root: &Node, directory: &dyn DirectoryService) -> Result<Self, RenderError> {
        Self::build(root, &fetch_directories(root, directory).await?, true).await
    }

    /// The layout of `root`'s NAR, with every directory it refers to in `directories`; with
    /// `listing`, Nix's `.ls` JSON is written along (straight as text: a tree of values would
    /// recurse, in building, serialising and dropping, as deep as the tree is).
    pub async fn build(
        root: &Node,
        directories: &HashMap<B3Digest, Directory>,
        listing: bool,
    ) -> Result<Self, RenderError> {
        let mut builder = Builder { nar: NarWriter::new(Vec::new()).await?, framing: Vec::new(), segments: Vec::new() };
        let mut json = listing.then(|| String::from(r#"{"version":1,"root":"#));
        let mut stack: Vec<Frame<'_>> = Vec::new();
        let mut next: Option<(Option<&PathComponent>, &Node)> = Some((None, root));
        loop {
            let Some((name, node)) = next.take() else {
                // The open directory has no entries left.
                if stack.pop().is_none() {
                    break;
                }
                builder.nar.directory_end().await?;
                if let Some(json) = &mut json {
                    json.push_str("}}");
                }
                next = advance(&mut stack, &mut json);
                continue;
            };
            let nar_name = name.map(PathComponent::as_bytes);
            match node {
                Node::Directory { digest, .. } => {
                    let dir =
                        directories.get(digest).ok_or(RenderError::Missing { what: "directory", digest: *digest })?;
                    builder.nar.directory_start(nar_name).await?;
                    if let Some(json) = &mut json {
                        json.push_str(r#"{"type":"directory","entries":{"#);
                    }
                    stack.push(Frame { rest: Box::new(dir.entries()), listed_any: false });
                }
                Node::Symlink { target } => {
                    builder.nar.symlink(nar_name, target.as_bytes()).await?;
                    if let Some(json) = &mut json {
                        json.push_str(r#"{"type":"symlink","target":"#);
                        push_json_string(json, target.as_bytes());
                        json.push('}');
                    }
                }
                Node::File { digest, size, executable } => {
                    builder.nar.file_start(nar_name, *executable, *size).await?;
                    let nar_offset = builder.contents(*digest, *size);
                    builder.nar.file_contents_elsewhere()?;
                    builder.nar.file_end().await?;
                    if let Some(json) = &mut json {
                        let executable = if *executable { r#","executable":true"# } else { "" };
                        json.push_str(&format!(
                            r#"{{"type":"regular","size":{size}{executable},"narOffset":{nar_offset}}}"#
                        ));
                    }
                }
            }
            next = advance(&mut stack, &mut json);
        }
        let tail = std::mem::take(builder.nar.get_mut());
        builder.cut(tail);
        let Builder { nar, framing, segments } = builder;
        nar.finish().await?;
        let size = segments.last().map_or(0, |s| s.offset() + s.len());
        let listing = json.map(|mut json| {
            json.push('}');
            json
        });
        Ok(NarLayout { framing: framing.into(), segments, size, listing })
    }

    /// The NAR's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where each file's contents start in the NAR and how long they are, in NAR order.
    pub fn files(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Contents { offset, size, .. } => Some((*offset, *size)),
            Segment::Framing { .. } => None,
        })
    }

    /// The `.ls` file Nix writes beside a narinfo (`{"version":1,"root":…}`), when the layout
    /// was made [`with_listing`](NarLayout::with_listing).
    pub fn listing_json(&self) -> Option<&str> {
        self.listing.as_deref()
    }

    /// Writes the whole NAR to `w` and returns `w` (flushed).
    pub async fn write<W: AsyncWrite + Unpin>(&self, w: W, blob: &dyn BlobService) -> Result<W, RenderError> {
        self.write_range(w, blob, 0..self.size).await
    }

    /// Writes bytes `range` of the NAR (clamped to its size) to `w` and returns `w` (flushed).
    /// Blobs wholly outside the range are not read; a blob the range starts inside is read
    /// from there on.
    pub async fn write_range<W: AsyncWrite + Unpin>(
        &self,
        mut w: W,
        blob: &dyn BlobService,
        range: Range<u64>,
    ) -> Result<W, RenderError> {
        let end = range.end.min(self.size);
        let start = range.start.min(end);
        let first = self.segments.partition_point(|s| s.offset() + s.len() <= start);
        let window: Vec<(&Segment, Range<u64>)> = self.segments[first..]
            .iter()
            .take_while(|s| s.offset() < end)
            .map(|s| {
                let from = start.saturating_sub(s.offset());
                let to = (end - s.offset()).min(s.len());
                (s, from..to)
            })
            .filter(|(_, r)| !r.is_empty())
            .collect();
        let fetches: Vec<(B3Digest, u64, Range<u64>)> = window
            .iter()
            .filter_map(|(s, part)| match s {
                Segment::Contents { digest, size, .. } => Some((*digest, *size, part.clone())),
                Segment::Framing { .. } => None,
            })
            .collect();
        let mut fetched = futures::stream::iter(fetches)
            .map(|(digest, size, part)| fetch(blob, digest, size, part))
            .buffered(READ_AHEAD);
        let mut buf = Vec::new();
        for (segment, part) in &window {
            match segment {
                Segment::Framing { start, .. } => {
                    let bytes = &self.framing[start + part.start as usize..start + part.end as usize];
                    w.write_all(bytes).await.map_err(write_error)?;
                }
                Segment::Contents { digest, size, .. } => {
                    let Some(contents) = fetched.next().await else {
                        unreachable!("one fetch per contents segment in the window");
                    };
                    match contents? {
                        Fetched::Whole(data) => w.write_all(&data).await.map_err(write_error)?,
                        Fetched::Stream(reader) => {
                            copy_exact(reader, &mut w, *digest, *size, part.clone(), &mut buf).await?
                        }
                    }
                }
            }
        }
        w.flush().await.map_err(write_error)?;
        Ok(w)
    }
}

/// The next entry of the innermost open directory, its name already written to the listing.
fn advance<'a>(stack: &mut [Frame<'a>], json: &mut Option<String>) -> Option<(Option<&'a PathComponent>, &'a Node)> {
    let frame = stack.last_mut()?;
    let (name, node) = frame.rest.next()?;
    if let Some(json) = json {
        if frame.listed_any {
            json.push(',');
        }
        push_json_string(json, name.as_bytes());
        json.push(':');
    }
    frame.listed_any = true;
    Some((Some(name), node))
}

/// Appends `bytes` as a JSON string (lossily UTF-8: Nix's own writer emits the raw bytes,
/// which is no valid JSON either).
fn push_json_string(json: &mut String, bytes: &[u8]) {
    // Serialising a string cannot fail.
    json.push_str(&serde_json::to_string(&String::from_utf8_lossy(bytes)).unwrap_or_default());
}

/// Every directory below `root`, by digest.
async fn fetch_directories(
    root: &Node,
    directory: &dyn DirectoryService,
) -> Result<HashMap<B3Digest, Directory>, RenderError> {
    let mut directories = HashMap::new();
    if let Node::Directory { digest, .. } = root {
        let mut stream = directory.get_recursive(digest);
        while let Some(d) = stream.try_next().await? {
            directories.insert(d.digest(), d);
        }
    }
    Ok(directories)
}

/// Cuts the writer's output into framing and contents segments.
struct Builder {
    nar: NarWriter<Vec<u8>>,
    framing: Vec<u8>,
    segments: Vec<Segment>,
}

impl Builder {
    /// Where the NAR is now: everything cut so far plus what the writer holds.
    fn position(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.offset() + s.len()) + self.nar.get_ref().len() as u64
    }

    /// Ends the framing written so far and places a file's contents after it; returns their
    /// offset.
    fn contents(&mut self, digest: B3Digest, size: u64) -> u64 {
        let pending = std::mem::take(self.nar.get_mut());
        self.cut(pending);
        let offset = self.position();
        self.segments.push(Segment::Contents { offset, digest, size });
        offset
    }

    fn cut(&mut self, pending: Vec<u8>) {
        if pending.is_empty() {
            return;
        }
        let offset = self.position();
        self.segments.push(Segment::Framing { offset, start: self.framing.len(), len: pending.len() });
        self.framing.extend_from_slice(&pending);
    }
}

enum Fetched {
    Whole(Bytes),
    Stream(Box<dyn BlobReader>),
}

/// Gets `part` of a blob of `size` bytes: small blobs whole (their length checked), larger ones
/// as an open reader positioned at `part.start`.
async fn fetch(blob: &dyn BlobService, digest: B3Digest, size: u64, part: Range<u64>) -> Result<Fetched, RenderError> {
    // A local store hands a small blob over as one verified buffer: one lookup instead of a
    // reader's chunk-list lookup, fetch task and copies.
    if size <= READ_AHEAD_WHOLE
        && let Some(serving) = blob.serving()
    {
        match serving.read_whole(&digest, READ_AHEAD_WHOLE).await? {
            WholeBlob::Verified(data) if data.len() as u64 == size => {
                return Ok(Fetched::Whole(data.slice(part.start as usize..part.end as usize)));
            }
            WholeBlob::Verified(_) | WholeBlob::TooLarge => return Err(RenderError::SizeMismatch { digest, size }),
            WholeBlob::Absent => return Err(RenderError::Missing { what: "blob", digest }),
        }
    }
    let mut reader = blob.open_read(&digest).await?.ok_or(RenderError::Missing { what: "blob", digest })?;
    if size > READ_AHEAD_WHOLE {
        if part.start > 0 {
            reader
                .seek(std::io::SeekFrom::Start(part.start))
                .await
                .map_err(|source| RenderError::BlobRead { digest, source })?;
        }
        return Ok(Fetched::Stream(reader));
    }
    let mut data = Vec::with_capacity(size as usize);
    (&mut reader as &mut (dyn AsyncRead + Unpin + Send))
        .take(size + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|source| RenderError::BlobRead { digest, source })?;
    if data.len() as u64 != size {
        return Err(RenderError::SizeMismatch { digest, size });
    }
    Ok(Fetched::Whole(Bytes::from(data).slice(part.start as usize..part.end as usize)))
}

/// Copies `part` of a streamed blob to `w`; a blob shorter than its node says, or (when read
/// to its end) longer, is an error.
async fn copy_exact<W: AsyncWrite + Unpin>(
    mut reader: Box<dyn BlobReader>,
    w: &mut W,
    digest: B3Digest,
    size: u64,
    part: Range<u64>,
    buf: &mut Vec<u8>,
) -> Result<(), RenderError> {
    buf.resize(COPY_BUF, 0);
    let mut left = part.end - part.start;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = reader.read(&mut buf[..want]).await.map_err(|source| RenderError::BlobRead { digest, source })?;
        if n == 0 {
            return Err(RenderError::SizeMismatch { digest, size });
        }
        w.write_all(&buf[..n]).await.map_err(write_error)?;
        left -= n as u64;
    }
    if part.end == size {
        let n = reader.read(&mut buf[..1]).await.map_err(|source| RenderError::BlobRead { digest, source })?;
        if n != 0 {
            return Err(RenderError::SizeMismatch { digest, size });
        }
    }
    Ok(())
}

fn write_error(e: std::io::Error) -> RenderError {
    RenderError::Write(super::NarWriteError::Io(e))
}
