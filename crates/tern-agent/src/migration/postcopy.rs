//! A post-copy that stops half-way: the link broke, or the operator paused
//! it (`domjobabort --postcopy`). Both QEMUs then sit in `postcopy-paused`:
//! the guest runs on the destination, but its missing pages are only on
//! the source, so neither side may give up. Recovery, as QEMU does it:
//! the destination listens again (`migrate-recover`), the source reconnects
//! (`migrate` with `resume: true`), and post-copy goes on where it stopped.
//!
//! The source drives it: by itself when the link returns (the perform
//! watcher calls [`recover`] while QEMU is paused and the operator did not
//! ask for the pause), or at once on `migrate --postcopy-resume`.

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
use tern_qemu::{MigrationStatus, Qmp};

/// Source: one attempt at resuming a paused post-copy.
pub async fn recover(agent: &Agent, job: &Job, qmp: &Qmp) -> Result<()> {
    let links = job.links();
    let uri = links.peer_uri.ok_or_else(|| {
        AgentError::Conflict("this migration does not know the destination's address".into())
    })?;
    let uri: tern_model::uri::ConnectUri = uri
        .parse()
        .map_err(|e: tern_model::uri::UriError| AgentError::Invalid(e.to_string()))?;
    let client = agent
        .peer_client(&uri)
        .map_err(|e| AgentError::Failed(e.to_string()))?
        .with_timeout(Duration::from_secs(15));
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
    let domain = match agent.jobs.by_id(req.id) {
        Some(Found::Running(j)) if j.role == Role::Destination => j.domain.clone(),
        Some(Found::Done(r)) if r.role == Role::Destination => r.domain.clone(),
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
    let (status, _) = qmp.migration().await?;
    if status == MigrationStatus::PostcopyActive {
        // The source saw the link break; this side may not have yet.
        qmp.execute("migrate-pause", None).await?;
    }
    wait_for(&qmp, |s| s == MigrationStatus::PostcopyPaused).await?;
    let port = free_port(agent).ok_or_else(|| {
        AgentError::Failed("no free port in the migration range for the recovery".into())
    })?;
    qmp.execute(
        "migrate-recover",
        Some(json!({"uri": format!("tcp:0.0.0.0:{port}")})),
    )
    .await?;
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

async fn wait_for(qmp: &Qmp, pred: impl Fn(MigrationStatus) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = qmp.migration().await?;
        if pred(s) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(AgentError::Timeout(format!(
                "the incoming QEMU stays {s}; it cannot be recovered now"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port of the migration range nobody listens on now. QEMU binds it a
/// moment later; a race with another listener makes `migrate-recover`
/// fail, and the source simply asks again.
fn free_port(agent: &Agent) -> Option<u16> {
    agent
        .cfg
        .migration_ports
        .clone()
        .find(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok())
}
