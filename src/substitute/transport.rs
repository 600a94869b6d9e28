//! Fetching the files of a Nix binary cache: over HTTP(S) (reqwest: HTTP/1.1 and HTTP/2,
//! connection reuse, proxies from the usual environment variables, TLS with the system's
//! roots), or from a local directory (`file:///…`).
//!
//! Transient failures (connection errors, timeouts, HTTP 5xx and 429) are retried with
//! backoff; a NAR download that breaks off midway is resumed with a `Range` request where the
//! server offers byte ranges. 404, 403 and 410 mean "not in this cache", as Nix reads them.
//!
//! What a cache names stays inside it: [`Transport::locate`] resolves a narinfo's `URL:`
//! relative to the cache and refuses one that is absolute (unless the operator allowed that)
//! or climbs out with `..`; a `file://` cache's files are opened beneath its directory by the
//! kernel (`openat2` with `RESOLVE_BENEATH`), so a symlink cannot lead out either, and only
//! regular files are read (a FIFO cannot make a read wait forever). A whole-file read
//! ([`Transport::get`], for narinfos) stops at a size limit.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a file of a binary cache could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The server answered with an error status other than "not found".
    #[error("{url}: HTTP {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status it got.
        status: u16,
    },
    /// The request failed (connection, TLS, timeout), also after retries.
    #[error("{url}: {reason}")]
    Request {
        /// What was fetched.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The file is longer than what is read of it; reading stopped at the limit.
    #[error("binary cache {cache}: {file} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The cache's URL (or directory).
        cache: String,
        /// The file, as the cache names it (`<hash>.narinfo`).
        file: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A URL from the cache (a narinfo's `URL:`) that points outside the cache.
    #[error("binary cache {cache}: refusing URL {url:?}: {reason}")]
    Outside {
        /// The cache's URL (or directory).
        cache: String,
        /// The URL as the cache gave it.
        url: String,
        /// Why it is outside.
        reason: Outside,
    },
    /// A file of a `file://` cache that is not a regular file (a FIFO, socket, device or
    /// directory): not read.
    #[error("{path}: is a {kind}, not a regular file")]
    NotAFile {
        /// The file.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
}

/// How a URL given by a binary cache points outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Outside {
    /// It has a scheme (`http://elsewhere/…`): fetched only with `allow-absolute-urls=true`.
    #[error("an absolute URL (the substituter option allow-absolute-urls=true allows them)")]
    Absolute,
    /// It starts with `/`: fetched only with `allow-absolute-urls=true`.
    #[error("an absolute path (the substituter option allow-absolute-urls=true allows them)")]
    AbsolutePath,
    /// An absolute URL of a scheme this cache cannot fetch (`file://` from an HTTP cache).
    #[error("an absolute URL of a scheme this cache does not fetch")]
    Scheme,
    /// Its `..` segments climb above the cache's base.
    #[error("it leaves the cache's base")]
    Climbs,
    /// It names the cache's base itself, not a file in it.
    #[error("it names no file")]
    Empty,
    /// A `file://` cache's file that resolves outside its directory through a symlink.
    #[error("it resolves outside the cache directory (through a symlink)")]
    Symlink,
    /// A `file://` cache's file reached through a symlink where the kernel has no `openat2`
    /// to follow symlinks only inside the directory: every symlink is refused there.
    #[error("it goes through a symlink, which without openat2 (Linux 5.6) is not followed")]
    AnySymlink,
}

/// Attempts per request: the first and this many retries, with backoff doubling from
/// [`FIRST_BACKOFF`] (0.2 + 0.4 + 0.8 s in all), so a cache restarting under us is ridden out
/// while a dead one is reported within a few seconds.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Resumptions of one NAR download that broke off.
const RESUMES: u32 = 5;

/// A byte stream of a fetched file.
pub type Body = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Where a binary cache's files come from.
#[derive(Clone)]
pub enum Transport {
    /// An HTTP(S) server; `base` ends with `/`.
    Http {
        /// The shared client (its connection pool is reused by every request).
        client: reqwest::Client,
        /// The cache's URL, ending with `/`.
        base: url::Url,
    },
    /// A local directory, as `nix copy --to file:///dir` writes it.
    File {
        /// The cache's directory.
        dir: PathBuf,
    },
}

/// A file of a binary cache, located by [`Transport::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An HTTP(S) URL: below the cache's base, or anywhere when absolute URLs are allowed.
    Http(url::Url),
    /// A path below a `file://` cache's directory (normalised, no `..`), opened without
    /// resolving outside the directory.
    Beneath {
        /// The cache's directory.
        dir: PathBuf,
        /// The file's path relative to it.
        path: PathBuf,
    },
    /// An absolute local path (only with absolute URLs allowed), opened as given.
    Local(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Http(url) => write!(f, "{url}"),
            Location::Beneath { dir, path } => write!(f, "{}", dir.join(path).display()),
            Location::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Transport {
    /// An HTTP(S) transport for `base` whose requests give up after `timeout` without progress.
    pub fn http(mut base: url::Url, timeout: Duration) -> Result<Self, String> {
        crate::tuning::install_tls_provider();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("tvix-store/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
        Ok(Transport::Http { client, base })
    }

    /// Where `name` (e.g. `<hash>.narinfo`, `nar/<hash>.nar.xz`) is, for messages.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Transport::Http { base, .. } => {
                base.join(name).map(|u| u.to_string()).unwrap_or_else(|_| format!("{base}{name}"))
            }
            Transport::File { dir } => dir.join(name).display().to_string(),
        }
    }

    /// Resolves `url`, as a narinfo's `URL:` gives it, relative to the cache. A relative URL
    /// whose `..` segments stay inside the cache is fine; one that climbs out is refused, and
    /// so is an absolute one (a scheme, or a leading `/`) unless `allow_absolute`. Even then an
    /// HTTP cache only fetches `http(s)://` URLs and a `file://` cache only `file://` URLs and
    /// absolute paths: a remote cache never names a local file. Nothing is fetched here.
    pub fn locate(&self, url: &str, allow_absolute: bool) -> Result<Location, FetchError> {
        let outside = |reason| FetchError::Outside { cache: self.describe(""), url: url.to_string(), reason };
        // A scheme makes a URL absolute; a leading `/` makes it host-relative (`//` even
        // host-changing) or an absolute path. In an http URL a `\` counts as a `/`; in a path
        // it is an ordinary character.
        let absolute = url::Url::parse(url).ok();
        let rooted = url.starts_with('/') || (matches!(self, Transport::Http { .. }) && url.starts_with('\\'));
        if (absolute.is_some() || rooted) && !allow_absolute {
            return Err(outside(if absolute.is_some() { Outside::Absolute } else { Outside::AbsolutePath }));
        }
        match self {
            Transport::Http { base, .. } => {
                if let Some(absolute) = absolute {
                    return match absolute.scheme() {
                        "http" | "https" => Ok(Location::Http(absolute)),
                        _ => Err(outside(Outside::Scheme)),
                    };
                }
                let joined = base.join(url).map_err(|_| outside(Outside::Climbs))?;
                // `join` has removed the dot segments (`%2e%2e` too): what is left must still
                // be below the base, unless an absolute path was allowed.
                let below = joined.origin() == base.origin() && joined.path().starts_with(base.path());
                if !(below || rooted) {
                    return Err(outside(Outside::Climbs));
                }
                if joined.path() == base.path() && joined.query().is_none() {
                    return Err(outside(Outside::Empty));
                }
                Ok(Location::Http(joined))
            }
            Transport::File { dir } => {
                if let Some(absolute) = absolute {
                    return match absolute.scheme() {
                        "file" => absolute.to_file_path().map(Location::Local).map_err(|()| outside(Outside::Scheme)),
                        _ => Err(outside(Outside::Scheme)),
                    };
                }
                if rooted {
                    return Ok(Location::Local(PathBuf::from(url)));
                }
                // Nix joins a local cache's directory and the URL as strings; we normalise
                // first, and refuse what climbs above the directory.
                let mut path = PathBuf::new();
                for component in Path::new(url).components() {
                    match component {
                        Component::Normal(part) => path.push(part),
                        Component::CurDir => {}
                        Component::ParentDir => {
                            if !path.pop() {
                                return Err(outside(Outside::Climbs));
                            }
                        }
                        Component::RootDir | Component::Prefix(_) => return Err(outside(Outside::AbsolutePath)),
                    }
                }
                if path.as_os_str().is_empty() {
                    return Err(outside(Outside::Empty));
                }
                Ok(Location::Beneath { dir: dir.clone(), path })
            }
        }
    }

    /// The whole file at `location` (a narinfo: small), at most `limit` bytes; `None` when the
    /// cache does not have it. A longer file fails with [`FetchError::TooLarge`] once `limit`
    /// bytes are in, so no more than that is ever held.
    pub async fn get(&self, location: &Location, limit: u64) -> Result<Option<Bytes>, FetchError> {
        let too_large = || FetchError::TooLarge { cache: self.describe(""), file: file_name(location), limit };
        match location {
            Location::Http(url) => {
                let Some(mut response) = self.request(url, None).await? else {
                    return Ok(None);
                };
                if response.content_length().is_some_and(|length| length > limit) {
                    return Err(too_large());
                }
                let mut data = BytesMut::new();
                loop {
                    let chunk = response
                        .chunk()
                        .await
                        .map_err(|e| FetchError::Request { url: url.to_string(), reason: error_chain(&e) })?;
                    let Some(chunk) = chunk else { break };
                    if data.len() as u64 + chunk.len() as u64 > limit {
                        // Dropping the response closes the connection: the rest is never read.
                        return Err(too_large());
                    }
                    data.extend_from_slice(&chunk);
                }
                Ok(Some(data.freeze()))
            }
            Location::Beneath { .. } | Location::Local(_) => {
                let Some(file) = open_local(location).await? else {
                    return Ok(None);
                };
                let mut data = Vec::new();
                file.take(limit.saturating_add(1))
                    .read_to_end(&mut data)
                    .await
                    .map_err(|e| FetchError::Request { url: location.to_string(), reason: e.to_string() })?;
                if data.len() as u64 > limit {
                    return Err(too_large());
                }
                Ok(Some(data.into()))
            }
        }
    }

    /// The file at `location` as a stream (a NAR: large); `None` when the cache does not have
    /// it.
    pub async fn open(&self, location: &Location) -> Result<Option<Body>, FetchError> {
        match location {
            Location::Http(url) => {
                let Some(first) = self.request(url, None).await? else {
                    return Ok(None);
                };
                Ok(Some(Box::pin(self.clone().resuming(url.clone(), first))))
            }
            Location::Beneath { .. } | Location::Local(_) => Ok(open_local(location)
                .await?
                .map(|file| Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)) as Body)),
        }
    }

    /// One GET of `url` (from byte `from` on), retried on transient failures.
    async fn request(&self, url: &url::Url, from: Option<u64>) -> Result<Option<reqwest::Response>, FetchError> {
        let Transport::Http { client, .. } = self else {
            return Err(FetchError::Request { url: url.to_string(), reason: "not an HTTP binary cache".into() });
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let mut request = client.get(url.clone());
            if let Some(from) = from {
                request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        if from.is_some() && status != reqwest::StatusCode::PARTIAL_CONTENT {
                            return Err(FetchError::Status { url: url.to_string(), status: status.as_u16() });
                        }
                        return Ok(Some(response));
                    }
                    if matches!(status.as_u16(), 403 | 404 | 410) {
                        return Ok(None);
                    }
                    let error = FetchError::Status { url: url.to_string(), status: status.as_u16() };
                    if !(status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS) {
                        return Err(error);
                    }
                    error
                }
                Err(e) => FetchError::Request { url: url.to_string(), reason: error_chain(&e) },
            };
            if attempt == RETRIES {
                return Err(failure);
            }
            attempt += 1;
            tracing::debug!(%url, attempt, error = %failure, "retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    /// The body of `first`, continued with `Range` requests where it breaks off (if the
    /// server offers byte ranges).
    fn resuming(self, url: url::Url, first: reqwest::Response) -> impl Stream<Item = io::Result<Bytes>> + Send {
        let ranges = first
            .headers()
            .get(reqwest::header::ACCEPT_RANGES)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
        async_stream::stream! {
            let mut offset = 0u64;
            let mut resumes = 0;
            let mut body = first.bytes_stream().boxed();
            loop {
                let broken = match body.next().await {
                    None => return,
                    Some(Ok(data)) => {
                        offset += data.len() as u64;
                        yield Ok(data);
                        continue;
                    }
                    Some(Err(e)) => error_chain(&e),
                };
                if !ranges || resumes == RESUMES {
                    yield Err(io::Error::other(format!("{url}: download broke off after {offset} bytes: {broken}")));
                    return;
                }
                resumes += 1;
                tracing::info!(%url, offset, "download broke off ({broken}); resuming");
                match self.request(&url, Some(offset)).await {
                    Ok(Some(response)) => body = response.bytes_stream().boxed(),
                    Ok(None) => {
                        yield Err(io::Error::other(format!("{url}: gone while resuming at byte {offset}")));
                        return;
                    }
                    Err(e) => {
                        yield Err(io::Error::other(format!("resuming at byte {offset}: {e}")));
                        return;
                    }
                }
            }
        }
    }
}

