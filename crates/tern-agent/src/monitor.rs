//! Watching running guests, and finding them again after an agent restart.
//!
//! A guest's end is learnt from its QMP socket closing (QEMU exits and the
//! kernel closes the socket), never by polling a pid: after an agent
//! restart QEMU is not our child, and a slow init may leave it a zombie for
//! a while. A `SHUTDOWN` event with `guest: true` before the close means the
//! guest powered itself off; a close without one, unasked, means a crash.

use crate::guest_events::{self, GuestEvent};
use crate::netdev;
use crate::procs;
use crate::registry::{self, DomainEntry, DomainSlot, Running, RuntimeRecord};
use crate::Agent;
use std::sync::Arc;
use std::time::Duration;
use tern_model::{DomainState, StateReason};
use tern_qemu::{cmdline, MigrationStatus, Qmp, RunState};
use tokio::sync::broadcast::error::RecvError;

/// Records `run` as the domain's QEMU (on disk too) and starts watching it.
pub fn install(agent: &Arc<Agent>, slot: &Arc<DomainSlot>, entry: &mut DomainEntry, run: Running) {
    let rec = RuntimeRecord {
        id: run.id,
        pid: run.pid,
        start_time: run.start_time,
        live: run.live.clone(),
        persistent: entry.persistent,
        taps: run.taps.clone(),
        accel: run.accel.clone(),
        console_pty: run.console_pty.clone(),
    };
    let run_dir = agent.layout.run_dir(&slot.name);
    if let Err(e) = registry::save_runtime(&run_dir, &rec) {
        tracing::error!(domain = %slot.name, error = %e, "cannot record run-time state; a restarted agent will not find this guest");
    }
    let qmp = run.qmp.clone();
    let pid = run.pid;
    entry.run = Some(run);
    tokio::spawn(watch(agent.clone(), slot.clone(), qmp, pid));
}

/// Logs a QEMU event with QEMU's own time (debug): the moments of a
/// switch-over (the source's STOP, the destination's RESUME, each side's
/// MIGRATION status) on one clock, to the microsecond.
fn logged<'a>(domain: &str, ev: &'a tern_qemu::QmpEvent) -> &'a tern_qemu::QmpEvent {
    tracing::debug!(
        domain,
        event = %ev.name,
        status = ev.data["status"].as_str().unwrap_or(""),
        qemu_us = ev.timestamp_us,
        "QEMU event"
    );
    ev
}

async fn watch(agent: Arc<Agent>, slot: Arc<DomainSlot>, qmp: Qmp, pid: u32) {
    let mut events = qmp.events();
    let mut guest_shutdown = false;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => match logged(&slot.name, &ev).name.as_str() {
                    "SHUTDOWN" if ev.data["guest"].as_bool().unwrap_or(false) => {
                        guest_shutdown = true;
                        slot.set(DomainState::InShutdown, StateReason::Shutdown);
                        tokio::spawn(guest_events::handle(slot.clone(), qmp.clone(), GuestEvent::PowerOff));
                    }
                    "GUEST_PANICKED" => {
                        tokio::spawn(guest_events::handle(slot.clone(), qmp.clone(), GuestEvent::Panic));
                    }
                    "STOP" if slot.current().0 == DomainState::Running => {
                        slot.set(DomainState::Paused, StateReason::User);
                    }
                    "RESUME" if slot.current().0 != DomainState::Running => {
                        let reason = match slot.current().1 {
                            StateReason::Incoming | StateReason::Migrated => StateReason::Migrated,
                            _ => StateReason::Unpaused,
                        };
                        slot.set(DomainState::Running, reason);
                    }
                    _ => {}
                },
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
            _ = qmp.closed() => break,
        }
    }
    // The close may win the select over events still queued: read them.
    while let Ok(ev) = events.try_recv() {
        if ev.name == "SHUTDOWN" && ev.data["guest"].as_bool().unwrap_or(false) {
            guest_shutdown = true;
        }
    }
    let mut e = slot.inner.lock().await;
    // Another QEMU may have been started for this slot meanwhile.
    if e.run.as_ref().map(|r| r.pid) != Some(pid) {
        return;
    }
    let reason = e.stopping.take().unwrap_or(if guest_shutdown {
        StateReason::Shutdown
    } else {
        StateReason::Crashed
    });
    if reason == StateReason::Crashed {
        tracing::warn!(domain = %slot.name, pid, "QEMU ended unexpectedly");
    } else {
        tracing::info!(domain = %slot.name, pid, %reason, "guest stopped");
    }
    if let Some(run) = e.run.take() {
        finish_run(&agent, &run.live, &run.taps).await;
    }
    if !e.persistent {
        agent.forget_domain(&slot);
    }
    slot.set(DomainState::ShutOff, reason);
}

