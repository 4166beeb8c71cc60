//! What to do with a migration whose driver vanished: the agent restarted
//! after `kill -9`, the managed `tern` was killed, or the link to the peer
//! broke before Finish or Confirm. Pure functions of what the agent
//! recorded, what QEMU says and what the peer says, so every row of the
//! table is a unit test.
//!
//! The rule they keep (../shared/DESIGN.md): exactly one QEMU runs the
//! guest. The source resumes only when it can prove the destination never
//! ran it: its own QEMU never completed the migration (pre-copy cannot
//! hand over a guest unfinished), or the destination says it discarded its
//! copy. Once the destination ran the guest (`cont` succeeded, or
//! post-copy started), the destination is the copy, whatever fails next.
//! When neither can be proven (the peer is unreachable and QEMU completed),
//! the guest stays paused and the agent keeps asking.

use crate::phase::Phase;
use serde::{Deserialize, Serialize};
use tern_qemu::{MigrationStatus, RunState};

/// What an agent found of its QEMU for a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuSeen {
    /// The process is gone.
    Gone,
    /// QEMU answers on QMP.
    Alive {
        /// Its run state.
        run: RunState,
        /// Its migration status.
        migration: MigrationStatus,
    },
}

/// One side's answer to "where is migration X?" (`migrate-query`), as the
/// other side uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum PeerView {
    /// This side never heard of the migration, or kept nothing of it.
    Unknown,
    /// Source: QEMU is still sending (pre-copy).
    Sending,
    /// Source: QEMU sent everything and is paused, awaiting the verdict.
    Sent,
    /// Destination: a paused incoming copy that never ran; `complete` once
    /// it loaded the whole guest.
    Prepared {
        /// The incoming QEMU loaded everything.
        complete: bool,
    },
    /// This side runs the guest (or holds the only copy): the destination
    /// after `cont` or in post-copy, the source after a rollback.
    Owns,
    /// This side's copy is gone and never ran.
    Discarded,
}

/// What the source does with a migration it must settle alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAction {
    /// Ask the destination first.
    AskPeer,
    /// The destination never got (or discarded) the guest: cancel what is
    /// left of QEMU's migration and run the guest here.
    Resume,
    /// Nothing to change here (the guest runs, or QEMU is gone and the
    /// destination has nothing); the job ends failed.
    EndFailed,
    /// The destination runs the guest: stop this copy; the job completed.
    StopHere,
    /// The destination holds the whole guest, paused, and never ran it:
    /// tell it to resume, then stop this copy.
    FinishOnDestination,
    /// Post-copy: the destination runs the guest and pulls pages from this
    /// QEMU; keep serving until it completes.
    ServePostcopy,
    /// Post-copy stopped by a broken link: recover it when the destination
    /// answers.
    RecoverPostcopy,
    /// Nothing can be proven now (the destination is unreachable and may
    /// have run the guest): keep the guest paused and ask again later.
    Wait,
}

/// The source's decision. `peer` is `None` until the destination was
/// asked, and `Some(None)` when it could not be reached.
pub fn source_action(phase: Phase, qemu: QemuSeen, peer: Option<Option<PeerView>>) -> SourceAction {
    use SourceAction::*;
    if matches!(phase, Phase::Idle | Phase::Begin) {
        // QEMU was never told to migrate by this job.
        return match qemu {
            QemuSeen::Alive { run, .. } if !run.is_running() => Resume,
            _ => EndFailed,
        };
    }
    match qemu {
        QemuSeen::Alive { migration, .. } if migration.is_precopy_in_flight() => Resume,
        QemuSeen::Alive {
            migration: MigrationStatus::PostcopyPaused,
            ..
        } => RecoverPostcopy,
        QemuSeen::Alive { migration, .. } if migration.is_postcopy() => ServePostcopy,
        QemuSeen::Alive {
            migration: MigrationStatus::Completed,
            ..
        } => match peer {
            None => AskPeer,
            Some(None) => Wait,
            Some(Some(PeerView::Owns)) => StopHere,
            Some(Some(PeerView::Prepared { complete: true })) => FinishOnDestination,
            // Still loading the last bytes: ask again.
            Some(Some(PeerView::Prepared { complete: false })) => Wait,
            Some(Some(
                PeerView::Discarded | PeerView::Unknown | PeerView::Sending | PeerView::Sent,
            )) => Resume,
        },
        QemuSeen::Alive { run, .. } => {
            // Failed, cancelled or never started: the destination cannot
            // hold a whole guest. A guest paused for the migration resumes.
            if run.is_running() {
                EndFailed
            } else {
                Resume
            }
        }
        QemuSeen::Gone => match peer {
            None => AskPeer,
            Some(Some(PeerView::Owns)) => StopHere,
            Some(Some(PeerView::Prepared { complete: true })) => FinishOnDestination,
            // Unreachable: nothing runs here and nothing can; the
            // destination's own orphan timer settles its side.
            _ => EndFailed,
        },
    }
}

