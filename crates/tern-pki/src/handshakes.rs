//! A bound on connections still in their TLS handshake, for listeners
//! anyone on the network can reach (the controller's API, the migration
//! tunnel). At most `max` handshakes run at once; a newcomer beyond that
//! displaces the oldest, as libvirtd's `max_anonymous_clients`: a flood of
//! connections that never handshake only ever holds those slots, and keeps
//! losing them, while a real client's handshake (milliseconds) completes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Oldest first; dropping a sender tells that handshake to give up.
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// The handshakes of one listener.
#[derive(Debug, Clone)]
pub struct Handshakes {
    table: Arc<Mutex<Table>>,
    max: usize,
}

/// One connection's place among the handshakes; freed on drop.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Mutex<Table>>,
    id: u64,
    displaced: oneshot::Receiver<()>,
}

impl Handshakes {
    /// At most `max` (at least 1) handshakes at once.
    pub fn new(max: usize) -> Handshakes {
        Handshakes {
            table: Arc::default(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection, displacing the oldest handshake when
    /// `max` are running.
    pub fn admit(&self) -> Slot {
        let mut t = self.lock();
        while t.queue.len() >= self.max {
            if let Some((id, _cancel)) = t.queue.pop_front() {
                tracing::info!(
                    connection = id,
                    "too many connections in their TLS handshake: dropping the oldest"
                );
            }
        }
        let id = t.next;
        t.next += 1;
        let (tx, displaced) = oneshot::channel();
        t.queue.push_back((id, tx));
        Slot {
            table: self.table.clone(),
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
        t.queue.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_table_displaces_its_oldest_handshake() {
        let h = Handshakes::new(2);
        let a = h.admit();
        let b = h.admit();
        let c = h.admit();
        assert_eq!(h.len(), 2);
        // a was displaced: its handshake gives up at once.
        assert_eq!(a.run(std::future::pending::<()>()).await, None);
        assert_eq!(b.run(async { 7 }).await, Some(7));
        assert_eq!(h.len(), 1);
        drop(c);
        assert!(h.is_empty());
    }
}
