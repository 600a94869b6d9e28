//! How our errors cross the wire: each `castore::Error` variant is one gRPC status code, both
//! ways, so a failure keeps its kind (not found, corrupt, unavailable...) from server to client.

use tonic::{Code, Status};

use crate::castore::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRequest(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::Corrupt(m) => Status::data_loss(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Storage(m) => Status::internal(m),
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        let m = s.message().to_string();
        match s.code() {
            Code::InvalidArgument | Code::FailedPrecondition => Error::InvalidRequest(m),
            Code::NotFound => Error::NotFound(m),
            Code::DataLoss => Error::Corrupt(m),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Error::Unavailable(format!("{m} ({:?})", s.code()))
            }
            code => Error::Storage(format!("{m} ({code:?})")),
        }
    }
}
