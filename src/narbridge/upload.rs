//! Uploads, as `nix copy --to http://…` makes them: the NAR file first (ingested into the
//! castore as it streams in, decompressed, its hash checked against its name), the narinfo
//! last, which becomes a PathInfo only if the NAR it names arrived with the NarHash and NarSize
//! it states. A rejected upload leaves no PathInfo and no record of its NAR; blobs it had
//! already stored stay unreferenced (for gc).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::names::{self, NarName};
use super::{NarBridge, Reject, bad_request};
use crate::access::{Caller, Right};
use crate::castore::Node;
use crate::import::{Admission, AdmitError, admit, ingest_nar};
use crate::nar::HashingReader;
use crate::narinfo::{Compression, NarInfo, decompressor, format_sha256};

/// Largest narinfo, listing or cache-info body accepted: Nix's are a few hundred bytes, a
/// listing of a huge tree some MiB.
const SMALL_BODY: u64 = 64 * 1024 * 1024;
/// How long an uploaded NAR waits for its narinfo. Nix sends the narinfo right after the NAR;
/// an hour covers a slow client and bounds what an abandoned upload costs.
const PENDING_FOR: Duration = Duration::from_secs(3600);
/// Uploaded NARs remembered at most (the oldest are forgotten first).
const PENDING_MAX: usize = 100_000;

/// A NAR that arrived, waiting for (or already used by) narinfos naming it.
#[derive(Debug, Clone)]
struct Pending {
    node: Node,
    nar_sha256: [u8; 32],
    nar_size: u64,
    file_sha256: [u8; 32],
    file_size: u64,
    arrived: Instant,
}

/// Uploaded NARs by URL (`nar/<filehash>.nar.xz`). Kept until they expire rather than until
/// their narinfo comes: two paths with the same NAR share one file, and Nix uploads it once.
#[derive(Default)]
pub struct PendingNars {
    nars: parking_lot::Mutex<HashMap<String, Pending>>,
}

impl PendingNars {
    /// Whether `url` was uploaded (and has not expired).
    pub fn has(&self, url: &str) -> bool {
        self.get(url).is_some()
    }

    fn get(&self, url: &str) -> Option<Pending> {
        let nars = self.nars.lock();
        nars.get(url).filter(|p| p.arrived.elapsed() < PENDING_FOR).cloned()
    }

    fn insert(&self, url: String, pending: Pending) {
        let mut nars = self.nars.lock();
        nars.retain(|_, p| p.arrived.elapsed() < PENDING_FOR);
        if nars.len() >= PENDING_MAX
            && let Some(oldest) = nars.iter().min_by_key(|(_, p)| p.arrived).map(|(url, _)| url.clone())
        {
            nars.remove(&oldest);
        }
        nars.insert(url, pending);
    }
}

