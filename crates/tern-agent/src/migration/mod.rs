//! Migration jobs on this agent: the source side ([`source`]), the
//! destination side ([`dest`]), and the operator's handles on a running job
//! (`domjobinfo`, `domjobabort`, speed and downtime).

pub mod cold;
pub mod dest;
pub mod forecast;
mod perform;
pub mod qemu_tls;
pub mod source;
pub mod storage;
pub mod tunnel;

use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tern_api::MigrationRequest;
use tern_migrate::{JobEvent, JobInfo, JobKind, MigrateOptions, Phase, Role};
use tokio::sync::watch;
use uuid::Uuid;

/// Mutable part of a job.
#[derive(Debug)]
pub struct JobState {
    /// Current phase.
    pub phase: Phase,
    /// Latest figures.
    pub info: JobInfo,
    /// Everything that happened, in order.
    pub events: Vec<JobEvent>,
}

/// One migration, as one agent sees it.
#[derive(Debug)]
pub struct Job {
    /// Migration id shared by both agents.
    pub id: Uuid,
    /// Our side.
    pub role: Role,
    /// Domain name on this host.
    pub domain: String,
    /// Options.
    pub options: MigrateOptions,
    /// When it started here.
    pub started: Instant,
    state: Mutex<JobState>,
    /// Set by `domjobabort`.
    pub cancel: watch::Sender<bool>,
    /// Set by `migrate-postcopy`.
    pub postcopy: watch::Sender<bool>,
    offline_def: Mutex<Option<tern_model::Domain>>,
    /// Files the destination created for this migration (removed on failure).
    pub created: Mutex<Vec<std::path::PathBuf>>,
    /// Receivers of a cold migration (destination).
    pub cold: Mutex<Option<cold::Incoming>>,
    /// The tunnel's ends, with `--tunnelled`.
    tunnel: Mutex<Option<tunnel::Ends>>,
    /// Bumped on every change, for long polls.
    changed: watch::Sender<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Job {
    /// A new job in `Idle`.
    pub fn new(id: Uuid, role: Role, domain: &str, options: MigrateOptions) -> Arc<Job> {
        let info = JobInfo {
            kind: JobKind::Unbounded,
            operation: match role {
                Role::Source => "Outgoing migration".into(),
                Role::Destination => "Incoming migration".into(),
            },
            phase: Phase::Idle.to_string(),
            ..Default::default()
        };
        Arc::new(Job {
            id,
            role,
            domain: domain.to_string(),
            options,
            started: Instant::now(),
            state: Mutex::new(JobState {
                phase: Phase::Idle,
                info,
                events: Vec::new(),
            }),
            cancel: watch::channel(false).0,
            postcopy: watch::channel(false).0,
            offline_def: Mutex::new(None),
            created: Mutex::new(Vec::new()),
            cold: Mutex::new(None),
            tunnel: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `to` if the state machine allows it, recording an event.
    pub fn advance(&self, to: Phase) -> Result<()> {
        let mut s = self.lock();
        let next = s
            .phase
            .next(self.role, to)
            .map_err(|e| AgentError::Conflict(e.to_string()))?;
        s.phase = next;
        s.info.phase = next.to_string();
        let msg = format!("phase {next}");
        s.events.push(JobEvent {
            at_ms: now_ms(),
            phase: next.to_string(),
            message: msg,
        });
        drop(s);
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Records an event.
    pub fn event(&self, message: impl Into<String>) {
        let mut s = self.lock();
        let phase = s.phase.to_string();
        let message = message.into();
        tracing::info!(domain = %self.domain, %phase, "{message}");
        s.events.push(JobEvent {
            at_ms: now_ms(),
            phase,
            message,
        });
    }

    /// Keeps the definition an offline migration will store in Finish.
    pub fn set_offline_def(&self, d: tern_model::Domain) {
        *self.offline_def.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
    }

    /// Takes that definition.
    pub fn take_offline_def(&self) -> Option<tern_model::Domain> {
        self.offline_def
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Keeps the tunnel's ends for the life of the migration.
    pub fn set_tunnel(&self, ends: tunnel::Ends) {
        *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(ends);
    }

    /// The source's tunnel sockets: QEMU's `migrate` URI and the NBD server
    /// of disk mirrors.
    pub fn tunnel_route(&self) -> Option<(String, Option<serde_json::Value>)> {
        match &*self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tunnel::Ends::Outbound(o)) => Some((o.qemu_uri(), o.nbd_server())),
            _ => None,
        }
    }

    /// Stops the tunnel accepting streams. With `abort` every stream ends
    /// now (the migration failed); without, streams end when QEMU closes
    /// them (a post-copy guest still pulls pages through them).
    pub fn close_tunnel(&self, abort: bool) {
        let ends = self.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = ends {
            if abort {
                t.abort();
            }
            self.event(t.summary());
        }
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// A copy of the figures.
    pub fn info(&self) -> JobInfo {
        let s = self.lock();
        let mut i = s.info.clone();
        if !s.phase.is_terminal() && i.kind == JobKind::Unbounded && i.time_elapsed_ms == 0 {
            i.time_elapsed_ms = self.started.elapsed().as_millis() as u64;
        }
        i
    }

    /// Changes the figures; long polls wake when QEMU's status or the
    /// job kind changed.
    pub fn update(&self, f: impl FnOnce(&mut JobInfo)) {
        let mut s = self.lock();
        let before = (s.info.kind, s.info.qemu_status.clone());
        f(&mut s.info);
        let after = (s.info.kind, s.info.qemu_status.clone());
        drop(s);
        if before != after {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Waits until the job changes, at most `d`.
    pub async fn wait_change(&self, d: std::time::Duration) {
        let mut rx = self.changed.subscribe();
        rx.borrow_and_update();
        let _ = tokio::time::timeout(d, rx.changed()).await;
    }

    /// Events from index `since`.
    pub fn events_since(&self, since: usize) -> Vec<JobEvent> {
        self.lock().events.iter().skip(since).cloned().collect()
    }
}

/// Current and finished jobs, by domain name.
#[derive(Debug, Default)]
pub struct Jobs {
    current: Mutex<HashMap<String, Arc<Job>>>,
    completed: Mutex<HashMap<String, (JobInfo, Vec<JobEvent>)>>,
    /// Moving average of the pace (bytes/s) of outgoing migrations.
    pace: Mutex<Option<u64>>,
    /// The last forecast of each domain, for the policy's start plan.
    forecasts: Mutex<HashMap<String, (std::time::Instant, tern_migrate::policy::Forecast)>>,
}

impl Jobs {
    fn cur(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a job; refuses a second one for the same domain.
    pub fn insert(&self, job: Arc<Job>) -> Result<()> {
        let mut m = self.cur();
        if let Some(old) = m.get(&job.domain) {
            if !old.phase().is_terminal() && old.id != job.id {
                return Err(AgentError::Conflict(format!(
                    "domain '{}' already has a migration job in phase {}; wait for it or run 'tern domjobabort {}'",
                    job.domain,
                    old.phase(),
                    job.domain
                )));
            }
        }
        m.insert(job.domain.clone(), job);
        Ok(())
    }

    /// The job of a domain.
    pub fn get(&self, domain: &str) -> Option<Arc<Job>> {
        self.cur().get(domain).cloned()
    }

    /// The job of a domain, checking the migration id.
    pub fn get_id(&self, domain: &str, id: Uuid) -> Result<Arc<Job>> {
        match self.get(domain) {
            Some(j) if j.id == id => Ok(j),
            _ => Err(AgentError::Conflict(
                tern_migrate::protocol::ProtocolError::UnknownMigration(id).to_string(),
            )),
        }
    }

    /// Keeps a domain's forecast for the start plan of its next migration.
    pub fn remember_forecast(&self, domain: &str, f: tern_migrate::policy::Forecast) {
        let mut m = self.forecasts.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(domain.to_string(), (std::time::Instant::now(), f));
    }

    /// A domain's forecast, if it was made less than `max_age` ago.
    pub fn fresh_forecast(
        &self,
        domain: &str,
        max_age: std::time::Duration,
    ) -> Option<tern_migrate::policy::Forecast> {
        let m = self.forecasts.lock().unwrap_or_else(|p| p.into_inner());
        m.get(domain)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, f)| f.clone())
    }

    /// The pace past outgoing migrations achieved, bytes/s.
    pub fn pace(&self) -> Option<u64> {
        *self.pace.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves a finished job to the completed table.
    pub fn finish(&self, job: &Arc<Job>) {
        job.close_tunnel(job.phase() != Phase::Completed);
        let info = job.info();
        let capped = job.options.bandwidth_mib.is_some_and(|m| m > 0);
        if let Some(rate) = info
            .pace_sample(capped)
            .filter(|_| job.role == Role::Source)
        {
            let mut p = self.pace.lock().unwrap_or_else(|p| p.into_inner());
            *p = Some(match *p {
                Some(old) => (old * 3 + rate) / 4,
                None => rate,
            });
        }
        let events = job.events_since(0);
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.domain.clone(), (info, events));
        let mut m = self.cur();
        if m.get(&job.domain).is_some_and(|j| Arc::ptr_eq(j, job)) {
            m.remove(&job.domain);
        }
    }

    /// The last finished job of a domain.
    pub fn completed(&self, domain: &str) -> Option<(JobInfo, Vec<JobEvent>)> {
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }
}

/// Runs a migration request.
pub async fn dispatch(agent: &Arc<Agent>, req: MigrationRequest) -> Result<Vec<u8>> {
    let ok = |v: serde_json::Value| Ok(serde_json::to_vec(&v).unwrap_or_default());
    let to = |v: &dyn erased::Ser| v.to_vec();
    match req {
        MigrationRequest::MigrateBegin { name, options } => {
            to(&source::begin(agent, &name, &options).await?)
        }
        MigrationRequest::MigratePrepare { req } => to(&dest::prepare(agent, req).await?),
        MigrationRequest::MigratePerform { req } => {
            source::perform(agent, req).await?;
            ok(json!(null))
        }
        MigrationRequest::MigrateFinish { req } => to(&dest::finish(agent, req).await?),
        MigrationRequest::MigrateConfirm { req } => {
            source::confirm(agent, req).await?;
            ok(json!(null))
        }
        MigrationRequest::MigrateP2p {
            name,
            dest_uri,
            options,
        } => {
            source::p2p(agent, &name, &dest_uri, options).await?;
            ok(json!(null))
        }
        MigrationRequest::JobInfo {
            name,
            completed,
            wait_ms,
        } => {
            if !completed && wait_ms > 0 {
                if let Some(j) = agent.jobs.get(&name) {
                    let k = j.info().kind;
                    if !matches!(k, JobKind::Completed | JobKind::Failed | JobKind::Cancelled) {
                        j.wait_change(std::time::Duration::from_millis(wait_ms.min(5000)))
                            .await;
                    }
                }
            }
            let info = if completed {
                agent.jobs.completed(&name).map(|(i, _)| i)
            } else {
                agent.jobs.get(&name).map(|j| j.info())
            };
            to(&info.unwrap_or_default())
        }
        MigrationRequest::JobEvents { name, since } => {
            let ev = match agent.jobs.get(&name) {
                Some(j) => j.events_since(since),
                None => agent
                    .jobs
                    .completed(&name)
                    .map(|(_, e)| e.into_iter().skip(since).collect())
                    .unwrap_or_default(),
            };
            to(&ev)
        }
        MigrationRequest::JobAbort { name } => {
            let job = agent.jobs.get(&name).ok_or_else(|| {
                AgentError::Conflict(format!("domain '{name}' has no migration job to abort"))
            })?;
            job.event("abort requested by the operator");
            job.cancel.send_replace(true);
            ok(json!(null))
        }
        MigrationRequest::MigratePostcopy { name } => {
            let job = agent.jobs.get(&name).ok_or_else(|| {
                AgentError::Conflict(format!("domain '{name}' has no migration job"))
            })?;
            if !job.options.postcopy {
                return Err(AgentError::Conflict(
                    "post-copy is not armed for this migration: it was started without --postcopy, or its start plan left post-copy unarmed (see domjobevents); use --postcopy-after-precopy to always arm it".into(),
                ));
            }
            job.postcopy.send_replace(true);
            ok(json!(null))
        }
        MigrationRequest::MigrateSetSpeed {
            name,
            bandwidth_mib,
        } => {
            let bytes = MigrateOptions {
                bandwidth_mib: Some(bandwidth_mib),
                ..Default::default()
            }
            .bandwidth_bytes();
            set_param(agent, &name, "max-bandwidth", json!(bytes)).await?;
            ok(json!(null))
        }
        MigrationRequest::MigrateGetSpeed { name } => {
            let b = get_param(agent, &name, "max-bandwidth").await?;
            let mib = if b >= tern_migrate::options::UNLIMITED_BANDWIDTH {
                0
            } else {
                b >> 20
            };
            ok(json!(mib))
        }
        MigrationRequest::MigrateSetMaxDowntime { name, downtime_ms } => {
            set_param(agent, &name, "downtime-limit", json!(downtime_ms)).await?;
            ok(json!(null))
        }
        MigrationRequest::MigrateGetMaxDowntime { name } => {
            ok(json!(get_param(agent, &name, "downtime-limit").await?))
        }
        MigrationRequest::MigrateForecast {
            name,
            dest_uri,
            options,
        } => to(&forecast::forecast(agent, &name, dest_uri.as_deref(), &options).await?),
        MigrationRequest::ProbeSink {} => to(&forecast::probe_sink(agent).await?),
        MigrationRequest::MigrateCompCache { name, size } => {
            if let Some(s) = size {
                set_param(agent, &name, "xbzrle-cache-size", json!(s)).await?;
            }
            ok(json!(get_param(agent, &name, "xbzrle-cache-size").await?))
        }
    }
}

/// Tiny helper so `dispatch` can serialise different reply types uniformly.
mod erased {
    use crate::error::{AgentError, Result};

    pub trait Ser {
        fn to_vec(&self) -> Result<Vec<u8>>;
    }

    impl<T: serde::Serialize> Ser for T {
        fn to_vec(&self) -> Result<Vec<u8>> {
            serde_json::to_vec(self)
                .map_err(|e| AgentError::Failed(format!("cannot serialise reply: {e}")))
        }
    }
}

async fn running_qmp(agent: &Agent, name: &str) -> Result<tern_qemu::Qmp> {
    let slot = agent.domains.find(name)?;
    let e = slot.inner.lock().await;
    e.run
        .as_ref()
        .map(|r| r.qmp.clone())
        .ok_or_else(|| AgentError::Conflict(format!("domain '{name}' is not running")))
}

async fn set_param(agent: &Agent, name: &str, key: &str, v: serde_json::Value) -> Result<()> {
    let qmp = running_qmp(agent, name).await?;
    qmp.execute("migrate-set-parameters", Some(json!({ key: v })))
        .await?;
    if let Some(j) = agent.jobs.get(name) {
        j.event(format!("{key} set to {v} by the operator"));
    }
    Ok(())
}

async fn get_param(agent: &Agent, name: &str, key: &str) -> Result<u64> {
    let qmp = running_qmp(agent, name).await?;
    let p = qmp.execute("query-migrate-parameters", None).await?;
    Ok(p[key].as_u64().unwrap_or(0))
}

/// Sets migration capabilities on a QEMU.
pub async fn set_capabilities(qmp: &tern_qemu::Qmp, caps: &[(&str, bool)]) -> Result<()> {
    let list: Vec<serde_json::Value> = caps
        .iter()
        .map(|(c, s)| json!({"capability": c, "state": s}))
        .collect();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": list })),
    )
    .await?;
    Ok(())
}
