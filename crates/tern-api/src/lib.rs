//! The host API between `tern`, `ternd` and `tern-controller`.
//!
//! One endpoint, `POST /api/v1/call`, carries a JSON [`Request`] (an enum
//! tagged by `op`) and answers with the operation's JSON result or an
//! [`ApiError`]. Keeping requests a typed enum, separate from the transport,
//! lets the same parser serve the unix socket, TCP, TLS and ssh, and lets it
//! be fuzzed on its own. The API version travels in the `x-tern-api` header;
//! a server refuses versions it does not speak.

pub mod client;
pub mod cluster;
pub mod error;
pub mod event;
pub mod fence;
mod kept;
pub mod peer;
pub mod request;
pub mod response;
pub mod rest;
pub mod settle;
pub mod transport;
pub mod types;

pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorCode};
pub use request::{MigrationRequest, Request, SecretRequest};
pub use types::*;

/// Version of this API; bumped on incompatible changes.
pub const API_VERSION: u32 = 1;

/// HTTP header carrying [`API_VERSION`].
pub const VERSION_HEADER: &str = "x-tern-api";

/// Path of the single RPC endpoint.
pub const CALL_PATH: &str = "/api/v1/call";

/// Where `ternd` listens by default, and where `tern:///system` connects.
pub const DEFAULT_SOCKET: &str = "/run/tern/ternd.sock";
