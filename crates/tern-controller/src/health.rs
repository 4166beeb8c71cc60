//! Host health as a pure state machine.
//!
//! ```text
//! Online --lease gone--> Lapsed --grace nearly over--> (probe) --no answer, grace over--> Down
//!   ^                      |                              |                                 |
//!   +------lease back------+<------------answers----------+                  re-register ---+
//! ```
//!
//! The grace counts from when the lease ran out, not from when the leader
//! noticed: etcd checks for expired leases every 500 ms and the leader
//! looks every tick, so counting from the notice declared hosts down
//! 0.5-1.6 s after their lease plus grace. The leader knows when a lease
//! runs out if it renewed it itself ([`LeaseEnds`]).
//!
//! The probe is made within the grace's last [`Timing::probe_lead_ms`], so
//! that a silent agent (whose probe waits out its whole timeout) is still
//! declared down when the grace ends, not a probe timeout later.
//!
//! `Down` only says the agent is gone. Whether the host's guests are gone
//! too is proven separately, from its storage leases ([`crate::fencing`]),
//! before any of them is restarted elsewhere.

use std::collections::HashMap;
use std::sync::Mutex;
use tern_api::cluster::HostStatus;

/// What the controller must do for one host on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing changes.
    Stay,
    /// Record this new status.
    Set(HostStatus),
    /// The grace is nearly over: probe the agent; if it does not answer,
    /// the host is down once the grace is over ([`down_at`]).
    Probe,
}

/// The times a decision depends on, in ms since the epoch or ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Now.
    pub now_ms: u64,
    /// How long a host's lease may be gone before it is declared down.
    pub grace_ms: u64,
    /// How long before the grace ends the probe is made: the probe's own
    /// timeout plus one tick, so that the tick that starts it may be late.
    pub probe_lead_ms: u64,
    /// When this host's lease ran out or runs out, as far as this
    /// controller knows (it renewed the lease at least once).
    pub lease_end_ms: Option<u64>,
    /// How late a lapse may be noticed: the store's own expiry check
    /// (etcd's every 500 ms) and the leader's ticks. A known end older
    /// than this is not the lease's real end: another controller renewed
    /// it since, and counting from it would skip the grace.
    pub notice_lag_max_ms: u64,
}

/// The next action for a host whose lease key is `alive` (or not).
pub fn step(status: HostStatus, alive: bool, t: Timing) -> Action {
    match (status, alive) {
        (HostStatus::Online, true) => Action::Stay,
        (HostStatus::Online, false) => Action::Set(HostStatus::Lapsed {
            since_ms: lapsed_since(t.lease_end_ms, t.now_ms, t.notice_lag_max_ms),
        }),
        (HostStatus::Lapsed { .. }, true) => Action::Set(HostStatus::Online),
        (HostStatus::Lapsed { since_ms }, false) if probe_due(since_ms, t) => Action::Probe,
        (HostStatus::Lapsed { .. }, false) => Action::Stay,
        // A down host comes back only by registering again, which writes
        // Online itself; a stray lease key does not revive it.
        (HostStatus::Down { .. }, _) => Action::Stay,
    }
}

/// When a lease whose key is gone lapsed: when it ran out, if that is
/// known, past, and no older than a lapse can be noticed late
/// (`lag_max_ms`); otherwise now (a lease renewed elsewhere since, or one
/// revoked before its end).
pub fn lapsed_since(lease_end_ms: Option<u64>, now_ms: u64, lag_max_ms: u64) -> u64 {
    match lease_end_ms {
        Some(end) if end <= now_ms && now_ms - end <= lag_max_ms => end,
        _ => now_ms,
    }
}

/// Whether the probe of a host lapsed since `since_ms` is due.
fn probe_due(since_ms: u64, t: Timing) -> bool {
    let wait = t.grace_ms.saturating_sub(t.probe_lead_ms);
    t.now_ms.saturating_sub(since_ms) >= wait
}

/// When a host lapsed since `since_ms`, whose probe went unanswered, is
/// declared down: when its grace is over.
pub fn down_at(since_ms: u64, grace_ms: u64) -> u64 {
    since_ms.saturating_add(grace_ms)
}

