//! The error type shared by the sender and the receiver.

use std::io;
use std::path::PathBuf;

/// Everything that can make a transfer fail; every message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file or socket operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done, e.g. "reading /src/disk.img at offset 4096".
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The destination file system is full (ENOSPC or EDQUOT); partial data was removed.
    #[error("destination ran out of space writing {} at offset {offset}", path.display())]
    NoSpace {
        /// The file being written.
        path: PathBuf,
        /// Where the failed write started.
        offset: u64,
    },

    /// A chunk's checksum on the destination differs from the source's.
    #[error("checksum mismatch for chunk {chunk} ({len} bytes at offset {offset}): the data was corrupted in transit or on write")]
    ChecksumMismatch {
        /// Chunk index in the session's chunk plan.
        chunk: u64,
        /// Byte offset of the chunk in the file.
        offset: u64,
        /// Chunk length in bytes.
        len: u64,
    },

    /// The peer does not speak this protocol at all.
    #[error("peer is not a tern-transfer endpoint (bad magic in handshake)")]
    BadMagic,

    /// The peer speaks another version of this protocol.
    #[error("peer speaks tern-transfer protocol version {peer}, but this side supports only version {ours}")]
    UnsupportedVersion {
        /// The version the peer announced.
        peer: u16,
        /// The version this build speaks.
        ours: u16,
    },

    /// The peer sent something this protocol does not allow.
    #[error("protocol violation by peer: {0}")]
    Protocol(String),

    /// The receiver refused the handshake (wrong session, bad parameters...).
    #[error("receiver refused the transfer: {0}")]
    Rejected(String),

    /// The other side reported a failure and aborted the session.
    #[error("peer aborted the transfer: {0}")]
    Remote(String),

    /// The connection was lost or closed in the middle of the transfer.
    #[error("connection lost on stream {stream} while {context}: {source}")]
    LinkLost {
        /// Index of the TCP stream that failed.
        stream: u16,
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Could not reach the receiver.
    #[error("could not connect to receiver at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The destination path exists and the options do not allow replacing it.
    #[error("destination {} already exists and overwrite is not enabled", .0.display())]
    DestinationExists(PathBuf),

    /// The source file changed while it was being sent.
    #[error("source file {} changed during the transfer", .0.display())]
    SourceChanged(PathBuf),

    /// A deadline passed.
    #[error("timed out {0}")]
    Timeout(String),

    /// The transfer was cancelled by the local caller.
    #[error("the transfer was cancelled")]
    Cancelled,

    /// The caller passed invalid options.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// A bug: a worker thread panicked or an invariant broke.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for errors where the same session can usefully be retried (resumed).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::LinkLost { .. }
                | Error::Connect { .. }
                | Error::Timeout(_)
                | Error::ChecksumMismatch { .. }
                | Error::Remote(_)
        )
    }
}

/// True if `e` means the file system is out of space or quota.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
