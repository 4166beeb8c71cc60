//! Settling a migration without its driver: after this agent restarts
//! (`kill -9` at any moment), or when the driver stops speaking (the
//! managed `tern` killed, a p2p link cut, a lost reply).
//!
//! Each side runs the same three steps: look at QEMU, ask the other side
//! if the decision needs it (`migrate-query`), then act on
//! `tern_migrate::recovery`'s decision, which keeps the rule of safety.
//! The source settles once its QEMU's migration ended (or after a
//! restart); the destination's orphan timer settles an incoming guest that
//! no driver finished, as libvirt's autodestroy does.

use super::job::{Found, Job};
use super::record::JobRecord;
use crate::error::{AgentError, Result};
use crate::registry::DomainSlot;
use crate::Agent;
use std::sync::Arc;
use std::time::Duration;
use tern_api::{MigrationRequest, Request};
use tern_migrate::protocol::{
    check_version, FinishReply, FinishRequest, QueryReply, QueryRequest, PROTOCOL_VERSION,
};
use tern_migrate::recovery::{
    dest_action, dest_view, source_action, source_view, DestAction, PeerView, QemuSeen,
    SourceAction,
};
use tern_migrate::{JobKind, Phase, Role};
use tern_qemu::{MigrationStatus, RunState};

/// How often the watchers look.
pub(super) const TICK: Duration = Duration::from_secs(1);

/// After a restart: rebuilds every migration that was under way from its
/// record and settles it (in the background: a peer may need asking).
pub async fn recover_all(agent: &Arc<Agent>, records: Vec<JobRecord>) {
    for mut rec in records {
        let finish_died = rec.role == Role::Destination && rec.phase == Phase::Finish;
        if finish_died {
            // The Finish under way died with the agent: its driver saw an
            // error, so the verdict must come again (from the source or the
            // orphan timer), as if only Prepare had happened.
            rec.phase = Phase::Prepare;
        }
        let job = Job::from_record(&rec);
        // A destination takes verdicts from the moment its job is back in
        // the table: a Finish that comes while it recovers waits for it.
        let verdicts = (rec.role == Role::Destination).then(|| super::dest::attach(&job));
        if finish_died {
            job.event("the Finish under way died with the agent; waiting for a new verdict");
        }
        if let Err(e) = agent.jobs.insert(job.clone()) {
            tracing::warn!(domain = %rec.domain, error = %e, "cannot recover migration");
            continue;
        }
        job.event(format!(
            "agent restarted during phase {}: recovering this migration from its record",
            rec.phase
        ));
        tracing::info!(domain = %rec.domain, id = %rec.id, role = ?rec.role,
            phase = %rec.phase, "recovering migration");
        let agent = agent.clone();
        tokio::spawn(async move {
            match job.role {
                Role::Source => settle_source_until_done(&agent, &job).await,
                Role::Destination => {
                    if let Some(verdicts) = verdicts {
                        recover_dest(&agent, &job, verdicts).await
                    }
                }
            }
        });
    }
}

/// What QEMU says about a domain's migration.
pub(super) async fn seen(agent: &Agent, domain: &str) -> (QemuSeen, Option<tern_qemu::Qmp>) {
    let Some(slot) = agent.domains.get(domain) else {
        return (QemuSeen::Gone, None);
    };
    let qmp = slot.inner.lock().await.run.as_ref().map(|r| r.qmp.clone());
    let Some(qmp) = qmp else {
        return (QemuSeen::Gone, None);
    };
    let run = qmp.run_state().await;
    let mig = qmp.migration().await;
    match (run, mig) {
        (Ok(run), Ok((migration, _))) => (QemuSeen::Alive { run, migration }, Some(qmp)),
        _ => (QemuSeen::Gone, None),
    }
}

