//! The destination's run of one migration: one task, phase by phase, as
//! the source's is (`migration::run`). [`DestRun::run`] lists the phases:
//!
//! 1. Prepare (`prepare.rs`): admit, record, create the volumes, start the
//!    incoming QEMU.
//! 2. Answer: the source learns where to send the guest.
//! 3. Await the verdict: the source's Finish, handed over by the request
//!    handler ([`finish`]), or, when nobody spoke for the orphan timeout,
//!    the run's own decision after asking the source (libvirt's
//!    autodestroy of an orphaned incoming domain, made safe by asking).
//! 4. Settle (`finish.rs` for a Finish): take the guest over (`cont`) or
//!    give everything up.
//!
//! Verdicts are taken one at a time by this task, so a Finish and the
//! orphan timer can never act on the same migration at once. An agent
//! restarted mid-migration resumes the run at phase 3 ([`resume`]).

use super::super::job::Found;
use super::super::recover::{ask, close, discard_slot, is_current, keep_here, seen, TICK};
use super::super::Job;
use super::{finish as verdict, invalid, prepare as preparing};
use crate::error::{AgentError, Result};
use crate::faults;
use crate::Agent;
use std::sync::Arc;
use tern_migrate::protocol::{
    check_version, FinishReply, FinishRequest, PrepareReply, PrepareRequest,
};
use tern_migrate::recovery::{dest_action, dest_orphan, DestAction, PeerView, QemuSeen};
use tern_migrate::{Phase, Role};
use tern_qemu::MigrationStatus;
use tokio::sync::{mpsc, oneshot};

/// A Finish request, handed to the run that awaits it, and where its
/// reply goes.
#[derive(Debug)]
pub struct Verdict {
    req: FinishRequest,
    reply: oneshot::Sender<Result<FinishReply>>,
}

/// How the wait for a verdict ended.
enum Awaited {
    /// The source (or whoever settles for it) said Finish.
    Finish(Box<Verdict>),
    /// Nobody spoke for the orphan timeout; the source's answer decided.
    Orphaned {
        action: DestAction,
        source: Option<PeerView>,
    },
    /// The job ended elsewhere (aborted, or the agent shuts its jobs).
    Ended,
}

/// The destination's side of one migration, from its answer to its end.
struct DestRun {
    agent: Arc<Agent>,
    job: Arc<Job>,
    verdicts: mpsc::Receiver<Verdict>,
}

/// Prepare's request handler: starts the destination's run and returns
/// its answer. The run goes on if the caller hangs up.
pub async fn prepare(agent: &Arc<Agent>, req: PrepareRequest) -> Result<PrepareReply> {
    let (answer, answered) = oneshot::channel();
    tokio::spawn(DestRun::run(agent.clone(), req, answer));
    answered.await.unwrap_or_else(|_| {
        Err(AgentError::Failed(
            "the destination's run of this migration ended before it answered".into(),
        ))
    })
}

/// Finish's request handler: hands the verdict to the run that awaits it
/// and returns what the run did. A verdict for a run that already ended
/// is answered from the job's record.
pub async fn finish(agent: &Arc<Agent>, req: FinishRequest) -> Result<FinishReply> {
    check_version(req.version).map_err(invalid)?;
    if let Some(r) = late_verdict(agent, &req) {
        return r;
    }
    let job = agent.jobs.get_id(&req.name, req.id)?;
    job.touch();
    let Some(verdicts) = job.verdicts() else {
        return Err(AgentError::Conflict(format!(
            "the destination is still recovering migration {}; ask again",
            req.id
        )));
    };
    let (reply, replied) = oneshot::channel();
    let sent = verdicts
        .send(Verdict {
            req: req.clone(),
            reply,
        })
        .await;
    match (sent, replied.await) {
        (Ok(()), Ok(r)) => r,
        // The run ended without taking it (its orphan timer settled first).
        _ => late_verdict(agent, &req).unwrap_or_else(|| {
            Err(AgentError::Failed(format!(
                "the destination's run of migration {} ended before this verdict",
                req.id
            )))
        }),
    }
}

/// Opens a recovered job's verdict channel, before the job is back in the
/// table: a Finish that arrives while the agent decides what the job needs
/// waits in it. Verdicts left in it when recovery ends the job itself
/// (keeps or discards the guest) are answered from the job's record.
pub fn attach(job: &Arc<Job>) -> mpsc::Receiver<Verdict> {
    let (tx, verdicts) = mpsc::channel(4);
    job.set_verdicts(tx);
    verdicts
}

/// Restarts the run of a migration recovered from its record (the agent
/// restarted while it awaited its verdict): phases 3 and 4 only.
pub fn resume(agent: &Arc<Agent>, job: &Arc<Job>, verdicts: mpsc::Receiver<Verdict>) {
    let mut run = DestRun {
        agent: agent.clone(),
        job: job.clone(),
        verdicts,
    };
    tokio::spawn(async move {
        let awaited = run.await_verdict().await;
        run.settle(awaited).await;
    });
}

