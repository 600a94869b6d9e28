//! Store URLs: what each scheme means, for which service.
//!
//! | scheme | blob | directory | path-info |
//! |---|---|---|---|
//! | `memory://` | yes | yes | yes |
//! | `objectstore+file:///dir` | local chunk files | | |
//! | `objectstore+memory://` | object_store in memory | yes | yes |
//! | `objectstore+s3://bucket[/prefix]?endpoint=…&region=…` | S3 (or a clone) | yes | yes |
//! | `objectstore+gs://bucket[/prefix]` | Google Cloud Storage | yes | yes |
//! | `objectstore+az://container[/prefix]` | Azure Blob Storage | yes | yes |
//! | `redb:///file.redb` | | yes | yes |
//! | `grpc+unix:///socket`, `grpc+http://host:port` | yes | yes | yes |
//! | `nix+http://host[:port][/prefix]`, `nix+https://…`, `nix+file:///dir` | | | a Nix binary cache, read-only |
//!
//! A binary cache URL takes options as query parameters: `trusted-public-keys=` (Nix's
//! `name:base64` keys, space separated; when given, narinfos must be signed by one of them),
//! `priority=` (lower first, like Nix's), `timeout=` (seconds without progress before a request
//! fails), `negative-ttl=` (seconds a miss is remembered) and `allow-absolute-urls=` (`true`:
//! a narinfo's `URL:` may point outside the cache, as Nix allows; default `false`).
//!
//! An S3 URL takes `endpoint=` (for self-hosted engines: `http://…` is used as given, with
//! path-style requests) and `region=`; credentials come from the usual AWS environment
//! variables or the AWS profile files (`super::awsprofile`). The three services can share one
//! URL: each keeps its objects under its own key prefix below the URL's (`chunks/`+`blobs/`,
//! `directories/`, `pathinfo/`). A GCS or Azure URL takes no options: account, credentials and
//! endpoint come from `object_store`'s usual environment variables for each (`GOOGLE_*`,
//! `AZURE_*`).

use std::path::PathBuf;

use super::Kind;
use crate::grpc::GrpcTarget;

/// A backend as a store URL names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// `memory://`: in process memory.
    Memory,
    /// `objectstore+file:///dir`: blobs as chunk files in a local directory.
    LocalFiles(PathBuf),
    /// `objectstore+memory://`: `object_store`'s in-memory backend, through the generic object
    /// store backends.
    ObjectStoreMemory,
    /// `objectstore+s3://bucket[/prefix]`: an S3 bucket (AWS or a self-hosted clone).
    S3(S3Spec),
    /// `objectstore+gs://bucket[/prefix]` or `objectstore+az://container[/prefix]`: a Google
    /// Cloud Storage bucket or an Azure Blob Storage container.
    Cloud(CloudSpec),
    /// `redb:///file.redb`: directories or PathInfo in a redb database.
    Redb(PathBuf),
    /// `grpc+unix://` or `grpc+http://`: our (or tvix's) gRPC service.
    Grpc(GrpcTarget),
    /// The same with `?protocol=tvix`: a client held to the plain tvix protocol (one Read per
    /// blob, never our batched read; a PathInfo and its directories in two calls, never our
    /// PathInfo with its graph), the baseline a tvix client sees in benchmarks.
    GrpcTvixOnly(GrpcTarget),
    /// `nix+http://`, `nix+https://`, `nix+file://`: a Nix binary cache as a PathInfo source.
    BinaryCache(BinaryCacheSpec),
}

/// An S3 bucket as its store URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    /// The URL as given, for messages (it holds no secrets: credentials come from the
    /// environment or the profile files).
    pub url: String,
    /// The bucket.
    pub bucket: String,
    /// The key prefix below which the store's objects are (may be empty).
    pub prefix: String,
    /// `endpoint=`: the engine's URL, for anything but AWS itself.
    pub endpoint: Option<String>,
    /// `region=`.
    pub region: Option<String>,
    /// Credentials given by a program (tests) rather than the environment; never from the URL,
    /// so a URL in a message or a log never holds a secret.
    pub credentials: Option<S3Credentials>,
}

