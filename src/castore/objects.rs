//! Objects in an [`object_store::ObjectStore`] below a key prefix: what the object-store
//! backends of blobs, directories and PathInfo share (get, put, head, list, and errors that
//! name the store and the key).
//!
//! Only plain `put`, `get`, `head` and `list` are used, which every engine has (S3 and its
//! clones, the in-memory store). A `put` is atomic (an object appears whole or not at all) and
//! durable when it returns; no object we write is larger than a chunk (1 MiB), so multipart
//! uploads are never needed.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::Error;
use super::inventory::Removal;

/// A key prefix in an object store, and how to name it in errors.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The store's URL (never with credentials), so a failure names where it happened.
    location: String,
}

impl Objects {
    /// Objects of `store` below `prefix` (may be empty), named `location` in errors.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, location: impl Into<String>) -> Self {
        Self { store, prefix, location: location.into() }
    }

    /// The same store below `prefix/part`.
    pub fn below(&self, part: &str) -> Self {
        Self { store: self.store.clone(), prefix: self.prefix.clone().join(part), location: self.location.clone() }
    }

    /// The key of `parts` below the prefix.
    pub fn key<S: AsRef<str>>(&self, parts: &[S]) -> Path {
        parts.iter().fold(self.prefix.clone(), |path, part| path.join(part.as_ref()))
    }

    /// Where the objects are, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// An object store error as ours: a remote that does not answer (after object_store's own
    /// retries) is unavailable, rejected credentials say so.
    pub fn error(&self, key: &Path, e: object_store::Error) -> Error {
        let context = format!("{}: {key}", self.location);
        // object_store reports most S3 answers as generic errors carrying the status and the
        // S3 error code, so those are read off its message.
        let text = e.to_string();
        let said = |codes: &[&str]| codes.iter().any(|code| text.contains(code));
        let denied =
            matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
                || said(&["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403 Forbidden"]);
        match e {
            _ if denied => Error::Storage(format!("{context}: access denied (check the credentials): {text}")),
            _ if said(&["NoSuchBucket"]) => Error::Storage(format!("{context}: no such bucket: {text}")),
            object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. } => {
                Error::Storage(format!("{context}: {text}"))
            }
            _ => Error::Unavailable(format!("{context}: {text}")),
        }
    }

    /// The object at `key`; `None` when there is none.
    pub async fn get(&self, key: &Path) -> Result<Option<Bytes>, Error> {
        match self.store.get(key).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(|e| self.error(key, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// The size of the object at `key`; `None` when there is none.
    pub async fn size(&self, key: &Path) -> Result<Option<u64>, Error> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Writes `data` at `key` (atomically, durably when this returns).
    pub async fn put(&self, key: &Path, data: Bytes) -> Result<(), Error> {
        self.store.put(key, PutPayload::from_bytes(data)).await.map(drop).map_err(|e| self.error(key, e))
    }

    /// Checks that the store answers, the bucket exists and the credentials are accepted (one
    /// listing of the prefix's top level), so a misconfigured store is an error at start, not
    /// at the first read.
    pub async fn probe(&self) -> Result<(), Error> {
        self.store.list_with_delimiter(Some(&self.prefix)).await.map(drop).map_err(|e| self.error(&self.prefix, e))
    }

    /// Every object below the prefix: its key, size and last write.
    pub fn list_meta(&self) -> BoxStream<'_, Result<object_store::ObjectMeta, Error>> {
        self.store.list(Some(&self.prefix)).map_err(|e| self.error(&self.prefix, e)).boxed()
    }

    /// Removes the object at `key` unless it was last written at or after `cutoff` (whatever
    /// its age without one). Checked
    /// just before the delete: an object store has no conditional delete, so a write landing
    /// between the check and the delete can still lose (see docs/gc.md for what that means
    /// with several writers).
    pub async fn remove(&self, key: &Path, cutoff: Option<std::time::SystemTime>) -> Result<Removal, Error> {
        let meta = match self.store.head(key).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(Removal::Absent),
            Err(e) => return Err(self.error(key, e)),
        };
        if cutoff.is_some_and(|cutoff| std::time::SystemTime::from(meta.last_modified) >= cutoff) {
            return Ok(Removal::Recent);
        }
        match self.store.delete(key).await {
            Ok(()) => Ok(Removal::Removed(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(Removal::Absent),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Every key below the prefix.
    pub fn list(&self) -> BoxStream<'_, Result<Path, Error>> {
        self.store
            .list(Some(&self.prefix))
            .map_ok(|meta| meta.location)
            .map_err(|e| self.error(&self.prefix, e))
            .boxed()
    }
}
