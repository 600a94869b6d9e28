//! What a backend holds, as garbage collection and integrity checks see it: its objects with
//! their size and last write, and removal that spares anything written since a cutoff.
//!
//! The cutoff is how collection stays safe beside imports without a transaction spanning
//! them: an import writes (or, where the object already exists, touches) every blob, chunk and
//! directory it uses before the PathInfo that makes them live, so everything an import still
//! in flight relies on was written after it started. A collection spares every object written
//! within its grace period before it began, and checks the object's last write again as it
//! removes it, so an import that touches an object while the collection runs keeps it too.

use std::time::SystemTime;

use futures::stream::BoxStream;

use super::{B3Digest, Error};

/// One stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The digest it is stored under.
    pub digest: B3Digest,
    /// Its size in the backend, in bytes.
    pub size: u64,
    /// When it was last written (or touched by a write that found it present).
    pub written: SystemTime,
}

/// A stream of a backend's objects.
pub type StoredStream<'a> = BoxStream<'a, Result<Stored, Error>>;

/// What removing an object found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It was removed; it had this size.
    Removed(u64),
    /// It was written at or after the cutoff (a write is using it): kept.
    Recent,
    /// There was none.
    Absent,
}

/// Leftovers of interrupted writes a backend removed (temporary files and the like).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// How many.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}
