//! Moving bytes both ways between a local socket and a TLS stream.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes moved per read. Large, so the TLS layer seals full 16 KiB records
/// and the loop runs rarely; small enough to stay in cache.
pub const SPLICE_BUFFER: usize = 256 << 10;

/// Counters of one tunnel endpoint (all its streams).
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams opened.
    pub streams: AtomicU64,
    /// Streams open now.
    pub open: AtomicU64,
    /// Bytes from the local socket to the peer, in finished streams.
    pub to_peer: AtomicU64,
    /// Bytes from the peer to the local socket, in finished streams.
    pub from_peer: AtomicU64,
}

impl Stats {
    fn opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(&self, to_peer: u64, from_peer: u64) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.to_peer.fetch_add(to_peer, Ordering::Relaxed);
        self.from_peer.fetch_add(from_peer, Ordering::Relaxed);
    }

    /// (streams opened, bytes to the peer, bytes from the peer).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.streams.load(Ordering::Relaxed),
            self.to_peer.load(Ordering::Relaxed),
            self.from_peer.load(Ordering::Relaxed),
        )
    }
}

/// Copies `local` to `peer` and back until both directions ended (or one
/// failed); returns (bytes to the peer, bytes from the peer). When one side
/// ends its writing, the other side's write half is shut down, so QEMU's
/// end-of-stream crosses the tunnel.
pub async fn splice<L, P>(local: &mut L, peer: &mut P, stats: &Stats) -> std::io::Result<(u64, u64)>
where
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
    P: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    stats.opened();
    let r =
        tokio::io::copy_bidirectional_with_sizes(local, peer, SPLICE_BUFFER, SPLICE_BUFFER).await;
    match &r {
        Ok((up, down)) => stats.closed(*up, *down),
        Err(_) => stats.closed(0, 0),
    }
    r
}
