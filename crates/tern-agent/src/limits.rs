//! libvirtd's processing controls: how many connections, how many of them
//! unauthenticated, and how many requests run at once.
//!
//! Admission: a connection that must still authenticate (TLS) is
//! *anonymous* until its handshake ends. When anonymous connections reach
//! `max_anonymous_clients`, or all connections reach `max_clients`, a new
//! one displaces the oldest anonymous connection instead of being refused:
//! a flood of connections that never handshake can then only ever hold the
//! anonymous slots, and keeps losing them, while a real client's handshake
//! (milliseconds) completes and moves it out of the anonymous pool. Only
//! when every slot is held by authenticated clients is a newcomer refused.
//!
//! Workers: `max_workers` requests run at once; `prio_workers` more are
//! kept for requests that stop things ([`tern_api::Request::is_priority`]),
//! so `destroy` and `domjobabort` are served when every worker is busy.

use crate::settings::Limits;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Connections open now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Still authenticating.
    pub anonymous: usize,
    /// Authenticated.
    pub authenticated: usize,
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Take it.
    Accept,
    /// Take it and drop the oldest anonymous connection.
    EvictOldestAnonymous,
    /// Close it.
    Refuse,
}

/// The admission policy (see the module documentation).
pub fn admit(c: Counts, anonymous: bool, l: &Limits) -> Admission {
    let full = c.anonymous + c.authenticated >= l.max_clients
        || (anonymous && c.anonymous >= l.max_anonymous_clients);
    match (full, c.anonymous > 0) {
        (false, _) => Admission::Accept,
        (true, true) => Admission::EvictOldestAnonymous,
        (true, false) => Admission::Refuse,
    }
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Oldest first; dropping a sender tells that handshake to give up.
    anonymous: VecDeque<(u64, oneshot::Sender<()>)>,
    authenticated: usize,
}

/// The connections of one server.
#[derive(Debug)]
pub struct Clients {
    limits: Limits,
    table: Mutex<Table>,
}

/// An anonymous connection's place; freed on drop.
#[derive(Debug)]
pub struct AnonymousSlot {
    clients: Arc<Clients>,
    id: u64,
}

/// An authenticated connection's place; freed on drop.
#[derive(Debug)]
pub struct ClientSlot {
    clients: Arc<Clients>,
}

