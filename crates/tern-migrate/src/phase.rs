//! The migration phases, libvirt's v3 protocol, as an explicit state machine.
//!
//! ```text
//!   source                         destination
//!   Begin    ── domain, flags ──▶  Prepare  (define, start QEMU -incoming defer)
//!            ◀── incoming URI ───
//!   Perform  (QEMU streams memory to QEMU; policy watches iterations)
//!            ── success? ───────▶  Finish   (resume or kill the incoming QEMU)
//!            ◀── resumed? ───────
//!   Confirm  (stop + clean the source, or resume it on failure)
//! ```
//!
//! Every transition that is not listed in [`Phase::next`] is an error: a
//! Finish that arrives before a Prepare, a Confirm after a Confirm, and so
//! on. The rule of safety is encoded in which phase may resume which side:
//! the destination resumes only in Finish after the source reported that
//! QEMU completed (so the source is stopped), and the source resumes only in
//! Confirm after the destination reported that it did not resume.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Which side of a migration a state machine belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The host the guest leaves.
    Source,
    /// The host the guest moves to.
    Destination,
}

/// A phase of one migration, as seen from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing has happened yet.
    Idle,
    /// Source: checks, description of the domain for the destination.
    Begin,
    /// Destination: domain defined, QEMU started paused, waiting for memory.
    Prepare,
    /// Source: QEMU is sending memory.
    Perform,
    /// Destination: decides to resume (success) or discard (failure).
    Finish,
    /// Source: cleans up (success) or resumes the guest (failure).
    Confirm,
    /// The guest runs on the destination; the source is clean.
    Completed,
    /// The guest runs on the source; the destination is clean.
    Failed,
    /// Like `Failed`, on an operator's request.
    Cancelled,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Phase::Idle => "idle",
            Phase::Begin => "begin",
            Phase::Prepare => "prepare",
            Phase::Perform => "perform",
            Phase::Finish => "finish",
            Phase::Confirm => "confirm",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        };
        f.write_str(s)
    }
}

/// An out-of-order phase transition.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("migration {role:?} cannot go from phase {from} to {to}; the peers are out of step")]
pub struct PhaseError {
    /// Side.
    pub role: Role,
    /// Current phase.
    pub from: Phase,
    /// Requested phase.
    pub to: Phase,
}

impl Phase {
    /// Whether the migration is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }

    /// Checks a transition for a side; returns the new phase or an error.
    pub fn next(self, role: Role, to: Phase) -> Result<Phase, PhaseError> {
        use Phase::*;
        let ok = match role {
            Role::Source => matches!(
                (self, to),
                (Idle, Begin)
                    | (Begin, Perform)
                    | (Perform, Confirm)
                    | (Confirm, Completed)
                    | (Confirm, Failed)
                    | (Confirm, Cancelled)
                    // Failing before QEMU was told to migrate needs no confirm.
                    | (Begin, Failed)
                    | (Begin, Cancelled)
            ),
            Role::Destination => matches!(
                (self, to),
                (Idle, Prepare)
                    | (Prepare, Finish)
                    | (Finish, Completed)
                    | (Finish, Failed)
                    | (Finish, Cancelled)
                    | (Prepare, Failed)
            ),
        };
        if ok {
            Ok(to)
        } else {
            Err(PhaseError {
                role,
                from: self,
                to,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_walks_begin_perform_confirm() {
        let mut p = Phase::Idle;
        for to in [
            Phase::Begin,
            Phase::Perform,
            Phase::Confirm,
            Phase::Completed,
        ] {
            p = p.next(Role::Source, to).unwrap();
        }
        assert!(p.is_terminal());
    }

    #[test]
    fn destination_walks_prepare_finish() {
        let p = Phase::Idle
            .next(Role::Destination, Phase::Prepare)
            .and_then(|p| p.next(Role::Destination, Phase::Finish))
            .and_then(|p| p.next(Role::Destination, Phase::Failed))
            .unwrap();
        assert_eq!(p, Phase::Failed);
    }

    #[test]
    fn out_of_order_is_refused() {
        assert!(Phase::Idle.next(Role::Destination, Phase::Finish).is_err());
        assert!(Phase::Idle.next(Role::Source, Phase::Perform).is_err());
        assert!(Phase::Completed.next(Role::Source, Phase::Confirm).is_err());
        assert!(Phase::Begin.next(Role::Source, Phase::Prepare).is_err());
        let e = Phase::Prepare
            .next(Role::Destination, Phase::Confirm)
            .unwrap_err();
        assert!(e.to_string().contains("prepare"));
    }
}
