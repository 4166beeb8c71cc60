//! Host-down policy as pure functions: what becomes of each server of a
//! dead host, when a queued rescue may start, and how a failed rescue is
//! retried. The I/O around them is in [`crate::evacuate`] and
//! [`crate::jobs`].

use std::time::Duration;
use tern_api::cluster::HostStatus;

/// Where the destination of a server's interrupted migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestState {
    /// It runs the guest there.
    Running,
    /// It holds a paused incoming copy that never ran; `complete` once its
    /// QEMU loaded the whole guest (the source's QEMU had sent everything).
    Prepared {
        /// The incoming migration completed: the copy can resume.
        complete: bool,
    },
    /// It has nothing.
    Absent,
    /// It does not answer.
    Unreachable,
}

/// What the leader knows about one server of a dead host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFacts {
    /// The host's auto-migrate-on-host-down policy.
    pub policy: bool,
    /// Every disk is in a shared pool.
    pub all_shared: bool,
    /// A rescue job of this death exists already.
    pub rescue_exists: bool,
    /// A migration job of the server has not ended yet.
    pub open_job: bool,
    /// Its last migration was interrupted: where its destination stands.
    pub dest: Option<DestState>,
    /// The dead host is proven fenced (its guests are dead).
    pub fenced: bool,
}

/// What becomes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Already decided (its rescue job exists).
    Done,
    /// Not yet: its migration job must end first.
    Wait(&'static str),
    /// It runs on its interrupted migration's destination: it lives there.
    Adopt,
    /// The destination holds the whole guest, paused, and the source is
    /// proven dead: tell the destination to resume it (then adopt it).
    ResumeAtDest,
    /// The destination holds a partial copy and the source is proven dead:
    /// tell the destination to discard it (then rescue from the disks).
    DiscardAtDest,
    /// Restart it elsewhere once the host is proven fenced.
    Rescue,
    /// Its host is down and it stays there, not running.
    Unknown(&'static str),
    /// It cannot run again.
    Lost(&'static str),
}

/// The decision for one server of a dead host.
pub fn decide(f: &ServerFacts) -> Decision {
    if f.rescue_exists {
        return Decision::Done;
    }
    if f.open_job {
        return Decision::Wait("its migration job has not ended");
    }
    match f.dest {
        Some(DestState::Running) => return Decision::Adopt,
        // Before the proof the source's QEMU may still run (or still be
        // sending): neither copy may be touched.
        Some(DestState::Prepared { .. }) if !f.fenced => {
            return Decision::Wait(
                "the destination of its interrupted migration holds a paused copy; settled once the host is proven fenced",
            )
        }
        Some(DestState::Prepared { complete: true }) => return Decision::ResumeAtDest,
        Some(DestState::Prepared { complete: false }) => return Decision::DiscardAtDest,
        Some(DestState::Unreachable) => {
            return Decision::Lost(
                "its host died during a migration whose destination does not answer",
            )
        }
        Some(DestState::Absent) | None => {}
    }
    if !f.policy {
        return Decision::Unknown("its host is down and auto-migrate-on-host-down is off");
    }
    if !f.all_shared {
        return Decision::Lost("its host died with this server's local disks");
    }
    Decision::Rescue
}

/// What a queued rescue does on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The host's fencing is proven: it may start.
    Go,
    /// Wait for the proof.
    Wait,
    /// The host came back unfenced: its guests still run there.
    Cancel,
}

/// The gate of a rescue whose source host is in `status`, with the proof
/// of the death it rescues from found (`proven`) or not. A host that came
/// back after it was proven fenced runs none of those guests any more (its
/// agent starts none after fencing), so the rescue still goes ahead.
pub fn gate(status: HostStatus, proven: bool) -> Gate {
    match (status, proven) {
        (_, true) => Gate::Go,
        (HostStatus::Down { .. } | HostStatus::Lapsed { .. }, false) => Gate::Wait,
        (HostStatus::Online, false) => Gate::Cancel,
    }
}

/// Rescue attempts before the server is given up as unknown.
pub const MAX_ATTEMPTS: u32 = 5;

/// The wait before retry number `attempts` (1, 2, 4, 8 s), or `None` when
/// the rescue has failed too often.
pub fn backoff(attempts: u32) -> Option<Duration> {
    (attempts < MAX_ATTEMPTS).then(|| Duration::from_secs(1 << attempts.saturating_sub(1).min(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ServerFacts {
        ServerFacts {
            policy: true,
            all_shared: true,
            rescue_exists: false,
            open_job: false,
            dest: None,
            fenced: false,
        }
    }

    #[test]
    fn each_server_of_a_dead_host_gets_one_fate() {
        assert_eq!(decide(&facts()), Decision::Rescue);
        let f = |g: fn(&mut ServerFacts)| {
            let mut x = facts();
            g(&mut x);
            decide(&x)
        };
        assert_eq!(f(|x| x.rescue_exists = true), Decision::Done);
        assert!(matches!(f(|x| x.open_job = true), Decision::Wait(_)));
        assert_eq!(f(|x| x.dest = Some(DestState::Running)), Decision::Adopt);
        let paused = |complete| Some(DestState::Prepared { complete });
        assert!(matches!(
            f(|x| x.dest = Some(DestState::Prepared { complete: true })),
            Decision::Wait(_)
        ));
        assert!(matches!(
            f(|x| x.dest = Some(DestState::Prepared { complete: false })),
            Decision::Wait(_)
        ));
        let fenced = |complete| {
            let mut x = facts();
            x.dest = paused(complete);
            x.fenced = true;
            decide(&x)
        };
        assert_eq!(fenced(true), Decision::ResumeAtDest);
        assert_eq!(fenced(false), Decision::DiscardAtDest);
        // A running job still owns the server, proof or not.
        let mut x = facts();
        x.dest = paused(true);
        x.fenced = true;
        x.open_job = true;
        assert!(matches!(decide(&x), Decision::Wait(_)));
        assert!(matches!(
            f(|x| x.dest = Some(DestState::Unreachable)),
            Decision::Lost(_)
        ));
        assert_eq!(f(|x| x.dest = Some(DestState::Absent)), Decision::Rescue);
        assert!(matches!(f(|x| x.policy = false), Decision::Unknown(_)));
        assert!(matches!(f(|x| x.all_shared = false), Decision::Lost(_)));
    }

    #[test]
    fn rescues_start_only_after_the_proof_and_cancel_when_the_host_returns() {
        let down = HostStatus::Down { since_ms: 1 };
        assert_eq!(gate(down, true), Gate::Go);
        assert_eq!(gate(down, false), Gate::Wait);
        assert_eq!(gate(HostStatus::Lapsed { since_ms: 1 }, false), Gate::Wait);
        assert_eq!(gate(HostStatus::Online, false), Gate::Cancel);
        assert_eq!(gate(HostStatus::Online, true), Gate::Go);
    }

    #[test]
    fn retries_back_off_then_stop() {
        let s = |n| backoff(n).map(|d| d.as_secs());
        assert_eq!(
            (1..=5).map(s).collect::<Vec<_>>(),
            vec![Some(1), Some(2), Some(4), Some(8), None]
        );
    }
}
