//! Receiver internals shared by its stream threads: checking, verifying and writing chunks.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::checksum::ChunkHasher;
use crate::error::{is_no_space, Error, Result};
use crate::extents::{self, ZERO_BLOCK};
use crate::journal::{Bitmap, JournalWriter};
use crate::wire::{self, ChunkHeader, Hello, Kind};

/// State of one receive attempt, shared by all stream threads.
pub(crate) struct Recv {
    /// The path the caller asked for (used in messages).
    pub dest: PathBuf,
    /// The data file being written (`<dest>.tern-partial`).
    pub file: Arc<File>,
    /// The control stream's Hello.
    pub hello: Hello,
    /// zstd negotiated.
    pub compressed: bool,
    /// The sender's checksum function.
    pub checksum: crate::Checksum,
    /// The data file had content from an earlier attempt: zero blocks must be punched.
    pub resumed: bool,
    /// Read every chunk back after writing.
    pub verify_read_back: bool,
    /// Data is made durable (fdatasync); writeback starts after each chunk.
    pub fsync: bool,
    /// Verified chunks (earlier attempts) plus chunks claimed in this one.
    pub done: Mutex<Bitmap>,
    /// Appends verified chunks to the journal.
    pub journal: JournalWriter,
    /// Set on the first error: everyone stops.
    pub abort: AtomicBool,
    /// The first error.
    pub error: Mutex<Option<Error>>,
    /// Every accepted stream, to shut them all down on abort.
    pub sockets: Mutex<Vec<TcpStream>>,
    /// Writer half of the control stream (Error and Done frames).
    pub control: Mutex<TcpStream>,
    /// Bytes read from the wire.
    pub wire: AtomicU64,
    /// Chunks verified in this attempt.
    pub chunks: AtomicU64,
    /// Logical bytes of those chunks.
    pub bytes: AtomicU64,
    /// Zero bytes left as holes.
    pub zero: AtomicU64,
}

/// How a stream ended without error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// A data stream sent End.
    End,
    /// The control stream sent Finish.
    Finish,
}

impl Recv {
    /// Records `e` as the session's error (if it is the first), tells the sender and stops
    /// every stream.
    pub fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            if !matches!(e, Error::Remote(_)) && !self.abort.load(Ordering::SeqCst) {
                let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
                let _ = wire::write_frame(&mut *c, Kind::Error, wire::text_body(&e.to_string()));
            }
            *slot = Some(e);
        }
        drop(slot);
        self.abort.store(true, Ordering::SeqCst);
        for s in self
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Serves one stream until End/Finish; the caller reports errors with [`Recv::fail`].
pub(crate) fn serve(rs: &Recv, mut s: TcpStream, stream: u16) -> Result<StreamEnd> {
    let mut buf = Vec::new();
    let mut unpacked = Vec::new();
    let mut readback = Vec::new();
    let mut dz = if rs.compressed {
        Some(zstd::bulk::Decompressor::new().map_err(|e| Error::io("starting zstd", e))?)
    } else {
        None
    };
    loop {
        let lost = |e| Error::LinkLost {
            stream,
            context: "reading a frame".into(),
            source: e,
        };
        let (kind, len) = wire::read_frame_header(&mut s).map_err(lost)??;
        rs.wire.fetch_add(
            wire::FRAME_HEADER_LEN as u64 + u64::from(len),
            Ordering::Relaxed,
        );
        match kind {
            Kind::Chunk => {
                if (len as usize) < wire::CHUNK_HEADER_LEN {
                    return Err(Error::Protocol(format!(
                        "chunk frame of {len} bytes is too short"
                    )));
                }
                let mut ch = [0u8; wire::CHUNK_HEADER_LEN];
                s.read_exact(&mut ch).map_err(lost)?;
                let h = ChunkHeader::decode(&ch)?;
                let raw_len = check_chunk(rs, &h, len as usize - wire::CHUNK_HEADER_LEN)?;
                if h.flags & wire::CHUNK_COMPRESSED == 0 {
                    store_chunk(
                        rs,
                        &h,
                        Payload::Socket(&mut s, stream),
                        &mut buf,
                        &mut readback,
                    )?;
                } else {
                    let Some(d) = dz.as_mut() else {
                        return Err(Error::Protocol(
                            "compressed chunk without negotiated compression".into(),
                        ));
                    };
                    wire::read_body(&mut s, &mut buf, len - wire::CHUNK_HEADER_LEN as u32)
                        .map_err(lost)?;
                    unpacked.clear();
                    unpacked.reserve(raw_len);
                    let n = d.decompress_to_buffer(&buf, &mut unpacked).map_err(|e| {
                        Error::Protocol(format!(
                            "chunk {} does not decompress within {raw_len} bytes: {e}",
                            h.index
                        ))
                    })?;
                    if n != raw_len {
                        return Err(Error::Protocol(format!(
                            "chunk {} decompresses to {n} bytes instead of {raw_len}",
                            h.index
                        )));
                    }
                    store_chunk(rs, &h, Payload::Memory(&unpacked), &mut buf, &mut readback)?;
                }
            }
            Kind::End if stream != 0 && len == 0 => return Ok(StreamEnd::End),
            Kind::Finish if stream == 0 && len == 0 => return Ok(StreamEnd::Finish),
            Kind::Error => {
                wire::read_body(&mut s, &mut buf, len).map_err(lost)?;
                return Err(Error::Remote(wire::decode_text(&buf)));
            }
            k => {
                return Err(Error::Protocol(format!(
                    "unexpected {k:?} frame on stream {stream}"
                )))
            }
        }
        if rs.abort.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
    }
}

