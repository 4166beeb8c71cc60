//! # tern-transfer: the cold-migration data plane
//!
//! Moves one file (a raw image, or one qcow2 file of a backing chain: the engine is
//! format-agnostic and works on files) from a source agent to a destination agent over
//! TCP. Only allocated extents travel, holes stay holes, every chunk is verified with
//! a checksum end to end (XXH3-128, or BLAKE3 on request: see [`Checksum`]), and an
//! interrupted transfer resumes without resending what arrived.
//!
//! ## API
//!
//! Destination agent, told the path by its own caller:
//! ```no_run
//! # use tern_transfer::*;
//! # fn main() -> Result<()> {
//! let session: SessionId = "6f1c0c6e9a3b4e0f8d2a1b3c4d5e6f70".parse()?; // agreed via the control plane
//! let rx = Receiver::bind("0.0.0.0:0", "/pool/vm1.qcow2", ReceiveOptions::new(session))?;
//! let port = rx.port(); // hand to the source agent
//! let stats = rx.wait()?; // blocks; use spawn_blocking from async code
//! # Ok(()) }
//! ```
//! Source agent:
//! ```no_run
//! # use tern_transfer::*;
//! # fn main() -> Result<()> {
//! # let session = SessionId::random();
//! let mut opts = SendOptions::new(session);
//! opts.compression = Compression::Zstd(1);
//! opts.rate_limit = Some(200 << 20); // bytes/s over all streams
//! let stats = send("10.0.0.2:40123", "/pool/vm1.qcow2".as_ref(), &opts, |p| {
//!     println!("{}/{} bytes, {:.0} B/s", p.bytes_done, p.bytes_total, p.bytes_per_sec)
//! })?;
//! println!("sent {} wire bytes, {} resumed", stats.bytes_sent_wire, stats.bytes_skipped_resumed);
//! # Ok(()) }
//! ```
//! Retrying after a failure is calling both again with the **same session id**: the
//! receiver finds its journal and the sender skips the chunks already verified
//! ([`Error::is_retryable`] says when that is worthwhile). Both sides can be cancelled
//! ([`Receiver::cancel`], [`SendOptions::cancel`]). [`allocated_extents`] is public too.
//!
//! ## What happens to the file
//!
//! The sender lists data extents with `lseek(SEEK_DATA/SEEK_HOLE)` and cuts them into
//! chunks (default 4 MiB, never crossing an extent); all-zero 64 KiB blocks inside a chunk
//! are not sent. The receiver writes `<dest>.tern-partial`, created at the full size with
//! `set_len`, writes only non-zero data (zeros are never written; on a resumed file,
//! zero blocks are hole-punched), and journals verified chunks in `<dest>.tern-journal`.
//! When every chunk is verified it fsyncs, renames the partial file to `dest`, fsyncs the
//! directory and deletes the journal. With [`Durability::Deferred`] it syncs nothing while
//! copying and, instead of the final fsync, leaves a marker naming this boot for
//! [`make_durable`] to clear later (see [`durable`]). The source is opened read-only and never modified;
//! a source whose size or mtime changes during the transfer fails it.
//!
//! ## Verification
//!
//! The checksum is XXH3-128 unless the sender asks for BLAKE3 (Hello flag); see
//! [`Checksum`] for why a fast non-cryptographic function is the default.
//!
//! The sender checksums each chunk's logical bytes (zero blocks included) before
//! sending. The receiver hashes the bytes it received, as it writes them (zero runs fed
//! as zeros), and compares; a mismatch fails the transfer with
//! [`Error::ChecksumMismatch`]. Durability comes from `fdatasync` (before any chunk is
//! journaled, and before the rename). We hash the received bytes rather than reading
//! them back by default because a read-back right after the write is served from the
//! page cache, the very memory just written, so it would double the cost without
//! checking the disk; the hash covers the network, framing, decompression and
//! reassembly, and fsync errors (EIO, ENOSPC) fail the transfer.
//! [`ReceiveOptions::verify_read_back`] adds the read-back for the paranoid. Bytes are
//! written before their chunk's hash is known; that is safe because only verified chunks
//! are journaled and the partial file becomes `dest` only when all are verified.
//!
//! ## Resume
//!
//! The journal header holds the session id and the source fingerprint: BLAKE3 of the
//! source's size, mtime, device, inode, chunk size and extent map. A journal whose header
//! differs from the new Hello (another session, a changed source) is discarded and the
//! transfer restarts from zero. Records (chunk index + hash + check) are appended by a
//! background thread every 256 MiB or 2 s, each batch after an `fdatasync` of the data,
//! so a record always names durable, verified data; a torn tail is ignored. On failure
//! the pending records are flushed and the files kept ([`ReceiveOptions::resume`]),
//! except when the destination ran out of space ([`Error::NoSpace`]): then, as with
//! `resume = false`, the partial file and journal are removed.
//!
//! ## Wire protocol (version 2)
//!
//! Every connection starts with a 12-byte preface from each side: magic `TERNXFER`,
//! version (u16 LE), 2 reserved bytes. A wrong magic or version is refused with a
//! `Reject` carrying a clear message ([`Error::BadMagic`],
//! [`Error::UnsupportedVersion`]). Then frames: type (u8), 3 reserved bytes, body length
//! (u32 LE), body; every type has a maximum body size (4 MiB + 4 KiB for chunks, 1 KiB
//! for texts) checked before anything is allocated.
//!
//! ```text
//! sender                                     receiver
//!  stream 0 (control) ─ preface, Hello{session, stream 0 of N, file size, chunk size,
//!                        chunk count, data bytes, fingerprint, wants zstd, BLAKE3?} ──▶
//!                     ◀── preface, Welcome{zstd accepted, bitmap of verified chunks}
//!                         (or Reject{text}: wrong session, bad parameters...)
//!  streams 1..N-1     ─ preface, Hello{same, stream i} ──▶  ◀── preface, Welcome{}
//!  every stream       ─ Chunk{index, offset, len, flags, zero mask, checksum} + payload
//!                        (non-zero 64 KiB blocks back to back, maybe zstd) ──▶ ...
//!  streams 1..N-1     ─ End ──▶
//!  stream 0           ─ Finish ──▶  (after every stream has sent its chunks)
//!                     ◀── Done{chunks}   after verify-all, fsync, rename
//!  any time, either way: Error{text}, then the session is aborted
//! ```
//! Chunks are taken from one shared queue by all streams, so a slow stream does not
//! hold back the others. The receiver validates every field (index in range, sent once,
//! range inside the file, length within the chunk size, payload length consistent with
//! the zero mask, compressed size bounded) and never uses a path or name from the peer:
//! it writes only the path its own caller gave, plus the two suffixed companions.
//!
//! ## Performance notes
//!
//! Uncompressed payloads leave the sender with `sendfile(2)` straight from the page
//! cache; the sender reads 256 KiB pieces only to hash and zero-scan them while they are
//! in cache, and the receiver receives, hashes and `pwrite`s in 256 KiB pieces for the
//! same reason. Two streams by default; the rate limit is a token bucket shared by all
//! streams. `cargo run --release -p tern-bench -- engine` compares
//! with cp, rsync and scp.
#![warn(missing_docs)]

mod checksum;
pub mod durable;
mod error;
pub mod extents;
pub mod journal;
mod ratelimit;
mod receiver;
mod recv_accept;
mod recv_stream;
mod send_stream;
mod sender;
mod session;
pub mod wire;

pub use checksum::{Checksum, MacKey};
pub use durable::{make_durable, Durability};
pub use error::{Error, Result};
pub use extents::{allocated_extents, Extent};
pub use journal::{journal_path, partial_path};
pub use receiver::Receiver;
pub use sender::send;
pub use session::{
    CancelToken, Compression, Progress, ReceiveOptions, SendOptions, SessionId, Stats,
};