/// What the destination does with a migration whose Finish may never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestAction {
    /// The guest runs here (or post-copy made this the copy): keep it; the
    /// job completed.
    Keep,
    /// The incoming QEMU is loading, or holds the whole guest paused: wait
    /// for Finish (or for the orphan timer).
    AwaitFinish,
    /// Nothing runs here and nothing will: kill the incoming QEMU and
    /// remove what the migration created.
    Discard,
    /// The source's copy is gone for good and this side holds the whole
    /// guest, paused and never run: resume it here.
    TakeOver,
}

/// The destination's decision after a restart. `owns` is what it recorded
/// once it resumed the guest (a `--suspend` migration leaves it paused).
pub fn dest_action(qemu: QemuSeen, owns: bool) -> DestAction {
    match qemu {
        QemuSeen::Gone => DestAction::Discard,
        QemuSeen::Alive { run, migration } => {
            if run.is_running() || migration.is_postcopy() || owns {
                DestAction::Keep
            } else if matches!(
                migration,
                MigrationStatus::Failed | MigrationStatus::Cancelled
            ) {
                DestAction::Discard
            } else {
                DestAction::AwaitFinish
            }
        }
    }
}

/// What the destination's orphan timer does once no driver spoke for the
/// timeout, given the source's view (`None`: unreachable) and whether this
/// side loaded the whole guest.
pub fn dest_orphan(source: Option<PeerView>, complete: bool) -> DestAction {
    match source {
        // The source stopped its copy after the migration completed: ours
        // is the only one left.
        Some(PeerView::Discarded) if complete => DestAction::TakeOver,
        // The source is still sending, or paused waiting for a verdict it
        // will drive itself: give it time.
        Some(PeerView::Sending | PeerView::Sent) => DestAction::AwaitFinish,
        // The source runs the guest, forgot the migration, or cannot be
        // reached: a copy that never ran is only in the way. Discarding it
        // is safe; the source resumes once it hears so.
        _ => DestAction::Discard,
    }
}

/// How one side reports itself to the other (`migrate-query`).
pub fn source_view(qemu: QemuSeen, terminal: Option<Phase>) -> PeerView {
    match (terminal, qemu) {
        (Some(Phase::Completed), _) => PeerView::Discarded,
        (Some(_), _) => PeerView::Owns,
        (None, QemuSeen::Alive { migration, .. }) if migration.is_precopy_in_flight() => {
            PeerView::Sending
        }
        (None, QemuSeen::Alive { migration, .. })
            if migration == MigrationStatus::Completed || migration.is_postcopy() =>
        {
            PeerView::Sent
        }
        (None, QemuSeen::Alive { .. }) => PeerView::Owns,
        (None, QemuSeen::Gone) => PeerView::Unknown,
    }
}

/// The destination's report of itself (`migrate-query`).
pub fn dest_view(qemu: QemuSeen, owns: bool, terminal: Option<Phase>) -> PeerView {
    match terminal {
        Some(Phase::Completed) => return PeerView::Owns,
        Some(_) => return PeerView::Discarded,
        None => {}
    }
    match dest_action(qemu, owns) {
        DestAction::Keep | DestAction::TakeOver => PeerView::Owns,
        DestAction::Discard => PeerView::Discarded,
        DestAction::AwaitFinish => PeerView::Prepared {
            complete: matches!(
                qemu,
                QemuSeen::Alive {
                    migration: MigrationStatus::Completed,
                    ..
                }
            ),
        },
    }
}