impl Clients {
    /// An empty table.
    pub fn new(limits: Limits) -> Arc<Clients> {
        Arc::new(Clients {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic elsewhere cannot leave counters half-updated: recover.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts now.
    pub fn counts(&self) -> Counts {
        let t = self.lock();
        Counts {
            anonymous: t.anonymous.len(),
            authenticated: t.authenticated,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Makes room per [`admit`]; false if the newcomer must be refused.
    fn make_room(&self, t: &mut Table, anonymous: bool) -> bool {
        let c = Counts {
            anonymous: t.anonymous.len(),
            authenticated: t.authenticated,
        };
        match admit(c, anonymous, &self.limits) {
            Admission::Accept => true,
            Admission::EvictOldestAnonymous => {
                if let Some((id, _cancel)) = t.anonymous.pop_front() {
                    tracing::info!(
                        connection = id,
                        "connection limit reached: dropping the oldest unauthenticated connection"
                    );
                }
                true
            }
            Admission::Refuse => false,
        }
    }

    /// Admits a connection that must still authenticate. The receiver
    /// completes when the connection is displaced by a newer one.
    pub fn admit_anonymous(self: &Arc<Self>) -> Option<(AnonymousSlot, oneshot::Receiver<()>)> {
        let mut t = self.lock();
        if !self.make_room(&mut t, true) {
            return None;
        }
        let id = t.next;
        t.next += 1;
        let (tx, rx) = oneshot::channel();
        t.anonymous.push_back((id, tx));
        Some((
            AnonymousSlot {
                clients: self.clone(),
                id,
            },
            rx,
        ))
    }

    /// Admits a connection that is authenticated from the start (unix
    /// sockets, TCP with `--auth none`).
    pub fn admit_authenticated(self: &Arc<Self>) -> Option<ClientSlot> {
        let mut t = self.lock();
        if !self.make_room(&mut t, false) {
            return None;
        }
        t.authenticated += 1;
        Some(ClientSlot {
            clients: self.clone(),
        })
    }
}

impl AnonymousSlot {
    /// The handshake succeeded: the connection is authenticated now.
    pub fn promote(self) -> ClientSlot {
        let clients = self.clients.clone();
        {
            let mut t = clients.lock();
            t.anonymous.retain(|(id, _)| *id != self.id);
            t.authenticated += 1;
        }
        // The anonymous entry is gone already; skip Drop's removal.
        std::mem::forget(self);
        ClientSlot { clients }
    }
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        self.clients
            .lock()
            .anonymous
            .retain(|(id, _)| *id != self.id);
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = self.clients.lock();
        t.authenticated = t.authenticated.saturating_sub(1);
    }
}

/// The request workers.
#[derive(Debug)]
pub struct Workers {
    normal: Arc<Semaphore>,
    prio: Arc<Semaphore>,
    max: usize,
    prio_max: usize,
}

/// A worker held while a request runs.
#[derive(Debug)]
pub struct WorkerPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Workers {
    /// `max` ordinary and `prio_max` priority workers.
    pub fn new(max: usize, prio_max: usize) -> Workers {
        Workers {
            normal: Arc::new(Semaphore::new(max)),
            prio: Arc::new(Semaphore::new(prio_max)),
            max,
            prio_max,
        }
    }

    /// Waits for a worker: an ordinary one, or for a priority request
    /// whichever of an ordinary or a priority one frees first.
    pub async fn acquire(&self, priority: bool) -> WorkerPermit {
        if priority {
            if let Ok(p) = self.normal.clone().try_acquire_owned() {
                return WorkerPermit(p);
            }
            if self.prio_max > 0 {
                let p = tokio::select! {
                    p = self.normal.clone().acquire_owned() => p,
                    p = self.prio.clone().acquire_owned() => p,
                };
                // The semaphores are never closed.
                if let Ok(p) = p {
                    return WorkerPermit(p);
                }
            }
        }
        loop {
            if let Ok(p) = self.normal.clone().acquire_owned().await {
                return WorkerPermit(p);
            }
        }
    }

    /// (ordinary busy, ordinary max, priority busy, priority max).
    pub fn usage(&self) -> (usize, usize, usize, usize) {
        (
            self.max - self.normal.available_permits(),
            self.max,
            self.prio_max - self.prio.available_permits(),
            self.prio_max,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, anon: usize) -> Limits {
        Limits {
            max_clients: max,
            max_anonymous_clients: anon,
            ..Limits::default()
        }
    }

    #[test]
    fn admission_displaces_anonymous_connections_first() {
        let l = limits(4, 2);
        let c = |anonymous, authenticated| Counts {
            anonymous,
            authenticated,
        };
        assert_eq!(admit(c(0, 0), true, &l), Admission::Accept);
        assert_eq!(admit(c(1, 2), true, &l), Admission::Accept);
        assert_eq!(admit(c(2, 0), true, &l), Admission::EvictOldestAnonymous);
        assert_eq!(admit(c(2, 0), false, &l), Admission::Accept);
        assert_eq!(admit(c(2, 2), false, &l), Admission::EvictOldestAnonymous);
        assert_eq!(admit(c(0, 4), false, &l), Admission::Refuse);
        assert_eq!(admit(c(0, 4), true, &l), Admission::Refuse);
    }

    #[tokio::test]
    async fn a_flood_keeps_only_the_anonymous_slots() {
        let clients = Clients::new(limits(5, 2));
        let mut held = Vec::new();
        let mut displaced = 0;
        for _ in 0..10 {
            let (slot, rx) = clients.admit_anonymous().expect("anonymous admitted");
            held.push((slot, rx));
        }
        for (_, rx) in held.iter_mut() {
            if rx
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed)
            {
                displaced += 1;
            }
        }
        assert_eq!(displaced, 8);
        assert_eq!(clients.counts().anonymous, 2);
        // A real client still gets in, and its handshake promotes it.
        let (slot, _rx) = clients.admit_anonymous().unwrap();
        let authed = slot.promote();
        assert_eq!(clients.counts().authenticated, 1);
        drop(authed);
        drop(held);
        assert_eq!(clients.counts(), Counts::default());
    }

    #[tokio::test]
    async fn priority_requests_get_a_worker_when_all_are_busy() {
        let w = Workers::new(1, 1);
        let busy = w.acquire(false).await;
        let prio = w.acquire(true).await;
        assert_eq!(w.usage(), (1, 1, 1, 1));
        drop(prio);
        drop(busy);
        assert_eq!(w.usage(), (0, 1, 0, 1));
    }
}