/// A client for the other side of `job`, from the URI its record keeps.
pub(super) fn peer_of(agent: &Agent, job: &Job) -> Result<tern_api::Client> {
    let uri = job.links().peer_uri.ok_or_else(|| {
        AgentError::Conflict("this migration does not know the other side's address".into())
    })?;
    let uri: tern_model::uri::ConnectUri = uri
        .parse()
        .map_err(|e: tern_model::uri::UriError| AgentError::Invalid(e.to_string()))?;
    agent
        .peer_client(&uri)
        .map_err(|e| AgentError::Failed(e.to_string()))
}

/// Asks the other side where the migration stands; `None` when it cannot
/// be reached (or speaks protocol version 1, which has no query).
pub(super) async fn ask(agent: &Agent, job: &Job) -> Option<PeerView> {
    ask_full(agent, job).await.map(|r| r.view)
}

/// Source: whether the destination's guest runs (its Finish ran `cont`),
/// which a post-copy pause needs; `false` when it cannot be asked.
pub async fn destination_runs(agent: &Agent, job: &Job) -> bool {
    ask_full(agent, job).await.is_some_and(|r| r.runs)
}

/// [`ask`], with the whole reply.
async fn ask_full(agent: &Agent, job: &Job) -> Option<QueryReply> {
    let client = peer_of(agent, job)
        .ok()?
        .with_timeout(Duration::from_secs(5));
    let req = QueryRequest {
        version: PROTOCOL_VERSION,
        id: job.id,
    };
    let r: QueryReply = match client
        .call(&Request::Migration(MigrationRequest::MigrateQuery { req }))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(domain = %job.domain, error = %e, "cannot ask the other side");
            return None;
        }
    };
    check_version(r.version).ok()?;
    Some(r)
}

/// Source: whether the destination holds the whole guest, paused and
/// never run (asked when the source QEMU died mid-migration).
pub async fn destination_has_everything(agent: &Agent, job: &Job) -> bool {
    ask(agent, job).await == Some(PeerView::Prepared { complete: true })
}

/// Answers the other side's `migrate-query`.
pub async fn query(agent: &Agent, req: QueryRequest) -> Result<QueryReply> {
    check_version(req.version).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let runs = match agent.jobs.by_id(req.id) {
        Some(Found::Running(j)) => j.role == Role::Destination && j.links().owns,
        Some(Found::Done(r)) => r.role == Role::Destination && r.links.owns,
        None => false,
    };
    let (role, view) = match agent.jobs.by_id(req.id) {
        None => (None, PeerView::Unknown),
        Some(Found::Done(r)) => {
            let view = match r.role {
                Role::Source => source_view(QemuSeen::Gone, Some(r.phase)),
                Role::Destination => dest_view(QemuSeen::Gone, r.links.owns, Some(r.phase)),
            };
            (Some(r.role), view)
        }
        Some(Found::Running(j)) => {
            // Not a touch: the other side asking is no driver, and counting
            // it would keep both orphan timers from ever firing.
            let (qemu, _) = seen(agent, &j.domain).await;
            let view = match j.role {
                Role::Source if matches!(j.phase(), Phase::Idle | Phase::Begin) => PeerView::Owns,
                // Mirroring disks, or QEMU's migration not yet ended: the
                // job knows before QEMU's status says so.
                Role::Source
                    if j.phase() == Phase::Perform && j.info().kind == JobKind::Unbounded =>
                {
                    PeerView::Sending
                }
                Role::Source => source_view(qemu, None),
                // A Finish is under way: its verdict comes first.
                Role::Destination if j.phase() == Phase::Finish && !j.links().owns => {
                    PeerView::Prepared { complete: false }
                }
                Role::Destination => dest_view(qemu, j.links().owns, None),
            };
            (Some(j.role), view)
        }
    };
    Ok(QueryReply {
        version: PROTOCOL_VERSION,
        id: req.id,
        role,
        view,
        runs,
    })
}