/// A reqwest error with its causes: its own message alone is often just "error sending request".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// A fetched body as an `AsyncRead`.
pub fn reader(body: Body) -> impl AsyncRead + Send + Unpin {
    tokio_util::io::StreamReader::new(body)
}

/// The name a cache gives `location`, for messages about the cache.
fn file_name(location: &Location) -> String {
    match location {
        Location::Http(url) => url.path_segments().and_then(|mut s| s.next_back()).unwrap_or("").to_string(),
        Location::Beneath { path, .. } => path.display().to_string(),
        Location::Local(path) => path.display().to_string(),
    }
}

/// Opens a local file of a cache for reading, on a blocking thread; `None` when it does not
/// exist.
async fn open_local(location: &Location) -> Result<Option<tokio::fs::File>, FetchError> {
    let owned = location.clone();
    let opened = tokio::task::spawn_blocking(move || open_local_blocking(&owned)).await.map_err(|e| {
        FetchError::Request { url: location.to_string(), reason: format!("the task opening it failed: {e}") }
    })?;
    Ok(opened?.map(tokio::fs::File::from_std))
}

/// How opening a file beneath a directory failed.
#[derive(Debug)]
enum BeneathError {
    /// It resolves outside the directory (or, without `openat2`, through any symlink).
    Outside(Outside),
    /// Any other failure (`NotFound` among them).
    Io(io::Error),
}