/// Why an operator's `resume` (a `cont`) must be refused, if it must: a
/// `cont` on an incoming destination or on a source whose memory went to
/// another host would start a second copy of the guest. `job` is the
/// domain's migration phase, if one is under way.
pub fn resume_refusal(
    run: RunState,
    migration: MigrationStatus,
    job: Option<Phase>,
) -> Option<String> {
    match run {
        RunState::Inmigrate => {
            return Some(
                "it is an incoming migration's destination that has not taken over; the migration decides whether it runs (see domjobinfo)".into(),
            )
        }
        RunState::Postmigrate | RunState::FinishMigrate => {
            return Some(
                "its memory was sent to another host, which may run it now; the migration decides (see domjobinfo), or destroy this copy".into(),
            )
        }
        _ => {}
    }
    // (A destination that loaded a `--suspend` migration is `paused` with
    // its incoming migration `completed`: that one may resume.)
    if migration.is_postcopy() {
        return Some(format!(
            "its migration is {migration}: the destination runs the guest and this copy serves its pages"
        ));
    }
    match job {
        Some(p) if !p.is_terminal() => Some(format!(
            "a migration of it is in phase {p}; abort it with 'tern domjobabort' first"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(run: RunState, migration: MigrationStatus) -> QemuSeen {
        QemuSeen::Alive { run, migration }
    }

    #[test]
    fn a_source_in_precopy_resumes_without_asking() {
        for m in [
            MigrationStatus::Setup,
            MigrationStatus::Active,
            MigrationStatus::PreSwitchover,
            MigrationStatus::Device,
        ] {
            assert_eq!(
                source_action(Phase::Perform, alive(RunState::Paused, m), None),
                SourceAction::Resume,
                "{m}"
            );
        }
    }

    #[test]
    fn a_completed_source_never_resumes_while_the_destination_may_run() {
        let done = alive(RunState::Postmigrate, MigrationStatus::Completed);
        assert_eq!(
            source_action(Phase::Perform, done, None),
            SourceAction::AskPeer
        );
        assert_eq!(
            source_action(Phase::Perform, done, Some(None)),
            SourceAction::Wait
        );
        assert_eq!(
            source_action(Phase::Perform, done, Some(Some(PeerView::Owns))),
            SourceAction::StopHere
        );
        assert_eq!(
            source_action(
                Phase::Confirm,
                done,
                Some(Some(PeerView::Prepared { complete: true }))
            ),
            SourceAction::FinishOnDestination
        );
        assert_eq!(
            source_action(
                Phase::Perform,
                done,
                Some(Some(PeerView::Prepared { complete: false }))
            ),
            SourceAction::Wait
        );
        assert_eq!(
            source_action(Phase::Perform, done, Some(Some(PeerView::Discarded))),
            SourceAction::Resume
        );
    }

    #[test]
    fn post_copy_sources_serve_or_recover_and_never_resume() {
        assert_eq!(
            source_action(
                Phase::Perform,
                alive(RunState::Postmigrate, MigrationStatus::PostcopyActive),
                Some(Some(PeerView::Discarded))
            ),
            SourceAction::ServePostcopy
        );
        assert_eq!(
            source_action(
                Phase::Perform,
                alive(RunState::Postmigrate, MigrationStatus::PostcopyPaused),
                None
            ),
            SourceAction::RecoverPostcopy
        );
    }

    #[test]
    fn a_failed_migration_resumes_a_paused_source_only() {
        assert_eq!(
            source_action(
                Phase::Perform,
                alive(RunState::Running, MigrationStatus::Failed),
                None
            ),
            SourceAction::EndFailed
        );
        assert_eq!(
            source_action(
                Phase::Perform,
                alive(RunState::Paused, MigrationStatus::Cancelled),
                None
            ),
            SourceAction::Resume
        );
        assert_eq!(
            source_action(
                Phase::Begin,
                alive(RunState::Running, MigrationStatus::None),
                None
            ),
            SourceAction::EndFailed
        );
    }

    #[test]
    fn a_dead_source_qemu_hands_a_whole_guest_to_the_destination() {
        assert_eq!(
            source_action(Phase::Perform, QemuSeen::Gone, None),
            SourceAction::AskPeer
        );
        assert_eq!(
            source_action(
                Phase::Perform,
                QemuSeen::Gone,
                Some(Some(PeerView::Prepared { complete: true }))
            ),
            SourceAction::FinishOnDestination
        );
        assert_eq!(
            source_action(
                Phase::Perform,
                QemuSeen::Gone,
                Some(Some(PeerView::Prepared { complete: false }))
            ),
            SourceAction::EndFailed
        );
        assert_eq!(
            source_action(Phase::Perform, QemuSeen::Gone, Some(None)),
            SourceAction::EndFailed
        );
    }

    #[test]
    fn the_destination_keeps_what_ran_and_discards_what_failed() {
        assert_eq!(
            dest_action(alive(RunState::Running, MigrationStatus::Completed), false),
            DestAction::Keep
        );
        assert_eq!(
            dest_action(
                alive(RunState::Inmigrate, MigrationStatus::PostcopyPaused),
                false
            ),
            DestAction::Keep
        );
        assert_eq!(
            dest_action(alive(RunState::Paused, MigrationStatus::Completed), true),
            DestAction::Keep
        );
        assert_eq!(
            dest_action(alive(RunState::Paused, MigrationStatus::Completed), false),
            DestAction::AwaitFinish
        );
        assert_eq!(
            dest_action(alive(RunState::Inmigrate, MigrationStatus::Active), false),
            DestAction::AwaitFinish
        );
        assert_eq!(
            dest_action(alive(RunState::Inmigrate, MigrationStatus::Failed), false),
            DestAction::Discard
        );
        assert_eq!(dest_action(QemuSeen::Gone, false), DestAction::Discard);
    }

    #[test]
    fn an_orphaned_destination_waits_only_for_a_sending_source() {
        assert_eq!(
            dest_orphan(Some(PeerView::Sending), false),
            DestAction::AwaitFinish
        );
        assert_eq!(
            dest_orphan(Some(PeerView::Sent), true),
            DestAction::AwaitFinish
        );
        assert_eq!(dest_orphan(Some(PeerView::Owns), true), DestAction::Discard);
        assert_eq!(
            dest_orphan(Some(PeerView::Unknown), true),
            DestAction::Discard
        );
        assert_eq!(dest_orphan(None, true), DestAction::Discard);
        assert_eq!(
            dest_orphan(Some(PeerView::Discarded), false),
            DestAction::Discard
        );
        // The source's copy is gone: never discard the last one.
        assert_eq!(
            dest_orphan(Some(PeerView::Discarded), true),
            DestAction::TakeOver
        );
    }

    #[test]
    fn resume_refuses_every_second_copy() {
        assert!(resume_refusal(RunState::Inmigrate, MigrationStatus::None, None).is_some());
        assert!(resume_refusal(RunState::Postmigrate, MigrationStatus::Completed, None).is_some());
        assert!(resume_refusal(
            RunState::Paused,
            MigrationStatus::PostcopyPaused,
            Some(Phase::Perform)
        )
        .is_some());
        assert!(resume_refusal(
            RunState::Paused,
            MigrationStatus::Active,
            Some(Phase::Perform)
        )
        .is_some());
        assert!(resume_refusal(RunState::Paused, MigrationStatus::None, None).is_none());
        // A destination kept paused by --suspend.
        assert!(resume_refusal(
            RunState::Paused,
            MigrationStatus::Completed,
            Some(Phase::Completed)
        )
        .is_none());
        assert!(resume_refusal(
            RunState::Paused,
            MigrationStatus::Cancelled,
            Some(Phase::Failed)
        )
        .is_none());
    }

    #[test]
    fn views_agree_with_the_decisions() {
        let loaded = alive(RunState::Paused, MigrationStatus::Completed);
        assert_eq!(
            dest_view(loaded, false, None),
            PeerView::Prepared { complete: true }
        );
        assert_eq!(
            dest_view(loaded, false, Some(Phase::Failed)),
            PeerView::Discarded
        );
        assert_eq!(
            source_view(
                alive(RunState::Postmigrate, MigrationStatus::Completed),
                None
            ),
            PeerView::Sent
        );
        assert_eq!(
            source_view(alive(RunState::Running, MigrationStatus::Active), None),
            PeerView::Sending
        );
        assert_eq!(
            source_view(
                alive(RunState::Running, MigrationStatus::Failed),
                Some(Phase::Failed)
            ),
            PeerView::Owns
        );
    }
}