/// Source: watches a migration whose driver may vanish. Once QEMU's
/// migration ended and no driver spoke for the orphan timeout, settles it.
pub fn watch_source(agent: &Arc<Agent>, job: &Arc<Job>) {
    let (agent, job) = (agent.clone(), job.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK).await;
            if !is_current(&agent, &job) || job.phase().is_terminal() {
                return;
            }
            let ended = matches!(
                job.info().kind,
                JobKind::Completed | JobKind::Failed | JobKind::Cancelled
            );
            if !matches!(job.phase(), Phase::Perform | Phase::Confirm)
                || !ended
                || job.untouched_for() < agent.cfg.orphan_timeout
            {
                continue;
            }
            job.event(format!(
                "no driver spoke for {} s after QEMU's migration ended: settling it here",
                agent.cfg.orphan_timeout.as_secs()
            ));
            settle_source_until_done(&agent, &job).await;
            return;
        }
    });
}

pub(super) fn is_current(agent: &Agent, job: &Arc<Job>) -> bool {
    agent
        .jobs
        .get(&job.domain)
        .is_some_and(|j| Arc::ptr_eq(&j, job))
}

/// Source: settles the migration, asking again while the answer is "wait".
async fn settle_source_until_done(agent: &Arc<Agent>, job: &Arc<Job>) {
    let mut waited = false;
    while is_current(agent, job) && !job.phase().is_terminal() {
        match settle_source(agent, job).await {
            Ok(true) => return,
            Ok(false) => {
                if !waited {
                    job.event("the destination cannot say yet whether it ran the guest; the guest stays paused here until it can");
                    waited = true;
                }
                tokio::time::sleep(TICK * 2).await;
            }
            Err(e) => {
                job.event(format!("settling failed: {e}; trying again"));
                tokio::time::sleep(TICK * 2).await;
            }
        }
    }
}

/// One attempt; `Ok(false)` means "nothing can be proven yet, ask again".
async fn settle_source(agent: &Arc<Agent>, job: &Arc<Job>) -> Result<bool> {
    let (qemu, qmp) = seen(agent, &job.domain).await;
    let mut peer = None;
    loop {
        let action = source_action(job.phase(), qemu, peer);
        tracing::info!(domain = %job.domain, ?qemu, ?peer, ?action, "settling outgoing migration");
        let slot = agent.domains.get(&job.domain);
        match action {
            SourceAction::AskPeer => {
                peer = Some(ask(agent, job).await);
                continue;
            }
            SourceAction::Wait => return Ok(false),
            SourceAction::RecoverPostcopy => {
                if let Some(q) = &qmp {
                    if let Err(e) = super::postcopy::recover(agent, job, q).await {
                        tracing::info!(domain = %job.domain, error = %e, "post-copy still paused");
                    }
                }
                return Ok(false);
            }
            SourceAction::ServePostcopy => {
                // The destination runs the guest: wait for the post-copy to
                // end here (or for a recovery), never resume.
                if let Some(q) = &qmp {
                    if let Ok((MigrationStatus::Completed, _)) = q.migration().await {
                        continue;
                    }
                }
                return Ok(false);
            }
            SourceAction::StopHere => {
                job.event("the destination runs the guest: stopping the source copy");
                if let Some(slot) = slot {
                    super::source::stop_migrated(agent, &slot, job).await?;
                } else {
                    close(agent, job, Phase::Completed);
                }
                return Ok(true);
            }
            SourceAction::FinishOnDestination => {
                job.event(
                    "the destination holds the whole guest and never ran it: telling it to resume",
                );
                match finish_on_destination(agent, job, true).await {
                    Some(r) if r.resumed => peer = Some(Some(PeerView::Owns)),
                    Some(_) => peer = Some(Some(PeerView::Discarded)),
                    None => return Ok(false),
                }
                continue;
            }
            SourceAction::Resume | SourceAction::EndFailed => {
                if let Some(q) = &qmp {
                    super::storage::abandon_left_over(q).await;
                }
                if let Some(slot) = &slot {
                    super::source::resume_after_failure(slot, job).await;
                }
                // The destination may still hold a copy that never ran.
                let _ = finish_on_destination(agent, job, false).await;
                super::source::end_failed(agent, job);
                return Ok(true);
            }
        }
    }
}

