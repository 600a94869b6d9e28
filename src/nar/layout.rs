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
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::{NarWriter, RenderError};
use crate::castore::blobservice::{BlobReader, BlobReaderExt, BlobService};
use crate::castore::directoryservice::DirectoryService;
use crate::castore::{B3Digest, Directory, Node, PathComponent};

/// Blobs up to this size are read ahead whole, in batches; larger ones are opened ahead and
/// streamed.
const READ_AHEAD_WHOLE: u64 = 1024 * 1024;
/// A batch of small files ([`BlobService::read_many`], one call to a daemon) holds at most
/// this many bytes and files. 256 files are ~12 small store paths of the nar-bridge benchmark,
/// so most NARs are one batch; 4 MiB bounds what one batch holds in memory.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
const BATCH_FILES: usize = 256;
/// Fetches (a batch of small files, or one large file opened) under way ahead of the one being
/// written: the next batch arrives while this one is written, and at most this many times
/// [`BATCH_BYTES`] are held (with one Read per file, 16 files ahead had kept a daemon-backed
/// render at the speed of a local one, issue 2's measurements; a batch is that and more).
const FETCHES_AHEAD: usize = 4;

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

    /// About how many bytes of memory the layout holds (for bounding caches of layouts).
    pub fn memory(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.framing.len()
            + self.segments.len() * std::mem::size_of::<Segment>()
            + self.listing.as_ref().map_or(0, String::len)
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

    /// Writes bytes `range` of the NAR (clamped to its size) to `w` and returns `w` (flushed):
    /// [`Self::stream_range`] written out.
    pub async fn write_range<W: AsyncWrite + Unpin>(
        &self,
        mut w: W,
        blob: &dyn BlobService,
        range: Range<u64>,
    ) -> Result<W, RenderError> {
        let mut pieces = std::pin::pin!(Self::stream_range(self, blob, range));
        while let Some(piece) = pieces.try_next().await? {
            w.write_all(&piece).await.map_err(write_error)?;
        }
        w.flush().await.map_err(write_error)?;
        Ok(w)
    }

    /// Bytes `range` of the NAR (clamped to its size), as buffers: framing as slices of the
    /// layout, file contents as the verified buffers the blob service hands out (whole small
    /// files, a large file's chunks), so a consumer passing them on (nar-bridge to its socket)
    /// copies nothing. Pieces smaller than [`GATHER_BELOW`] (framing, tiny files) are gathered
    /// into buffers of up to [`GATHER_UP_TO`], so a consumer does not get a write per field.
    /// Blobs wholly outside the range are not read; a blob the range starts inside is read
    /// from there on. `layout` and `blob` may be borrowed or owned (`Arc`s, for a stream that
    /// outlives its caller).
    pub fn stream_range<'a, L, B>(
        layout: L,
        blob: B,
        range: Range<u64>,
    ) -> impl futures::Stream<Item = Result<Bytes, RenderError>> + Send + 'a
    where
        L: std::ops::Deref<Target = NarLayout> + Send + 'a,
        B: std::ops::Deref<Target = dyn BlobService + 'a> + Send + 'a,
    {
        async_stream::try_stream! {
            let layout = &*layout;
            let blob = &*blob;
            let end = range.end.min(layout.size);
            let start = range.start.min(end);
            let first = layout.segments.partition_point(|s| s.offset() + s.len() <= start);
            let window: Vec<(&Segment, Range<u64>)> = layout.segments[first..]
                .iter()
                .take_while(|s| s.offset() < end)
                .map(|s| {
                    let from = start.saturating_sub(s.offset());
                    let to = (end - s.offset()).min(s.len());
                    (s, from..to)
                })
                .filter(|(_, r)| !r.is_empty())
                .collect();
            let files = window.iter().filter_map(|(s, part)| match s {
                Segment::Contents { digest, size, .. } => Some(File { digest: *digest, size: *size, part: part.clone() }),
                Segment::Framing { .. } => None,
            });
            let mut fetched = futures::stream::iter(fetches(files))
                .map(|fetch| async move {
                    match fetch {
                        Fetch::Batch(files) => fetch_batch(blob, files).await,
                        Fetch::Large(file) => Ok(vec![fetch_large(blob, file).await?]),
                    }
                })
                .buffered(FETCHES_AHEAD);
            let mut ready = std::collections::VecDeque::new();
            let mut gathered = Gather::default();
            for (segment, part) in &window {
                match segment {
                    Segment::Framing { start, .. } => {
                        let from = start + part.start as usize;
                        for out in gathered.add(layout.framing.slice(from..from + (part.end - part.start) as usize)) {
                            yield out;
                        }
                    }
                    Segment::Contents { digest, size, .. } => {
                        if ready.is_empty() {
                            // Whatever is gathered goes out before waiting for the next batch.
                            if let Some(out) = gathered.take() {
                                yield out;
                            }
                            if let Some(batch) = fetched.next().await {
                                ready.extend(batch?);
                            }
                        }
                        let Some(contents) = ready.pop_front() else {
                            unreachable!("one fetched file per contents segment in the window");
                        };
                        match contents {
                            Fetched::Whole(data) => {
                                for out in gathered.add(data) {
                                    yield out;
                                }
                            }
                            Fetched::Stream(mut reader) => {
                                if let Some(out) = gathered.take() {
                                    yield out;
                                }
                                let (digest, size) = (*digest, *size);
                                let read_error = |source| RenderError::BlobRead { digest, source };
                                let mut left = part.end - part.start;
                                while left > 0 {
                                    let piece = reader.piece(usize::try_from(left).unwrap_or(usize::MAX)).await.map_err(read_error)?;
                                    if piece.is_empty() {
                                        Err(RenderError::SizeMismatch { digest, size })?;
                                    }
                                    left -= piece.len() as u64;
                                    yield piece;
                                }
                                // Read to its end, the blob must end where its node says.
                                if part.end == size && !reader.piece(1).await.map_err(read_error)?.is_empty() {
                                    Err(RenderError::SizeMismatch { digest, size })?;
                                }
                            }
                        }
                    }
                }
            }
            if let Some(out) = gathered.take() {
                yield out;
            }
        }
    }
}

