//! Moving a screened connection's bytes both ways between its TCP socket
//! and QEMU's unix socket with splice(2): the kernel moves pages through a
//! pipe, nothing is copied into the agent.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes asked of one splice call (and the pipe's size, if the kernel
/// allows it).
const CHUNK: usize = 1 << 20;

/// One relayed connection's sockets: shut down to end it from outside.
#[derive(Debug, Clone)]
pub struct Ends {
    tcp: Arc<TcpStream>,
    unix: Arc<UnixStream>,
}

impl Ends {
    /// Ends both directions now: blocked splices return.
    pub fn stop(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
        let _ = self.unix.shutdown(Shutdown::Both);
    }
}

/// Starts relaying `tcp` and `unix` (both made blocking) on two threads;
/// `to_qemu` and `from_qemu` count the bytes moved. Returns the handle that
/// stops both.
pub fn relay(
    tcp: TcpStream,
    unix: UnixStream,
    to_qemu: Arc<AtomicU64>,
    from_qemu: Arc<AtomicU64>,
) -> io::Result<Ends> {
    tcp.set_nonblocking(false)?;
    unix.set_nonblocking(false)?;
    let ends = Ends {
        tcp: Arc::new(tcp),
        unix: Arc::new(unix),
    };
    let spawn = |from: RawFd, to: RawFd, count: Arc<AtomicU64>, close: Box<dyn Fn() + Send>| {
        let keep = ends.clone();
        std::thread::Builder::new()
            .name("tern-guard".into())
            .spawn(move || {
                match pump(from, to, &count) {
                    Ok(()) => close(),
                    // Either direction failing ends both.
                    Err(_) => keep.stop(),
                }
                drop(keep);
            })
            .map(|_| ())
    };
    let (t, u) = (ends.tcp.clone(), ends.unix.clone());
    spawn(
        ends.tcp.as_raw_fd(),
        ends.unix.as_raw_fd(),
        to_qemu,
        Box::new(move || {
            let _ = u.shutdown(Shutdown::Write);
        }),
    )?;
    spawn(
        ends.unix.as_raw_fd(),
        ends.tcp.as_raw_fd(),
        from_qemu,
        Box::new(move || {
            let _ = t.shutdown(Shutdown::Write);
        }),
    )?;
    Ok(ends)
}

/// A pipe, enlarged to [`CHUNK`] where the kernel lets us.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe we own; failure only keeps the default.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    Ok((r, w))
}

/// One splice call, retried on EINTR.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors stay open for the call (their owners
        // outlive the pump); null offsets mean "current position".
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Moves everything from `from` to `to` until `from` ends.
fn pump(from: RawFd, to: RawFd, count: &AtomicU64) -> io::Result<()> {
    let (r, w) = pipe()?;
    loop {
        let n = splice(from, w.as_raw_fd(), CHUNK)?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let m = splice(r.as_raw_fd(), to, left)?;
            if m == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            left -= m;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
