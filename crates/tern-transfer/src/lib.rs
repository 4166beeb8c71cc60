//! Placeholder; docs written below.
#![warn(missing_docs)]

mod error;
pub mod extents;
mod journal;
mod ratelimit;
mod receiver;
mod recv_stream;
mod sender;
mod session;
pub mod wire;

pub use error::{Error, Result};
pub use extents::{allocated_extents, Extent};
pub use journal::{journal_path, partial_path};
pub use receiver::Receiver;
pub use sender::send;
pub use session::{CancelToken, Compression, Progress, ReceiveOptions, SendOptions, SessionId, Stats};
