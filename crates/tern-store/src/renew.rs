//! Every lease's renewals on one etcd keep-alive stream.
//!
//! etcd's `LeaseKeepAlive` is a stream of requests, each naming its lease,
//! answered in order with that lease's new TTL. etcd-client's API opens one
//! stream per lease; at 5 000 hosts that was 5 000 HTTP/2 streams from the
//! controller, each with its buffers and its task, and as many goroutines
//! in the etcd leader. Here one stream carries them all: a renewal sends
//! its lease's id on the shared stream and waits for the answer with that
//! id. Renewals of the same lease that overlap share one request.
//!
//! A stream that breaks (its member died, or stopped leading and refused)
//! fails every renewal waiting on it; the store opens another, on the
//! member it is pinned to by then.

use crate::LeaseId;
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a renewal waits for its answer before the stream is given up.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Renewals waiting for their answer, by lease.
type Waiting = Mutex<HashMap<LeaseId, Vec<oneshot::Sender<bool>>>>;

/// One open keep-alive stream and the renewals waiting on it.
#[derive(Debug)]
pub struct Renewals {
    /// The sending half. etcd-client's keeper sends its own lease's id;
    /// each send here sets the id first (under this lock).
    keeper: tokio::sync::Mutex<LeaseKeeper>,
    waiting: Arc<Waiting>,
    open: Arc<AtomicBool>,
    /// The member the stream is on, as the store numbers them.
    pub member: usize,
}

/// What became of one renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// The lease lives for another TTL.
    Yes,
    /// etcd has no such lease (it expired or was revoked).
    Expired,
    /// The stream failed before the answer: renew on another.
    Broken,
}

/// Pure: what etcd's answer (a TTL; 0 or less for a lease it does not
/// have) means for a renewal.
pub fn renewed(ttl: i64) -> Renewed {
    if ttl > 0 {
        Renewed::Yes
    } else {
        Renewed::Expired
    }
}

impl Renewals {
    /// Takes over a stream opened (by its first renewal) on `member`, and
    /// starts reading its answers on the current Tokio runtime.
    pub fn start(keeper: LeaseKeeper, stream: LeaseKeepAliveStream, member: usize) -> Arc<Self> {
        let waiting: Arc<Waiting> = Arc::default();
        let open = Arc::new(AtomicBool::new(true));
        tokio::spawn(read_answers(stream, waiting.clone(), open.clone()));
        Arc::new(Renewals {
            keeper: tokio::sync::Mutex::new(keeper),
            waiting,
            open,
            member,
        })
    }

    /// Whether the stream still carries renewals.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Renews `lease` on this stream.
    pub async fn renew(&self, lease: LeaseId) -> Renewed {
        if !self.is_open() {
            return Renewed::Broken;
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let list = w.entry(lease).or_default();
            list.push(tx);
            list.len() == 1
        };
        if first {
            let mut k = self.keeper.lock().await;
            k.id = lease;
            if k.keep_alive().await.is_err() {
                self.close();
                return Renewed::Broken;
            }
        }
        match tokio::time::timeout(RENEW_TIMEOUT, rx).await {
            Ok(Ok(true)) => Renewed::Yes,
            Ok(Ok(false)) => Renewed::Expired,
            // No answer in time, or the stream ended: another is opened.
            _ => {
                self.close();
                Renewed::Broken
            }
        }
    }

    /// Marks the stream broken and fails whatever waits on it.
    fn close(&self) {
        self.open.store(false, Ordering::Relaxed);
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Hands each answer to the renewals of its lease, until the stream ends.
async fn read_answers(
    mut stream: LeaseKeepAliveStream,
    waiting: Arc<Waiting>,
    open: Arc<AtomicBool>,
) {
    loop {
        let answer = match stream.message().await {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => break,
        };
        let lives = renewed(answer.ttl()) == Renewed::Yes;
        let waiters = waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&answer.id())
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(lives);
        }
    }
    open.store(false, Ordering::Relaxed);
    waiting.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_of_zero_or_less_is_a_lease_etcd_no_longer_has() {
        assert_eq!(renewed(3), Renewed::Yes);
        assert_eq!(renewed(0), Renewed::Expired);
        assert_eq!(renewed(-1), Renewed::Expired);
    }
}
