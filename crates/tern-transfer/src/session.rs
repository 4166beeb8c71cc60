//! Session identity, options, statistics and progress reports.

use crate::durable::Durability;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::extents::DEFAULT_CHUNK_SIZE;

/// Identifies one file transfer across attempts; the same id on a retry enables resume.
///
/// Both sides must be given the same id by their callers (e.g. derived from the migration
/// job); the receiver refuses streams that present any other id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh random id.
    pub fn random() -> Self {
        SessionId(uuid::Uuid::new_v4().into_bytes())
    }
}

impl From<uuid::Uuid> for SessionId {
    fn from(u: uuid::Uuid) -> Self {
        SessionId(u.into_bytes())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = crate::Error;

    /// Parses 32 hex digits, or a UUID with dashes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(SessionId::from).map_err(|_| {
            crate::Error::InvalidOptions(format!("{s:?} is not a session id (32 hex digits)"))
        })
    }
}

/// A flag to cancel a running transfer from another thread.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the transfer to stop; it fails with [`crate::Error::Cancelled`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// True once [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Per-chunk compression the sender asks for (the receiver may decline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Send chunks as they are.
    #[default]
    None,
    /// zstd at this level (1 is fast; chunks that do not shrink are sent raw).
    Zstd(i32),
}

/// How [`crate::send`] runs.
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// Session id shared with the receiver.
    pub session: SessionId,
    /// Parallel TCP connections (default 2).
    pub streams: u16,
    /// Compression to ask for (default none).
    pub compression: Compression,
    /// Checksum of every chunk (default XXH3-128).
    pub checksum: crate::Checksum,
    /// With a key: chunks and the Hello are authenticated with a MAC
    /// (overrides `checksum`; the receiver must have the same key).
    pub mac_key: Option<crate::MacKey>,
    /// Wire bytes per second over all streams, `None` for unlimited.
    pub rate_limit: Option<u64>,
    /// Chunk size: a multiple of 64 KiB from 64 KiB to 4 MiB (default 4 MiB).
    pub chunk_size: u32,
    /// Time allowed to connect each stream.
    pub connect_timeout: Duration,
    /// Time a single socket read or write may block.
    pub io_timeout: Duration,
    /// How often the progress callback runs.
    pub progress_interval: Duration,
    /// Cancels the transfer when triggered.
    pub cancel: CancelToken,
}

impl SendOptions {
    /// Defaults for `session`.
    pub fn new(session: SessionId) -> Self {
        SendOptions {
            session,
            streams: 2,
            compression: Compression::None,
            checksum: crate::Checksum::default(),
            mac_key: None,
            rate_limit: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            progress_interval: Duration::from_millis(250),
            cancel: CancelToken::new(),
        }
    }
}

/// How a [`crate::Receiver`] runs.
#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// The only session id accepted.
    pub session: SessionId,
    /// With a key: only a sender holding it is accepted, and every chunk's
    /// MAC is checked (see [`crate::Checksum::Mac`]).
    pub mac_key: Option<crate::MacKey>,
    /// Accept a sender's request for zstd (default true).
    pub allow_compression: bool,
    /// Keep the partial file and journal after a failure (except running out of space) and
    /// resume from them when the same session and source come back (default true).
    pub resume: bool,
    /// Replace an existing destination file (default false: fail if it exists).
    pub overwrite: bool,
    /// When the data is made durable (default [`Durability::Synced`]: fdatasync before
    /// journaling and before the final rename).
    pub durability: Durability,
    /// Also read every chunk back after writing and hash it again (default false).
    pub verify_read_back: bool,
    /// Most streams a sender may open (default 16).
    pub max_streams: u16,
    /// Time to wait for the sender to connect all its streams.
    pub accept_timeout: Duration,
    /// Time a single socket read or write may block.
    pub io_timeout: Duration,
    /// Verified bytes between journal flushes (default 256 MiB; also flushed every 2 s).
    pub journal_interval_bytes: u64,
}

impl ReceiveOptions {
    /// Defaults for `session`.
    pub fn new(session: SessionId) -> Self {
        ReceiveOptions {
            session,
            mac_key: None,
            allow_compression: true,
            resume: true,
            overwrite: false,
            durability: Durability::Synced,
            verify_read_back: false,
            max_streams: 16,
            accept_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(60),
            journal_interval_bytes: 256 << 20,
        }
    }
}

/// Counters of one attempt, as seen by one side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocated data bytes of the source (sum of its extents).
    pub bytes_total_data: u64,
    /// Bytes that crossed the wire in this attempt, framing included (sent by the sender,
    /// received by the receiver).
    pub bytes_sent_wire: u64,
    /// Data bytes not sent because an earlier attempt had already verified them.
    pub bytes_skipped_resumed: u64,
    /// Data bytes in all-zero 64 KiB blocks that were not sent and left as holes.
    pub bytes_zero_skipped: u64,
    /// Chunks transferred and verified in this attempt.
    pub chunks: u64,
    /// Chunks skipped because an earlier attempt had verified them.
    pub chunks_resumed: u64,
    /// True if zstd was negotiated.
    pub compressed: bool,
    /// Number of TCP streams used.
    pub streams: u16,
    /// Wall time of the attempt.
    pub elapsed: Duration,
}

/// A progress report passed to the sender's callback.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Data bytes done, including those skipped by resume.
    pub bytes_done: u64,
    /// All data bytes of the source.
    pub bytes_total: u64,
    /// Average data rate of this attempt in bytes per second.
    pub bytes_per_sec: f64,
}