fn open_local_blocking(location: &Location) -> Result<Option<std::fs::File>, FetchError> {
    let failed = |e: io::Error| FetchError::Request { url: location.to_string(), reason: e.to_string() };
    let opened = match location {
        Location::Beneath { dir, path } => match open_beneath(dir, path) {
            Err(BeneathError::Outside(reason)) => {
                return Err(FetchError::Outside {
                    cache: dir.display().to_string(),
                    url: path.display().to_string(),
                    reason,
                });
            }
            Err(BeneathError::Io(e)) => Err(e),
            Ok(file) => Ok(file),
        },
        // An absolute path the operator allowed: opened as given, symlinks followed; still
        // without blocking on a FIFO.
        Location::Local(path) => {
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)
        }
        Location::Http(url) => {
            return Err(FetchError::Request { url: url.to_string(), reason: "not a local file".into() });
        }
    };
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let kind = file.metadata().map_err(failed)?.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "device"
        } else {
            "file of unknown type"
        };
        return Err(FetchError::NotAFile { path: location.to_string(), kind });
    }
    // Opened non-blocking only so that a FIFO could not hold up the open; reads of a regular
    // file never block on that flag, but clear it anyway for whoever reads next.
    set_blocking(&file).map_err(failed)?;
    Ok(Some(file))
}

