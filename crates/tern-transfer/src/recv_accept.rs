//! The receiver's handshakes: accepting connections, checking Hellos, Welcome and Reject.

use std::io::{ErrorKind, IoSlice, Read};
use std::net::{TcpListener, TcpStream};
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

/// Waits for a connection whose Hello passes `accept`; rejects and drops the others.
pub(crate) fn accept_one(
    listener: &TcpListener,
    deadline: Instant,
    opts: &ReceiveOptions,
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
        let mut s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(Error::io("accepting a connection", e)),
        };
        let setup = s
            .set_nonblocking(false)
            .and_then(|_| s.set_read_timeout(Some(opts.io_timeout.min(Duration::from_secs(10)))))
            .and_then(|_| s.set_write_timeout(Some(opts.io_timeout)))
            .and_then(|_| s.set_nodelay(true));
        if setup.is_err() {
            continue;
        }
        let hello = match read_hello(&mut s) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("tern-transfer: refused a connection: {e}");
                continue;
            }
        };
        match accept(&hello) {
            Ok(()) => {
                let _ = s.set_read_timeout(Some(opts.io_timeout));
                return Ok((s, hello));
            }
            Err(msg) => {
                tracing::warn!("tern-transfer: refused a connection: {msg}");
                reject(&mut s, &msg);
            }
        }
    }
}
