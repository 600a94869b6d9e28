//! Objects in an [`object_store::ObjectStore`] below a key prefix: what the object-store
//! backends of blobs, directories and PathInfo share (get, put, head, list, and errors that
//! name the store and the key).
//!
//! Only plain `put`, `get`, `head` and `list` are used, which every engine has (S3 and its
//! clones, the in-memory store). A `put` is atomic (an object appears whole or not at all) and
//! durable when it returns; no object we write is larger than a chunk (1 MiB), so multipart
//! uploads are never needed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::Error;
use super::inventory::Removal;

/// A read (get or head) that has not answered after this long is sent again beside the one
/// under way, and the first answer wins. An S3 engine can stall a single request for many
/// seconds when a node dies: Garage asks only as many replicas as its quorum needs and waits on
/// a dead one until its RPC times out. Under load that held a mount's lookup past its 5 s call
/// timeout in 4 of 15 runs of the node-loss test; a request sent again goes to replicas that
/// answer. Our objects are at most a chunk (1 MiB), which a healthy engine serves far faster.
const HEDGE_AFTER: Duration = Duration::from_secs(1);
/// Most requests one read has in flight (the first and its hedges).
const MOST_ATTEMPTS: usize = 3;

/// Runs `attempt` and, each [`HEDGE_AFTER`] it has not answered, again beside it (at most
/// [`MOST_ATTEMPTS`] at once): the first success or NOT_FOUND wins; other errors count only
/// once every attempt failed (each has been through object_store's own retries).
async fn hedged<T, F, Fut>(attempt: F) -> Result<T, object_store::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let mut in_flight = FuturesUnordered::new();
    in_flight.push(attempt());
    let mut started = 1;
    loop {
        tokio::select! {
            Some(result) = in_flight.next() => match result {
                Err(e) if !matches!(e, object_store::Error::NotFound { .. }) && !in_flight.is_empty() => {
                    tracing::debug!("an object store read failed while another is under way: {e}");
                }
                answer => return answer,
            },
            () = tokio::time::sleep(HEDGE_AFTER), if started < MOST_ATTEMPTS => {
                // Each one is an extra (billed) request: operators watch how often that happens.
                metrics::counter!("tvix_objectstore_hedged_reads_total").increment(1);
                in_flight.push(attempt());
                started += 1;
            }
        }
    }
}

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
        match hedged(|| async { self.store.get(key).await?.bytes().await }).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// The size of the object at `key`; `None` when there is none.
    pub async fn size(&self, key: &Path) -> Result<Option<u64>, Error> {
        match hedged(|| self.store.head(key)).await {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An attempt that, by its number (0 first), never answers, answers `Ok(number)`, or fails.
    fn attempts(
        calls: &AtomicUsize,
        outcome: impl Fn(usize) -> Option<Result<usize, object_store::Error>>,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, Result<usize, object_store::Error>> {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            match outcome(n) {
                Some(result) => Box::pin(async move { result }),
                None => Box::pin(std::future::pending()),
            }
        }
    }

    fn generic(n: usize) -> object_store::Error {
        object_store::Error::Generic { store: "test", source: format!("attempt {n} failed").into() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_read_is_sent_again_and_the_first_answer_wins() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let answer = hedged(attempts(&calls, |n| (n == 1).then_some(Ok(n)))).await.unwrap();
        assert_eq!((answer, calls.load(Ordering::SeqCst)), (1, 2));
        assert_eq!(started.elapsed(), HEDGE_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_is_final_an_error_waits_for_the_others_and_attempts_are_bounded() {
        let calls = AtomicUsize::new(0);
        let not_found = || object_store::Error::NotFound { path: "k".into(), source: "absent".into() };
        let answer = hedged(attempts(&calls, |_| Some(Err(not_found())))).await;
        assert!(matches!(answer, Err(object_store::Error::NotFound { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "NOT_FOUND is an answer, not a stall");

        // The first fails while the second is under way: the second's answer wins.
        let calls = AtomicUsize::new(0);
        let slow_failure = |n: usize| -> futures::future::BoxFuture<'static, Result<usize, object_store::Error>> {
            Box::pin(async move {
                tokio::time::sleep(HEDGE_AFTER * if n == 0 { 2 } else { 3 }).await;
                if n == 0 { Err(generic(n)) } else { Ok(n) }
            })
        };
        let counted = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            slow_failure(n)
        };
        assert_eq!(hedged(counted).await.unwrap(), 1);

        // Every attempt stalls: no more than MOST_ATTEMPTS are sent.
        let calls = AtomicUsize::new(0);
        let stalled = tokio::time::timeout(HEDGE_AFTER * 10, hedged(attempts(&calls, |_| None))).await;
        assert!(stalled.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), MOST_ATTEMPTS);

        // A lone attempt that fails is the answer: object_store has retried it already.
        let calls = AtomicUsize::new(0);
        assert!(hedged(attempts(&calls, |n| Some(Err(generic(n))))).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
