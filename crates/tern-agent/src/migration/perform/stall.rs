//! The watch's rules for a migration that stopped moving: a stalled
//! post-copy is paused (and resumed when the link returns); a stalled
//! pre-copy is cancelled; and a pre-copy that a cancel does not end either
//! is given up, so the job ends instead of waiting on QEMU forever.

use super::{Watch, RECOVER_EVERY};
use std::time::{Duration, Instant};
use tern_migrate::JobInfo;
use tern_qemu::MigrationStatus;

/// Whether a stalled pre-copy whose migration did not end after
/// `migrate_cancel` should be given up: after the first cancel's stall
/// period went by with no change, another cancel would only repeat
/// itself (seen with a destination QEMU that died on "Not a migration
/// stream": the source logged a cancel every 15 s for a quarter of an
/// hour).
fn cancel_unanswered(stalls_in_a_row: u32) -> bool {
    stalls_in_a_row > 1
}

impl Watch<'_> {
    /// No bytes moving: a stalled post-copy is paused (to be resumed when
    /// the link returns); a stalled pre-copy is cancelled.
    pub(super) async fn stall_check(&mut self, info: &JobInfo) {
        let (job, qmp, stall) = (&self.job, &self.qmp, self.stall);
        if self.last_status == MigrationStatus::PostcopyPaused
            && info.qemu_status != MigrationStatus::PostcopyPaused
        {
            // Resumed, by this watch or by the operator.
            self.last_recovery = Instant::now();
        }
        if info.memory_processed != self.last_bytes || info.qemu_status != self.last_status {
            // Bytes moved, or QEMU changed state (a post-copy recovery
            // resends its bitmap before pages flow again): not a stall.
            self.last_bytes = info.memory_processed;
            self.last_status = info.qemu_status;
            self.last_progress = Instant::now();
            self.unanswered_cancels = 0;
        } else if postcopy_stalled(info.qemu_status, self.last_progress.elapsed(), stall)
            && self.last_recovery.elapsed() > stall * 4
        {
            // A dead link leaves QEMU waiting on TCP for many minutes; a
            // paused post-copy can be resumed when the link returns.
            job.event(format!(
                "no post-copy progress for {} s: pausing it, to resume when the destination answers",
                stall.as_secs()
            ));
            let _ = qmp.execute_oob("migrate-pause", None).await;
            self.last_progress = Instant::now();
        } else if self.last_progress.elapsed() > stall && !info.qemu_status.is_postcopy() {
            self.unanswered_cancels += 1;
            if cancel_unanswered(self.unanswered_cancels) {
                self.stuck = Some(info.qemu_status);
                return;
            }
            job.event(format!(
                "no progress for {} s: the link to the destination looks down; cancelling",
                stall.as_secs()
            ));
            let _ = qmp.execute("migrate_cancel", None).await;
            job.update(|i| {
                i.error = Some(format!(
                    "migration made no progress for {} s (link to the destination down?)",
                    stall.as_secs()
                ))
            });
            self.last_progress = Instant::now();
        }
    }

    /// A paused post-copy the operator does not hold: try to resume it.
    pub(super) async fn recover_postcopy(&mut self, info: &JobInfo) {
        if info.qemu_status != MigrationStatus::PostcopyPaused
            || *self.job.postcopy_hold.borrow()
            || self.last_recovery.elapsed() <= RECOVER_EVERY
        {
            return;
        }
        self.last_recovery = Instant::now();
        match super::super::postcopy::recover(self.agent, &self.job, &self.qmp).await {
            Ok(()) => self.last_progress = Instant::now(),
            Err(e) if !self.recovery_failed => {
                self.recovery_failed = true;
                self.job.event(format!(
                    "post-copy paused: {e}; trying again until it answers"
                ));
            }
            Err(_) => {}
        }
    }
}

/// Whether a post-copy stopped moving for long enough to pause it (so it
/// can be resumed when the link returns): pages stand still for `stall`
/// while active, or a recovery's handshake hangs four times as long (it
/// resends a bitmap first, slowly on a loaded host).
fn postcopy_stalled(status: MigrationStatus, still: Duration, stall: Duration) -> bool {
    match status {
        MigrationStatus::PostcopyActive => still > stall,
        MigrationStatus::PostcopyRecover | MigrationStatus::PostcopyRecoverSetup => {
            still > stall * 4
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_that_changes_nothing_is_given_up_at_the_next_stall() {
        assert!(!cancel_unanswered(1));
        assert!(cancel_unanswered(2));
    }

    #[test]
    fn a_recovering_post_copy_gets_longer_than_an_active_one() {
        let stall = Duration::from_secs(3);
        let s = Duration::from_secs(4);
        assert!(postcopy_stalled(MigrationStatus::PostcopyActive, s, stall));
        assert!(!postcopy_stalled(
            MigrationStatus::PostcopyRecover,
            s,
            stall
        ));
        assert!(postcopy_stalled(
            MigrationStatus::PostcopyRecover,
            Duration::from_secs(13),
            stall
        ));
        assert!(!postcopy_stalled(
            MigrationStatus::PostcopyPaused,
            s * 10,
            stall
        ));
        assert!(!postcopy_stalled(MigrationStatus::Active, s * 10, stall));
    }
}
