//! A bound on connections still in their TLS handshake, for listeners
//! anyone on the network can reach (the controller's API, the migration
//! tunnel). At most `max` handshakes run at once, as libvirtd's
//! `max_anonymous_clients`. A newcomer beyond that displaces the oldest
//! connection that has said nothing for [`SILENT_GRACE`] ([`Slot::hello`]): a flood of
//! connections that never handshake only ever holds those slots, and keeps
//! losing them. A connection whose client has begun its handshake keeps
//! its slot for [`DISPLACE_AFTER`]; until one finishes or runs out of
//! time, the newcomer waits (and the listener accepts nothing more, so
//! others wait in the kernel's backlog).
//!
//! Displacing the oldest at once, talking or not, was a livelock when real
//! clients came faster than the CPU finished handshakes: 5 000 agents
//! reconnecting to a busy controller displaced 38 000 handshakes in 90 s,
//! nearly every one before it finished, and a third of the agents got in.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// How long a handshake keeps its slot against newcomers. A real client's
/// handshake takes milliseconds, and a few hundred on a saturated host; a
/// connection still silent after this is what the bound is for.
pub const DISPLACE_AFTER: Duration = Duration::from_secs(1);

/// How long a new connection may say nothing before a newcomer may take
/// its slot. A real client sends its hello as soon as it is connected; the
/// grace covers the moment before its connection's task has looked.
pub const SILENT_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Oldest first; dropping an entry tells that handshake to give up.
    queue: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    admitted: Instant,
    /// The client has sent its first bytes.
    talking: bool,
    _cancel: oneshot::Sender<()>,
}

/// The handshakes of one listener.
#[derive(Debug, Clone)]
pub struct Handshakes {
    table: Arc<Mutex<Table>>,
    freed: Arc<Notify>,
    max: usize,
}

/// One connection's place among the handshakes; freed on drop.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Mutex<Table>>,
    freed: Arc<Notify>,
    id: u64,
    displaced: oneshot::Receiver<()>,
}

/// What the table does with a newcomer: the policy, apart from the
/// waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// A slot is free.
    Free,
    /// Displace the handshake at this place in the queue.
    Displace(usize),
    /// None may be displaced yet (the silent ones are within their
    /// grace, the talking ones within their time): wait this long at most.
    Wait(Duration),
}

/// `running` lists each handshake, oldest first, as (its age, whether its
/// client is talking).
fn room(running: &[(Duration, bool)], max: usize, displace_after: Duration) -> Room {
    if running.len() < max {
        return Room::Free;
    }
    let silent_too_long = running
        .iter()
        .position(|(age, talking)| !talking && *age >= SILENT_GRACE);
    if let Some(i) = silent_too_long {
        return Room::Displace(i);
    }
    let oldest = running.first().map(|(age, _)| *age).unwrap_or_default();
    if oldest >= displace_after {
        return Room::Displace(0);
    }
    // The first moment one of the above may hold.
    let silent_due = running
        .iter()
        .filter(|(_, talking)| !talking)
        .map(|(age, _)| SILENT_GRACE - *age);
    let due = silent_due.fold(displace_after - oldest, Duration::min);
    Room::Wait(due)
}

