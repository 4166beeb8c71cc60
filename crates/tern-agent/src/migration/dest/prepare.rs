//! Destination, Prepare, phase by phase: the first part of the
//! destination's run (`run.rs`). [`prepare`] lists the phases in order;
//! each is one function. Nothing is created before the migration is on
//! disk ([`record`]), and every phase after it either completes or is
//! undone by [`roll_back`], so a refused or failed Prepare leaves no QEMU,
//! volume or transient domain behind.

use super::{discard, invalid, remove_created, start_incoming};
use crate::error::{AgentError, Result};
use crate::registry::DomainSlot;
use crate::Agent;
use std::sync::Arc;
use tern_migrate::protocol::{
    check_version, IncomingTarget, NbdTarget, PrepareReply, PrepareRequest, PROTOCOL_VERSION,
};
use tern_migrate::{Phase, Role};
use tokio::sync::mpsc;

use super::super::Job;
use super::Verdict;

/// Prepare: everything the destination needs before memory flows. Returns
/// the job (which takes its verdicts on `verdicts` from the moment it is
/// recorded) and the answer for the source.
pub async fn prepare(
    agent: &Arc<Agent>,
    req: PrepareRequest,
    verdicts: mpsc::Sender<Verdict>,
) -> Result<(Arc<Job>, PrepareReply)> {
    let existing = admit(agent, &req).await?;
    let mut req = req;
    crate::guest_setup::rehome_nvram(agent, &mut req.domain, req.source_nvram_dir.as_deref());
    crate::guest_setup::check_nvram_owner(agent, &req.domain).await?;
    let job = record(agent, &req, verdicts)?;
    if req.options.offline || req.options.cold {
        let reply = prepare_copy(agent, &job, req, existing).await?;
        return Ok((job, reply));
    }
    let slot = match existing {
        Some(s) => s,
        None => {
            let s = DomainSlot::transient(req.domain.clone());
            if let Err(e) = agent.domains.insert(s.clone()) {
                let _ = job.advance(Phase::Failed);
                agent.jobs.finish(&job);
                return Err(e);
            }
            s
        }
    };
    let started = async {
        let req = create_volumes(agent, &job, req).await?;
        let (target, nbd) = start_incoming(agent, &slot, &req, &job).await?;
        Ok::<_, AgentError>((req.id, target, nbd))
    }
    .await;
    match started {
        Ok((id, target, nbd)) => {
            let reply = listening(&job, id, target, nbd);
            Ok((job, reply))
        }
        Err(e) => {
            roll_back(agent, &slot, &job).await;
            Err(e)
        }
    }
}

/// Phase 1: refuses what this host cannot receive. Creates nothing.
/// Returns the domain's slot if the host knows it already (defined, off).
async fn admit(agent: &Arc<Agent>, req: &PrepareRequest) -> Result<Option<Arc<DomainSlot>>> {
    check_version(req.version).map_err(invalid)?;
    req.options.validate().map_err(invalid)?;
    // The definition comes from a peer as JSON, not through `define`'s XML
    // import: check it the same way before its name becomes a path.
    tern_model::validate::validate(&req.domain)
        .map_err(|e| invalid(format!("the source sent a domain this host refuses: {e}")))?;
    if let Some(f) = agent.cfg.faults.prepare_delay {
        tokio::time::sleep(f).await;
    }
    let d = &req.domain;
    let existing = agent.domains.get(&d.name);
    if let Some(s) = &existing {
        if s.uuid != d.uuid {
            return Err(AgentError::Conflict(format!(
                "the destination already has a different domain named '{}'; use --dname to rename",
                d.name
            )));
        }
        if s.inner.lock().await.run.is_some() {
            return Err(AgentError::Conflict(format!(
                "domain '{}' is already running on the destination",
                d.name
            )));
        }
    }
    if agent
        .domains
        .all()
        .iter()
        .any(|s| s.uuid == d.uuid && s.name != d.name)
    {
        return Err(AgentError::Conflict(format!(
            "the destination has domain uuid {} under another name",
            d.uuid
        )));
    }
    if !req.options.offline {
        // A guest whose rbd disks need a secret this host lacks would only
        // fail when its QEMU starts: refuse before anything is created.
        // (A disk that does not resolve here fails later, as before.)
        if let Ok(resolved) = agent.pools.resolve_disks(d).await {
            agent
                .pools
                .secrets
                .check_domain(&resolved)
                .map_err(|e| AgentError::Conflict(format!("on the destination: {e}")))?;
            agent
                .pools
                .check_rbd_disks(&resolved)
                .await
                .map_err(|e| AgentError::Conflict(format!("on the destination: {e}")))?;
            agent
                .pools
                .check_rbd_fsids(&resolved, &req.source_ceph_fsids)
                .await
                .map_err(|e| AgentError::Conflict(format!("on the destination: {e}")))?;
        }
    }
    if !req.options.unsafe_ && !req.options.offline && !req.options.cold {
        super::super::source::check_storage(agent, d, &req.options)
            .await
            .map_err(|e| AgentError::Conflict(format!("on the destination: {e}")))?;
        // The source reads these in Perform: proof both see one export.
        agent
            .pools
            .leave_share_tokens(d, &req.options, &req.id)
            .await
            .map_err(|e| AgentError::Conflict(format!("on the destination: {e}")))?;
    }
    Ok(existing)
}

