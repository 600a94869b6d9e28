//! nar-bridge: the store served as a Nix binary cache over HTTP, both ways. Nix (`nix copy
//! --from`, `substituters`, Hydra, CI runners) reads narinfos and NARs from it; `nix copy --to`
//! uploads into it. Underneath, everything is the castore: NARs are rendered from blobs and
//! directories as they are sent (byte-exact with `nix-store --dump`, any byte range), and
//! uploaded NARs are ingested as they arrive, deduplicated against what the store has.
//!
//! Files served:
//! - `nix-cache-info`;
//! - `<hash>.narinfo` (GET, HEAD), from the PathInfo, signed with our key when one is set;
//! - `nar/<hash>-<narhash>.nar` (GET, HEAD, `Range:`, `Accept-Encoding: zstd`), the URL our
//!   narinfos name;
//! - `<hash>.ls`, the NAR listing, from the directory graph alone.
//!
//! Uploads (when enabled): `PUT nar/<filehash>.nar[.xz|.bz2|.zst|.br]`, then `PUT
//! <hash>.narinfo`, which becomes a PathInfo only if its NAR arrived with the hash and size it
//! states; `PUT <hash>.ls` and `PUT nix-cache-info` are accepted and dropped (we make our own).
//!
//! Every answer that is not a success carries a one-line reason as its body.

mod layouts;
mod names;
mod read;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use names::{NarName, served_nar_url};

use crate::access::{Caller, Gate, Open, Right};
use crate::castore::Error as StoreError;
use crate::narinfo::SigningKey;
use crate::store::Store;

/// How the binary cache behaves.
#[derive(Debug)]
pub struct Options {
    /// `Priority:` in `nix-cache-info` (lower is preferred by Nix).
    pub priority: u32,
    /// Signs every narinfo served, beside the signatures the PathInfo has.
    pub signing_key: Option<SigningKey>,
    /// Uploads (`nix copy --to`), off when `None`.
    pub uploads: Option<UploadOptions>,
    /// Longest a single store call (a lookup, a directory fetch) may take before the request
    /// fails with 504: a stuck backend must not hold a client forever.
    pub store_timeout: Duration,
    /// Who each request comes from and what it may do: uploads need the write right,
    /// replacing an existing path the admin right (docs/access.md). [`Open`] (the default)
    /// lets every request do everything: for a cache embedded in a program; the host layer
    /// sets its own.
    pub gate: Arc<dyn Gate>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            priority: 40,
            signing_key: None,
            uploads: None,
            store_timeout: Duration::from_secs(60),
            gate: Arc::new(Open),
        }
    }
}

impl std::fmt::Debug for dyn Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// Limits of uploads (who may upload is the gate's: [`Options::gate`]).
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Largest body accepted (compressed, as sent), in bytes.
    pub max_body: u64,
}

/// The server's state: the store's services and the options.
pub struct NarBridge {
    store: Store,
    options: Options,
    uploads: upload::PendingNars,
    layouts: layouts::LayoutCache,
}

impl NarBridge {
    /// A binary cache over `store`.
    pub fn new(store: Store, options: Options) -> Arc<Self> {
        Arc::new(Self { store, options, uploads: Default::default(), layouts: Default::default() })
    }

    /// The HTTP routes, ready for `axum::serve`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        use axum::routing::get;
        axum::Router::new()
            .route("/nix-cache-info", get(read::cache_info).put(upload::discard))
            .route("/{file}", get(read::file).put(upload::file))
            .route("/nar/{file}", get(read::nar).put(upload::nar))
            .fallback(|| async { Reject::new(StatusCode::NOT_FOUND, "no such file in this binary cache") })
            .layer(axum::middleware::from_fn_with_state(self.clone(), identify))
            .layer(axum::middleware::from_fn(record_request))
            .with_state(self.clone())
    }

    /// Runs a store call under the store timeout.
    async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Reject> {
        match tokio::time::timeout(self.options.store_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Reject::store(&what(), e)),
            Err(_) => Err(Reject::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{}: the store did not answer within {:?}", what(), self.options.store_timeout),
            )),
        }
    }
}

/// Counts every request by what it asked for, method and status, with its latency (until the
/// response starts), for `--metrics-listen`.
/// Establishes every request's [`Caller`] (put into its extensions for the handlers); a request
/// presenting a token that is not valid is refused whatever it asks for.
async fn identify(
    axum::extract::State(bridge): axum::extract::State<Arc<NarBridge>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match bridge.options.gate.caller(request.extensions(), request.headers()) {
        // Uploads check the write right themselves (a disabled upload says so first).
        Ok(caller) if request.method() != axum::http::Method::PUT && !caller.rights.has(Right::Read) => {
            Reject::lacking(&caller, Right::Read, request.headers(), "this cache needs a token to be read")
                .into_response()
        }
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            tracing::warn!(uri = %request.uri(), "refused: {refusal}");
            Reject::new(StatusCode::FORBIDDEN, format!("{refusal}: refused")).into_response()
        }
    }
}

async fn record_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path();
    let kind = if path == "/nix-cache-info" {
        "cache-info"
    } else if path.starts_with("/nar/") {
        "nar"
    } else if path.ends_with(".narinfo") {
        "narinfo"
    } else if path.ends_with(".ls") {
        "listing"
    } else {
        "other"
    };
    let method = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("tvix_http_requests_total", "kind" => kind, "method" => method, "status" => status).increment(1);
    metrics::histogram!("tvix_http_request_seconds", "kind" => kind).record(started.elapsed().as_secs_f64());
    response
}

/// A request refused or failed: a status and a one-line reason, sent as the body.
#[derive(Debug)]
pub struct Reject {
    status: StatusCode,
    reason: String,
    /// A header the answer carries (`WWW-Authenticate` on a 401).
    header: Option<(header::HeaderName, &'static str)>,
}

impl Reject {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self { status, reason: reason.into(), header: None }
    }

    /// The answer to a caller lacking `right` (logged once, naming the caller): 401 asking for
    /// credentials (`needs_token` says what for) when it presented no token, which a Nix client
    /// then sends from its netrc file; 403 when its token lacks the right.
    fn lacking(caller: &Caller, right: Right, headers: &header::HeaderMap, needs_token: &str) -> Self {
        tracing::warn!(caller = %caller.identity, "refused: lacks the {} right", right.name());
        if crate::access::presented_token(headers).is_none() {
            return Reject::new(StatusCode::UNAUTHORIZED, needs_token)
                .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"tvix-store\"");
        }
        Reject::new(StatusCode::FORBIDDEN, format!("{} lacks the {} right", caller.identity, right.name()))
    }

    /// The same answer with `name: value` among its headers.
    fn with_header(self, name: header::HeaderName, value: &'static str) -> Self {
        Self { header: Some((name, value)), ..self }
    }

    /// A store error as an HTTP answer: data the store lacks is 404, broken data 500 (it is
    /// ours, not the client's), an unreachable backend 503.
    fn store(what: &str, e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, format!("{what}: {e}"))
    }
}

/// 400 with `reason`.
fn bad_request(reason: String) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, reason)
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), "{}", self.reason);
        } else {
            tracing::debug!(status = self.status.as_u16(), "{}", self.reason);
        }
        let mut body = self.reason.replace('\n', " ");
        body.push('\n');
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, HeaderValue::from_static(value));
        }
        response
    }
}
