//! The error type shared by the castore services.

use super::directory::{DecodeDirectoryError, InvalidDirectory};

/// What a castore service call can fail with. The variants map onto gRPC status codes (see
/// `src/grpc/status.rs`), so a failure keeps its kind when it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request or the data sent with it is invalid (gRPC INVALID_ARGUMENT).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Something referred to does not exist (gRPC NOT_FOUND).
    #[error("not found: {0}")]
    NotFound(String),
    /// Stored data failed verification: its bytes do not match its digest (gRPC DATA_LOSS).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The backend could not be reached (gRPC UNAVAILABLE, DEADLINE_EXCEEDED).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Any other storage failure (gRPC INTERNAL).
    #[error("storage error: {0}")]
    Storage(String),
}

impl Error {
    /// Wraps any storage-layer failure, keeping its message.
    pub fn storage(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Error::Storage(format!("{context}: {err}"))
    }

    /// An I/O error from reading blob `blob`: the store error it carries (blob readers hand
    /// ours out wrapped in `io::Error`), or else one classified by its kind.
    pub fn from_io(blob: &super::B3Digest, e: std::io::Error) -> Self {
        let kind = e.kind();
        let message = match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(ours)) => return *ours,
            Some(Err(other)) => other.to_string(),
            None => kind.to_string(),
        };
        let message = format!("reading blob {blob}: {message}");
        match kind {
            std::io::ErrorKind::InvalidData => Error::Corrupt(message),
            std::io::ErrorKind::NotFound => Error::NotFound(message),
            _ => Error::Storage(message),
        }
    }
}

impl From<InvalidDirectory> for Error {
    fn from(e: InvalidDirectory) -> Self {
        Error::InvalidRequest(format!("invalid directory: {e}"))
    }
}

impl From<DecodeDirectoryError> for Error {
    fn from(e: DecodeDirectoryError) -> Self {
        Error::Corrupt(format!("stored directory does not decode: {e}"))
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            Error::InvalidRequest(_) => ErrorKind::InvalidInput,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Corrupt(_) => ErrorKind::InvalidData,
            Error::Unavailable(_) => ErrorKind::ConnectionAborted,
            Error::Storage(_) => ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
