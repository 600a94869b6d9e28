//! Serving: `nix-cache-info`, narinfos, NARs (whole, by range, or zstd-compressed) and NAR
//! listings, all from the store's services.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};

use super::names::{self, NarName};
use super::{NarBridge, Reject, bad_request};
use crate::castore::Node;
use crate::nar::NarLayout;
use crate::narinfo::{Compression, NarFile, NarInfo};
use crate::pathinfo::PathInfo;
use crate::storepath::{DIGEST_LEN, nixbase32};

/// Bytes of compressed output handed to the connection at once.
const ZSTD_OUT: usize = 64 * 1024;
/// NAR URLs name one immutable NAR (its hash is in the name).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /nix-cache-info`.
pub async fn cache_info(State(bridge): State<Arc<NarBridge>>) -> Response {
    let text = format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {}\n", bridge.options.priority);
    ([(header::CONTENT_TYPE, "text/x-nix-cache-info")], text).into_response()
}

/// `GET|HEAD /<hash>.narinfo` and `/<hash>.ls`.
pub async fn file(State(bridge): State<Arc<NarBridge>>, Path(file): Path<String>) -> Result<Response, Reject> {
    if let Some(digest) = names::path_hash(&file, ".narinfo") {
        let info = bridge.path_info(digest.map_err(bad_request)?).await?;
        let mut narinfo = NarInfo::from_path_info(
            &info,
            NarFile {
                url: names::served_nar_url(info.store_path.digest(), &info.nar_sha256),
                compression: Compression::None,
                // Uncompressed, the file is the NAR.
                file_hash: Some(info.nar_sha256),
                file_size: Some(info.nar_size),
            },
        )
        .map_err(|e| Reject::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(key) = &bridge.options.signing_key {
            key.sign_narinfo(&mut narinfo);
        }
        return Ok(([(header::CONTENT_TYPE, "text/x-nix-narinfo")], narinfo.render()).into_response());
    }
    if let Some(digest) = names::path_hash(&file, ".ls") {
        let info = bridge.path_info(digest.map_err(bad_request)?).await?;
        let layout = bridge.layout(&info, true).await?;
        let json = layout.listing_json().unwrap_or_default().to_string();
        return Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response());
    }
    Err(Reject::new(StatusCode::NOT_FOUND, format!("{file}: no such file in this binary cache")))
}