/// Clears `O_NONBLOCK` on `file`.
fn set_blocking(file: &std::fs::File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with F_GETFL/F_SETFL on a descriptor `file` keeps open; no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Flags of every open below a cache directory: read only, and non-blocking so that a FIFO
/// answers at once (the caller then refuses it) instead of waiting for a writer.
const READ_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// `struct open_how` of `openat2(2)` (libc's is `non_exhaustive`, so it cannot be built).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` (relative, without `..`) beneath the directory `dir`, never resolving outside
/// it. `openat2` with `RESOLVE_BENEATH` lets the kernel decide, so symlinks that stay inside
/// are followed and one that leads out is refused, with no window between a check and the
/// open. Where `openat2` is missing (Linux before 5.6, or filtered by a seccomp profile), each
/// component is opened with `O_NOFOLLOW` instead, which refuses every symlink.
fn open_beneath(dir: &Path, path: &Path) -> Result<std::fs::File, BeneathError> {
    let base: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(BeneathError::Io)?
        .into();
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| BeneathError::Io(io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in the path")))?;
    let how =
        OpenHow { flags: READ_FLAGS as u64, mode: 0, resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS };
    // SAFETY: a descriptor `base` keeps open, a NUL-terminated path and an `open_how` of the
    // size passed, all alive for the call; the kernel writes nothing through them.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, base.as_raw_fd(), c_path.as_ptr(), &raw const how, size_of::<OpenHow>())
    };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just returned, owned by nothing else.
        return Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EXDEV) => Err(BeneathError::Outside(Outside::Symlink)),
        Some(libc::ENOSYS | libc::EPERM) => open_nofollow(base, path),
        _ => Err(BeneathError::Io(e)),
    }
}

