//! Named points in a migration where a test can stop this agent, so a
//! fault (`kill -9` of a process, a cut link) lands exactly where it is
//! meant to. Off unless `--fault-stop-at POINT` is given (hidden, for
//! tests); then the task that reaches POINT writes `fault-POINT` in the
//! state directory and never goes on.
//!
//! Points: `source-before-migrate` (disks in sync, QEMU not yet told to
//! migrate), `source-completed` (QEMU sent everything; before the job
//! says so), `source-before-quit` (Confirm, before the source QEMU is
//! stopped), `dest-prepared` (Prepare done, before its reply),
//! `dest-before-cont` and `dest-after-cont` (Finish, around `cont`).

use crate::Agent;

/// Stops here for good if the agent was told to.
pub async fn point(agent: &Agent, name: &str) {
    if agent.cfg.faults.stop_at.as_deref() != Some(name) {
        return;
    }
    let marker = agent.cfg.state_dir.join(format!("fault-{name}"));
    tracing::warn!(point = name, "fault injection: stopping here");
    let _ = std::fs::write(&marker, name);
    std::future::pending::<()>().await;
}