impl Handshakes {
    /// At most `max` (at least 1) handshakes at once.
    pub fn new(max: usize) -> Handshakes {
        Handshakes {
            table: Arc::default(),
            freed: Arc::default(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection: into a free slot, in place of the oldest
    /// silent one, or in place of the oldest once that one has had
    /// [`DISPLACE_AFTER`], waiting for one of these.
    pub async fn admit(&self) -> Slot {
        let mut waited = false;
        loop {
            let wait = {
                let mut t = self.lock();
                let running: Vec<(Duration, bool)> = t
                    .queue
                    .iter()
                    .map(|e| (e.admitted.elapsed(), e.talking))
                    .collect();
                match room(&running, self.max, DISPLACE_AFTER) {
                    Room::Free => return self.push(&mut t),
                    Room::Displace(i) => {
                        if let Some(e) = t.queue.remove(i) {
                            tracing::info!(
                                connection = e.id,
                                talking = e.talking,
                                "too many connections in their TLS handshake: dropping the oldest"
                            );
                        }
                        continue;
                    }
                    Room::Wait(d) => d,
                }
            };
            if !waited {
                waited = true;
                tracing::debug!("too many connections in their TLS handshake: waiting");
            }
            // A slot freed wakes this at once; otherwise the oldest's time
            // is up after `wait`.
            let _ = tokio::time::timeout(wait, self.freed.notified()).await;
        }
    }

    fn push(&self, t: &mut Table) -> Slot {
        let id = t.next;
        t.next += 1;
        let (tx, displaced) = oneshot::channel();
        t.queue.push_back(Entry {
            id,
            admitted: Instant::now(),
            talking: false,
            _cancel: tx,
        });
        Slot {
            table: self.table.clone(),
            freed: self.freed.clone(),
            id,
            displaced,
        }
    }

    /// Handshakes running now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Slot {
    /// Waits, at most `limit`, for the client's first bytes, and from then
    /// on keeps this slot against newcomers for [`DISPLACE_AFTER`]. False
    /// when the connection was displaced while silent, stayed silent, or
    /// failed.
    pub async fn hello(&mut self, tcp: &tokio::net::TcpStream, limit: Duration) -> bool {
        // `readable()` answers at once on a new socket (readiness is
        // assumed until a read says otherwise); a peek waits for a byte.
        let mut first = [0u8; 1];
        tokio::select! {
            r = tokio::time::timeout(limit, tcp.peek(&mut first)) => {
                if !matches!(r, Ok(Ok(_))) {
                    return false;
                }
            }
            _ = &mut self.displaced => return false,
        }
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match t.queue.iter_mut().find(|e| e.id == self.id) {
            Some(e) => {
                e.talking = true;
                true
            }
            // Displaced just as it spoke.
            None => false,
        }
    }

    /// Runs the handshake `f` unless this connection is displaced first
    /// (`None`); either way the slot is freed.
    pub async fn run<T>(mut self, f: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            r = f => Some(r),
            _ = &mut self.displaced => None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.queue.retain(|e| e.id != self.id);
        drop(t);
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_table_displaces_the_silent_first_then_only_a_talker_out_of_time() {
        assert_eq!(room(&[(ms(5), true)], 2, S), Room::Free);
        // The oldest one silent past its grace goes ...
        assert_eq!(
            room(&[(ms(900), true), (ms(250), false), (ms(210), false)], 3, S),
            Room::Displace(1)
        );
        // ... but not one that has just connected: wait for its grace.
        assert_eq!(
            room(&[(ms(900), true), (ms(50), false)], 2, S),
            Room::Wait(ms(100))
        );
        // All talking: the oldest goes once it has had its time ...
        assert_eq!(room(&[(S, true), (ms(10), true)], 2, S), Room::Displace(0));
        // ... and until then the newcomer waits.
        assert_eq!(
            room(&[(ms(300), true), (ms(10), true)], 2, S),
            Room::Wait(ms(700))
        );
    }

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap());
        let (c, s) = tokio::join!(client, l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn a_silent_connection_is_displaced_at_once_and_a_talking_one_is_not() {
        use tokio::io::AsyncWriteExt;
        let h = Handshakes::new(2);
        let (mut client_a, server_a) = pair().await;
        let (_client_b, _server_b) = pair().await;
        let mut a = h.admit().await;
        let b = h.admit().await;
        // a is silent, so far.
        assert!(!a.hello(&server_a, ms(50)).await);
        client_a.write_all(b"hello").await.unwrap();
        assert!(a.hello(&server_a, S).await);
        // b never spoke: the newcomer takes its place after b's grace,
        // without waiting for a's time to be up.
        let t0 = Instant::now();
        let c = h.admit().await;
        assert!(t0.elapsed() < S);
        assert_eq!(b.run(std::future::pending::<()>()).await, None);
        assert_eq!(h.len(), 2);
        // a, talking, finishes its handshake.
        assert_eq!(a.run(async { 7 }).await, Some(7));
        drop(c);
        assert!(h.is_empty());
    }

    #[tokio::test]
    async fn a_newcomer_waits_for_a_talking_handshake_that_finishes() {
        use tokio::io::AsyncWriteExt;
        let h = Handshakes::new(1);
        let (mut client, server) = pair().await;
        let mut a = h.admit().await;
        client.write_all(b"hello").await.unwrap();
        assert!(a.hello(&server, S).await);
        let t0 = Instant::now();
        let h2 = h.clone();
        let newcomer = tokio::spawn(async move { h2.admit().await });
        tokio::time::sleep(ms(100)).await;
        assert_eq!(a.run(async { 1 }).await, Some(1));
        let b = newcomer.await.unwrap();
        assert!(t0.elapsed() < S);
        assert_eq!(h.len(), 1);
        drop(b);
        assert!(h.is_empty());
    }
}