/// [`open_beneath`] without `openat2`: component by component with `O_NOFOLLOW`, so no
/// symlink at all is followed.
fn open_nofollow(mut dir: OwnedFd, path: &Path) -> Result<std::fs::File, BeneathError> {
    let parts: Vec<_> = path.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(name) = part else {
            return Err(BeneathError::Outside(Outside::Climbs));
        };
        let last = i + 1 == parts.len();
        let flags =
            libc::O_NOFOLLOW | if last { READ_FLAGS } else { libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY };
        let c_name = CString::new(name.as_bytes())
            .map_err(|_| BeneathError::Io(io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in the path")))?;
        // SAFETY: a descriptor `dir` keeps open and a NUL-terminated name, alive for the call.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), c_name.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // ELOOP: the last component is a symlink; ENOTDIR: a component on the way is a
            // symlink (or a file, which stays an I/O error).
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => BeneathError::Outside(Outside::AnySymlink),
                Some(libc::ENOTDIR) if is_symlink_at(&dir, &c_name) => BeneathError::Outside(Outside::AnySymlink),
                _ => BeneathError::Io(e),
            });
        }
        // SAFETY: a descriptor the kernel just returned, owned by nothing else.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(std::fs::File::from(dir))
}

/// Whether `name` in the directory `dir` is a symlink (not followed).
fn is_symlink_at(dir: &OwnedFd, name: &CString) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a descriptor `dir` keeps open, a NUL-terminated name and room for one `stat`,
    // all alive for the call.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), stat.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    // SAFETY: fstatat filled `stat` when it returned 0.
    rc == 0 && unsafe { stat.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFLNK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(base: &str) -> Transport {
        Transport::http(url::Url::parse(base).unwrap(), Duration::from_secs(1)).unwrap()
    }

    fn refused(result: Result<Location, FetchError>) -> Outside {
        match result {
            Err(FetchError::Outside { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn http_nar_urls_stay_below_the_cache() {
        let cache = http("http://127.0.0.1:8080/cache");
        let at = |url: &str| match cache.locate(url, false) {
            Ok(Location::Http(url)) => url.to_string(),
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(at("nar/abc.nar.xz"), "http://127.0.0.1:8080/cache/nar/abc.nar.xz");
        assert_eq!(at("nar/../nar/./abc.nar"), "http://127.0.0.1:8080/cache/nar/abc.nar");
        for (url, reason) in [
            ("http://127.0.0.1:9/nar/x.nar", Outside::Absolute),
            ("file:///etc/passwd", Outside::Absolute),
            ("/nar/x.nar", Outside::AbsolutePath),
            ("//elsewhere/x.nar", Outside::AbsolutePath),
            ("\\\\elsewhere/x.nar", Outside::AbsolutePath),
            ("../secret/nar/x.nar", Outside::Climbs),
            ("nar/../../x.nar", Outside::Climbs),
            ("%2e%2e/x.nar", Outside::Climbs),
            ("nar/..", Outside::Empty),
        ] {
            assert_eq!(refused(cache.locate(url, false)), reason, "{url}");
        }
        let err = cache.locate("http://127.0.0.1:9/x", false).unwrap_err().to_string();
        assert!(err.contains("http://127.0.0.1:8080/cache/") && err.contains("\"http://127.0.0.1:9/x\""), "{err}");
        assert!(err.contains("allow-absolute-urls=true"), "{err}");

        // Allowed: absolute http(s) URLs and paths; still never a local file, never `..` out.
        let allowed = |url: &str| match cache.locate(url, true) {
            Ok(Location::Http(url)) => url.to_string(),
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(allowed("http://127.0.0.1:9/nar/x.nar"), "http://127.0.0.1:9/nar/x.nar");
        assert_eq!(allowed("/elsewhere/x.nar"), "http://127.0.0.1:8080/elsewhere/x.nar");
        assert_eq!(refused(cache.locate("file:///etc/passwd", true)), Outside::Scheme);
        assert_eq!(refused(cache.locate("../x.nar", true)), Outside::Climbs);
    }

    #[test]
    fn file_nar_urls_stay_in_the_directory() {
        let cache = Transport::File { dir: "/srv/cache".into() };
        let beneath = |path: &str| Location::Beneath { dir: "/srv/cache".into(), path: path.into() };
        assert_eq!(cache.locate("nar/abc.nar", false).unwrap(), beneath("nar/abc.nar"));
        assert_eq!(cache.locate("./nar/x/../abc.nar", false).unwrap(), beneath("nar/abc.nar"));
        for (url, reason) in [
            ("../secret/nar", Outside::Climbs),
            ("nar/../../secret", Outside::Climbs),
            ("/etc/shadow", Outside::AbsolutePath),
            ("file:///etc/shadow", Outside::Absolute),
            ("http://127.0.0.1:9/x", Outside::Absolute),
            (".", Outside::Empty),
        ] {
            assert_eq!(refused(cache.locate(url, false)), reason, "{url}");
        }
        // A backslash is part of a file name here, not a path separator.
        assert_eq!(cache.locate("\\x.nar", true).unwrap(), beneath("\\x.nar"));
        assert_eq!(cache.locate("/srv/other/x.nar", true).unwrap(), Location::Local("/srv/other/x.nar".into()));
        assert_eq!(cache.locate("file:///srv/other/x.nar", true).unwrap(), Location::Local("/srv/other/x.nar".into()));
        assert_eq!(refused(cache.locate("http://127.0.0.1:9/x", true)), Outside::Scheme);
        assert_eq!(refused(cache.locate("../x", true)), Outside::Climbs);
    }

    /// A cache directory with `nar/ok.nar`, a symlink inside (`nar/inside` to it), a symlink
    /// out (`nar/out` to a file beside the directory), a symlinked directory out (`escape`),
    /// and a FIFO (`nar/fifo`).
    fn cache_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir_all(dir.join("nar")).unwrap();
        std::fs::write(dir.join("nar/ok.nar"), b"inside").unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("ok.nar", dir.join("nar/inside")).unwrap();
        std::os::unix::fs::symlink("../../secret", dir.join("nar/out")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), dir.join("escape")).unwrap();
        let fifo = CString::new(dir.join("nar/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        tmp
    }

    #[tokio::test]
    async fn file_caches_open_nothing_outside_and_no_fifo() {
        let tmp = cache_dir();
        let cache = Transport::File { dir: tmp.path().join("cache") };
        let get = |url: &'static str| {
            let cache = cache.clone();
            async move { cache.get(&cache.locate(url, false)?, 100).await }
        };
        assert_eq!(get("nar/ok.nar").await.unwrap().unwrap(), &b"inside"[..]);
        assert_eq!(get("nar/inside").await.unwrap().unwrap(), &b"inside"[..], "a symlink inside is followed");
        assert_eq!(get("nar/missing").await.unwrap(), None);
        for url in ["nar/out", "escape/secret"] {
            match get(url).await {
                Err(FetchError::Outside { reason: Outside::Symlink, cache, url: named }) => {
                    assert!(cache.ends_with("/cache") && named == url, "{cache} {named}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // Neither waits for a writer nor reads: refused at once.
        let fifo = tokio::time::timeout(Duration::from_secs(5), get("nar/fifo")).await.expect("a FIFO made it wait");
        assert!(matches!(fifo, Err(FetchError::NotAFile { kind: "FIFO", .. })), "{fifo:?}");
        let dir = get("nar").await;
        assert!(matches!(dir, Err(FetchError::NotAFile { kind: "directory", .. })), "{dir:?}");

        // Over the limit: refused, naming the cache, the file and the limit.
        let err = cache.get(&cache.locate("nar/ok.nar", false).unwrap(), 5).await.unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { limit: 5, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("/cache") && text.contains("nar/ok.nar") && text.contains("limit of 5 bytes"), "{text}");
    }

    /// The fallback for kernels without `openat2` refuses every symlink, inside or out.
    #[test]
    fn without_openat2_no_symlink_is_followed() {
        let tmp = cache_dir();
        let dir = || -> OwnedFd { std::fs::File::open(tmp.path().join("cache")).unwrap().into() };
        let mut ok = open_nofollow(dir(), Path::new("nar/ok.nar")).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut ok, &mut text).unwrap();
        assert_eq!(text, "inside");
        for path in ["nar/inside", "nar/out"] {
            let err = open_nofollow(dir(), Path::new(path)).unwrap_err();
            assert!(matches!(err, BeneathError::Outside(Outside::AnySymlink)), "{path}: {err:?}");
        }
        // A symlinked directory on the way: not followed either.
        let err = open_nofollow(dir(), Path::new("escape/secret")).unwrap_err();
        assert!(matches!(&err, BeneathError::Outside(Outside::AnySymlink)), "{err:?}");
        // A file where a directory should be stays an ordinary error.
        let err = open_nofollow(dir(), Path::new("nar/ok.nar/x")).unwrap_err();
        assert!(matches!(&err, BeneathError::Io(e) if e.raw_os_error() == Some(libc::ENOTDIR)), "{err:?}");
    }
}
