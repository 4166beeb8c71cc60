//! The source side: [`send`] streams a file's allocated extents to a [`crate::Receiver`].

use std::fs::File;
use std::io::{IoSlice, Read};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::extents::{self, ChunkPlan, ZERO_BLOCK};
use crate::journal::Bitmap;
use crate::ratelimit::TokenBucket;
use crate::send_stream::{worker, Shared};
use crate::session::{Compression, Progress, SendOptions, Stats};
use crate::wire::{self, Hello, Kind};

/// Sends the file at `src` to the receiver listening at `addr`.
///
/// Only allocated extents travel; all-zero 64 KiB blocks are skipped; every chunk carries
/// its checksum (`opts.checksum`), which the receiver checks before acknowledging the whole file. If the
/// receiver already holds verified chunks of the same session and unchanged source, they
/// are skipped. `progress` runs on the calling thread every `opts.progress_interval` and
/// once at the end. Returns after the receiver confirmed that the file is complete.
pub fn send(
    addr: impl ToSocketAddrs,
    src: &Path,
    opts: &SendOptions,
    mut progress: impl FnMut(Progress),
) -> Result<Stats> {
    let start = Instant::now();
    check_options(opts)?;
    let file = File::open(src).map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading metadata of {}", src.display()), e))?;
    let extents = extents::extents_of(&file, meta.len())
        .map_err(|e| Error::io(format!("mapping extents of {}", src.display()), e))?;
    let plan = ChunkPlan::new(&extents, opts.chunk_size);
    let chunk_count = plan.chunks.len() as u64;
    if chunk_count > wire::MAX_CHUNK_COUNT {
        return Err(Error::InvalidOptions(format!(
            "{} needs {chunk_count} chunks, more than the protocol's {}; use a larger chunk size",
            src.display(),
            wire::MAX_CHUNK_COUNT
        )));
    }
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Error::Connect {
            addr: "(unresolved)".into(),
            source: e,
        })?
        .collect();
    let nstreams = opts
        .streams
        .min(chunk_count.max(1).min(u64::from(u16::MAX)) as u16);
    let checksum = match opts.mac_key {
        Some(k) => crate::Checksum::Mac(k),
        None => opts.checksum,
    };
    let mut hello = Hello {
        flags: if matches!(opts.compression, Compression::Zstd(_)) {
            wire::FLAG_ZSTD
        } else {
            0
        } | match checksum {
            crate::Checksum::Blake3 => wire::FLAG_BLAKE3,
            crate::Checksum::Mac(_) => wire::FLAG_MAC,
            crate::Checksum::Xxh3 => 0,
        },
        session: opts.session.0,
        stream_index: 0,
        stream_count: nstreams,
        chunk_size: opts.chunk_size,
        file_size: meta.len(),
        chunk_count,
        data_bytes: plan.data_bytes,
        fingerprint: extents::fingerprint(&meta, &extents, opts.chunk_size, checksum),
    };
    if let Some(k) = opts.mac_key {
        hello.session = k.hello_tag(&opts.session.0, &hello);
    }

    let mut control = connect(&addrs, opts)?;
    let (flags, bitmap) = handshake(&mut control, &hello, 0)?;
    let done = Bitmap::from_bytes(&bitmap, chunk_count)
        .ok_or_else(|| Error::Protocol("resume bitmap has the wrong size".into()))?;
    let compression = match opts.compression {
        Compression::Zstd(level) if flags & wire::FLAG_ZSTD != 0 => Some(level),
        _ => None,
    };
    let mut streams = vec![control
        .try_clone()
        .map_err(|e| Error::io("cloning a socket", e))?];
    for i in 1..nstreams {
        let mut s = connect(&addrs, opts)?;
        handshake(
            &mut s,
            &Hello {
                stream_index: i,
                ..hello.clone()
            },
            i,
        )?;
        streams.push(s);
    }

    let work: Vec<usize> = (0..plan.chunks.len())
        .filter(|&i| !done.get(i as u64))
        .collect();
    let resumed_bytes: u64 = (0..plan.chunks.len())
        .filter(|&i| done.get(i as u64))
        .map(|i| u64::from(plan.chunks[i].len))
        .sum();
    let shared = Arc::new(Shared {
        file,
        plan,
        work,
        next: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        bytes_done: AtomicU64::new(0),
        wire: AtomicU64::new(0),
        zero: AtomicU64::new(0),
        chunks: AtomicU64::new(0),
        bucket: opts.rate_limit.map(TokenBucket::new),
        compression,
        checksum,
    });

    // The receiver only ever speaks on the control stream: Done, or Error at any time.
    let (final_tx, final_rx) = mpsc::channel();
    let mut reader = control
        .try_clone()
        .map_err(|e| Error::io("cloning a socket", e))?;
    let _ = reader.set_read_timeout(None);
    std::thread::Builder::new()
        .name("tern-send-ctl".into())
        .spawn(move || {
            let _ = final_tx.send(read_final(&mut reader));
        })
        .map_err(|e| Error::io("spawning a thread", e))?;

    let mut workers = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let s = s
            .try_clone()
            .map_err(|e| Error::io("cloning a socket", e))?;
        let sh = shared.clone();
        let w = std::thread::Builder::new()
            .name(format!("tern-send-{i}"))
            .spawn(move || worker(&sh, s, i as u16))
            .map_err(|e| Error::io("spawning a thread", e))?;
        workers.push(w);
    }

    // Handshakes (preface, Hello) on every stream and the final Finish also crossed the wire.
    let hs = (wire::PREFACE_LEN + wire::FRAME_HEADER_LEN + hello.encode().len()) as u64;
    shared.wire.fetch_add(
        hs * u64::from(nstreams) + wire::FRAME_HEADER_LEN as u64,
        Ordering::Relaxed,
    );
    let total = shared.plan.data_bytes;
    let report = |sh: &Shared| {
        let sent = sh.bytes_done.load(Ordering::Relaxed);
        Progress {
            bytes_done: resumed_bytes + sent,
            bytes_total: total,
            bytes_per_sec: sent as f64 / start.elapsed().as_secs_f64().max(1e-9),
        }
    };
    let mut remote: Option<Result<()>> = None;
    let mut last_report = Instant::now();
    while !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(10).min(opts.progress_interval));
        if opts.cancel.is_cancelled() {
            shared.abort.store(true, Ordering::SeqCst);
            shutdown_all(&streams);
        } else if remote.is_some() {
            shared.abort.store(true, Ordering::SeqCst);
        } else if let Ok(r) = final_rx.try_recv() {
            remote = Some(r.and(Err(Error::Protocol(
                "receiver finished before the sender".into(),
            ))));
            shared.abort.store(true, Ordering::SeqCst);
            shutdown_all(&streams);
        }
        if last_report.elapsed() >= opts.progress_interval {
            progress(report(&shared));
            last_report = Instant::now();
        }
    }
    let mut first_err = None;
    for w in workers {
        let r = w
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("a sender thread panicked".into())));
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    let cancelled = opts.cancel.is_cancelled();
    if first_err.is_none() && remote.is_none() && !cancelled && source_changed(src, &meta) {
        first_err = Some(Error::SourceChanged(src.to_path_buf()));
    }
    if cancelled || first_err.is_some() || remote.is_some() {
        if remote.is_none() {
            let msg = match &first_err {
                Some(e) if !cancelled => format!("sender failed: {e}"),
                _ => "the sender cancelled the transfer".to_string(),
            };
            let _ = wire::write_frame(&mut control, Kind::Error, wire::text_body(&msg));
        }
        // The receiver's own error (checksum, disk full...) explains more than a broken pipe.
        let remote = remote.or_else(|| final_rx.recv_timeout(Duration::from_secs(2)).ok());
        shutdown_all(&streams);
        return Err(match (cancelled, remote, first_err) {
            (true, _, _) => Error::Cancelled,
            (_, Some(Err(r @ Error::Remote(_))), _) => r,
            (_, _, Some(e)) => e,
            (_, Some(Err(r)), None) => r,
            (_, _, None) => Error::Internal("transfer aborted without a reason".into()),
        });
    }
    wire::write_frame(&mut control, Kind::Finish, &[]).map_err(|e| Error::LinkLost {
        stream: 0,
        context: "sending Finish".into(),
        source: e,
    })?;
    let result = final_rx
        .recv_timeout(opts.io_timeout)
        .unwrap_or(Err(Error::Timeout(
            "waiting for the receiver to confirm the file".into(),
        )));
    shutdown_all(&streams);
    result?;
    progress(report(&shared));
    Ok(Stats {
        bytes_total_data: total,
        bytes_sent_wire: shared.wire.load(Ordering::Relaxed),
        bytes_skipped_resumed: resumed_bytes,
        bytes_zero_skipped: shared.zero.load(Ordering::Relaxed),
        chunks: shared.chunks.load(Ordering::Relaxed),
        chunks_resumed: chunk_count - shared.work.len() as u64,
        compressed: compression.is_some(),
        streams: nstreams,
        elapsed: start.elapsed(),
    })
}

