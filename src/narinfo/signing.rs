//! `keyfile-signing`: a PathInfo service that signs every PathInfo put through it with a Nix
//! secret key (as Nix's `secret-key-files` does for paths it adds), then stores it in the
//! service it wraps. Reads pass through unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::{SigningKey, fingerprint};
use crate::castore::Error;
use crate::pathinfo::{PathInfo, PathInfoService, PathInfoWithGraph};
use crate::storepath::DIGEST_LEN;

/// See the module docs.
pub struct SigningPathInfoService {
    inner: Arc<dyn PathInfoService>,
    key: SigningKey,
}

impl SigningPathInfoService {
    /// Signs with `key` what is put into `inner`.
    pub fn new(inner: Arc<dyn PathInfoService>, key: SigningKey) -> Self {
        Self { inner, key }
    }
}

#[async_trait]
impl PathInfoService for SigningPathInfoService {
    async fn get(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfo>, Error> {
        self.inner.get(digest).await
    }

    async fn get_with_graph(&self, digest: [u8; DIGEST_LEN]) -> Result<Option<PathInfoWithGraph>, Error> {
        self.inner.get_with_graph(digest).await
    }

    async fn put(&self, mut info: PathInfo) -> Result<PathInfo, Error> {
        let signature =
            self.key.sign(&fingerprint(&info.store_path, &info.nar_sha256, info.nar_size, &info.references));
        if !info.signatures.contains(&signature) {
            info.signatures.push(signature);
        }
        self.inner.put(info).await
    }

    fn list(&self) -> BoxStream<'_, Result<PathInfo, Error>> {
        self.inner.list()
    }
}
