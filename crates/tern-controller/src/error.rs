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
    /// Too much work is queued to take this on now; the caller should
    /// retry later (agents back off and do).
    #[error("{0}")]
    Busy(String),
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
        let code = error_code(&e);
        ApiError::new(code, e.to_string())
    }
}

/// The API code (and so the HTTP status) of an error. Every variant is
/// named, so a new one must be classified here; an agent's refusal keeps
/// the agent's own code across the hop.
pub fn error_code(e: &CtlError) -> ErrorCode {
    match e {
        CtlError::Store(s) => store_code(s),
        CtlError::NotFound(_) => ErrorCode::NotFound,
        CtlError::Conflict(_) => ErrorCode::Conflict,
        CtlError::Invalid(_) => ErrorCode::InvalidArgument,
        CtlError::Busy(_) => ErrorCode::Timeout,
        CtlError::Agent { source, .. } => client_code(source),
        CtlError::Record { .. } => ErrorCode::Internal,
    }
}

fn store_code(e: &tern_store::StoreError) -> ErrorCode {
    use tern_store::StoreError as S;
    match e {
        // Another controller leads now, or the lease went: try again.
        S::Deposed(_) | S::LeaseExpired(_) => ErrorCode::Conflict,
        // etcd refused or did not answer.
        S::Etcd(_) => ErrorCode::Failed,
        S::Io { .. } | S::Corrupt { .. } | S::Locked(_) | S::Url(_) => ErrorCode::Internal,
    }
}

fn client_code(e: &tern_api::ClientError) -> ErrorCode {
    use tern_api::ClientError as C;
    match e {
        // The agent answered: its own code.
        C::Api(a) => a.code,
        // The agent could not be reached or hung up.
        C::Connect { .. } | C::Tls { .. } | C::Ssh { .. } | C::Http { .. } => ErrorCode::Failed,
        C::TlsSetup(_) | C::Untrusted { .. } => ErrorCode::Internal,
        C::Decode { .. } => ErrorCode::Version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::ApiError;

    #[test]
    fn an_agents_refusal_keeps_its_code_across_the_controller() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Unsupported,
        ] {
            let e = CtlError::Agent {
                host: "a".into(),
                source: tern_api::ClientError::Api(ApiError::new(code, "no domain 'vm'")),
            };
            let a = ApiError::from(e);
            assert_eq!(a.code, code);
            assert_eq!(a.message, "host a: no domain 'vm'");
        }
        let down = CtlError::Agent {
            host: "a".into(),
            source: tern_api::ClientError::Http {
                target: "a:1".into(),
                message: "reset".into(),
            },
        };
        assert_eq!(ApiError::from(down).code.http_status(), 500);
        let deposed = CtlError::Store(tern_store::StoreError::Deposed("leader".into()));
        assert_eq!(ApiError::from(deposed).code.http_status(), 409);
    }
}
