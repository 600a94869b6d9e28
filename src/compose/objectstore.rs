//! Building object stores from store URLs: `objectstore+memory://`, `objectstore+s3://`,
//! `objectstore+gs://` and `objectstore+az://`.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::Leaf;
use super::awsprofile;
use super::url::{CloudProvider, CloudSpec, S3Spec};
use crate::castore::objects::Objects;

/// A request that gets no answer for this long fails (and is retried): an object is at most a
/// chunk (1 MiB), which takes well under a second on any link a fleet runs on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Transient failures (connection errors, 5xx, 503 SlowDown throttling) are retried with
/// backoff, 100 ms doubling up to 5 s, for at most 30 s in all: an engine restarting or a node
/// failing over is ridden out, one that is down is reported within the mount's call timeout
/// range instead of object_store's default three minutes.
const RETRIES: usize = 8;
const RETRY_FOR: Duration = Duration::from_secs(30);

/// The retry policy above, for every remote object store.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: RETRIES,
        retry_timeout: RETRY_FOR,
    }
}

/// The timeouts above, for every remote object store.
fn client_options() -> ClientOptions {
    ClientOptions::new().with_timeout(REQUEST_TIMEOUT).with_connect_timeout(CONNECT_TIMEOUT)
}

/// The object store of a remote leaf (`objectstore+s3://`, `+gs://`, `+az://`); `None` for
/// every other kind of leaf.
pub fn remote(leaf: &Leaf) -> Option<Result<Objects, String>> {
    match leaf {
        Leaf::S3(spec) => Some(s3(spec)),
        Leaf::Cloud(spec) => Some(cloud(spec)),
        _ => None,
    }
}

/// `object_store`'s in-memory store (one per URL: the services do not share it).
pub fn memory() -> Objects {
    Objects::new(Arc::new(object_store::memory::InMemory::new()), Path::default(), "objectstore+memory://")
}

/// The bucket an S3 URL names, with credentials from the usual AWS environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`) or,
/// when no key is set there, from the AWS profile files ([`awsprofile`]).
pub fn s3(spec: &S3Spec) -> Result<Objects, String> {
    crate::tuning::install_tls_provider();
    let resolved = awsprofile::resolve(spec, &|name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
    // Without a key, object_store falls back to the EC2 instance metadata service, which a
    // self-hosted engine's machines do not have: say what is missing instead.
    if spec.credentials.is_none()
        && resolved.key.is_none()
        && resolved.endpoint.is_some()
        && std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
    {
        return Err(
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and a profile file \
                    (~/.aws/credentials)"
                .into(),
        );
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&spec.bucket)
        // Self-hosted engines (Garage, MinIO, Ceph) address buckets by path, not by host name.
        .with_virtual_hosted_style_request(false)
        .with_retry(retry())
        .with_client_options(client_options());
    if let Some(endpoint) = &resolved.endpoint {
        // An http:// endpoint is meant as given.
        builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(region) = &resolved.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &resolved.key {
        builder = builder.with_access_key_id(&key.access_key_id).with_secret_access_key(&key.secret_access_key);
        if let Some(token) = &key.session_token {
            builder = builder.with_token(token);
        }
    }
    if let Some(key) = &spec.credentials {
        builder = builder.with_access_key_id(&key.access_key_id).with_secret_access_key(&key.secret_access_key);
    }
    let store = builder.build().map_err(|e| e.to_string())?;
    below(Arc::new(store), &spec.prefix, &spec.url)
}

/// The GCS bucket or Azure container a URL names, configured from `object_store`'s environment
/// variables for the service (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, …;
/// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR`, …),
/// with the same timeouts and retries as S3.
pub fn cloud(spec: &CloudSpec) -> Result<Objects, String> {
    crate::tuning::install_tls_provider();
    let store: Arc<dyn ObjectStore> = match spec.provider {
        CloudProvider::Gcs => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&spec.bucket)
                .with_retry(retry())
                .with_client_options(client_options())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        CloudProvider::Azure => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_container_name(&spec.bucket)
                .with_retry(retry())
                .with_client_options(client_options())
                .build()
                .map_err(|e| e.to_string())?,
        ),
    };
    below(store, &spec.prefix, &spec.url)
}

/// The objects of `store` below `prefix`, named by their store `url` in errors.
fn below(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Result<Objects, String> {
    let key = Path::parse(prefix).map_err(|e| format!("prefix {prefix:?}: {e}"))?;
    Ok(Objects::new(store, key, url))
}
