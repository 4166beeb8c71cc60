//! A post-copy that stops half-way: the link broke, or the operator paused
//! it (`domjobabort --postcopy`). Both QEMUs then sit in `postcopy-paused`:
//! the guest runs on the destination, but its missing pages are only on
//! the source, so neither side may give up. Recovery, as QEMU does it:
//! the destination listens again (`migrate-recover`), the source reconnects
//! (`migrate` with `resume: true`), and post-copy goes on where it stopped.
//!
//! The source drives it, from one place only (two recoveries racing on one
//! QEMU wedge it): the perform watcher calls [`recover`] while QEMU is
//! paused and the operator does not hold the pause (`migrate
//! --postcopy-resume` lifts the hold); after an agent restart, the
//! recovery loop of `super::recover` does.

use super::job::{Found, Job};
use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::json;
use std::time::{Duration, Instant};
use tern_api::{MigrationRequest, Request};
use tern_migrate::protocol::{
    check_version, IncomingTarget, RecoverReply, RecoverRequest, PROTOCOL_VERSION,
};
use tern_migrate::Role;
use tern_qemu::Qmp;

/// Source: one attempt at resuming a paused post-copy.
pub async fn recover(agent: &Agent, job: &Job, qmp: &Qmp) -> Result<()> {
    let client = super::recover::peer_of(agent, job)?.with_timeout(Duration::from_secs(15));
    let req = RecoverRequest {
        version: PROTOCOL_VERSION,
        id: job.id,
    };
    let reply: RecoverReply = client
        .call(&Request::Migration(MigrationRequest::MigrateRecover {
            req,
        }))
        .await
        .map_err(|e| AgentError::Failed(format!("the destination cannot listen yet: {e}")))?;
    check_version(reply.version).map_err(|e| AgentError::Invalid(e.to_string()))?;
    qmp.execute(
        "migrate",
        Some(json!({"uri": reply.target.qemu_uri(), "resume": true})),
    )
    .await?;
    job.event(format!(
        "post-copy resumes over {}",
        reply.target.qemu_uri()
    ));
    Ok(())
}

/// Destination: makes the incoming QEMU of migration `id` listen for the
/// source's recovery channel; pauses it first if it still waits on the
/// broken connection.
pub async fn listen(agent: &Agent, req: RecoverRequest) -> Result<RecoverReply> {
    check_version(req.version).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let (domain, o) = match agent.jobs.by_id(req.id) {
        Some(Found::Running(j)) if j.role == Role::Destination => {
            (j.domain.clone(), j.options.clone())
        }
        Some(Found::Done(r)) if r.role == Role::Destination => {
            (r.domain.clone(), r.options.clone())
        }
        _ => {
            return Err(AgentError::Conflict(format!(
                "no incoming migration {} here to recover",
                req.id
            )))
        }
    };
    let slot = agent.domains.find(&domain)?;
    let qmp = slot
        .inner
        .lock()
        .await
        .run
        .as_ref()
        .map(|r| r.qmp.clone())
        .ok_or_else(|| AgentError::Conflict(format!("'{domain}' is not running here")))?;
    // Only out-of-band commands here: the destination's main loop may be
    // blocked on a page that the broken link will not bring, and every
    // in-band command (query-migrate included) would wait with it.
    // QEMU listens on a unix socket, behind a guard (see `super::guard`).
    let run_dir = agent.layout.run_dir(&domain);
    let sock = super::tunnel::socket(agent, &run_dir, "guard-recover.sock")?;
    let uri = format!("unix:{}", sock.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The source saw the link break; this side may not have yet.
        let _ = qmp.execute_oob("migrate-pause", None).await;
        match qmp
            .execute_oob("migrate-recover", Some(json!({ "uri": uri })))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(AgentError::Failed(format!(
                    "the incoming QEMU does not take the recovery channel: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let port = super::guard::recovery(agent, &domain, sock, &o).await?;
    tracing::info!(domain, port, "waiting for the post-copy recovery channel");
    Ok(RecoverReply {
        version: PROTOCOL_VERSION,
        target: IncomingTarget {
            host: agent.migration_address(),
            port,
            tunnel: false,
        },
    })
}
