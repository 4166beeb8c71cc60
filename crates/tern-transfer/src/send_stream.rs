//! The sender's stream workers: read, hash and zero-scan chunks, then put them on the wire.

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::checksum::ChunkHasher;
use crate::error::{Error, Result};
use crate::extents::{self, ChunkPlan, ZERO_BLOCK};
use crate::ratelimit::TokenBucket;
use crate::wire::{self, ChunkHeader, Kind};

/// Bytes read and hashed at a time when not compressing: small enough to stay in cache.
const PIECE: usize = 256 * 1024;

/// State shared by the stream workers of one send.
pub(crate) struct Shared {
    pub(crate) file: File,
    pub(crate) plan: ChunkPlan,
    pub(crate) work: Vec<usize>,
    pub(crate) next: AtomicUsize,
    pub(crate) abort: AtomicBool,
    pub(crate) bytes_done: AtomicU64,
    pub(crate) wire: AtomicU64,
    pub(crate) zero: AtomicU64,
    pub(crate) chunks: AtomicU64,
    pub(crate) bucket: Option<TokenBucket>,
    pub(crate) compression: Option<i32>,
    pub(crate) checksum: crate::Checksum,
}

/// One stream: takes chunks from the shared queue until it is empty, then sends End.
pub(crate) fn worker(sh: &Shared, mut s: TcpStream, stream: u16) -> Result<()> {
    let lost = |context: String, e| Error::LinkLost {
        stream,
        context,
        source: e,
    };
    let max_chunk = sh
        .plan
        .chunks
        .iter()
        .map(|c| c.len as usize)
        .max()
        .unwrap_or(0);
    let mut buf = vec![
        0u8;
        if sh.compression.is_some() {
            max_chunk
        } else {
            PIECE.min(max_chunk)
        }
    ];
    let read_err = |offset: u64, e| Error::io(format!("reading the source at offset {offset}"), e);
    let mut staging = Vec::new();
    let mut packed = Vec::new();
    let mut zc = match sh.compression {
        Some(level) => {
            Some(zstd::bulk::Compressor::new(level).map_err(|e| Error::io("starting zstd", e))?)
        }
        None => None,
    };
    loop {
        if sh.abort.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let w = sh.next.fetch_add(1, Ordering::Relaxed);
        let Some(&index) = sh.work.get(w) else { break };
        let c = sh.plan.chunks[index];
        let (hash, mask) = if sh.compression.is_some() {
            let data = &mut buf[..c.len as usize];
            sh.file
                .read_exact_at(data, c.offset)
                .map_err(|e| read_err(c.offset, e))?;
            (
                sh.checksum.of_chunk(index as u64, c.offset, data),
                extents::zero_mask(data),
            )
        } else {
            // Only hash and zero-scan here, a cache-sized piece at a time; the payload
            // itself goes out with sendfile below.
            let mut hasher =
                ChunkHasher::for_chunk(sh.checksum, index as u64, c.offset, u64::from(c.len));
            let mut mask = 0u64;
            for start in (0..c.len as usize).step_by(PIECE) {
                let piece = &mut buf[..PIECE.min(c.len as usize - start)];
                sh.file
                    .read_exact_at(piece, c.offset + start as u64)
                    .map_err(|e| read_err(c.offset, e))?;
                hasher.update(piece);
                mask |= extents::zero_mask(piece) << (start / ZERO_BLOCK);
            }
            (hasher.finalize(), mask)
        };
        let data = &buf[..if sh.compression.is_some() {
            c.len as usize
        } else {
            0
        }];
        let runs: Vec<_> = extents::runs(c.len as usize, mask)
            .filter(|r| !r.0)
            .collect();
        let raw_len: usize = runs.iter().map(|r| r.2).sum();
        let mut header = ChunkHeader {
            index: index as u64,
            offset: c.offset,
            len: c.len,
            flags: 0,
            zero_mask: mask,
            hash,
        };
        if let Some(z) = zc.as_mut().filter(|_| raw_len > 0) {
            let input: &[u8] = if mask == 0 {
                data
            } else {
                staging.clear();
                for r in &runs {
                    staging.extend_from_slice(&data[r.1..r.1 + r.2]);
                }
                &staging
            };
            packed.clear();
            packed.reserve(zstd::zstd_safe::compress_bound(input.len()));
            let n = z
                .compress_to_buffer(input, &mut packed)
                .map_err(|e| Error::io("compressing a chunk", e))?;
            if n < raw_len {
                header.flags = wire::CHUNK_COMPRESSED;
            }
        }
        let payload_len = if header.flags & wire::CHUNK_COMPRESSED != 0 {
            packed.len()
        } else {
            raw_len
        };
        let mut head = [0u8; wire::FRAME_HEADER_LEN + wire::CHUNK_HEADER_LEN];
        head[..wire::FRAME_HEADER_LEN].copy_from_slice(&wire::frame_header(
            Kind::Chunk,
            wire::CHUNK_HEADER_LEN + payload_len,
        ));
        head[wire::FRAME_HEADER_LEN..].copy_from_slice(&header.encode());
        let wire_len = (head.len() + payload_len) as u64;
        // With a rate limit, tokens are taken per piece so that the link never stays
        // silent for a whole chunk's worth of time (which could trip the peer's timeout).
        let piece = if sh.bucket.is_some() {
            PIECE
        } else {
            usize::MAX
        };
        let pace = |n: usize| {
            if let Some(b) = &sh.bucket {
                std::thread::sleep(b.take(n as u64));
            }
        };
        pace(head.len());
        let mut sent = send_more(&s, &head);
        if header.flags & wire::CHUNK_COMPRESSED != 0 {
            for p in packed.chunks(PIECE) {
                sent = sent.and_then(|_| {
                    pace(p.len());
                    s.write_all(p)
                });
            }
        } else {
            for &(_, start, len) in &runs {
                for off in (start..start + len).step_by(piece) {
                    let n = piece.min(start + len - off);
                    sent = sent.and_then(|_| {
                        pace(n);
                        if sh.compression.is_some() {
                            // Incompressible: the bytes are in memory already.
                            s.write_all(&data[off..off + n])
                        } else {
                            // Straight from the page cache to the socket; if the file changed
                            // since it was hashed, the receiver's check fails.
                            send_file(&s, &sh.file, c.offset + off as u64, n)
                        }
                    });
                }
            }
        }
        sent.map_err(|e| lost(format!("sending chunk {index}"), e))?;
        sh.wire.fetch_add(wire_len, Ordering::Relaxed);
        sh.zero
            .fetch_add(u64::from(c.len) - raw_len as u64, Ordering::Relaxed);
        sh.bytes_done.fetch_add(u64::from(c.len), Ordering::Relaxed);
        sh.chunks.fetch_add(1, Ordering::Relaxed);
    }
    if stream != 0 {
        wire::write_frame(&mut s, Kind::End, &[]).map_err(|e| lost("sending End".into(), e))?;
        sh.wire
            .fetch_add(wire::FRAME_HEADER_LEN as u64, Ordering::Relaxed);
    }
    s.flush().map_err(|e| lost("flushing".into(), e))
}

/// Writes `buf` with MSG_MORE so it shares a segment with the payload that follows.
fn send_more(s: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the descriptor is an open socket.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_MORE,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Sends `len` bytes of `file` at `offset` with sendfile(2).
fn send_file(s: &TcpStream, file: &File, offset: u64, len: usize) -> std::io::Result<()> {
    let mut off = offset as libc::off_t;
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open; `off` is a valid in/out offset.
        let n = unsafe { libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
        match n {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source file shrank",
                ))
            }
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => left -= n as usize,
        }
    }
    Ok(())
}
