//! Fetching the files of a Nix binary cache: over HTTP(S) (reqwest: HTTP/1.1 and HTTP/2,
//! connection reuse, proxies from the usual environment variables, TLS with the system's
//! roots), or from a local directory (`file:///…`).
//!
//! Transient failures (connection errors, timeouts, HTTP 5xx and 429) are retried with
//! backoff; a NAR download that breaks off midway is resumed with a `Range` request where the
//! server offers byte ranges. 404, 403 and 410 mean "not in this cache", as Nix reads them.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncRead;

/// Why a file of a binary cache could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
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

    /// The whole file `name` (a narinfo: small); `None` when the cache does not have it.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, FetchError> {
        match self {
            Transport::File { dir } => match tokio::fs::read(dir.join(name)).await {
                Ok(data) => Ok(Some(data.into())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(FetchError::Request { url: self.describe(name), reason: e.to_string() }),
            },
            Transport::Http { .. } => {
                let Some(response) = self.request(name, None).await? else {
                    return Ok(None);
                };
                let url = self.describe(name);
                response.bytes().await.map(Some).map_err(|e| FetchError::Request { url, reason: e.to_string() })
            }
        }
    }

    /// The file `name` as a stream (a NAR: large); `None` when the cache does not have it.
    pub async fn open(&self, name: &str) -> Result<Option<Body>, FetchError> {
        match self {
            Transport::File { dir } => match tokio::fs::File::open(dir.join(name)).await {
                Ok(file) => Ok(Some(Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(FetchError::Request { url: self.describe(name), reason: e.to_string() }),
            },
            Transport::Http { .. } => {
                let Some(first) = self.request(name, None).await? else {
                    return Ok(None);
                };
                Ok(Some(Box::pin(self.clone().resuming(name.to_string(), first))))
            }
        }
    }

    /// One GET (from byte `from` on), retried on transient failures.
    async fn request(&self, name: &str, from: Option<u64>) -> Result<Option<reqwest::Response>, FetchError> {
        let Transport::Http { client, base } = self else {
            unreachable!("only HTTP transports make requests");
        };
        let url =
            base.join(name).map_err(|e| FetchError::Request { url: format!("{base}{name}"), reason: e.to_string() })?;
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
    fn resuming(self, name: String, first: reqwest::Response) -> impl Stream<Item = io::Result<Bytes>> + Send {
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
                let url = self.describe(&name);
                if !ranges || resumes == RESUMES {
                    yield Err(io::Error::other(format!("{url}: download broke off after {offset} bytes: {broken}")));
                    return;
                }
                resumes += 1;
                tracing::info!(%url, offset, "download broke off ({broken}); resuming");
                match self.request(&name, Some(offset)).await {
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