/// Pieces smaller than this are gathered (copied) into larger buffers by
/// [`NarLayout::stream_range`]; larger ones are handed on as they are.
const GATHER_BELOW: usize = 16 * 1024;
/// Size up to which [`NarLayout::stream_range`] gathers small pieces.
const GATHER_UP_TO: usize = 64 * 1024;

/// Small pieces gathered into one buffer.
#[derive(Default)]
struct Gather {
    buf: bytes::BytesMut,
}

impl Gather {
    /// Takes `piece`, returning what is ready to go out: a small piece is gathered (the
    /// buffer goes out once full), a large one goes out as it is, after what was gathered.
    fn add(&mut self, piece: Bytes) -> impl Iterator<Item = Bytes> + use<> {
        if piece.len() >= GATHER_BELOW {
            return [self.take(), Some(piece)].into_iter().flatten();
        }
        self.buf.extend_from_slice(&piece);
        let full = if self.buf.len() >= GATHER_UP_TO { self.take() } else { None };
        [full, None].into_iter().flatten()
    }

    /// What is gathered, if anything.
    fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
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

/// A file whose contents are in the range being written: `part` of a blob of `size` bytes.
struct File {
    digest: B3Digest,
    size: u64,
    part: Range<u64>,
}

/// What is fetched ahead together.
enum Fetch {
    /// Small files, read whole with one [`BlobService::read_many`].
    Batch(Vec<File>),
    /// A large file, opened and streamed.
    Large(File),
}

/// Groups `files` (in NAR order) into fetches: runs of small files cut into batches of at most
/// [`BATCH_FILES`] files and [`BATCH_BYTES`] bytes, each large file on its own.
fn fetches(files: impl Iterator<Item = File>) -> Vec<Fetch> {
    let mut fetches = Vec::new();
    let mut batch: Vec<File> = Vec::new();
    let mut batch_bytes = 0;
    for file in files {
        if file.size > READ_AHEAD_WHOLE {
            if !batch.is_empty() {
                fetches.push(Fetch::Batch(std::mem::take(&mut batch)));
                batch_bytes = 0;
            }
            fetches.push(Fetch::Large(file));
            continue;
        }
        if !batch.is_empty() && (batch.len() == BATCH_FILES || batch_bytes + file.size > BATCH_BYTES) {
            fetches.push(Fetch::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += file.size;
        batch.push(file);
    }
    if !batch.is_empty() {
        fetches.push(Fetch::Batch(batch));
    }
    fetches
}

/// Reads a batch of small files whole (each checked against its node's size) and cuts out
/// their parts.
async fn fetch_batch(blob: &dyn BlobService, files: Vec<File>) -> Result<Vec<Fetched>, RenderError> {
    let mut results = blob.read_many(files.iter().map(|f| f.digest).collect());
    let mut fetched = Vec::with_capacity(files.len());
    for File { digest, size, part } in files {
        let data = match results.next().await {
            Some((got, result)) if got == digest => result?,
            // A read_many that skips or reorders results is a bug of its implementation; the
            // file's bytes are missing either way.
            _ => None,
        };
        let data = data.ok_or(RenderError::Missing { what: "blob", digest })?;
        if data.len() as u64 != size {
            return Err(RenderError::SizeMismatch { digest, size });
        }
        fetched.push(Fetched::Whole(data.slice(part.start as usize..part.end as usize)));
    }
    Ok(fetched)
}

/// Opens a large blob, positioned at `part.start`.
async fn fetch_large(blob: &dyn BlobService, file: File) -> Result<Fetched, RenderError> {
    let File { digest, part, .. } = file;
    let mut reader = blob.open_read(&digest).await?.ok_or(RenderError::Missing { what: "blob", digest })?;
    if part.start > 0 {
        reader
            .seek(std::io::SeekFrom::Start(part.start))
            .await
            .map_err(|source| RenderError::BlobRead { digest, source })?;
    }
    Ok(Fetched::Stream(reader))
}

fn write_error(e: std::io::Error) -> RenderError {
    RenderError::Write(super::NarWriteError::Io(e))
}
