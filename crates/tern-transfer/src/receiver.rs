//! The destination side: [`Receiver`] accepts one sender's streams and writes one file.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::durable::{self, Durability};
use crate::error::{is_no_space, Error, Result};
use crate::journal::{self, Bitmap, Journal, JournalWriter};
use crate::recv_accept::{check_hello, reject, welcome, Acceptor};
use crate::recv_stream::{self, Recv, StreamEnd};
use crate::session::{CancelToken, ReceiveOptions, Stats};
use crate::wire::{self, Hello, Kind};

/// A listening receiver for one file; its thread runs the whole session.
///
/// The file is written to `<dest>.tern-partial`, with a resume journal in
/// `<dest>.tern-journal`; after every chunk is verified (and fsynced) the partial file is
/// renamed to `dest` and the journal removed. The peer never names any path.
#[derive(Debug)]
pub struct Receiver {
    local_addr: SocketAddr,
    cancel: CancelToken,
    handle: JoinHandle<Result<Stats>>,
}

impl Receiver {
    /// Binds `addr` (port 0 picks a free port) and starts waiting for the sender of
    /// `opts.session`; the file goes to `dest` and nowhere else.
    pub fn bind(
        addr: impl ToSocketAddrs,
        dest: impl Into<PathBuf>,
        opts: ReceiveOptions,
    ) -> Result<Receiver> {
        let dest: PathBuf = dest.into();
        if dest.file_name().is_none() {
            return Err(Error::InvalidOptions(format!(
                "{} does not name a file",
                dest.display()
            )));
        }
        if !opts.overwrite && dest.exists() {
            return Err(Error::DestinationExists(dest));
        }
        if opts.max_streams == 0 {
            return Err(Error::InvalidOptions(
                "max_streams must be at least 1".into(),
            ));
        }
        let listener =
            TcpListener::bind(addr).map_err(|e| Error::io("binding the receiver's socket", e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configuring the listener", e))?;
        let cancel = CancelToken::new();
        let c = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("tern-recv".into())
            .spawn(move || run(listener, &dest, &opts, &c))
            .map_err(|e| Error::io("spawning a thread", e))?;
        Ok(Receiver {
            local_addr,
            cancel,
            handle,
        })
    }

    /// The address the receiver listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port the receiver listens on (tell it to the sender).
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// A token that cancels this receiver (same as [`Receiver::cancel`]).
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Stops the session; [`Receiver::wait`] then returns [`Error::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// True once the session ended (successfully or not).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the session to end and returns its counters.
    pub fn wait(self) -> Result<Stats> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the receiver thread panicked".into())))
    }
}

/// Opens the partial file and journal: resumed if they match, fresh otherwise.
fn open_data(
    dest: &Path,
    hdr: &journal::Header,
    opts: &ReceiveOptions,
) -> Result<(File, Journal, Bitmap, bool)> {
    let partial = journal::partial_path(dest);
    let jpath = journal::journal_path(dest);
    let ctx = |what: &str| format!("{what} for {}", dest.display());
    if opts.resume {
        if let Some((done, valid)) =
            journal::load(&jpath, hdr).map_err(|e| Error::io(ctx("reading the journal"), e))?
        {
            let f = OpenOptions::new().read(true).write(true).open(&partial);
            if let Ok(f) = f.and_then(|f| f.metadata().map(|m| (f, m.len()))) {
                if f.1 == hdr.file_size {
                    let j = Journal::reopen(&jpath, valid)
                        .map_err(|e| Error::io(ctx("reopening the journal"), e))?;
                    return Ok((f.0, j, done, true));
                }
            }
        }
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .and_then(|f| f.set_len(hdr.file_size).map(|_| f))
        .map_err(|e| match is_no_space(&e) {
            true => Error::NoSpace {
                path: dest.to_path_buf(),
                offset: 0,
            },
            false => Error::io(ctx("creating the partial file"), e),
        })?;
    let j = Journal::create(&jpath, hdr).map_err(|e| Error::io(ctx("creating the journal"), e))?;
    Ok((f, j, Bitmap::new(hdr.chunk_count), false))
}

fn remove_partial(dest: &Path) {
    let _ = std::fs::remove_file(journal::partial_path(dest));
    let _ = std::fs::remove_file(journal::journal_path(dest));
}

fn run(
    listener: TcpListener,
    dest: &Path,
    opts: &ReceiveOptions,
    cancel: &CancelToken,
) -> Result<Stats> {
    let deadline = Instant::now() + opts.accept_timeout;
    let mut acceptor = Acceptor::new(&listener, opts);
    let (mut control, hello) = acceptor.accept_one(deadline, cancel, |h| check_hello(h, opts))?;
    let start = Instant::now();
    let synced = opts.durability == Durability::Synced;
    let hdr = journal::Header {
        session: hello.session,
        fingerprint: journal_fingerprint(&hello.fingerprint, opts.durability)?,
        file_size: hello.file_size,
        chunk_size: hello.chunk_size,
        chunk_count: hello.chunk_count,
    };
    let (file, journal, done, resumed) = match open_data(dest, &hdr, opts) {
        Ok(x) => x,
        Err(e) => {
            reject(&mut control, &e.to_string());
            return Err(e);
        }
    };
    let compressed = opts.allow_compression && hello.flags & wire::FLAG_ZSTD != 0;
    let flags = if compressed { wire::FLAG_ZSTD } else { 0 };
    let resumed_chunks = done.count();
    let file = Arc::new(file);
    let journal = JournalWriter::spawn(journal, file.clone(), synced, opts.journal_interval_bytes)
        .map_err(|e| Error::io("spawning a thread", e))?;
    let hs_in = (wire::PREFACE_LEN + wire::FRAME_HEADER_LEN + hello.encode().len()) as u64;
    let clone = |s: &TcpStream| s.try_clone().map_err(|e| Error::io("cloning a socket", e));
    let rs = Arc::new(Recv {
        dest: dest.to_path_buf(),
        file,
        hello: hello.clone(),
        compressed,
        checksum: match opts.mac_key {
            // check_hello made sure the sender uses it.
            Some(k) => crate::Checksum::Mac(k),
            None if hello.flags & wire::FLAG_BLAKE3 != 0 => crate::Checksum::Blake3,
            None => crate::Checksum::Xxh3,
        },
        resumed: resumed || resumed_chunks > 0,
        verify_read_back: opts.verify_read_back,
        fsync: synced,
        done: Mutex::new(done),
        journal,
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        sockets: Mutex::new(vec![clone(&control)?]),
        control: Mutex::new(clone(&control)?),
        wire: AtomicU64::new(hs_in * u64::from(hello.stream_count)),
        chunks: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        zero: AtomicU64::new(0),
    });
    let bitmap = rs.done.lock().unwrap_or_else(|p| p.into_inner()).to_bytes();
    let mut threads = Vec::new();
    let result = (|| -> Result<()> {
        welcome(&mut control, flags, &bitmap).map_err(|e| Error::LinkLost {
            stream: 0,
            context: "sending Welcome".into(),
            source: e,
        })?;
        threads.push(spawn_stream(&rs, control, 0)?);
        let mut joined = vec![false; usize::from(hello.stream_count)];
        joined[0] = true;
        for _ in 1..hello.stream_count {
            let (mut s, h) =
                acceptor.accept_one(Instant::now() + opts.accept_timeout, cancel, |h| {
                    let same = Hello {
                        stream_index: 0,
                        ..h.clone()
                    } == hello;
                    match joined.get(usize::from(h.stream_index)) {
                        Some(false) if same => Ok(()),
                        _ if !same => {
                            Err("Hello does not match the session's control stream".into())
                        }
                        _ => Err(format!(
                            "stream {} is invalid or already connected",
                            h.stream_index
                        )),
                    }
                })?;
            joined[usize::from(h.stream_index)] = true;
            welcome(&mut s, flags, &[]).map_err(|e| Error::LinkLost {
                stream: h.stream_index,
                context: "sending Welcome".into(),
                source: e,
            })?;
            rs.sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(clone(&s)?);
            threads.push(spawn_stream(&rs, s, h.stream_index)?);
        }
        Ok(())
    })();
    drop(acceptor);
    drop(listener);
    if let Err(e) = result {
        rs.fail(e);
    }
    while !threads.iter().all(|t| t.is_finished()) {
        if cancel.is_cancelled() {
            rs.fail(Error::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in threads {
        let _ = t.join();
    }
    let rs =
        Arc::into_inner(rs).ok_or_else(|| Error::Internal("receiver state still shared".into()))?;
    let have = rs.done.lock().unwrap_or_else(|p| p.into_inner()).count();
    let error = rs.error.lock().unwrap_or_else(|p| p.into_inner()).take();
    let journal = rs.journal;
    let outcome = match error {
        Some(e) => {
            let no_space = matches!(e, Error::NoSpace { .. });
            let flushed = journal.finish(opts.resume && !no_space);
            if !opts.resume || no_space || flushed.is_err() {
                remove_partial(dest);
            }
            return Err(e);
        }
        // A failed background fdatasync must fail the transfer even if a later one succeeds.
        None => journal
            .finish(false)
            .map_err(|e| io_or_no_space(e, "syncing", dest))
            .and_then(|_| finalize(&rs.file, &rs.hello, have, dest, opts)),
    };
    if let Err(e) = outcome {
        let mut c = rs.control.lock().unwrap_or_else(|p| p.into_inner());
        let _ = wire::write_frame(&mut *c, Kind::Error, wire::text_body(&e.to_string()));
        if !opts.resume || matches!(e, Error::NoSpace { .. }) {
            remove_partial(dest);
        }
        return Err(e);
    }
    let _ = std::fs::remove_file(journal::journal_path(dest));
    let chunks = rs.chunks.load(Ordering::Relaxed);
    {
        let mut c = rs.control.lock().unwrap_or_else(|p| p.into_inner());
        let _ = wire::write_frame(&mut *c, Kind::Done, &chunks.to_le_bytes());
    }
    let bytes = rs.bytes.load(Ordering::Relaxed);
    Ok(Stats {
        bytes_total_data: hello.data_bytes,
        bytes_sent_wire: rs.wire.load(Ordering::Relaxed),
        bytes_skipped_resumed: hello.data_bytes - bytes,
        bytes_zero_skipped: rs.zero.load(Ordering::Relaxed),
        chunks,
        chunks_resumed: resumed_chunks,
        compressed,
        streams: hello.stream_count,
        elapsed: start.elapsed(),
    })
}

fn io_or_no_space(e: std::io::Error, what: &str, dest: &Path) -> Error {
    match is_no_space(&e) {
        true => Error::NoSpace {
            path: dest.to_path_buf(),
            offset: 0,
        },
        false => Error::io(format!("{what} {}", dest.display()), e),
    }
}

fn spawn_stream(rs: &Arc<Recv>, s: TcpStream, i: u16) -> Result<JoinHandle<()>> {
    let rs = rs.clone();
    std::thread::Builder::new()
        .name(format!("tern-recv-{i}"))
        .spawn(move || match recv_stream::serve(&rs, s, i) {
            Ok(StreamEnd::End) | Ok(StreamEnd::Finish) => {}
            Err(e) => rs.fail(e),
        })
        .map_err(|e| Error::io("spawning a thread", e))
}

/// After Finish and every End: all chunks present, data durable, then the rename.
fn finalize(
    file: &File,
    hello: &Hello,
    have: u64,
    dest: &Path,
    opts: &ReceiveOptions,
) -> Result<()> {
    if have != hello.chunk_count {
        return Err(Error::Protocol(format!(
            "sender finished with {} of {} chunks missing",
            hello.chunk_count - have,
            hello.chunk_count
        )));
    }
    if !opts.overwrite && dest.exists() {
        return Err(Error::DestinationExists(dest.to_path_buf()));
    }
    match opts.durability {
        Durability::Synced => file
            .sync_all()
            .map_err(|e| io_or_no_space(e, "syncing", dest))?,
        // The marker is on disk before the name it describes.
        Durability::Deferred => {
            durable::mark(dest).map_err(|e| io_or_no_space(e, "marking as not yet synced", dest))?
        }
    }
    if let Err(e) = std::fs::rename(journal::partial_path(dest), dest) {
        let _ = std::fs::remove_file(durable::marker_path(dest));
        return Err(io_or_no_space(e, "renaming the partial file to", dest));
    }
    if synced(opts) {
        durable::sync_dir(dest).map_err(|e| io_or_no_space(e, "syncing the directory of", dest))?;
    }
    Ok(())
}

fn synced(opts: &ReceiveOptions) -> bool {
    opts.durability == Durability::Synced
}

/// The fingerprint a journal is kept under. A deferred transfer's journal
/// also names this boot: its records name data that was never synced, which
/// a reboot may have lost.
fn journal_fingerprint(source: &[u8; 32], d: Durability) -> Result<[u8; 32]> {
    match d {
        Durability::Synced => Ok(*source),
        Durability::Deferred => {
            let boot = durable::boot_id().map_err(|e| Error::io("reading the boot id", e))?;
            let mut h = blake3::Hasher::new();
            h.update(source);
            h.update(boot.as_bytes());
            Ok(*h.finalize().as_bytes())
        }
    }
}