/// Removes what a run left: taps, sockets, the run-time record, and gives
/// the files handed to the guest's uid back to root. The console log stays
/// for `tern console` until the next start.
pub async fn finish_run(agent: &Agent, live: &tern_model::Domain, taps: &[String]) {
    netdev::remove_taps(taps).await;
    let user = agent.held_user(live.uuid);
    crate::confine::ownership::give_back_domain(agent, live, user.as_ref()).await;
    let dir = agent.layout.run_dir(&live.name);
    for f in [
        registry::runtime_path(&dir),
        cmdline::qmp_socket(&dir),
        cmdline::pid_file(&dir),
    ] {
        let _ = std::fs::remove_file(f);
    }
}

/// Loads stored definitions and re-attaches to every QEMU that a previous
/// agent started and that still runs. Guests whose QEMU died meanwhile are
/// shown as shut off (crashed).
pub async fn reattach_all(agent: &Arc<Agent>) {
    for def in registry::load_defs(&agent.layout.domains()) {
        let slot = DomainSlot::new(
            DomainEntry {
                def,
                persistent: true,
                run: None,
                stopping: None,
            },
            (DomainState::ShutOff, StateReason::Unknown),
        );
        if let Err(e) = agent.domains.insert(slot) {
            tracing::warn!(error = %e, "duplicate stored definition");
        }
    }
    let Ok(rd) = std::fs::read_dir(agent.layout.runs()) else {
        return;
    };
    for ent in rd.flatten() {
        let dir = ent.path();
        let Ok(text) = std::fs::read(registry::runtime_path(&dir)) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<RuntimeRecord>(&text) else {
            tracing::warn!(dir = %dir.display(), "unreadable run-time record");
            continue;
        };
        reattach_one(agent, rec).await;
    }
}

async fn reattach_one(agent: &Arc<Agent>, rec: RuntimeRecord) {
    let name = rec.live.name.clone();
    let alive = procs::start_time(rec.pid) == Some(rec.start_time) && !procs::is_dead(rec.pid);
    let qmp = if alive {
        let sock = cmdline::qmp_socket(&agent.layout.run_dir(&name));
        match tokio::time::timeout(Duration::from_secs(10), Qmp::connect(&sock)).await {
            Ok(Ok(q)) => Some(q),
            Ok(Err(e)) => {
                tracing::warn!(domain = %name, error = %e, "cannot re-attach to QEMU");
                None
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let slot = match agent.domains.get(&name) {
        Some(s) => s,
        None => {
            let s = DomainSlot::new(
                DomainEntry {
                    def: rec.live.clone(),
                    persistent: false,
                    run: None,
                    stopping: None,
                },
                (DomainState::ShutOff, StateReason::Unknown),
            );
            if agent.domains.insert(s.clone()).is_err() {
                return;
            }
            s
        }
    };
    let mut e = slot.inner.lock().await;
    match qmp {
        Some(qmp) => {
            let status = qmp.run_state().await.unwrap_or(RunState::Unknown);
            let (migration, _) = qmp
                .migration()
                .await
                .unwrap_or((MigrationStatus::Unknown, serde_json::Value::Null));
            agent.bump_id(rec.id);
            let state = reattached_state(status, migration);
            tracing::info!(domain = %name, pid = rec.pid, %status, %migration, "re-attached to running guest");
            let run = Running {
                id: rec.id,
                pid: rec.pid,
                start_time: rec.start_time,
                qmp,
                live: rec.live,
                taps: rec.taps,
                accel: rec.accel,
                console_pty: rec.console_pty,
            };
            install(agent, &slot, &mut e, run);
            slot.set(state.0, state.1);
        }
        None => {
            tracing::warn!(domain = %name, pid = rec.pid, "QEMU ended while the agent was away");
            finish_run(agent, &rec.live, &rec.taps).await;
            if !e.persistent {
                drop(e);
                agent.forget_domain(&slot);
                return;
            }
            slot.set(DomainState::ShutOff, StateReason::Crashed);
        }
    }
}

/// The domain state of a guest found again after a restart, from QEMU's run
/// state and migration status. A paused guest in the middle of a migration
/// is paused *for* the migration, not by the user: migration recovery
/// decides whether it resumes.
fn reattached_state(run: RunState, migration: MigrationStatus) -> (DomainState, StateReason) {
    match run {
        RunState::Running => (DomainState::Running, StateReason::Booted),
        RunState::Inmigrate => (DomainState::Paused, StateReason::Incoming),
        RunState::Postmigrate | RunState::FinishMigrate => {
            (DomainState::Paused, StateReason::Migrated)
        }
        _ if migration.is_precopy_in_flight() || migration.is_postcopy() => {
            (DomainState::Paused, StateReason::Migrated)
        }
        _ => (DomainState::Paused, StateReason::User),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_paused_by_a_migration_is_not_paused_by_the_user() {
        assert_eq!(
            reattached_state(RunState::Postmigrate, MigrationStatus::Completed).1,
            StateReason::Migrated
        );
        assert_eq!(
            reattached_state(RunState::Paused, MigrationStatus::PreSwitchover).1,
            StateReason::Migrated
        );
        assert_eq!(
            reattached_state(RunState::Paused, MigrationStatus::None).1,
            StateReason::User
        );
        assert_eq!(
            reattached_state(RunState::Inmigrate, MigrationStatus::None),
            (DomainState::Paused, StateReason::Incoming)
        );
    }
}
