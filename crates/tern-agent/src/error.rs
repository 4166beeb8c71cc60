//! The agent's error type and its mapping to API errors.

use tern_api::{ApiError, ErrorCode};
use thiserror::Error;

/// Everything an agent operation can fail with.
#[derive(Debug, Error)]
pub enum AgentError {
    /// No such domain.
    #[error("domain '{0}' not found; see 'tern list --all'")]
    NoDomain(String),
    /// No such pool.
    #[error("storage pool '{0}' not found; see 'tern pool-list --all'")]
    NoPool(String),
    /// No such network.
    #[error("network '{0}' not found; see 'tern net-list', or define it with 'tern net-define-as {0} --bridge BRIDGE'")]
    NoNetwork(String),
    /// No such volume.
    #[error("storage volume '{name}' not found in pool '{pool}'; see 'tern vol-list {pool}'")]
    NoVolume {
        /// Pool.
        pool: String,
        /// Volume.
        name: String,
    },
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The object's state forbids this.
    #[error("{0}")]
    Conflict(String),
    /// Tern cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// The operation did not complete in time.
    #[error("{0}")]
    Timeout(String),
    /// The operation failed.
    #[error("{0}")]
    Failed(String),
    /// Domain XML was refused.
    #[error("invalid domain XML: {0}")]
    Xml(#[from] tern_model::xml::XmlError),
    /// QMP failed.
    #[error("QEMU monitor: {0}")]
    Qmp(#[from] tern_qemu::QmpError),
    /// qemu-img failed.
    #[error("{0}")]
    Img(#[from] tern_qemu::img::ImgError),
    /// A state file could not be read or written.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A name was refused.
    #[error("{0}")]
    Name(#[from] tern_model::names::NameError),
    /// Another agent refused, with its own code, kept across the hop.
    #[error("{}", .0.message)]
    Peer(tern_api::ApiError),
}

impl AgentError {
    /// Wraps an I/O error on a state file.
    pub fn state(path: &std::path::Path, source: std::io::Error) -> Self {
        AgentError::State {
            path: path.display().to_string(),
            source,
        }
    }
}

impl AgentError {
    /// The API's class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::NoDomain(_)
            | AgentError::NoPool(_)
            | AgentError::NoNetwork(_)
            | AgentError::NoVolume { .. } => ErrorCode::NotFound,
            AgentError::Invalid(_) | AgentError::Xml(_) | AgentError::Name(_) => {
                ErrorCode::InvalidArgument
            }
            AgentError::Conflict(_) => ErrorCode::Conflict,
            AgentError::Unsupported(_) => ErrorCode::Unsupported,
            AgentError::Timeout(_) => ErrorCode::Timeout,
            AgentError::Failed(_) | AgentError::Qmp(_) | AgentError::Img(_) => ErrorCode::Failed,
            AgentError::State { .. } => ErrorCode::Internal,
            AgentError::Peer(e) => e.code,
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> ApiError {
        // Errors must stay one line on the client's terminal.
        let msg = e.to_string().replace('\n', " ");
        ApiError::new(e.code(), msg)
    }
}

/// Result alias for agent operations.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
