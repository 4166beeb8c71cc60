//! Controller errors and their API error codes, in one place.

use tern_api::{ApiError, ErrorCode};
use thiserror::Error;

/// What can go wrong serving a request or running a job.
#[derive(Debug, Error)]
pub enum CtlError {
    /// The store failed.
    #[error("{0}")]
    Store(#[from] tern_store::StoreError),
    /// No such host, server or job.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot apply to the current state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or asks for something unsupported.
    #[error("{0}")]
    Invalid(String),
    /// An agent refused or could not be reached.
    #[error("host {host}: {source}")]
    Agent {
        /// The host.
        host: String,
        /// Cause.
        #[source]
        source: tern_api::ClientError,
    },
    /// A record in the store does not decode.
    #[error("store record {key} is unreadable: {message}")]
    Record {
        /// Key.
        key: String,
        /// Parser message.
        message: String,
    },
}

/// Result alias.
pub type Result<T, E = CtlError> = std::result::Result<T, E>;

impl From<CtlError> for ApiError {
    fn from(e: CtlError) -> Self {
        let code = match &e {
            CtlError::NotFound(_) => ErrorCode::NotFound,
            CtlError::Conflict(_) => ErrorCode::Conflict,
            CtlError::Invalid(_) => ErrorCode::InvalidArgument,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}