/// An S3 access key.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The key's id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// Its secret (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// Reads `objectstore+s3://bucket[/prefix]?endpoint=…&region=…`.
fn s3(addr: &str, url: &url::Url) -> Result<S3Spec, String> {
    let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or("no bucket given (objectstore+s3://BUCKET/…)")?;
    let mut spec = S3Spec {
        url: addr.to_string(),
        bucket: bucket.to_string(),
        prefix: url.path().trim_matches('/').to_string(),
        endpoint: None,
        region: None,
        credentials: None,
    };
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "endpoint" => {
                let endpoint = url::Url::parse(&value).map_err(|e| format!("endpoint={value:?}: {e}"))?;
                if !matches!(endpoint.scheme(), "http" | "https") {
                    return Err(format!("endpoint={value:?}: must be an http:// or https:// URL"));
                }
                spec.endpoint = Some(value.trim_end_matches('/').to_string());
            }
            "region" => spec.region = Some(value.into_owned()),
            other => return Err(format!("unknown option {other:?} (known: endpoint, region)")),
        }
    }
    Ok(spec)
}

/// Which object storage service a [`CloudSpec`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudProvider {
    /// Google Cloud Storage (`objectstore+gs://`).
    Gcs,
    /// Azure Blob Storage (`objectstore+az://`).
    Azure,
}

/// A GCS bucket or an Azure container as its store URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSpec {
    /// The service.
    pub provider: CloudProvider,
    /// The URL as given, for messages (it holds no secrets: those come from the environment).
    pub url: String,
    /// The bucket (GCS) or container (Azure).
    pub bucket: String,
    /// The key prefix below which the store's objects are (may be empty).
    pub prefix: String,
}

/// Reads `objectstore+gs://bucket[/prefix]` and `objectstore+az://container[/prefix]`.
fn cloud(provider: CloudProvider, addr: &str, url: &url::Url) -> Result<CloudSpec, String> {
    let (scheme, what) = match provider {
        CloudProvider::Gcs => ("gs", "BUCKET"),
        CloudProvider::Azure => ("az", "CONTAINER"),
    };
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("no {} given (objectstore+{scheme}://{what}/…)", what.to_lowercase()))?;
    if let Some((key, _)) = url.query_pairs().next() {
        return Err(format!(
            "unknown option {key:?} (this URL takes none: the service's settings come from the environment)"
        ));
    }
    Ok(CloudSpec {
        provider,
        url: addr.to_string(),
        bucket: bucket.to_string(),
        prefix: url.path().trim_matches('/').to_string(),
    })
}

/// A binary cache and how to use it, as its store URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryCacheSpec {
    /// The cache's own URL (`http://…`, `https://…`, `file:///…`), without our options.
    pub url: url::Url,
    /// Trusted public keys (each checked to parse); empty: signatures are not checked.
    pub trusted_public_keys: Vec<String>,
    /// Lower is tried first.
    pub priority: u32,
    /// Seconds without progress before a request fails.
    pub timeout_secs: u64,
    /// Seconds a miss is remembered.
    pub negative_ttl_secs: u64,
    /// Whether a narinfo's NAR URL may point outside the cache (`allow-absolute-urls=true`).
    pub allow_absolute_urls: bool,
}

impl BinaryCacheSpec {
    /// The options for [`crate::substitute::BinaryCache`].
    pub fn options(&self) -> Result<crate::substitute::CacheOptions, String> {
        let keys = if self.trusted_public_keys.is_empty() {
            None
        } else {
            Some(crate::narinfo::TrustedKeys::parse(&self.trusted_public_keys.join(" ")).map_err(|e| e.to_string())?)
        };
        Ok(crate::substitute::CacheOptions {
            trusted_keys: keys,
            priority: self.priority,
            timeout: std::time::Duration::from_secs(self.timeout_secs),
            negative_ttl: std::time::Duration::from_secs(self.negative_ttl_secs),
            allow_absolute_urls: self.allow_absolute_urls,
        })
    }
}