/// `PUT /nix-cache-info` (Nix sends one where it found none; ours is made from the options).
pub async fn discard(
    State(bridge): State<Arc<NarBridge>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Reject> {
    bridge.authorize(&caller, &headers)?;
    read_small(&headers, body, "nix-cache-info").await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /<hash>.narinfo` and `PUT /<hash>.ls`.
pub async fn file(
    State(bridge): State<Arc<NarBridge>>,
    Extension(caller): Extension<Caller>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Reject> {
    bridge.authorize(&caller, &headers)?;
    if let Some(digest) = names::path_hash(&file, ".ls") {
        // Our listings are made from the directory graph; the uploaded one is not needed.
        digest.map_err(bad_request)?;
        read_small(&headers, body, &file).await?;
        return Ok(StatusCode::OK.into_response());
    }
    let Some(digest) = names::path_hash(&file, ".narinfo") else {
        return Err(Reject::new(StatusCode::NOT_FOUND, format!("{file}: not a file this cache takes uploads of")));
    };
    let digest = digest.map_err(bad_request)?;
    let text = read_small(&headers, body, &file).await?;
    let narinfo = NarInfo::parse_bytes(&text).map_err(|e| bad_request(format!("{file}: {e}")))?;
    let path = narinfo.store_path.clone();
    if *path.digest() != digest {
        return Err(bad_request(format!("{file} describes another store path, {path}")));
    }
    let Some(nar) = bridge.uploads.get(&narinfo.url) else {
        // Nix skips uploading a NAR file that exists; one of ours only exists as a PathInfo.
        if let Some(existing) =
            bridge.bounded(|| format!("looking up {path}"), bridge.store.path_info.get(digest)).await?
            && existing.nar_sha256 == narinfo.nar_hash
            && existing.nar_size == narinfo.nar_size
        {
            return Ok(StatusCode::OK.into_response());
        }
        return Err(bad_request(format!("{path}: its NAR {} was not uploaded here (or long ago)", narinfo.url)));
    };
    let disagrees = |what: &str, says: String, has: String| {
        bad_request(format!(
            "{path}: {what} disagrees: the narinfo says {says}, the uploaded {} has {has}",
            narinfo.url
        ))
    };
    if narinfo.nar_hash != nar.nar_sha256 {
        return Err(disagrees("NarHash", format_sha256(&narinfo.nar_hash), format_sha256(&nar.nar_sha256)));
    }
    if narinfo.nar_size != nar.nar_size {
        return Err(disagrees("NarSize", narinfo.nar_size.to_string(), nar.nar_size.to_string()));
    }
    if let Some(hash) = narinfo.file_hash
        && hash != nar.file_sha256
    {
        return Err(disagrees("FileHash", format_sha256(&hash), format_sha256(&nar.file_sha256)));
    }
    if let Some(size) = narinfo.file_size
        && size != nar.file_size
    {
        return Err(disagrees("FileSize", size.to_string(), nar.file_size.to_string()));
    }
    let info = narinfo.to_path_info(nar.node).map_err(|e| bad_request(e.to_string()))?;
    // The NAR hash and size were checked against the bytes that arrived (above): what is left
    // to decide is whether the caller may give an existing path other contents.
    let admission = Admission { may_replace: caller.rights.has(Right::Admin), check_with: None };
    let admitted = tokio::time::timeout(bridge.options.store_timeout, admit(&bridge.store, info, admission))
        .await
        .map_err(|_| Reject::new(StatusCode::GATEWAY_TIMEOUT, format!("storing {path}: the store did not answer")))?;
    match admitted {
        Ok(_) => {}
        Err(AdmitError::Exists { .. }) => {
            tracing::warn!(caller = %caller.identity, %path, "upload refused: the path exists with other contents");
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                format!("{path} is already in this cache with other contents; replacing it needs the admin right"),
            ));
        }
        Err(AdmitError::Store(e)) => return Err(Reject::store(&format!("storing {path}"), e)),
        Err(e) => return Err(bad_request(e.to_string())),
    }
    tracing::info!(caller = %caller.identity, %path, "uploaded");
    Ok(StatusCode::OK.into_response())
}

/// `PUT /nar/<filehash>.nar[.xz|…]`.
pub async fn nar(
    State(bridge): State<Arc<NarBridge>>,
    Extension(caller): Extension<Caller>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Reject> {
    let limits = bridge.authorize(&caller, &headers)?;
    let (file_hash, compression) = match NarName::parse(&file).map_err(bad_request)? {
        NarName::Upload { file_hash, compression } => (file_hash, compression),
        NarName::Served { .. } => {
            return Err(bad_request(format!("nar/{file} is a name this cache serves, not one to upload")));
        }
    };
    let url = format!("nar/{file}");
    check_length(&headers, limits.max_body, &url)?;
    let over_limit = Arc::new(AtomicBool::new(false));
    let mut compressed = HashingReader::new(limited_reader(body, limits.max_body, over_limit.clone()));
    let ingested = {
        let mut source = BufReader::new(&mut compressed);
        let compression = match compression {
            // No suffix is "none", or a compression Nix has no suffix for: gzip shows itself.
            Compression::None if source.fill_buf().await.is_ok_and(|b| b.starts_with(&[0x1f, 0x8b])) => {
                Compression::from_word("gzip")
            }
            other => other,
        };
        let nar = decompressor(&compression, source).ok_or_else(|| {
            Reject::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{url}: cannot decompress {compression} (this cache takes none, xz, bzip2, zstd, br and gzip)"),
            )
        })?;
        ingest_nar(bridge.store.blob.clone(), bridge.store.directory.clone(), nar, None).await
    };
    let ingested = ingested.map_err(|e| upload_failed(&url, &over_limit, e.to_string(), limits.max_body))?;
    // The decompressor may stop at the end of its stream; the rest still counts for the hash.
    tokio::io::copy(&mut compressed, &mut tokio::io::sink())
        .await
        .map_err(|e| upload_failed(&url, &over_limit, e.to_string(), limits.max_body))?;
    let got = compressed.sha256();
    if got != file_hash {
        return Err(bad_request(format!("{url}: the body hashes to {}, not to its name", format_sha256(&got))));
    }
    bridge.uploads.insert(
        url.clone(),
        Pending {
            node: ingested.node,
            nar_sha256: ingested.nar_sha256,
            nar_size: ingested.nar_size,
            file_sha256: got,
            file_size: compressed.size(),
            arrived: Instant::now(),
        },
    );
    tracing::info!(%url, nar_size = ingested.nar_size, "NAR uploaded");
    Ok(StatusCode::OK.into_response())
}

impl NarBridge {
    /// The upload limits, if uploads are on and the caller may write ([`Reject::lacking`]
    /// otherwise).
    fn authorize(&self, caller: &Caller, headers: &HeaderMap) -> Result<&super::UploadOptions, Reject> {
        let Some(uploads) = &self.options.uploads else {
            return Err(Reject::new(StatusCode::FORBIDDEN, "uploads are off (start nar-bridge with --allow-uploads)"));
        };
        if caller.rights.has(Right::Write) {
            return Ok(uploads);
        }
        Err(Reject::lacking(caller, Right::Write, headers, "uploads need a token (Authorization: Bearer <token>)"))
    }
}

/// 411 without a length or chunked encoding, 413 when the announced length is over `max`.
fn check_length(headers: &HeaderMap, max: u64, what: &str) -> Result<(), Reject> {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(len) if len > max => {
            Err(Reject::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{what}: {len} bytes is over the limit of {max}")))
        }
        Some(_) => Ok(()),
        None if headers.contains_key(header::TRANSFER_ENCODING) => Ok(()),
        None => Err(Reject::new(StatusCode::LENGTH_REQUIRED, format!("{what}: the upload needs a Content-Length"))),
    }
}

/// The body as a reader that fails once more than `max` bytes came, noting so in `over`.
fn limited_reader(body: Body, max: u64, over: Arc<AtomicBool>) -> impl tokio::io::AsyncRead + Send + Unpin {
    let mut seen = 0u64;
    let stream = body.into_data_stream().map_err(io::Error::other).and_then(move |chunk| {
        seen += chunk.len() as u64;
        let result = if seen > max {
            over.store(true, Ordering::Relaxed);
            Err(io::Error::other(format!("body over the limit of {max} bytes")))
        } else {
            Ok(chunk)
        };
        futures::future::ready(result)
    });
    tokio_util::io::StreamReader::new(stream)
}

/// A small body, whole: 413 over [`SMALL_BODY`], 400 when the client hung up.
async fn read_small(headers: &HeaderMap, body: Body, what: &str) -> Result<Vec<u8>, Reject> {
    check_length(headers, SMALL_BODY, what)?;
    let over = Arc::new(AtomicBool::new(false));
    let mut data = Vec::new();
    limited_reader(body, SMALL_BODY, over.clone())
        .read_to_end(&mut data)
        .await
        .map_err(|e| upload_failed(what, &over, e.to_string(), SMALL_BODY))?;
    Ok(data)
}

fn upload_failed(what: &str, over: &AtomicBool, reason: String, max: u64) -> Reject {
    if over.load(Ordering::Relaxed) {
        Reject::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{what}: body over the limit of {max} bytes"))
    } else {
        Reject::new(StatusCode::BAD_REQUEST, format!("{what}: {reason}"))
    }
}