fn check_options(opts: &SendOptions) -> Result<()> {
    let cs = opts.chunk_size;
    if cs == 0 || cs % ZERO_BLOCK as u32 != 0 || cs > extents::MAX_CHUNK_SIZE {
        return Err(Error::InvalidOptions(format!(
            "chunk size {cs} must be a multiple of 64 KiB between 64 KiB and 4 MiB"
        )));
    }
    if opts.streams == 0 || opts.streams > 64 {
        return Err(Error::InvalidOptions(format!(
            "{} streams is outside 1..=64",
            opts.streams
        )));
    }
    if opts.rate_limit == Some(0) {
        return Err(Error::InvalidOptions(
            "a rate limit of 0 bytes/s would never finish".into(),
        ));
    }
    Ok(())
}

fn source_changed(src: &Path, before: &std::fs::Metadata) -> bool {
    match std::fs::metadata(src) {
        Ok(m) => {
            m.len() != before.len()
                || m.mtime() != before.mtime()
                || m.mtime_nsec() != before.mtime_nsec()
        }
        Err(_) => true,
    }
}

fn shutdown_all(streams: &[TcpStream]) {
    for s in streams {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn connect(addrs: &[SocketAddr], opts: &SendOptions) -> Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(a, opts.connect_timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_write_timeout(Some(opts.io_timeout))
                    .and_then(|_| s.set_read_timeout(Some(opts.io_timeout)))
                    .map_err(|e| Error::io("configuring a socket", e))?;
                return Ok(s);
            }
            Err(e) => last = Some((a.to_string(), e)),
        }
    }
    let (addr, source) =
        last.unwrap_or_else(|| ("(no address)".into(), std::io::ErrorKind::NotFound.into()));
    Err(Error::Connect { addr, source })
}