/// When each host's lease runs out, as far as this controller knows: it
/// notes every lease it grants or renews. Kept per host, so it holds at
/// most one entry per host the controller has seen.
#[derive(Debug, Default)]
pub struct LeaseEnds {
    ends: Mutex<HashMap<String, (i64, u64)>>,
}

impl LeaseEnds {
    /// `host`'s lease `lease` was granted or renewed with `ttl_ms` by a
    /// request sent at `sent_ms`. The store starts the TTL when it handles
    /// the request, later than `sent_ms`: the end noted is never late.
    pub fn renewed(&self, host: &str, lease: i64, sent_ms: u64, ttl_ms: u64) {
        let end = sent_ms.saturating_add(ttl_ms);
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        match ends.get_mut(host) {
            Some(e) => *e = (lease, end),
            None => {
                ends.insert(host.to_string(), (lease, end));
            }
        }
    }

    /// When `host`'s lease `lease` runs out, if this controller renewed
    /// that lease last.
    pub fn end_of(&self, host: &str, lease: i64) -> Option<u64> {
        let ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        ends.get(host).filter(|(l, _)| *l == lease).map(|(_, e)| *e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now_ms: u64) -> Timing {
        Timing {
            now_ms,
            grace_ms: 2000,
            probe_lead_ms: 1250,
            lease_end_ms: None,
            notice_lag_max_ms: 1500,
        }
    }

    #[test]
    fn lapse_grace_probe() {
        let on = HostStatus::Online;
        assert_eq!(step(on, true, at(0)), Action::Stay);
        assert_eq!(
            step(on, false, at(100)),
            Action::Set(HostStatus::Lapsed { since_ms: 100 })
        );
        let l = HostStatus::Lapsed { since_ms: 100 };
        assert_eq!(step(l, false, at(800)), Action::Stay);
        // The probe comes within the grace's last 1.25 s.
        assert_eq!(step(l, false, at(850)), Action::Probe);
        assert_eq!(step(l, true, at(850)), Action::Set(HostStatus::Online));
        assert_eq!(down_at(100, 2000), 2100);
        let d = HostStatus::Down { since_ms: 5 };
        assert_eq!(step(d, true, at(9999)), Action::Stay);
        assert_eq!(step(d, false, at(9999)), Action::Stay);
    }

    #[test]
    fn the_grace_counts_from_the_lease_end_when_it_is_known() {
        let seen_late = Timing {
            lease_end_ms: Some(1000),
            ..at(1700)
        };
        assert_eq!(
            step(HostStatus::Online, false, seen_late),
            Action::Set(HostStatus::Lapsed { since_ms: 1000 })
        );
        // An end still ahead (the key was revoked, or clocks disagree):
        // counted from now, never from the future.
        assert_eq!(lapsed_since(Some(5000), 1700, 1500), 1700);
        assert_eq!(lapsed_since(None, 1700, 1500), 1700);
        // An end long past: another controller renewed the lease since
        // this one last did; its end is unknown here, so the grace is
        // counted whole from now.
        assert_eq!(lapsed_since(Some(1000), 9000, 1500), 9000);
    }

    #[test]
    fn a_grace_shorter_than_the_probe_probes_at_once() {
        let t = Timing {
            grace_ms: 500,
            ..at(100)
        };
        assert_eq!(
            step(HostStatus::Lapsed { since_ms: 100 }, false, t),
            Action::Probe
        );
    }

    #[test]
    fn lease_ends_are_known_only_for_the_lease_renewed_here() {
        let e = LeaseEnds::default();
        e.renewed("h1", 7, 1000, 3000);
        assert_eq!(e.end_of("h1", 7), Some(4000));
        // A new registration's lease was not renewed here yet.
        assert_eq!(e.end_of("h1", 8), None);
        assert_eq!(e.end_of("h2", 7), None);
        e.renewed("h1", 8, 2000, 3000);
        assert_eq!(e.end_of("h1", 7), None);
        assert_eq!(e.end_of("h1", 8), Some(5000));
    }
}
