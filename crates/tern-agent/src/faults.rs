//! Named points in a migration where a test can stop this agent, so a
//! fault (`kill -9` of a process, a cut link) lands exactly where it is
//! meant to. Off unless `--fault-stop-at POINT` is given (hidden, for
//! tests); then the task that reaches POINT writes `fault-POINT` in the
//! state directory and waits there until the test removes that file (or
//! kills the process meanwhile, which is the point). A point holds once
//! per process.
//!
//! Points: `source-before-migrate` (disks in sync, QEMU not yet told to
//! migrate), `source-completed` (QEMU sent everything; before the job
//! says so), `source-before-quit` (Confirm, before the source QEMU is
//! stopped), `dest-prepared` (Prepare done, before its reply),
//! `dest-before-cont` and `dest-after-cont` (Finish, around `cont`);
//! `boot-before-record` (a guest's QEMU started, not yet recorded in its
//! `runtime.json`).

use crate::Agent;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a point held: a point holds once per agent process, so the
/// test's next migration (proof that the guest moves again) runs through.
static HELD: AtomicBool = AtomicBool::new(false);

/// Waits here while the test holds the point, if the agent was told to.
pub async fn point(agent: &Agent, name: &str) {
    if agent.cfg.faults.stop_at.as_deref() != Some(name) || HELD.swap(true, Ordering::SeqCst) {
        return;
    }
    let marker = agent.cfg.state_dir.join(format!("fault-{name}"));
    tracing::warn!(point = name, "fault injection: holding here");
    if std::fs::write(&marker, name).is_err() {
        return;
    }
    while marker.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::warn!(point = name, "fault injection: released");
}
