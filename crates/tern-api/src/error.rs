//! Errors that cross the wire, and their HTTP status codes (in one place).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Broad class of an API error; decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request was malformed or named something invalid.
    InvalidArgument,
    /// The named object does not exist.
    NotFound,
    /// The object exists already, or is in the wrong state for this.
    Conflict,
    /// Tern cannot do this (an unsupported device, say).
    Unsupported,
    /// The caller may not do this.
    Forbidden,
    /// The operation was tried and failed (QEMU refused, I/O error...).
    Failed,
    /// The operation did not finish in time.
    Timeout,
    /// The peer speaks another API version.
    Version,
    /// A bug or an unexpected condition.
    Internal,
}

impl ErrorCode {
    /// HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Unsupported => 422,
            ErrorCode::Version => 426,
            ErrorCode::Timeout => 504,
            ErrorCode::Failed => 500,
            ErrorCode::Internal => 500,
        }
    }
}

/// An error as the client sees it: a code and one sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Class of error.
    pub code: ErrorCode,
    /// One-line message saying what was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}