/// A binary cache URL as Nix writes it (`https://cache.nixos.org`, `file:///dir`, with Nix's
/// `?trusted-public-keys=…&priority=…` options or ours), plus extra trusted keys.
pub fn binary_cache(addr: &str, extra_keys: &[String]) -> Result<BinaryCacheSpec, String> {
    let mut url = url::Url::parse(addr).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https" | "file") {
        return Err(format!("unsupported scheme {:?} for a binary cache (supported: http, https, file)", url.scheme()));
    }
    let defaults = crate::substitute::CacheOptions::default();
    let mut spec = BinaryCacheSpec {
        url: url.clone(),
        trusted_public_keys: extra_keys.to_vec(),
        priority: defaults.priority,
        timeout_secs: defaults.timeout.as_secs(),
        negative_ttl_secs: defaults.negative_ttl.as_secs(),
        allow_absolute_urls: defaults.allow_absolute_urls,
    };
    let number =
        |key: &str, value: &str| value.parse::<u64>().map_err(|_| format!("{key}={value:?} is not a whole number"));
    // Percent-decoded only, as Nix decodes store URL parameters: a `+` in a base64 key stays a
    // `+` (form decoding would turn it into a space).
    let query: Vec<(String, String)> = url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            (decode(key), decode(value))
        })
        .collect();
    for (key, value) in query {
        match key.as_str() {
            "trusted-public-keys" => spec.trusted_public_keys.extend(value.split_whitespace().map(str::to_string)),
            "priority" => {
                spec.priority =
                    u32::try_from(number(&key, &value)?).map_err(|_| format!("priority={value} is too large"))?
            }
            "timeout" => spec.timeout_secs = number(&key, &value)?.max(1),
            "negative-ttl" => spec.negative_ttl_secs = number(&key, &value)?,
            // Spelled as Nix spells its boolean settings.
            "allow-absolute-urls" => {
                spec.allow_absolute_urls = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("allow-absolute-urls={value:?}: expected true or false")),
                }
            }
            other => {
                return Err(format!(
                    "unknown option {other:?} (known: trusted-public-keys, priority, timeout, negative-ttl, allow-absolute-urls)"
                ));
            }
        }
    }
    url.set_query(None);
    if url.scheme() == "file" {
        local_path(&url)?;
    } else if url.host_str().is_none_or(str::is_empty) {
        return Err("no host given".into());
    }
    spec.url = url;
    spec.options()?;
    Ok(spec)
}

/// Parses a store URL for a service of `kind`; the error says what is wrong with it.
pub fn parse(kind: Kind, addr: &str) -> Result<Leaf, String> {
    let url = url::Url::parse(addr).map_err(|e| e.to_string())?;
    let leaf = match url.scheme() {
        "memory" => {
            no_path(&url)?;
            Leaf::Memory
        }
        "objectstore+file" if kind == Kind::Blob => Leaf::LocalFiles(local_path(&url)?),
        "objectstore+memory" => {
            no_path(&url)?;
            Leaf::ObjectStoreMemory
        }
        "objectstore+s3" => Leaf::S3(s3(addr, &url)?),
        "objectstore+gs" => Leaf::Cloud(cloud(CloudProvider::Gcs, addr, &url)?),
        "objectstore+az" => Leaf::Cloud(cloud(CloudProvider::Azure, addr, &url)?),
        "redb" if kind != Kind::Blob => Leaf::Redb(local_path(&url)?),
        "grpc+unix" | "grpc+http" => {
            let target = grpc_target(&url)?;
            if url.query_pairs().any(|(key, value)| key == "protocol" && value == "tvix") {
                Leaf::GrpcTvixOnly(target)
            } else {
                Leaf::Grpc(target)
            }
        }
        "nix+http" | "nix+https" | "nix+file" if kind == Kind::PathInfo => {
            Leaf::BinaryCache(binary_cache(addr.strip_prefix("nix+").unwrap_or(addr), &[])?)
        }
        other => {
            return Err(format!(
                "unsupported scheme {other:?} for a {} service (supported: {})",
                kind.noun(),
                supported(kind)
            ));
        }
    };
    Ok(leaf)
}

/// The schemes a service of `kind` accepts, for error messages.
fn supported(kind: Kind) -> &'static str {
    match kind {
        Kind::Blob => {
            "memory, objectstore+file, objectstore+memory, objectstore+s3, objectstore+gs, objectstore+az, grpc+unix, grpc+http"
        }
        Kind::Directory => {
            "memory, redb, objectstore+memory, objectstore+s3, objectstore+gs, objectstore+az, grpc+unix, grpc+http"
        }
        Kind::PathInfo => {
            "memory, redb, objectstore+memory, objectstore+s3, objectstore+gs, objectstore+az, grpc+unix, grpc+http, nix+http, nix+https, nix+file"
        }
    }
}