/// Phase 2: the migration, and who its source is, on disk before anything
/// is created: an orphaned destination asks the source where it stands.
/// From here a Finish finds the run (a verdict that comes early waits).
fn record(
    agent: &Arc<Agent>,
    req: &PrepareRequest,
    verdicts: mpsc::Sender<Verdict>,
) -> Result<Arc<Job>> {
    let job = Job::new(
        req.id,
        Role::Destination,
        &req.domain.name,
        req.options.clone(),
    );
    job.set_verdicts(verdicts);
    agent.jobs.insert(job.clone())?;
    let prepared = job
        .set_links(|l| {
            l.peer_uri = req.source_uri.clone();
            l.peer_name = req.source_name.clone();
        })
        .and_then(|_| job.advance(Phase::Prepare));
    if let Err(e) = prepared {
        agent.jobs.forget(&job);
        return Err(e);
    }
    job.event(format!("incoming from {}", req.source_host));
    Ok(job)
}

/// Phase 3, cold and offline migrations: no QEMU; receivers for the disk
/// files (cold), and the definition kept for Finish.
async fn prepare_copy(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    req: PrepareRequest,
    existing: Option<Arc<DomainSlot>>,
) -> Result<PrepareReply> {
    let mut cold = None;
    if req.options.cold {
        if existing.is_some() {
            agent.jobs.finish(job);
            return Err(AgentError::Conflict(format!(
                "domain '{}' already exists on the destination; use --dname to rename",
                req.domain.name
            )));
        }
        if !req.options.unsafe_ {
            // The source reads these before sending: proof that the disks
            // it leaves in place are on storage this host sees.
            let left = agent
                .pools
                .leave_cold_tokens(&req.domain, &req.files, &req.id)
                .await;
            if let Err(e) = left {
                agent.jobs.finish(job);
                return Err(e);
            }
        }
        // A variable store arrives only as the guest's own (see `rehome_nvram`).
        let store = req.domain.os.nvram.as_ref().map(|n| n.path.clone());
        let nvram_dir = crate::guest_setup::nvram_dir(agent);
        if let Some(f) = req
            .files
            .iter()
            .find(|f| f.nvram && store.as_deref() != Some(nvram_dir.join(&f.volume).as_path()))
        {
            agent.jobs.finish(job);
            return Err(AgentError::Conflict(format!(
                "the source sent UEFI variable store '{}', which is not the guest's <nvram>",
                f.volume
            )));
        }
        match super::super::cold::prepare(
            agent,
            job,
            &req.files,
            &req.options,
            req.source_tls_identity.as_deref(),
        )
        .await
        {
            Ok(t) => cold = Some(t),
            Err(e) => {
                let _ = job.advance(Phase::Failed);
                agent.jobs.finish(job);
                return Err(e);
            }
        }
    }
    job.set_offline_def(req.domain);
    Ok(PrepareReply {
        version: PROTOCOL_VERSION,
        id: req.id,
        incoming: None,
        nbd: None,
        cold,
    })
}

/// Phase 3: the volumes of the disks the migration copies, recorded in the
/// job before they are created (an agent killed half-way knows every file
/// that may be its own).
async fn create_volumes(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    mut req: PrepareRequest,
) -> Result<PrepareRequest> {
    if req.disks.is_empty() {
        return Ok(req);
    }
    let record = |planned: &[std::path::PathBuf]| {
        *job.created.lock().unwrap_or_else(|p| p.into_inner()) = planned.to_vec();
        job.persist()
    };
    let files = super::super::storage::create_volumes(
        agent,
        &mut req.domain,
        &req.disks,
        &req.options,
        record,
    )
    .await?;
    job.event(format!(
        "created {} volume(s) for the copied disks",
        files.len()
    ));
    Ok(req)
}

/// Phase 4 done: QEMU listens; the answer for the source.
fn listening(
    job: &Arc<Job>,
    id: uuid::Uuid,
    target: IncomingTarget,
    nbd: Option<NbdTarget>,
) -> PrepareReply {
    job.event(if target.tunnel {
        format!(
            "QEMU listening on its unix socket, behind this agent's tunnel at {}",
            target.qemu_uri()
        )
    } else {
        format!("QEMU listening on {}", target.qemu_uri())
    });
    PrepareReply {
        version: PROTOCOL_VERSION,
        id,
        incoming: Some(target),
        nbd,
        cold: None,
    }
}

/// Undoes phases 3 and 4: the incoming QEMU, the transient domain, the
/// created volumes; the job ends failed.
async fn roll_back(agent: &Arc<Agent>, slot: &Arc<DomainSlot>, job: &Arc<Job>) {
    job.close_tunnel(true);
    discard(agent, slot).await;
    remove_created(agent, job).await;
    let _ = job.advance(Phase::Failed);
    agent.jobs.finish(job);
}
