//! Host health as a pure state machine.
//!
//! ```text
//! Online --lease gone--> Lapsed --grace over--> (probe) --no answer--> Down
//!   ^                      |                       |                     |
//!   +------lease back------+<------answers---------+      re-register ---+
//! ```
//!
//! `Down` only says the agent is gone. Whether the host's guests are gone
//! too is proven separately, from its storage leases ([`crate::fencing`]),
//! before any of them is restarted elsewhere.

use tern_api::cluster::HostStatus;

/// What the controller must do for one host on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing changes.
    Stay,
    /// Record this new status.
    Set(HostStatus),
    /// Grace is over: probe the agent; if it does not answer, it is down.
    Probe,
}

/// The next action for a host whose lease key is `alive` (or not) at `now_ms`.
pub fn step(status: HostStatus, alive: bool, now_ms: u64, grace_ms: u64) -> Action {
    match (status, alive) {
        (HostStatus::Online, true) => Action::Stay,
        (HostStatus::Online, false) => Action::Set(HostStatus::Lapsed { since_ms: now_ms }),
        (HostStatus::Lapsed { .. }, true) => Action::Set(HostStatus::Online),
        (HostStatus::Lapsed { since_ms }, false) if now_ms.saturating_sub(since_ms) >= grace_ms => {
            Action::Probe
        }
        (HostStatus::Lapsed { .. }, false) => Action::Stay,
        // A down host comes back only by registering again, which writes
        // Online itself; a stray lease key does not revive it.
        (HostStatus::Down { .. }, _) => Action::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapse_grace_probe() {
        let on = HostStatus::Online;
        assert_eq!(step(on, true, 0, 2000), Action::Stay);
        assert_eq!(
            step(on, false, 100, 2000),
            Action::Set(HostStatus::Lapsed { since_ms: 100 })
        );
        let l = HostStatus::Lapsed { since_ms: 100 };
        assert_eq!(step(l, false, 1000, 2000), Action::Stay);
        assert_eq!(step(l, false, 2100, 2000), Action::Probe);
        assert_eq!(step(l, true, 2100, 2000), Action::Set(HostStatus::Online));
        let d = HostStatus::Down { since_ms: 5 };
        assert_eq!(step(d, true, 9999, 2000), Action::Stay);
        assert_eq!(step(d, false, 9999, 2000), Action::Stay);
    }
}