/// Where a `grpc+unix://` or `grpc+http://` URL points.
///
/// `?fallback=ADDR` (repeatable) names further daemons serving the same store, tried in order
/// when the one before cannot be reached: `host:port` for `grpc+http`, a socket path for
/// `grpc+unix`.
pub fn grpc_target(url: &url::Url) -> Result<GrpcTarget, String> {
    let mut fallbacks = Vec::new();
    for (key, value) in url.query_pairs() {
        if key == "protocol" {
            if value != "tvix" && value != "ours" {
                return Err(format!("protocol={value:?}: expected tvix (the plain tvix protocol) or ours"));
            }
            continue;
        }
        if key != "fallback" {
            return Err(format!("unknown option {key:?} (gRPC addresses take fallback= and protocol=)"));
        }
        let fallback = match url.scheme() {
            "grpc+unix" => format!("grpc+unix://{value}"),
            _ => format!("grpc+http://{value}"),
        };
        let parsed = url::Url::parse(&fallback).map_err(|e| format!("fallback {value:?}: {e}"))?;
        if parsed.query().is_some() {
            return Err(format!("fallback {value:?}: a fallback takes no options"));
        }
        fallbacks.push(grpc_target(&parsed).map_err(|e| format!("fallback {value:?}: {e}"))?);
    }
    let first = match url.scheme() {
        "grpc+unix" => GrpcTarget::Unix(local_path(url)?),
        "grpc+http" => {
            let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host given")?;
            let port = url.port().ok_or("no port given")?;
            no_path(url)?;
            GrpcTarget::Tcp { host: host.to_string(), port }
        }
        other => return Err(format!("unsupported scheme {other:?} for gRPC (supported: grpc+unix, grpc+http)")),
    };
    if fallbacks.is_empty() {
        return Ok(first);
    }
    fallbacks.insert(0, first);
    Ok(GrpcTarget::Failover(fallbacks))
}

/// A URL that names no location must not carry one: `memory:///x` is a typo, not a setting.
fn no_path(url: &url::Url) -> Result<(), String> {
    if url.path() != "" && url.path() != "/" {
        return Err(format!("{}:// takes no path", url.scheme()));
    }
    Ok(())
}

