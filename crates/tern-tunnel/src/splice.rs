//! Moving bytes both ways between a local socket and a TLS stream: the
//! hand-over from rustls to the record threads (`record`), and the counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Read buffer of the TLS side's socket during the handshake and hello
/// (rustls reads 4 KiB at a time otherwise); what it holds at the hand-over
/// goes to the record thread.
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

/// Carries a stream whose hello exchange is done with the agent's own
/// record threads (`record`): rustls's keys are taken over, and each
/// direction runs on a blocking thread until both ended, one failed, or
/// `kill` fires. `io` is the TLS side's socket with what its read buffer
/// still holds.
pub(crate) async fn take_over(
    local: tokio::net::UnixStream,
    io: crate::bounded::RecordBounded,
    conn: impl Into<rustls::Connection>,
    stats: &Stats,
    mut kill: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(u64, u64)> {
    use crate::record::{down, up, Cipher};
    use std::net::Shutdown;
    use std::sync::Arc;
    let mut conn: rustls::Connection = conn.into();
    // Plaintext rustls decrypted but nobody read yet goes out first.
    let mut plain = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut conn.reader(), &mut piece) {
            Ok(0) => break,
            Ok(n) => plain.extend_from_slice(&piece[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let io = io.into_inner()?;
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| std::io::Error::other(format!("cannot take over the tunnel's keys: {e}")))?;
    let tx = Cipher::new(secrets.tx.0, &secrets.tx.1)?;
    let rx = Cipher::new(secrets.rx.0, &secrets.rx.1)?;
    let early = io.buffer().to_vec();
    let tcp = io.into_inner().into_std()?;
    tcp.set_nonblocking(false)?;
    let mut local = local.into_std()?;
    local.set_nonblocking(false)?;
    std::io::Write::write_all(&mut local, &plain)?;
    let (tcp, local) = (Arc::new(tcp), Arc::new(local));
    // Either direction failing ends both: the other thread's blocked call
    // returns once its sockets are shut down.
    let stop = {
        let (tcp, local) = (tcp.clone(), local.clone());
        move || {
            let _ = tcp.shutdown(Shutdown::Both);
            let _ = local.shutdown(Shutdown::Both);
        }
    };
    stats.opened();
    let upward = tokio::task::spawn_blocking({
        let (tcp, local, stop) = (tcp.clone(), local.clone(), stop.clone());
        move || up(&local, &tcp, tx).inspect_err(|_| stop())
    });
    let downward = tokio::task::spawn_blocking({
        let (tcp, local, stop) = (tcp.clone(), local.clone(), stop.clone());
        move || down(&tcp, &local, rx, &early).inspect_err(|_| stop())
    });
    let both = async {
        let (u, d) = tokio::join!(upward, downward);
        let joined = |r: Result<std::io::Result<u64>, tokio::task::JoinError>| {
            r.map_err(std::io::Error::other).and_then(|x| x)
        };
        Ok::<_, std::io::Error>((joined(u)?, joined(d)?))
    };
    tokio::pin!(both);
    let ended = tokio::select! {
        r = &mut both => Some(r),
        _ = kill.wait_for(|k| *k) => None,
    };
    let r = match ended {
        Some(r) => r,
        None => {
            stop();
            let _ = both.await;
            Err(std::io::Error::other("the tunnel stream was aborted"))
        }
    };
    match &r {
        Ok((u, d)) => stats.closed(*u, *d),
        Err(_) => stats.closed(0, 0),
    }
    r
}