/// Checks a chunk header against the session and claims its index; returns the length of
/// the uncompressed payload (the non-zero blocks).
fn check_chunk(rs: &Recv, h: &ChunkHeader, payload_len: usize) -> Result<usize> {
    let bad = |what: String| Err(Error::Protocol(format!("chunk {}: {what}", h.index)));
    if h.index >= rs.hello.chunk_count {
        return bad(format!(
            "index is beyond the {} chunks of the session",
            rs.hello.chunk_count
        ));
    }
    if h.len == 0 || h.len > rs.hello.chunk_size {
        return bad(format!(
            "length {} is outside 1..={}",
            h.len, rs.hello.chunk_size
        ));
    }
    if h.offset
        .checked_add(u64::from(h.len))
        .is_none_or(|end| end > rs.hello.file_size)
    {
        return bad(format!(
            "range at offset {} runs past the end of the file",
            h.offset
        ));
    }
    let blocks = extents::blocks_in(h.len as usize);
    if blocks < 64 && h.zero_mask >> blocks != 0 {
        return bad("zero mask names blocks past the chunk".into());
    }
    if h.flags & !wire::CHUNK_COMPRESSED != 0 || (h.flags != 0 && !rs.compressed) {
        return bad(format!("flags {:#x} were not negotiated", h.flags));
    }
    let raw_len: usize = extents::runs(h.len as usize, h.zero_mask)
        .filter(|r| !r.0)
        .map(|r| r.2)
        .sum();
    if h.flags == 0 && payload_len != raw_len {
        return bad(format!(
            "payload is {payload_len} bytes, expected {raw_len}"
        ));
    }
    if !rs
        .done
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set(h.index)
    {
        return bad("was sent twice".into());
    }
    Ok(raw_len)
}

