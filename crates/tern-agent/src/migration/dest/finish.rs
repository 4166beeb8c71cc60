//! Destination, the verdict applied, phase by phase: the last part of the
//! destination's run (`run.rs`). The verdict is recorded, then the guest
//! is taken over (`cont`: from then on this host owns it) or everything
//! Prepare created is given up. [`apply`] lists the phases.

use super::{discard, finish_offline, remove_created, resume_here};
use crate::error::Result;
use crate::registry::DomainSlot;
use crate::Agent;
use std::sync::Arc;
use tern_migrate::protocol::{FinishReply, FinishRequest, PROTOCOL_VERSION};
use tern_migrate::{JobKind, Phase};

use super::super::Job;

pub(super) fn reply(resumed: bool, error: Option<String>) -> FinishReply {
    FinishReply {
        version: PROTOCOL_VERSION,
        resumed,
        error,
        resumed_at_us: None,
    }
}

/// Applies the source's verdict (Finish) on a migration this host
/// prepared, and ends the job.
pub(super) async fn apply(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    req: &FinishRequest,
) -> Result<FinishReply> {
    verdict(agent, job, req).await?;
    if req.options.cold {
        return finish_cold(agent, job, req).await;
    }
    if req.options.offline {
        return finish_offline(agent, job, req).await;
    }
    let slot = match agent.domains.find(&req.name) {
        Ok(s) => s,
        Err(e) => return incoming_gone(agent, job, req, e).await,
    };
    let r = if req.success {
        take_over(agent, &slot, job, req).await
    } else {
        give_up(agent, &slot, job, req).await
    };
    agent.jobs.finish(job);
    r
}

/// Phase 1: the verdict on disk (phase Finish) before acting on it.
async fn verdict(agent: &Arc<Agent>, job: &Arc<Job>, req: &FinishRequest) -> Result<()> {
    job.touch();
    job.advance(Phase::Finish)?;
    if !req.success {
        agent.pools.clear_tokens(&req.id).await;
    }
    Ok(())
}

/// Phase 2, cold migration: the received files are kept and the domain
/// defined, or the receivers' files removed.
async fn finish_cold(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    req: &FinishRequest,
) -> Result<FinishReply> {
    let r = super::super::cold::finish(agent, job, req.success, &req.options).await;
    let out = match (&r, req.success) {
        (Ok(()), true) => {
            job.advance(Phase::Completed)?;
            reply(true, None)
        }
        _ => {
            job.advance(Phase::Failed)?;
            reply(false, r.err().map(|e| e.to_string()))
        }
    };
    agent.jobs.finish(job);
    Ok(out)
}

/// The incoming QEMU is gone already (it exits when the stream is cut by a
/// cancel): the job ends rather than stay in Finish, where it would refuse
/// every later migration of this guest, and the volumes made for it go.
async fn incoming_gone(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    req: &FinishRequest,
    e: crate::error::AgentError,
) -> Result<FinishReply> {
    job.event("the incoming guest is gone already");
    job.close_tunnel(true);
    remove_created(agent, job).await;
    job.advance(Phase::Failed)?;
    agent.jobs.finish(job);
    if req.success {
        return Err(e);
    }
    Ok(reply(false, None))
}

/// Phase 2, success: `cont` here. Once it succeeded this host owns the
/// guest, and a later error is only a warning in the reply.
async fn take_over(
    agent: &Arc<Agent>,
    slot: &Arc<DomainSlot>,
    job: &Arc<Job>,
    req: &FinishRequest,
) -> Result<FinishReply> {
    match resume_here(agent, slot, job).await {
        Ok(warning) => {
            job.advance(Phase::Completed)?;
            job.update(|i| i.kind = JobKind::Completed);
            job.event("guest runs on this host");
            Ok(FinishReply {
                resumed_at_us: job.resumed_at(),
                ..reply(true, warning)
            })
        }
        Err(e) => {
            job.event(format!("cannot take over: {e}"));
            job.close_tunnel(true);
            if !req.options.keep_dest_on_failure {
                discard(agent, slot).await;
                remove_created(agent, job).await;
            }
            job.advance(Phase::Failed)?;
            Ok(reply(false, Some(e.to_string())))
        }
    }
}

/// Phase 2, failure: the incoming QEMU, the transient domain and the
/// volumes Prepare created go (unless the operator keeps them to debug).
async fn give_up(
    agent: &Arc<Agent>,
    slot: &Arc<DomainSlot>,
    job: &Arc<Job>,
    req: &FinishRequest,
) -> Result<FinishReply> {
    job.close_tunnel(true);
    if req.options.keep_dest_on_failure {
        job.event("migration failed; keeping the paused destination for debugging");
    } else {
        discard(agent, slot).await;
        remove_created(agent, job).await;
        job.event("migration failed; destination cleaned");
    }
    job.advance(Phase::Failed)?;
    Ok(reply(false, None))
}