/// Sends preface + Hello, reads the receiver's preface + Welcome; returns its flags and bitmap.
fn handshake(s: &mut TcpStream, hello: &Hello, stream: u16) -> Result<(u16, Vec<u8>)> {
    let lost = |context: &str, e| Error::LinkLost {
        stream,
        context: context.into(),
        source: e,
    };
    let h = wire::frame_header(Kind::Hello, hello.encode().len());
    wire::write_all_vectored(
        s,
        &mut [
            IoSlice::new(&wire::preface()),
            IoSlice::new(&h),
            IoSlice::new(&hello.encode()),
        ],
    )
    .map_err(|e| lost("sending Hello", e))?;
    let mut p = [0u8; wire::PREFACE_LEN];
    s.read_exact(&mut p)
        .map_err(|e| lost("reading the receiver's preface", e))?;
    wire::check_preface(&p)?;
    let (kind, len) = wire::read_frame_header(s).map_err(|e| lost("reading Welcome", e))??;
    let mut body = Vec::new();
    wire::read_body(s, &mut body, len).map_err(|e| lost("reading Welcome", e))?;
    match kind {
        Kind::Welcome => {
            let mut f = wire::Fields::new(&body, "Welcome");
            let flags = f.u16()?;
            Ok((flags, f.rest().to_vec()))
        }
        Kind::Reject => Err(Error::Rejected(wire::decode_text(&body))),
        Kind::Error => Err(Error::Remote(wire::decode_text(&body))),
        k => Err(Error::Protocol(format!("expected Welcome, got {k:?}"))),
    }
}

/// Waits for the receiver's last word on the control stream.
fn read_final(s: &mut TcpStream) -> Result<()> {
    let lost = |e| Error::LinkLost {
        stream: 0,
        context: "waiting for the receiver's confirmation".into(),
        source: e,
    };
    let (kind, len) = wire::read_frame_header(s).map_err(lost)??;
    let mut body = Vec::new();
    wire::read_body(s, &mut body, len).map_err(lost)?;
    match kind {
        Kind::Done => Ok(()),
        Kind::Error => Err(Error::Remote(wire::decode_text(&body))),
        k => Err(Error::Protocol(format!(
            "unexpected {k:?} frame from the receiver"
        ))),
    }
}
