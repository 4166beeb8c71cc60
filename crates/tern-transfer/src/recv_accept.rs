//! The receiver's handshakes: accepting connections, checking Hellos, Welcome and Reject.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::extents::{MAX_CHUNK_SIZE, ZERO_BLOCK};
use crate::session::{CancelToken, ReceiveOptions};
use crate::wire::{self, Hello, Kind};

/// Reads preface + Hello from a new connection; answers bad ones with a Reject.
pub(crate) fn read_hello(s: &mut TcpStream) -> Result<Hello> {
    let lost = |e| Error::LinkLost {
        stream: 0,
        context: "reading Hello".into(),
        source: e,
    };
    let mut p = [0u8; wire::PREFACE_LEN];
    s.read_exact(&mut p).map_err(lost)?;
    let hello = wire::check_preface(&p).and_then(|_| {
        let (kind, len) = wire::read_frame_header(s).map_err(lost)??;
        if kind != Kind::Hello {
            return Err(Error::Protocol(format!("expected Hello, got {kind:?}")));
        }
        let mut body = Vec::new();
        wire::read_body(s, &mut body, len).map_err(lost)?;
        Hello::decode(&body)
    });
    if let Err(e) = &hello {
        reject(s, &e.to_string());
    }
    hello
}

pub(crate) fn reject(s: &mut TcpStream, msg: &str) {
    let body = wire::text_body(msg);
    let h = wire::frame_header(Kind::Reject, body.len());
    let _ = wire::write_all_vectored(
        s,
        &mut [
            IoSlice::new(&wire::preface()),
            IoSlice::new(&h),
            IoSlice::new(body),
        ],
    );
}

pub(crate) fn welcome(s: &mut TcpStream, flags: u16, bitmap: &[u8]) -> std::io::Result<u64> {
    let mut body = flags.to_le_bytes().to_vec();
    body.extend_from_slice(bitmap);
    let h = wire::frame_header(Kind::Welcome, body.len());
    wire::write_all_vectored(
        s,
        &mut [
            IoSlice::new(&wire::preface()),
            IoSlice::new(&h),
            IoSlice::new(&body),
        ],
    )?;
    Ok((wire::PREFACE_LEN + h.len() + body.len()) as u64)
}

/// Checks a control Hello against the options; the error text goes back in a Reject.
pub(crate) fn check_hello(h: &Hello, opts: &ReceiveOptions) -> std::result::Result<(), String> {
    match opts.mac_key {
        Some(k) => {
            if h.flags & wire::FLAG_MAC == 0 {
                return Err("this receiver needs an authenticated (MAC) session".into());
            }
            if !crate::checksum::same_tag(&h.session, &k.hello_tag(&opts.session.0, h)) {
                return Err("the Hello's MAC does not verify: wrong key or session".into());
            }
        }
        None if h.flags & wire::FLAG_MAC != 0 => {
            return Err(
                "the sender authenticates with a MAC key this receiver was not given".into(),
            );
        }
        None if h.session != opts.session.0 => {
            return Err(format!(
                "session {} is not expected here",
                crate::SessionId(h.session)
            ));
        }
        None => {}
    }
    if h.stream_index != 0 {
        return Err("a data stream arrived before the control stream".into());
    }
    if h.stream_count == 0 || h.stream_count > opts.max_streams {
        return Err(format!(
            "{} streams requested, at most {} allowed",
            h.stream_count, opts.max_streams
        ));
    }
    if h.chunk_size == 0 || h.chunk_size % ZERO_BLOCK as u32 != 0 || h.chunk_size > MAX_CHUNK_SIZE {
        return Err(format!(
            "chunk size {} is not a multiple of 64 KiB up to 4 MiB",
            h.chunk_size
        ));
    }
    if h.file_size > i64::MAX as u64
        || h.chunk_count > wire::MAX_CHUNK_COUNT
        || h.data_bytes > h.file_size
        || h.chunk_count > h.data_bytes
        || h.chunk_count.saturating_mul(u64::from(h.chunk_size)) < h.data_bytes
    {
        return Err("file size, data size and chunk count are inconsistent".into());
    }
    Ok(())
}

/// The whole Hello (preface, header, body) must arrive within this.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections reading their Hello at once beyond the session's streams;
/// a newer one displaces the oldest.
const SPARE_PENDING: usize = 16;

