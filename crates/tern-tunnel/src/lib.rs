//! The migration tunnel of `--tunnelled`: each connection a QEMU opens to a
//! local unix socket of its agent is carried to the peer agent as its own
//! mutual-TLS stream, and there connected to the peer QEMU's local socket.
//!
//! The stream header and the message sequence are part of the
//! agent-to-agent protocol (`tern_migrate::protocol`, "Transports"). This
//! crate moves the bytes:
//!
//! - [`Outbound`] (source agent): listens on a unix socket; for every
//!   connection QEMU opens (the main migration channel, each multifd
//!   channel, each NBD connection) it dials the destination, sends a
//!   [`TunnelHello`](tern_migrate::protocol::TunnelHello), waits for the
//!   reply byte and carries the stream.
//! - [`Inbound`] (destination agent): a dedicated TLS listener for one
//!   migration; it checks the header and the client certificate, connects
//!   the stream to the local socket for its kind, and carries it.
//!
//! Once a stream's hello is answered, the agent takes rustls's traffic keys
//! and seals and opens the TLS 1.3 records itself on two blocking threads
//! (`record`): no copy through rustls's buffers, no task wake-ups per
//! buffer (on a host with kernel TLS the kernel could take the same keys).
//! The peer still sees standard TLS 1.3. TCP_NODELAY is set on
//! the TLS sockets (QEMU's return path and NBD replies are small and
//! latency-bound), and TCP keepalive ends streams whose peer vanished.
//! Dropping a handle stops accepting; streams in flight end when either
//! QEMU closes (post-copy keeps its streams after the destination resumed),
//! or at once with `abort()`.

mod bounded;
mod inbound;
mod outbound;
mod record;
mod splice;

pub use inbound::{Inbound, Routes};
pub use outbound::{Outbound, Remote};
#[doc(hidden)]
pub use record::fuzz_read_records;
pub use splice::{Stats, SPLICE_BUFFER};

use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// Tunnel failures.
#[derive(Debug, Error)]
pub enum TunnelError {
    /// A listening socket could not be opened.
    #[error("cannot listen for tunnel connections on {what}: {source}")]
    Listen {
        /// The address or path.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The unix socket path is longer than the kernel accepts.
    #[error("the tunnel socket path {0} is too long for a unix socket (108 bytes); use a shorter --state-dir")]
    PathTooLong(PathBuf),
    /// The destination's name cannot be checked against its certificate.
    #[error("{0}")]
    Name(#[from] tern_pki::TlsError),
    /// No port of the range was free.
    #[error("no free port for the tunnel in {first}-{last}; widen the migration port range or free a port")]
    NoPort {
        /// First port tried.
        first: u16,
        /// Last port tried.
        last: u16,
    },
}

/// Something worth telling the operator about a stream (the agent records
/// it in the migration job's events).
pub type EventSink = Arc<dyn Fn(String) + Send + Sync>;

/// Decides whether a client certificate's common name may open streams.
pub type Gate = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// Sets TCP keepalive so a stream to a host that vanished ends in about a
/// minute instead of never.
fn keepalive(s: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let set = |level, name, v: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with a c_int value of the
        // size we pass.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 15);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6);
}

/// The TLS side's socket behind a large read buffer: rustls reads records
/// 4 KiB at a time, which without it costs four system calls per 16 KiB
/// record on the receiving agent.
fn read_buffered(tcp: tokio::net::TcpStream) -> bounded::RecordBounded {
    bounded::RecordBounded::new(tokio::io::BufReader::with_capacity(
        splice::SPLICE_BUFFER,
        tcp,
    ))
}

/// Larger socket buffers: bulk streams on fast links fill the defaults.
fn big_buffers(s: &impl std::os::fd::AsRawFd) {
    let fd = s.as_raw_fd();
    let v: libc::c_int = 4 << 20;
    for name in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: as in `keepalive`.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(test)]
mod tests;