impl DestRun {
    /// The whole run, phase by phase.
    async fn run(
        agent: Arc<Agent>,
        req: PrepareRequest,
        answer: oneshot::Sender<Result<PrepareReply>>,
    ) {
        let (tx, verdicts) = mpsc::channel(4);
        let (job, reply) = match preparing::prepare(&agent, req, tx).await {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        let mut run = DestRun {
            agent,
            job,
            verdicts,
        };
        run.answer(answer, reply).await;
        let awaited = run.await_verdict().await;
        run.settle(awaited).await;
    }

    /// Phase 2: the answer goes back to the source. If nobody takes it
    /// (the caller hung up), the orphan timer decides later.
    async fn answer(&self, answer: oneshot::Sender<Result<PrepareReply>>, reply: PrepareReply) {
        faults::point(&self.agent, "dest-prepared").await;
        if answer.send(Ok(reply)).is_err() {
            self.job
                .event("the source hung up before Prepare's answer; awaiting a verdict anyway");
        }
    }

    /// Phase 3: waits for the verdict. A Finish that is waiting always
    /// wins against the orphan timer's tick.
    async fn await_verdict(&mut self) -> Awaited {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_bytes = None;
        loop {
            tokio::select! {
                biased;
                v = self.verdicts.recv() => {
                    return v.map_or(Awaited::Ended, |v| Awaited::Finish(Box::new(v)));
                }
                _ = tick.tick() => {
                    if let Some(a) = self.orphan_check(&mut last_bytes).await {
                        // A verdict that came in while the source was asked
                        // still wins.
                        return match self.verdicts.try_recv() {
                            Ok(v) => Awaited::Finish(Box::new(v)),
                            Err(_) => a,
                        };
                    }
                }
            }
        }
    }

    /// The orphan timer's look, once a tick. While the incoming stream
    /// moves, or a driver or the source speaks, it waits; once neither
    /// happened for the timeout it asks the source what to do.
    async fn orphan_check(&self, last_bytes: &mut Option<u64>) -> Option<Awaited> {
        let (agent, job) = (&self.agent, &self.job);
        if !is_current(agent, job) || job.phase() != Phase::Prepare {
            return Some(Awaited::Ended);
        }
        // Cold and offline migrations run no QEMU here: their receivers
        // time out on their own, and a verdict ends them.
        if job.options.cold || job.options.offline {
            return None;
        }
        let (qemu, qmp) = seen(agent, &job.domain).await;
        if let Some(q) = &qmp {
            if let Ok((_, v)) = q.migration().await {
                let b = v["ram"]["transferred"].as_u64();
                if b.is_some() && b != *last_bytes {
                    *last_bytes = b;
                    job.touch();
                }
            }
        }
        if dest_action(qemu, false) == DestAction::Keep {
            // Post-copy started without a Finish reaching us.
            return Some(Awaited::Orphaned {
                action: DestAction::Keep,
                source: None,
            });
        }
        if job.untouched_for() < agent.cfg.orphan_timeout {
            return None;
        }
        let source = ask(agent, job).await;
        let complete = matches!(
            qemu,
            QemuSeen::Alive {
                migration: MigrationStatus::Completed,
                ..
            }
        );
        match dest_orphan(source, complete) {
            DestAction::AwaitFinish => {
                job.touch();
                None
            }
            action => Some(Awaited::Orphaned { action, source }),
        }
    }

    /// Phase 4: acts on the verdict, ends the job, and answers verdicts
    /// that raced with the end from the job's record.
    async fn settle(mut self, awaited: Awaited) {
        let (agent, job) = (&self.agent, &self.job);
        match awaited {
            Awaited::Finish(v) => {
                let r = verdict::apply(agent, job, &v.req).await;
                let _ = v.reply.send(r);
            }
            Awaited::Orphaned {
                action: DestAction::Keep,
                ..
            } => keep_here(agent, job).await,
            Awaited::Orphaned {
                action: DestAction::TakeOver,
                ..
            } => {
                if job.advance(Phase::Finish).is_ok() {
                    job.event("the source's copy is gone: resuming the guest here");
                    keep_here(agent, job).await;
                }
            }
            Awaited::Orphaned { source, .. } => {
                let why = format!(
                    "no driver finished this migration for {} s and the source says {}",
                    agent.cfg.orphan_timeout.as_secs(),
                    source.map_or("nothing (unreachable)".to_string(), |v| format!("{v:?}"))
                );
                job.event(format!("{why}: discarding the incoming guest"));
                if let Some(slot) = agent.domains.get(&job.domain) {
                    discard_slot(agent, &slot, job).await;
                }
                close(agent, job, Phase::Failed);
            }
            Awaited::Ended => {}
        }
        job.close_verdicts();
        self.verdicts.close();
        while let Some(v) = self.verdicts.recv().await {
            let r = late_verdict(agent, &v.req).unwrap_or_else(|| {
                Err(AgentError::Failed(
                    "the destination's run of this migration ended".into(),
                ))
            });
            let _ = v.reply.send(r);
        }
    }
}

/// The answer to a verdict on a migration whose run here already ended:
/// the guest runs here (a driver that lost Finish's reply asks again), or
/// the migration failed here (the orphan timer gave it up). `None` while
/// the run is still going, or when this host never heard of it.
fn late_verdict(agent: &Agent, req: &FinishRequest) -> Option<Result<FinishReply>> {
    let (phase, owns) = match agent.jobs.by_id(req.id)? {
        // Taking the guest over right now, past `cont`: the answer stands.
        Found::Running(j)
            if j.role == Role::Destination
                && matches!(j.phase(), Phase::Finish | Phase::Completed)
                && j.links().owns =>
        {
            (j.phase(), true)
        }
        Found::Running(_) => return None,
        Found::Done(r) if r.role == Role::Destination => (r.phase, r.links.owns),
        Found::Done(_) => return None,
    };
    Some(Ok(match (req.success, phase, owns) {
        (_, Phase::Completed, _) | (_, Phase::Finish, true) => verdict::reply(true, None),
        (false, _, _) => verdict::reply(false, None),
        (true, phase, _) => verdict::reply(
            false,
            Some(format!(
                "the destination already ended this migration in phase {phase} (its orphan timer gave it up)"
            )),
        ),
    }))
}
