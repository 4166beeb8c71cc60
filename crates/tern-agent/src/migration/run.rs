//! The source's migration run: the one coordinator of every migration.
//!
//! `tern migrate` (managed or `--p2p`) and the controller's jobs all ask
//! the source agent to run the migration and then only follow its job;
//! nothing that can vanish mid-way (a CLI, a controller) holds a step of
//! it. [`SourceRun::run`] lists the phases in order, in the style of
//! Propolis's `migrate/source.rs`:
//!
//! 1. **Begin** (here): check the guest and describe it ([`super::source::begin`]).
//! 2. **Prepare** (destination): it admits the guest and starts an incoming QEMU.
//! 3. **Perform** (here): disk mirrors, QEMU's migration and its watch
//!    ([`super::source::perform`], then [`super::perform`]).
//! 4. **Watch** (here): until QEMU completed, failed or went post-copy.
//! 5. **Finish** (destination): it resumes the guest, or discards its copy.
//! 6. **Confirm** (here): stop and clean up after success, resume after failure
//!    ([`super::source::confirm`]).
//!
//! Each phase records itself in the job before it acts
//! ([`super::job::Job::advance`] writes the job's record), so an agent
//! restarted mid-way knows where the migration stood and settles it with
//! the destination ([`super::recover`]). The rule of safety holds here:
//! the destination is told to resume only after the source's QEMU
//! completed, and the source resumes only when the destination said it did
//! not. If the destination's answer is lost, nobody resumes here and the
//! orphan watcher asks the destination.
//!
//! The messages exchanged with the destination are in
//! `tern_migrate::protocol`.

use super::job::Job;
use super::source;
use crate::error::{AgentError, Result};
use crate::Agent;
use std::sync::Arc;
use std::time::Duration;
use tern_api::{ApiError, Client, ClientError, MigrationRequest, Request};
use tern_migrate::phase::{Phase, Role};
use tern_migrate::protocol::{
    check_version, BeginReply, ConfirmRequest, FinishReply, FinishRequest, IncomingTarget,
    PerformRequest, PrepareReply, PrepareRequest, PROTOCOL_VERSION,
};
use tern_migrate::{JobKind, MigrateOptions};
use thiserror::Error;
use tokio::sync::oneshot;
use uuid::Uuid;

/// Longest wait for the job to change before the watch looks again.
const POLL: Duration = Duration::from_millis(500);