/// The local file-system path of `scheme:///path` (also accepts `scheme://localhost/path`).
fn local_path(url: &url::Url) -> Result<PathBuf, String> {
    let no_path = || "needs an absolute path (e.g. scheme:///var/lib/x)".to_string();
    if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
        return Err(no_path());
    }
    let path = url.to_file_path().map_err(|_| no_path())?;
    if path.as_os_str().is_empty() || path == std::path::Path::new("/") {
        return Err(no_path());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_scheme_for_its_services_only() {
        assert_eq!(parse(Kind::Blob, "memory://"), Ok(Leaf::Memory));
        assert_eq!(parse(Kind::Blob, "objectstore+file:///var/x"), Ok(Leaf::LocalFiles("/var/x".into())));
        assert_eq!(parse(Kind::Blob, "objectstore+memory://"), Ok(Leaf::ObjectStoreMemory));
        assert_eq!(parse(Kind::PathInfo, "redb:///a/b.redb"), Ok(Leaf::Redb("/a/b.redb".into())));
        assert!(parse(Kind::Blob, "redb:///a/b.redb").unwrap_err().contains("unsupported scheme \"redb\" for a blob"));
        assert!(parse(Kind::Directory, "objectstore+file:///x").is_err());
        assert!(parse(Kind::Blob, "memory:///oops").is_err());
        assert!(parse(Kind::Blob, "objectstore+file://").is_err());
        assert!(parse(Kind::Blob, "objectstore+file://otherhost/x").is_err());
    }

    #[test]
    fn gcs_and_azure_urls_name_bucket_and_prefix() {
        let spec = |provider, url: &str, bucket: &str, prefix: &str| {
            Leaf::Cloud(CloudSpec { provider, url: url.into(), bucket: bucket.into(), prefix: prefix.into() })
        };
        for kind in [Kind::Blob, Kind::Directory, Kind::PathInfo] {
            let gs = "objectstore+gs://nix-store/fleet/one/";
            assert_eq!(parse(kind, gs), Ok(spec(CloudProvider::Gcs, gs, "nix-store", "fleet/one")));
            let az = "objectstore+az://container";
            assert_eq!(parse(kind, az), Ok(spec(CloudProvider::Azure, az, "container", "")));
        }
        assert!(parse(Kind::Blob, "objectstore+gs:///x").unwrap_err().contains("no bucket given"));
        assert!(parse(Kind::Blob, "objectstore+az://").unwrap_err().contains("no container given"));
        let err = parse(Kind::Blob, "objectstore+gs://b/p?endpoint=http://x").unwrap_err();
        assert!(err.contains("unknown option \"endpoint\""), "{err}");
        assert!(parse(Kind::Blob, "objectstore+gcs://b").unwrap_err().contains("objectstore+gs, objectstore+az"));
    }

    #[test]
    fn binary_caches_take_nix_options() {
        // A real key (made by nix-store --generate-binary-cache-key), with a `+` in it.
        let key = "tvix-test-5:/Ne83kfgMEilLdkvVbr1X3fN79v2WpPeO+oI6PVd6PQ=";
        let Leaf::BinaryCache(spec) =
            parse(Kind::PathInfo, &format!("nix+http://127.0.0.1:8080/cache?priority=10&trusted-public-keys={key}"))
                .unwrap()
        else {
            panic!("not a binary cache");
        };
        assert_eq!(spec.url.as_str(), "http://127.0.0.1:8080/cache");
        assert_eq!(spec.priority, 10);
        assert_eq!(spec.trusted_public_keys, vec![key.to_string()]);
        assert!(!spec.allow_absolute_urls, "absolute NAR URLs are refused unless allowed");
        let allowed = binary_cache("http://h:1/c?allow-absolute-urls=true&priority=3", &[]).unwrap();
        assert!(allowed.allow_absolute_urls && allowed.options().unwrap().allow_absolute_urls);
        assert_eq!((allowed.priority, allowed.url.as_str()), (3, "http://h:1/c"));
        let err = binary_cache("file:///c?allow-absolute-urls=yes", &[]).unwrap_err();
        assert!(err.contains("allow-absolute-urls=\"yes\": expected true or false"), "{err}");
        assert!(parse(Kind::Blob, "nix+http://h:1").is_err());
        assert!(parse(Kind::PathInfo, "nix+file://").is_err());
        assert!(parse(Kind::PathInfo, "nix+http://h:1?colour=red").unwrap_err().contains("unknown option"));
        assert!(parse(Kind::PathInfo, "nix+http://h:1?trusted-public-keys=garbage").is_err());
        assert!(binary_cache("ftp://h/x", &[]).is_err());
    }

    #[test]
    fn grpc_targets() {
        let unix = parse(Kind::Blob, "grpc+unix:///run/x.sock").unwrap();
        assert_eq!(unix, Leaf::Grpc(GrpcTarget::Unix("/run/x.sock".into())));
        let tcp = parse(Kind::Directory, "grpc+http://[::1]:8000").unwrap();
        assert_eq!(tcp, Leaf::Grpc(GrpcTarget::Tcp { host: "[::1]".into(), port: 8000 }));
        assert!(parse(Kind::Blob, "grpc+http://localhost").unwrap_err().contains("no port"));
        assert!(parse(Kind::Blob, "grpc+http://localhost:1/path").is_err());
        assert!(parse(Kind::Blob, "grpc+unix://").is_err());
        let several = parse(Kind::PathInfo, "grpc+http://a:1?fallback=b:2&fallback=[::1]:3").unwrap();
        assert_eq!(
            several,
            Leaf::Grpc(GrpcTarget::Failover(vec![
                GrpcTarget::Tcp { host: "a".into(), port: 1 },
                GrpcTarget::Tcp { host: "b".into(), port: 2 },
                GrpcTarget::Tcp { host: "[::1]".into(), port: 3 },
            ]))
        );
        let sockets = parse(Kind::Blob, "grpc+unix:///a.sock?fallback=/b.sock").unwrap();
        assert_eq!(
            sockets,
            Leaf::Grpc(GrpcTarget::Failover(vec![
                GrpcTarget::Unix("/a.sock".into()),
                GrpcTarget::Unix("/b.sock".into())
            ]))
        );
        assert!(parse(Kind::Blob, "grpc+http://a:1?fallback=b").unwrap_err().contains("no port"));
        assert!(parse(Kind::Blob, "grpc+http://a:1?other=b:2").unwrap_err().contains("unknown option"));
        let plain = parse(Kind::Blob, "grpc+http://a:1?protocol=tvix").unwrap();
        assert_eq!(plain, Leaf::GrpcTvixOnly(GrpcTarget::Tcp { host: "a".into(), port: 1 }));
        assert!(parse(Kind::Blob, "grpc+http://a:1?protocol=http2").unwrap_err().contains("expected tvix"));
        assert!(parse(Kind::Blob, "http://localhost:1").is_err());
    }
}