/// A connection still reading its Hello: a handle to cut it, and since when.
struct Pending {
    id: u64,
    stream: TcpStream,
    since: Instant,
}

/// What a Hello reader thread hands back.
type Arrival = (u64, TcpStream, Result<Hello>);

/// The receiver's accepting side. Each connection reads its Hello on its own
/// thread, under a deadline for the whole Hello, so a connection that says
/// nothing (or drips bytes) holds neither the accept loop nor the others
/// up; at most `max_streams + 16` wait at once and a newcomer beyond that
/// displaces the oldest. A flood of silent connections thus only delays a
/// real sender by the milliseconds its own Hello takes.
pub(crate) struct Acceptor<'a> {
    listener: &'a TcpListener,
    opts: &'a ReceiveOptions,
    tx: mpsc::Sender<Arrival>,
    rx: mpsc::Receiver<Arrival>,
    pending: VecDeque<Pending>,
    next: u64,
}

impl<'a> Acceptor<'a> {
    pub(crate) fn new(listener: &'a TcpListener, opts: &'a ReceiveOptions) -> Self {
        let (tx, rx) = mpsc::channel();
        Acceptor {
            listener,
            opts,
            tx,
            rx,
            pending: VecDeque::new(),
            next: 0,
        }
    }

    fn max_pending(&self) -> usize {
        usize::from(self.opts.max_streams) + SPARE_PENDING
    }

    /// Waits for a connection whose Hello passes `accept`; rejects and drops the others.
    pub(crate) fn accept_one(
        &mut self,
        deadline: Instant,
        cancel: &CancelToken,
        mut accept: impl FnMut(&Hello) -> std::result::Result<(), String>,
    ) -> Result<(TcpStream, Hello)> {
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout("waiting for the sender's streams".into()));
            }
            let mut busy = false;
            while let Ok((id, mut s, hello)) = self.rx.try_recv() {
                busy = true;
                self.pending.retain(|p| p.id != id);
                let hello = match hello {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!("tern-transfer: refused a connection: {e}");
                        continue;
                    }
                };
                match accept(&hello) {
                    Ok(()) => {
                        let _ = s.set_read_timeout(Some(self.opts.io_timeout));
                        return Ok((s, hello));
                    }
                    Err(msg) => {
                        tracing::warn!("tern-transfer: refused a connection: {msg}");
                        reject(&mut s, &msg);
                    }
                }
            }
            self.expire();
            match self.listener.accept() {
                Ok((s, _)) => {
                    busy = true;
                    self.start(s);
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("accepting a connection", e)),
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Cuts the connections whose Hello is late (their threads then end).
    fn expire(&mut self) {
        while let Some(p) = self.pending.front() {
            if p.since.elapsed() < HELLO_TIMEOUT {
                break;
            }
            tracing::info!("tern-transfer: closing a connection that sent no Hello in time");
            let _ = p.stream.shutdown(Shutdown::Both);
            self.pending.pop_front();
        }
    }

    /// Reads a new connection's Hello on its own thread.
    fn start(&mut self, s: TcpStream) {
        let setup = s
            .set_nonblocking(false)
            .and_then(|_| s.set_read_timeout(Some(HELLO_TIMEOUT)))
            .and_then(|_| s.set_write_timeout(Some(self.opts.io_timeout)))
            .and_then(|_| s.set_nodelay(true));
        let Ok(handle) = setup.and_then(|_| s.try_clone()) else {
            return;
        };
        if self.pending.len() >= self.max_pending() {
            if let Some(old) = self.pending.pop_front() {
                tracing::info!(
                    "tern-transfer: too many connections without a Hello: dropping the oldest"
                );
                let _ = old.stream.shutdown(Shutdown::Both);
            }
        }
        let id = self.next;
        self.next += 1;
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("tern-recv-hello".into())
            .spawn(move || {
                let mut s = s;
                let hello = read_hello(&mut s);
                let _ = tx.send((id, s, hello));
            });
        if spawned.is_ok() {
            self.pending.push_back(Pending {
                id,
                stream: handle,
                since: Instant::now(),
            });
        }
    }
}

impl Drop for Acceptor<'_> {
    fn drop(&mut self) {
        // Threads still reading a Hello end with their sockets.
        for p in self.pending.drain(..) {
            let _ = p.stream.shutdown(Shutdown::Both);
        }
    }
}