/// Tells the destination how the migration ended, as the driver would.
async fn finish_on_destination(agent: &Agent, job: &Job, success: bool) -> Option<FinishReply> {
    let links = job.links();
    let client = peer_of(agent, job).ok()?;
    let req = FinishRequest {
        version: PROTOCOL_VERSION,
        id: job.id,
        name: links.peer_name.unwrap_or_else(|| job.domain.clone()),
        success,
        options: job.options.clone(),
    };
    let r: FinishReply = client
        .call(&Request::Migration(MigrationRequest::MigrateFinish { req }))
        .await
        .ok()?;
    check_version(r.version).ok()?;
    Some(r)
}

/// Ends a job whose domain is gone from this host.
pub(super) fn close(agent: &Agent, job: &Arc<Job>, to: Phase) {
    let from = job.phase();
    if !agent.jobs.claim(job, from, to) {
        let _ = job.advance(to);
    }
    agent.jobs.finish(job);
}

/// Destination, after a restart: keeps a guest that ran here, discards one
/// that cannot, and waits (with the orphan timer) for the rest.
async fn recover_dest(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    verdicts: tokio::sync::mpsc::Receiver<super::dest::Verdict>,
) {
    let (qemu, _) = seen(agent, &job.domain).await;
    let plain = !job.options.cold && !job.options.offline;
    let action = if plain {
        dest_action(qemu, job.links().owns)
    } else {
        // Nothing of an offline or cold migration is worth keeping after a
        // restart: the definition waits in memory, the cold receivers are
        // gone (and a cold copy resumes from its journal next time).
        DestAction::Discard
    };
    job.event(format!("QEMU here is {qemu:?}: {action:?}"));
    match action {
        DestAction::Keep | DestAction::TakeOver => keep_here(agent, job).await,
        DestAction::Discard => discard_here(agent, job, "the incoming guest cannot run here").await,
        DestAction::AwaitFinish => return super::dest::resume(agent, job, verdicts),
    }
    // Ended here: a verdict that came meanwhile is answered from the
    // job's record (its sender sees the channel close).
    job.close_verdicts();
    drop(verdicts);
}

/// Destination: the guest runs here; makes it so in the job table.
pub(super) async fn keep_here(agent: &Arc<Agent>, job: &Arc<Job>) {
    let Some(slot) = agent.domains.get(&job.domain) else {
        return close(agent, job, Phase::Failed);
    };
    if job.phase() == Phase::Prepare {
        let _ = job.advance(Phase::Finish);
    }
    match super::dest::resume_here(agent, &slot, job).await {
        Ok(_) => {
            let _ = job.advance(Phase::Completed);
            job.update(|i| i.kind = JobKind::Completed);
            job.event("guest runs on this host");
            agent.jobs.finish(job);
        }
        Err(e) => {
            job.event(format!("cannot take the guest over: {e}"));
            discard_slot(agent, &slot, job).await;
            close(agent, job, Phase::Failed);
        }
    }
}

/// Destination: removes the incoming guest and what the migration created.
async fn discard_here(agent: &Arc<Agent>, job: &Arc<Job>, why: &str) {
    job.event(format!("{why}: discarding the incoming guest"));
    if let Some(slot) = agent.domains.get(&job.domain) {
        if !job.options.cold && !job.options.offline {
            discard_slot(agent, &slot, job).await;
        }
    }
    close(agent, job, Phase::Failed);
}

pub(super) async fn discard_slot(agent: &Arc<Agent>, slot: &Arc<DomainSlot>, job: &Arc<Job>) {
    job.close_tunnel(true);
    let running = slot.inner.lock().await.run.as_ref().map(|r| r.qmp.clone());
    if let Some(qmp) = running {
        // Never kill a guest that runs: that is not an incoming copy.
        if matches!(qmp.run_state().await, Ok(RunState::Running)) {
            job.event("refusing to discard: the guest runs here");
            return;
        }
    }
    super::dest::discard(agent, slot).await;
    super::dest::remove_created(agent, job).await;
}
