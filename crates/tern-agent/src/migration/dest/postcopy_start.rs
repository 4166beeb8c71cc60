//! Post-copy: the guest runs on the destination the moment QEMU switches,
//! not when the source's word arrives.
//!
//! At the switch the source QEMU stops the guest and sends its device
//! state; the destination QEMU, started with `-S`, then leaves the guest
//! paused until someone says `cont`. That someone was Finish: the source
//! agent saw post-copy begin, told its run, which called the destination
//! agent, which said `cont`. Every step of that round trip was guest
//! pause that QEMU's own downtime figure (2 ms) does not count: the
//! guest saw 191-235 ms in `tern-bench converge`'s capped case.
//!
//! So the destination agent says `cont` itself as soon as its QEMU reports
//! post-copy. During an incoming migration QEMU takes `cont` as "start the
//! guest when the migration lets it run", which in post-copy is the
//! source's RUN command, the last thing the source sends after stopping
//! its guest for good. A source whose switch failed before RUN went out
//! may resume its guest, but then RUN never arrives here and this guest
//! never starts: still one running copy. Finish, when it comes, finds the
//! guest running and does its bookkeeping as before.
//!
//! Not with `--suspend` (the guest stays paused by request) and not when
//! disks are mirrored (Finish stops the NBD export and restores the disks'
//! settings before the guest may write).

use super::Job;
use std::sync::Arc;
use tern_migrate::MigrateOptions;
use tern_qemu::MigrationStatus;
use tokio::sync::broadcast::error::RecvError;

/// How long the armed start waits to see the guest run (the source's RUN
/// follows its device state, which the destination loads first).
const RUN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pure: whether the destination starts the guest itself at the switch.
pub fn starts_at_switch(o: &MigrateOptions) -> bool {
    o.postcopy && !o.suspend && !o.copies_storage()
}

/// Waits for the incoming QEMU to report post-copy, then says `cont`; ends
/// with the migration or the QEMU.
pub(super) fn arm(qmp: &tern_qemu::Qmp, job: &Arc<Job>) {
    let mut events = qmp.events();
    let qmp = qmp.clone();
    let job = Arc::downgrade(job);
    tokio::spawn(async move {
        loop {
            let status = match events.recv().await {
                Ok(ev) if ev.name == "MIGRATION" => MigrationStatus::of_reply(&ev.data),
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            if status.is_postcopy() {
                let said = qmp.execute("cont", None).await;
                // In post-copy `cont` only arms the start: the guest runs
                // when the source's RUN arrives, an instant later.
                let resumed = match said {
                    Ok(_) => super::event_time(&mut events, "RESUME", RUN_WAIT).await,
                    Err(_) => None,
                };
                if let Some(j) = job.upgrade() {
                    if let Some(us) = resumed {
                        j.note_resumed(us);
                    }
                    j.event(match said {
                        Ok(_) => "post-copy: the guest starts here as soon as QEMU has its state, without waiting for Finish".to_string(),
                        Err(e) => format!("post-copy: could not arm the start at the switch ({e}); Finish starts the guest"),
                    });
                }
                return;
            }
            if status.is_finished() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_starts_at_the_switch_only_for_post_copy_without_disks_or_suspend() {
        let pc = MigrateOptions {
            live: true,
            postcopy: true,
            ..Default::default()
        };
        assert!(starts_at_switch(&pc));
        assert!(!starts_at_switch(&MigrateOptions {
            postcopy: false,
            ..pc.clone()
        }));
        assert!(!starts_at_switch(&MigrateOptions {
            suspend: true,
            ..pc.clone()
        }));
        assert!(!starts_at_switch(&MigrateOptions {
            copy_storage_all: true,
            ..pc
        }));
    }
}
