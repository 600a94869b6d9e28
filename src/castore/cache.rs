//! The near/far pair every cache combinator is made of: reads go to the near service and, on a
//! miss, to the far one, whose answer is validated and kept in the near one; new data goes where
//! [`CacheWrites`] says. Each service trait implements itself for `Cache<dyn ThatService>`
//! (`CacheBlobService`, `CacheDirectoryService`, `CachePathInfoService`).

use std::sync::Arc;

/// Where a cache combinator's new data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheWrites {
    /// To the far store, the source of truth; the near one only keeps what was read.
    #[default]
    Far,
    /// To the near store, for far stores that are read-only (a binary cache).
    Near,
}

/// A cache of `far` in `near`.
pub struct Cache<T: ?Sized> {
    pub(crate) near: Arc<T>,
    pub(crate) far: Arc<T>,
    writes: CacheWrites,
}

impl<T: ?Sized> Cache<T> {
    /// A cache of `far` in `near`, new data going where `writes` says.
    pub fn new(near: Arc<T>, far: Arc<T>, writes: CacheWrites) -> Self {
        Self { near, far, writes }
    }

    /// The service new data goes to.
    pub(crate) fn target(&self) -> &T {
        match self.writes {
            CacheWrites::Far => &self.far,
            CacheWrites::Near => &self.near,
        }
    }
}

/// Counts a read a cache answered from its near store (`hit`) or had to take to the far one
/// (`miss`), by service, for `--metrics-listen`.
pub(crate) fn count(service: &'static str, hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    metrics::counter!("tvix_cache_reads_total", "service" => service, "outcome" => outcome).increment(1);
}