/// A failed run, with the phase it failed in.
#[derive(Debug, Error)]
pub enum RunError {
    /// This source refused to begin.
    #[error("{0}")]
    Begin(#[source] AgentError),
    /// The destination could not prepare.
    #[error("destination refused: {0}")]
    Prepare(#[source] ClientError),
    /// This source could not start or finish sending.
    #[error("{0}")]
    Perform(String),
    /// The destination could not take over; the guest runs on the source.
    #[error("destination could not resume the guest: {0}; the guest keeps running on the source")]
    Finish(String),
    /// The destination's answer was lost: the guest may be paused on both.
    #[error("lost contact with the destination after the memory was sent ({0}); the two agents settle it as soon as they reach each other: the destination keeps the guest if it ran it, otherwise the source resumes it (watch 'tern domjobinfo' on either host)")]
    Unknown(#[source] ClientError),
    /// The final cleanup here failed.
    #[error("the guest runs on the destination, but cleaning the source failed: {0}")]
    Confirm(#[source] AgentError),
}

impl RunError {
    /// The error as the caller of `migrate-run` sees it, keeping the
    /// destination's own code when it refused.
    fn to_api(&self) -> ApiError {
        let code = match self {
            RunError::Begin(e) => e.code(),
            RunError::Prepare(ClientError::Api(a)) => a.code,
            RunError::Prepare(_) | RunError::Unknown(_) => tern_api::ErrorCode::Failed,
            RunError::Perform(_) | RunError::Finish(_) => tern_api::ErrorCode::Failed,
            RunError::Confirm(_) => tern_api::ErrorCode::Failed,
        };
        ApiError::new(code, self.to_string().replace('\n', " "))
    }
}

/// Starts a migration of `name` to the agent at `dest_uri`, run by this
/// agent. Returns once the destination prepared (or with the refusal of
/// either side); the rest runs in the background, in the job.
pub async fn start(
    agent: &Arc<Agent>,
    name: &str,
    dest_uri: &str,
    options: MigrateOptions,
    id: Option<Uuid>,
) -> Result<()> {
    options
        .validate()
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    let uri: tern_model::uri::ConnectUri = dest_uri
        .parse()
        .map_err(|e: tern_model::uri::UriError| AgentError::Invalid(e.to_string()))?;
    let dst = agent
        .peer_client(&uri)
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    let slot = agent.domains.find(name)?;
    if let Some(why) = agent.unplugs.refusal(&slot.name) {
        return Err(AgentError::Conflict(format!(
            "cannot migrate '{name}': {why}"
        )));
    }
    let id = id.unwrap_or_else(Uuid::new_v4);
    let job = Job::new(id, Role::Source, &slot.name, options.clone());
    agent.jobs.insert(job.clone())?;
    job.advance(Phase::Begin)?;
    job.event(format!("migration to {dest_uri}, run by this agent"));
    let run = SourceRun {
        agent: agent.clone(),
        job,
        id,
        name: slot.name.clone(),
        dest_name: slot.name.clone(),
        dst,
        options,
    };
    let (accepted, prepared) = oneshot::channel();
    tokio::spawn(run.run(accepted));
    match prepared.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AgentError::Peer(e)),
        Err(_) => Err(AgentError::Failed(
            "the migration's run ended before the destination prepared".into(),
        )),
    }
}

/// One migration, as the source runs it.
struct SourceRun {
    agent: Arc<Agent>,
    job: Arc<Job>,
    id: Uuid,
    name: String,
    /// The guest's name on the destination (`--dname`), known after Begin.
    dest_name: String,
    dst: Client,
    options: MigrateOptions,
}

/// What the destination got ready in Prepare.
struct Prepared {
    begin: BeginReply,
    prep: PrepareReply,
}

impl SourceRun {
    /// The migration, phase by phase. `accepted` learns whether the two
    /// sides agreed to migrate (after Prepare), so that a refusal reaches
    /// the caller with its code.
    async fn run(mut self, accepted: oneshot::Sender<std::result::Result<(), ApiError>>) {
        let ready = match self.begin().await {
            Ok(begin) => self.prepare(begin).await,
            Err(e) => Err(e),
        };
        let ready = match ready {
            Ok(r) => {
                let _ = accepted.send(Ok(()));
                r
            }
            Err(e) => {
                let _ = accepted.send(Err(e.to_api()));
                return self.end(Err(e));
            }
        };
        let Some(target) = self.incoming(&ready) else {
            let r = self.move_definition().await;
            return self.end(r);
        };
        let r = async {
            self.perform(&ready, target).await?;
            let finished = self.watch().await?;
            let fin = self.finish(finished).await?;
            self.confirm(fin).await
        }
        .await;
        self.end(r)
    }

    /// Begin: this agent checks the guest can go and describes it.
    async fn begin(&mut self) -> std::result::Result<BeginReply, RunError> {
        self.options = with_dest_machines(&self.dst, &self.options).await;
        let begin = source::begin(&self.agent, &self.name, &self.options)
            .await
            .map_err(RunError::Begin)?;
        self.dest_name = begin.domain.name.clone();
        // This agent may have applied the policy's start plan.
        if let Some(o) = &begin.options {
            self.options = o.clone();
        }
        Ok(begin)
    }

    /// Prepare: the destination admits the guest and readies its QEMU.
    async fn prepare(&mut self, begin: BeginReply) -> std::result::Result<Prepared, RunError> {
        let req = PrepareRequest {
            version: PROTOCOL_VERSION,
            id: self.id,
            domain: begin.domain.clone(),
            options: self.options.clone(),
            source_host: self.agent.self_uri(),
            disks: begin.disks.clone(),
            files: begin.files.clone(),
            source_uri: begin.source_uri.clone(),
            source_name: Some(self.name.clone()),
            source_tls_identity: begin.tls_identity.clone(),
            source_nvram_dir: begin.nvram_dir.clone(),
            source_ceph_fsids: begin.ceph_fsids.clone(),
            source_addresses: begin.addresses.clone(),
        };
        let prep: PrepareReply = self
            .dst
            .call(&Request::Migration(MigrationRequest::MigratePrepare {
                req,
            }))
            .await
            .map_err(RunError::Prepare)?;
        check_version(prep.version).map_err(|e| RunError::Perform(e.to_string()))?;
        self.job
            .event(format!("the destination prepared '{}'", self.dest_name));
        Ok(Prepared { begin, prep })
    }

    /// Where the data goes: QEMU's incoming address, the cold receivers, or
    /// nowhere (offline: only the definition moves).
    fn incoming(&self, r: &Prepared) -> Option<IncomingTarget> {
        match (r.prep.incoming.clone(), self.options.cold) {
            (Some(t), _) => Some(t),
            // Cold: no QEMU listens; the files go to `prep.cold`.
            (None, true) => Some(IncomingTarget {
                host: String::new(),
                port: 0,
                tunnel: false,
            }),
            (None, false) => None,
        }
    }

    /// Offline: the destination defines the guest in Finish; nothing else
    /// moves.
    async fn move_definition(&self) -> std::result::Result<Outcome, RunError> {
        self.job
            .advance(Phase::Perform)
            .map_err(|e| RunError::Perform(e.to_string()))?;
        let fin = self
            .finish_call(true)
            .await
            .map_err(|e| RunError::Finish(e.to_string()))?;
        if !fin.resumed {
            let why = fin.error.unwrap_or_else(|| "unknown reason".into());
            let _ = self.confirm_call(false).await;
            return Err(RunError::Finish(why));
        }
        // The job ends first: `--undefinesource` cannot undefine a domain
        // whose migration is under way.
        self.job
            .advance(Phase::Confirm)
            .map_err(RunError::Confirm)?;
        self.job
            .advance(Phase::Completed)
            .map_err(RunError::Confirm)?;
        self.job.update(|i| {
            i.kind = JobKind::Completed;
            i.warning = fin.error.clone();
        });
        self.agent.jobs.finish(&self.job);
        let warning = match self.confirm_call(true).await {
            Ok(()) => fin.error,
            Err(e) => Some(format!(
                "the definition moved, but the source kept its own: {e}"
            )),
        };
        Ok(Outcome { warning })
    }

    /// Perform: disk mirrors and QEMU's migration start here. An operator's
    /// abort that came before is honoured by rolling back instead.
    async fn perform(
        &self,
        r: &Prepared,
        target: IncomingTarget,
    ) -> std::result::Result<(), RunError> {
        if *self.job.cancel.borrow() {
            self.roll_back().await;
            return Err(RunError::Perform(
                "migration cancelled by the operator before memory moved; the guest keeps running on the source".into(),
            ));
        }
        let req = PerformRequest {
            version: PROTOCOL_VERSION,
            id: self.id,
            name: self.name.clone(),
            target,
            nbd: r.prep.nbd.clone(),
            cold: r.prep.cold.clone(),
            files: r.begin.files.clone(),
            options: self.options.clone(),
            dest_uri: self.dst.uri().map(str::to_string),
            dest_name: Some(self.dest_name.clone()),
        };
        if let Err(e) = source::perform(&self.agent, req).await {
            self.roll_back().await;
            return Err(RunError::Perform(e.to_string()));
        }
        Ok(())
    }

    /// Watch: until QEMU is done, or in post-copy, when the destination
    /// must run at once to serve page faults (then Finish happens here).
    async fn watch(&self) -> std::result::Result<Option<FinishReply>, RunError> {
        let mut finished = None;
        let mut changes = self.job.changes();
        let info = loop {
            // The run is this job's driver: it is alive.
            self.job.touch();
            let info = self.job.info();
            if info.qemu_status.is_postcopy() && finished.is_none() {
                finished = Some(self.finish_call(true).await.map_err(RunError::Unknown)?);
            }
            if matches!(
                info.kind,
                JobKind::Completed | JobKind::Failed | JobKind::Cancelled
            ) {
                break info;
            }
            let _ = tokio::time::timeout(POLL, changes.changed()).await;
        };
        if info.kind != JobKind::Completed {
            let why = info
                .error
                .clone()
                .unwrap_or_else(|| format!("migration {}", info.qemu_status));
            if finished.is_none() {
                self.roll_back().await;
            }
            return Err(RunError::Perform(why));
        }
        Ok(finished)
    }

    /// Finish: the source's QEMU completed, so the destination may resume.
    async fn finish(
        &self,
        finished: Option<FinishReply>,
    ) -> std::result::Result<FinishReply, RunError> {
        let fin = match finished {
            Some(f) => f,
            None => self.finish_call(true).await.map_err(RunError::Unknown)?,
        };
        if !fin.resumed {
            let why = fin.error.unwrap_or_else(|| "unknown reason".into());
            let _ = self.confirm_call(false).await;
            return Err(RunError::Finish(why));
        }
        if let Some(ms) =
            tern_migrate::jobinfo::guest_stopped_ms(self.job.stopped_at(), fin.resumed_at_us)
        {
            self.job.update(|i| i.guest_stopped_ms = Some(ms));
        }
        Ok(fin)
    }

    /// Confirm: the destination runs the guest; the source stops and
    /// cleans up.
    async fn confirm(&self, fin: FinishReply) -> std::result::Result<Outcome, RunError> {
        if let Some(w) = &fin.error {
            self.job.update(|i| i.warning = Some(w.clone()));
        }
        self.confirm_call(true).await.map_err(RunError::Confirm)?;
        Ok(Outcome { warning: fin.error })
    }

    /// Abandons a migration whose data never fully moved: the destination
    /// discards what it prepared, the source resumes. Either side may
    /// never have heard of it: errors are only logged.
    async fn roll_back(&self) {
        if let Err(e) = self.finish_call(false).await {
            tracing::info!(error = %e, "rolling back: the destination did not answer");
        }
        if let Err(e) = self.confirm_call(false).await {
            tracing::info!(error = %e, "rolling back: confirm failed here");
        }
    }

    async fn finish_call(&self, success: bool) -> std::result::Result<FinishReply, ClientError> {
        let req = FinishRequest {
            version: PROTOCOL_VERSION,
            id: self.id,
            name: self.dest_name.clone(),
            success,
            options: self.options.clone(),
        };
        let reply = self
            .dst
            .call::<FinishReply>(&Request::Migration(MigrationRequest::MigrateFinish { req }))
            .await?;
        check_version(reply.version).map_err(|e| ClientError::Decode {
            target: self.dst.describe(),
            message: e.to_string(),
        })?;
        Ok(reply)
    }

    async fn confirm_call(&self, success: bool) -> Result<()> {
        let req = ConfirmRequest {
            version: PROTOCOL_VERSION,
            id: self.id,
            name: self.name.clone(),
            success,
            options: self.options.clone(),
        };
        source::confirm(&self.agent, req).await
    }

    /// Records how the run ended in the job, unless the job settled
    /// already (Confirm ends it) or must be settled with the destination.
    fn end(self, r: std::result::Result<Outcome, RunError>) {
        let job = &self.job;
        let e = match r {
            Ok(Outcome { warning: Some(w) }) => {
                job.event(format!("warning: {w}"));
                return;
            }
            Ok(_) => return,
            Err(e) => e,
        };
        job.event(format!("failed: {e}"));
        if matches!(e, RunError::Unknown(_) | RunError::Confirm(_)) && !job.phase().is_terminal() {
            // The destination's answer was lost after the memory moved: it
            // may run the guest. The orphan watcher asks it and settles.
            job.event("the destination's verdict is unknown: settling it with the destination");
            return;
        }
        job.update(|i| {
            if i.kind != JobKind::Cancelled {
                i.kind = JobKind::Failed;
            }
            i.error = Some(e.to_string());
        });
        if !job.phase().is_terminal() {
            let to = if job.phase() == Phase::Begin {
                Phase::Failed
            } else {
                Phase::Confirm
            };
            let _ = job.advance(to);
            if to == Phase::Confirm {
                let _ = job.advance(Phase::Failed);
            }
        }
        self.agent.jobs.finish(job);
    }
}

/// A run that succeeded.
struct Outcome {
    /// What went wrong after the destination took the guest over (its
    /// definition could not be stored, say): the migration still succeeded.
    warning: Option<String>,
}

/// `options` with the machine types the destination's QEMU offers, so
/// that Begin can refuse a guest pinned to one it lacks. A destination
/// that does not answer `nodeinfo` leaves the check to Prepare.
async fn with_dest_machines(dst: &Client, options: &MigrateOptions) -> MigrateOptions {
    let mut o = options.clone();
    if o.dest_machines.is_none() {
        if let Ok(f) = dst.call::<tern_model::HostFacts>(&Request::NodeInfo).await {
            o.dest_machines = Some(f.machines).filter(|m| !m.is_empty());
        }
    }
    o
}
