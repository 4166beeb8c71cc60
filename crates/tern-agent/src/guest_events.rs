//! What the agent does on the guest events QEMU leaves to it:
//! `<on_poweroff>` other than destroy and `<on_crash>` (QEMU is started
//! with `-action shutdown=pause` / `panic=pause`, so it waits for us), as
//! libvirt does.

use crate::registry::DomainSlot;
use std::sync::Arc;
use tern_model::{DomainState, LifecycleAction, StateReason};
use tern_qemu::Qmp;

/// The guest event that paused QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest powered itself off (`SHUTDOWN` with `guest: true`).
    PowerOff,
    /// The guest reported a panic (`GUEST_PANICKED`).
    Panic,
}

/// What to do about `event`, per the domain's lifecycle settings.
/// `None` means QEMU handles it alone (power-off with destroy: it exits).
pub fn decide(
    event: GuestEvent,
    on_poweroff: LifecycleAction,
    on_crash: LifecycleAction,
) -> Option<LifecycleAction> {
    match event {
        GuestEvent::PowerOff if on_poweroff == LifecycleAction::Destroy => None,
        GuestEvent::PowerOff => Some(on_poweroff),
        GuestEvent::Panic => Some(on_crash),
    }
}

/// Carries out the lifecycle action for `event` on the guest behind `qmp`.
pub async fn handle(slot: Arc<DomainSlot>, qmp: Qmp, event: GuestEvent) {
    let (on_poweroff, on_crash, pid) = {
        let e = slot.inner.lock().await;
        let Some(run) = e.run.as_ref() else { return };
        (run.live.on_poweroff, run.live.on_crash, run.pid)
    };
    let Some(action) = decide(event, on_poweroff, on_crash) else {
        return;
    };
    tracing::info!(domain = %slot.name, ?event, ?action, "guest event");
    let result = match action {
        LifecycleAction::Destroy => {
            let mut e = slot.inner.lock().await;
            if e.run.as_ref().map(|r| r.pid) != Some(pid) {
                return;
            }
            e.stopping = Some(match event {
                GuestEvent::Panic => StateReason::Crashed,
                GuestEvent::PowerOff => StateReason::Shutdown,
            });
            drop(e);
            qmp.execute("quit", None).await.map(|_| ())
        }
        LifecycleAction::Restart | LifecycleAction::RenameRestart => {
            let reset = qmp.execute("system_reset", None).await;
            match reset {
                Ok(_) => qmp.execute("cont", None).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
        LifecycleAction::Preserve => {
            let reason = match event {
                GuestEvent::Panic => StateReason::Crashed,
                GuestEvent::PowerOff => StateReason::Shutdown,
            };
            slot.set(DomainState::Paused, reason);
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::warn!(domain = %slot.name, error = %e, "cannot carry out the lifecycle action");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleAction::*;

    #[test]
    fn poweroff_with_destroy_is_left_to_qemu() {
        assert_eq!(decide(GuestEvent::PowerOff, Destroy, Restart), None);
        assert_eq!(
            decide(GuestEvent::PowerOff, Restart, Destroy),
            Some(Restart)
        );
        assert_eq!(
            decide(GuestEvent::PowerOff, Preserve, Destroy),
            Some(Preserve)
        );
    }

    #[test]
    fn a_panic_follows_on_crash() {
        assert_eq!(decide(GuestEvent::Panic, Destroy, Destroy), Some(Destroy));
        assert_eq!(decide(GuestEvent::Panic, Destroy, Restart), Some(Restart));
        assert_eq!(decide(GuestEvent::Panic, Destroy, Preserve), Some(Preserve));
    }
}