/// Where a chunk's payload (its non-zero runs, back to back) comes from.
enum Payload<'a> {
    /// Already in memory (decompressed).
    Memory(&'a [u8]),
    /// Still in the socket (stream index for errors).
    Socket(&'a mut TcpStream, u16),
}

/// Bytes handled at a time: small enough that receive, hash and write hit a warm cache.
const PIECE: usize = 256 * 1024;

/// Streams the chunk into the partial file piece by piece while hashing its logical bytes
/// (zero runs stay holes), then compares the hash. Bytes are written before the hash is
/// known, which is safe: only verified chunks are journaled, and the partial file is
/// renamed to the destination only when every chunk is verified.
fn store_chunk(
    rs: &Recv,
    h: &ChunkHeader,
    mut src: Payload<'_>,
    buf: &mut Vec<u8>,
    readback: &mut Vec<u8>,
) -> Result<()> {
    let len = h.len as usize;
    let mismatch = || Error::ChecksumMismatch {
        chunk: h.index,
        offset: h.offset,
        len: u64::from(h.len),
    };
    let write_err = |e: io::Error, at: u64| match is_no_space(&e) {
        true => Error::NoSpace {
            path: rs.dest.clone(),
            offset: at,
        },
        false => Error::io(format!("writing {} at offset {at}", rs.dest.display()), e),
    };
    buf.resize(PIECE.max(buf.len()), 0);
    let mut hasher = ChunkHasher::for_chunk(rs.checksum, h.index, h.offset, u64::from(h.len));
    let (mut used, mut zero_bytes) = (0usize, 0u64);
    for (zero, start, n) in extents::runs(len, h.zero_mask) {
        let at = h.offset + start as u64;
        if zero {
            for piece in (0..n).step_by(ZERO_BLOCK) {
                hasher.update(extents::zeros((n - piece).min(ZERO_BLOCK)));
            }
            if rs.resumed {
                punch_hole(&rs.file, at, n as u64).map_err(|e| write_err(e, at))?;
            }
            zero_bytes += n as u64;
            continue;
        }
        for piece in (0..n).step_by(PIECE) {
            let k = (n - piece).min(PIECE);
            let bytes: &[u8] = match &mut src {
                Payload::Memory(m) => &m[used..used + k],
                Payload::Socket(s, stream) => {
                    s.read_exact(&mut buf[..k]).map_err(|e| Error::LinkLost {
                        stream: *stream,
                        context: format!("receiving chunk {}", h.index),
                        source: e,
                    })?;
                    &buf[..k]
                }
            };
            used += k;
            hasher.update(bytes);
            rs.file
                .write_all_at(bytes, at + piece as u64)
                .map_err(|e| write_err(e, at + piece as u64))?;
        }
    }
    if hasher.finalize() != h.hash {
        return Err(mismatch());
    }
    if rs.verify_read_back {
        readback.resize(len, 0);
        rs.file.read_exact_at(readback, h.offset).map_err(|e| {
            Error::io(
                format!("reading back {} at offset {}", rs.dest.display(), h.offset),
                e,
            )
        })?;
        if rs.checksum.of_chunk(h.index, h.offset, readback) != h.hash {
            return Err(mismatch());
        }
    }
    if rs.fsync {
        start_writeback(&rs.file, h.offset, u64::from(h.len));
    }
    rs.journal.record(h.index, h.hash, u64::from(h.len));
    rs.chunks.fetch_add(1, Ordering::Relaxed);
    rs.bytes.fetch_add(u64::from(h.len), Ordering::Relaxed);
    rs.zero.fetch_add(zero_bytes, Ordering::Relaxed);
    Ok(())
}

/// Starts writing a range back to disk without waiting: the disk then works while
/// the next chunks arrive, and the journal's and the final fdatasync find little
/// left to write. Advice only: errors surface at fdatasync.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range on an owned descriptor has no memory-safety preconditions.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Deallocates a range so it reads as zeros, without writing zeros where possible.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on an owned descriptor has no memory-safety preconditions.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            flags,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // No hole punching here: stale bytes from an earlier attempt must still become zeros.
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZERO_BLOCK as u64) as usize;
            file.write_all_at(extents::zeros(n), at)?;
            at += n as u64;
        }
        return Ok(());
    }
    Err(e)
}