/// `GET|HEAD /nar/<hash>-<narhash>.nar`.
pub async fn nar(
    State(bridge): State<Arc<NarBridge>>,
    method: Method,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Reject> {
    let (digest, nar_sha256) = match NarName::parse(&file).map_err(bad_request)? {
        NarName::Served { path, nar_sha256 } => (path, nar_sha256),
        // Uploaded NAR files are ingested, not kept: only what an upload in progress needs to
        // know (that it arrived) is answered.
        NarName::Upload { .. } => {
            return if bridge.uploads.has(&format!("nar/{file}")) {
                Ok(StatusCode::OK.into_response())
            } else {
                Err(Reject::new(StatusCode::NOT_FOUND, format!("nar/{file}: not uploaded here")))
            };
        }
    };
    let info = bridge.path_info(digest).await?;
    if info.nar_sha256 != nar_sha256 {
        return Err(Reject::new(
            StatusCode::NOT_FOUND,
            format!(
                "nar/{file}: {} now has another NAR, {}",
                info.store_path,
                names::served_nar_url(&digest, &info.nar_sha256)
            ),
        ));
    }
    let layout = bridge.layout(&info, false).await?;
    if layout.size() != info.nar_size {
        return Err(Reject::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{}: its tree lays out to a {} byte NAR, its PathInfo says {}",
                info.store_path,
                layout.size(),
                info.nar_size
            ),
        ));
    }
    let size = layout.size();
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(value) => match requested_range(value, size) {
            Ok(range) => range,
            Err(()) => {
                let mut response =
                    Reject::new(StatusCode::RANGE_NOT_SATISFIABLE, format!("{value} is beyond the {size} byte NAR"))
                        .into_response();
                response.headers_mut().insert(header::CONTENT_RANGE, header_value(format!("bytes */{size}")));
                return Ok(response);
            }
        },
    };
    // Compressed only when asked and whole: Nix resumes with Range only without a
    // Content-Encoding, and never asks for one.
    let zstd = range.is_none() && accepts_zstd(&headers);

    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, IMMUTABLE)
        .header(header::VARY, "Accept-Encoding");
    let window = match &range {
        Some(r) => {
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end - 1));
            r.clone()
        }
        None => 0..size,
    };
    if zstd {
        response = response.header(header::CONTENT_ENCODING, "zstd");
    } else {
        response = response.header(header::CONTENT_LENGTH, window.end - window.start);
    }
    let body = if method == Method::HEAD { Body::empty() } else { bridge.render(info, layout, window, zstd) };
    response.body(body).map_err(|e| Reject::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

impl NarBridge {
    /// The PathInfo of a path, or 404.
    async fn path_info(&self, digest: [u8; DIGEST_LEN]) -> Result<PathInfo, Reject> {
        let hash = nixbase32::encode(&digest);
        self.bounded(|| format!("looking up {hash}"), self.store.path_info.get(digest))
            .await?
            .ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, format!("{hash}: no such store path here")))
    }

    /// The layout of a path's NAR (its directories fetched), from the layout cache when the
    /// same tree was laid out before (listings are not cached: `.ls` files are asked for rarely).
    async fn layout(&self, info: &PathInfo, listing: bool) -> Result<Arc<NarLayout>, Reject> {
        let root = match &info.node {
            Node::Directory { digest, .. } if !listing => Some(*digest),
            _ => None,
        };
        if let Some(layout) = root.and_then(|root| self.layouts.get(&root)) {
            return Ok(layout);
        }
        let what = || format!("laying out the NAR of {}", info.store_path);
        let layout = async {
            if listing {
                NarLayout::with_listing(&info.node, self.store.directory.as_ref()).await
            } else {
                NarLayout::of(&info.node, self.store.directory.as_ref()).await
            }
            .map_err(crate::castore::Error::from)
        };
        let layout = Arc::new(self.bounded(what, layout).await?);
        if let Some(root) = root {
            self.layouts.insert(root, layout.clone());
        }
        Ok(layout)
    }

    /// The body streaming `window` of the NAR: the verified buffers of the store handed to
    /// the connection as they are (framing and tiny files gathered), zstd-compressed when asked.
    /// A failure midway (a blob missing or corrupt) cuts the body off, which the client sees as
    /// a broken download, and is logged with the path.
    fn render(
        self: &Arc<Self>,
        info: PathInfo,
        layout: Arc<NarLayout>,
        window: std::ops::Range<u64>,
        zstd: bool,
    ) -> Body {
        let path = info.store_path;
        let pieces = NarLayout::stream_range(layout, self.store.blob.clone(), window).map_err(move |e| {
            tracing::warn!(path = %path, "serving its NAR failed: {e}");
            std::io::Error::other(e)
        });
        let pieces = if zstd {
            let encoder =
                async_compression::tokio::bufread::ZstdEncoder::new(tokio_util::io::StreamReader::new(pieces));
            tokio_util::io::ReaderStream::with_capacity(encoder, ZSTD_OUT).boxed()
        } else {
            pieces.boxed()
        };
        Body::from_stream(pieces.inspect_ok(|bytes| {
            metrics::counter!("tvix_http_nar_bytes_sent_total").increment(bytes.len() as u64);
        }))
    }
}

/// The one byte range a `Range:` header asks for, as `start..end`; `Ok(None)` serves the whole
/// NAR (an unparseable header or several ranges, which RFC 9110 lets a server ignore), `Err`
/// is a range beyond the end (416).
fn requested_range(value: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Ok(parsed) = http_range_header::parse_range_header(value) else {
        return Ok(None);
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => Ok(Some(*ranges[0].start()..ranges[0].end() + 1)),
        Ok(_) => Ok(None),
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => Err(()),
        Err(_) => Ok(None),
    }
}

fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("zstd") && !refused
        },
    )
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(requested_range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(requested_range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(requested_range("bytes=-5", 100), Ok(Some(95..100)));
        assert_eq!(requested_range("bytes=50-1000", 100), Ok(Some(50..100)));
        assert_eq!(requested_range("bytes=100-", 100), Err(()));
        assert_eq!(requested_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(requested_range("lines=1-2", 100), Ok(None));
    }

    #[test]
    fn zstd_is_served_only_when_accepted() {
        let mut h = HeaderMap::new();
        assert!(!accepts_zstd(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, zstd;q=0.9"));
        assert!(accepts_zstd(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("zstd;q=0, gzip"));
        assert!(!accepts_zstd(&h));
    }
}
