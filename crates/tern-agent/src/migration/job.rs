//! The job table: one [`Job`] per migrating domain, each written to its
//! record ([`super::record`]) before it enters a new phase, and the last
//! finished job of each domain, kept across restarts.

use super::learned::Learned;
use super::record::{self, JobRecord, Links, RECORD_FORMAT};
use super::{cold, tunnel};
use crate::error::{AgentError, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tern_api::event::EventKind;
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
    /// Set while the operator holds a post-copy paused
    /// (`domjobabort --postcopy`): no automatic recovery then.
    pub postcopy_hold: watch::Sender<bool>,
    offline_def: Mutex<Option<tern_model::Domain>>,
    /// Files the destination created for this migration (removed on failure).
    pub created: Mutex<Vec<std::path::PathBuf>>,
    /// Disks the destination receives over NBD, reopened to unmap zeros
    /// until the guest runs (see `sparse`).
    pub receiving: Mutex<Vec<tern_migrate::protocol::DiskCopy>>,
    /// Receivers of a cold migration (destination).
    pub cold: Mutex<Option<cold::Incoming>>,
    /// The tunnel's ends, with `--tunnelled`.
    tunnel: Mutex<Option<tunnel::Ends>>,
    /// Destination: where Finish hands its verdict to the migration's run
    /// (`dest::run`); `None` once the run ended, or before it started.
    verdicts: Mutex<Option<tokio::sync::mpsc::Sender<super::dest::Verdict>>>,
    /// Bumped on every change, for long polls.
    changed: watch::Sender<u64>,
    /// The records directory, once the job is in the table.
    dir: Mutex<Option<PathBuf>>,
    /// The other side, and what this side did to the guest.
    links: Mutex<Links>,
    /// When a driver (or the peer) last spoke about this job: the orphan
    /// timers count from here.
    touched: Mutex<Instant>,
    /// The switch-over's two moments on QEMU's clocks (µs since the epoch,
    /// 0 until seen): the source's STOP, the destination's RESUME.
    stopped_at_us: AtomicU64,
    resumed_at_us: AtomicU64,
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
            postcopy_hold: watch::channel(false).0,
            offline_def: Mutex::new(None),
            created: Mutex::new(Vec::new()),
            receiving: Mutex::new(Vec::new()),
            cold: Mutex::new(None),
            tunnel: Mutex::new(None),
            verdicts: Mutex::new(None),
            changed: watch::channel(0).0,
            dir: Mutex::new(None),
            links: Mutex::new(Links::default()),
            touched: Mutex::new(Instant::now()),
            stopped_at_us: AtomicU64::new(0),
            resumed_at_us: AtomicU64::new(0),
        })
    }

    /// A job rebuilt from its record after a restart, in the phase it had.
    pub fn from_record(rec: &JobRecord) -> Arc<Job> {
        let job = Job::new(rec.id, rec.role, &rec.domain, rec.options.clone());
        {
            let mut s = job.lock();
            s.phase = rec.phase;
            s.info = rec.info.clone();
            s.info.phase = rec.phase.to_string();
            s.events = rec.events.clone();
        }
        *job.created.lock().unwrap_or_else(|p| p.into_inner()) = rec.created.clone();
        *job.links.lock().unwrap_or_else(|p| p.into_inner()) = rec.links.clone();
        job
    }

    /// This job as a record.
    pub fn record(&self) -> JobRecord {
        let s = self.lock();
        JobRecord {
            format: RECORD_FORMAT,
            id: self.id,
            role: self.role,
            domain: self.domain.clone(),
            phase: s.phase,
            options: self.options.clone(),
            links: self.links(),
            created: self
                .created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            info: s.info.clone(),
            events: s.events.clone(),
        }
        .trim()
    }

    fn dir(&self) -> Option<PathBuf> {
        self.dir.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes the record as it stands (after a change of links or created
    /// volumes). A job outside the table has nothing to write.
    pub fn persist(&self) -> Result<()> {
        self.write(self.record())
    }

    fn write(&self, rec: JobRecord) -> Result<()> {
        let Some(dir) = self.dir() else {
            return Ok(());
        };
        record::save(&dir, &rec).map_err(|e| {
            AgentError::Failed(format!(
                "cannot record migration {} of '{}' in {} ({e}); nothing was done: free space in the state directory and retry",
                self.id,
                self.domain,
                dir.display()
            ))
        })
    }

    /// What this side knows of the other.
    pub fn links(&self) -> Links {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the links and writes the record before returning, so what
    /// the caller does next is on disk first.
    pub fn set_links(&self, f: impl FnOnce(&mut Links)) -> Result<()> {
        f(&mut self.links.lock().unwrap_or_else(|p| p.into_inner()));
        self.persist()
    }

    /// Notes QEMU's STOP on the source during the migration (its event's
    /// time): the first moment of the guest's pause.
    pub fn note_stopped(&self, qemu_us: u64) {
        self.stopped_at_us.store(qemu_us, Ordering::Relaxed);
    }

    /// Notes QEMU's RESUME on the destination: the last moment of the pause.
    pub fn note_resumed(&self, qemu_us: u64) {
        self.resumed_at_us.store(qemu_us, Ordering::Relaxed);
    }

    /// The source's STOP, if seen.
    pub fn stopped_at(&self) -> Option<u64> {
        Some(self.stopped_at_us.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// The destination's RESUME, if seen.
    pub fn resumed_at(&self) -> Option<u64> {
        Some(self.resumed_at_us.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// A driver or the peer spoke about this job.
    pub fn touch(&self) {
        *self.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long since a driver or the peer last spoke about this job.
    pub fn untouched_for(&self) -> std::time::Duration {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `to` if the state machine allows it, recording an event.
    /// The record with the new phase is on disk before the phase changes
    /// here: if it cannot be written, the phase stays and the caller must
    /// not act. Terminal phases are recorded by [`Jobs::finish`].
    pub fn advance(&self, to: Phase) -> Result<()> {
        let next = self
            .lock()
            .phase
            .next(self.role, to)
            .map_err(|e| AgentError::Conflict(e.to_string()))?;
        if !next.is_terminal() {
            let mut rec = self.record();
            rec.phase = next;
            rec.info.phase = next.to_string();
            self.write(rec)?;
        }
        let mut s = self.lock();
        if s.phase.next(self.role, to).is_err() {
            return Err(AgentError::Conflict(format!(
                "migration {} of '{}' moved on to {} meanwhile",
                self.id, self.domain, s.phase
            )));
        }
        s.phase = next;
        s.info.phase = next.to_string();
        let msg = format!("phase {next}");
        s.events.push(JobEvent {
            at_ms: now_ms(),
            phase: next.to_string(),
            message: msg,
        });
        drop(s);
        let role = match self.role {
            Role::Source => "outgoing",
            Role::Destination => "incoming",
        };
        crate::events::log().emit(
            &self.domain,
            EventKind::MigrationPhase,
            format!("{next} ({role} {})", self.id),
        );
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Records an event.
    pub fn event(&self, message: impl Into<String>) {
        let mut s = self.lock();
        let phase = s.phase.to_string();
        let message = message.into();
        tracing::info!(domain = %self.domain, %phase, "{message}");
        crate::events::log().emit(&self.domain, EventKind::Job, format!("[{phase}] {message}"));
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

    /// Destination: the run of this migration now takes verdicts here.
    pub fn set_verdicts(&self, tx: tokio::sync::mpsc::Sender<super::dest::Verdict>) {
        *self.verdicts.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Destination: where to hand a verdict, while a run awaits one.
    pub fn verdicts(&self) -> Option<tokio::sync::mpsc::Sender<super::dest::Verdict>> {
        self.verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Destination: the run ended; later verdicts are answered from the
    /// job's record.
    pub fn close_verdicts(&self) {
        self.verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
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
        let before = (s.info.kind, s.info.qemu_status);
        let iteration = s.info.iteration;
        f(&mut s.info);
        let after = (s.info.kind, s.info.qemu_status);
        let i = s.info.clone();
        drop(s);
        if i.iteration > iteration {
            crate::events::log().emit(
                &self.domain,
                EventKind::Iteration,
                format!(
                    "iteration {}: {} bytes remaining, {} B/s sent, {} B/s dirtied",
                    i.iteration, i.memory_remaining, i.memory_bandwidth, i.dirty_rate
                ),
            );
        }
        if before != after {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Wakes at every later change of the job (its phase, QEMU's status,
    /// its kind, its end): subscribe before looking at the job, and a
    /// change made while looking is not missed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        let mut rx = self.changed.subscribe();
        rx.borrow_and_update();
        rx
    }

    /// Events from index `since`.
    pub fn events_since(&self, since: usize) -> Vec<JobEvent> {
        self.lock().events.iter().skip(since).cloned().collect()
    }
}

/// Current and finished jobs, by domain name.
#[derive(Debug, Default)]
pub struct Jobs {
    /// Where records are written (`None`: nowhere, for unit tests).
    dir: Option<PathBuf>,
    current: Mutex<HashMap<String, Arc<Job>>>,
    completed: Mutex<HashMap<String, JobRecord>>,
    /// What finished migrations taught the next forecasts.
    pub learned: Learned,
}

/// A migration found by its id.
#[derive(Debug, Clone)]
pub enum Found {
    /// Still under way here.
    Running(Arc<Job>),
    /// Ended here; its record.
    Done(Box<JobRecord>),
}

impl Jobs {
    /// The table backed by the records in `dir`; returns it with the
    /// records of migrations that were under way when the agent stopped,
    /// for [`super::recover`].
    pub fn open(dir: PathBuf) -> (Jobs, Vec<JobRecord>) {
        let (current, done) = record::load(&dir);
        let jobs = Jobs {
            dir: Some(dir),
            ..Default::default()
        };
        {
            let mut c = jobs.completed.lock().unwrap_or_else(|p| p.into_inner());
            for r in done {
                c.insert(r.domain.clone(), r);
            }
        }
        (jobs, current)
    }

    /// Finds a migration by id, running or ended.
    pub fn by_id(&self, id: Uuid) -> Option<Found> {
        if let Some(j) = self.cur().values().find(|j| j.id == id) {
            return Some(Found::Running(j.clone()));
        }
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|r| r.id == id)
            .map(|r| Found::Done(Box::new(r.clone())))
    }

    /// Every migration under way.
    pub fn running(&self) -> Vec<Arc<Job>> {
        self.cur().values().cloned().collect()
    }

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
        *job.dir.lock().unwrap_or_else(|p| p.into_inner()) = self.dir.clone();
        if m.get(&job.domain).is_none_or(|old| old.id != job.id) {
            crate::metrics::metrics().migration_started(&job);
        }
        m.insert(job.domain.clone(), job);
        Ok(())
    }

    /// Drops a job that never acted (its first record could not be
    /// written), with whatever record it left.
    pub fn forget(&self, job: &Arc<Job>) {
        let mut m = self.cur();
        if m.get(&job.domain).is_some_and(|j| Arc::ptr_eq(j, job)) {
            m.remove(&job.domain);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(record::current_path(dir, &job.domain));
        }
    }

    /// Ends a job in a terminal phase only if it is still in `from`: the
    /// orphan timer's claim, which must lose to a Finish that arrived
    /// first (and win against one that arrives later).
    pub fn claim(&self, job: &Arc<Job>, from: Phase, to: Phase) -> bool {
        let mut s = job.lock();
        if s.phase != from || s.phase.next(job.role, to).is_err() || !to.is_terminal() {
            return false;
        }
        s.phase = to;
        s.info.phase = to.to_string();
        drop(s);
        crate::events::log().emit(
            &job.domain,
            EventKind::MigrationPhase,
            format!("{to} (settled alone: no driver) {}", job.id),
        );
        true
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
        self.learned.remember_forecast(domain, f)
    }

    /// A domain's forecast, if it was made less than `max_age` ago.
    pub fn fresh_forecast(
        &self,
        domain: &str,
        max_age: std::time::Duration,
    ) -> Option<tern_migrate::policy::Forecast> {
        self.learned.fresh_forecast(domain, max_age)
    }

    /// Moves a finished job to the completed table.
    pub fn finish(&self, job: &Arc<Job>) {
        job.close_tunnel(job.phase() != Phase::Completed);
        // Counted once: a second finish of the same job finds it gone.
        if self
            .cur()
            .get(&job.domain)
            .is_some_and(|j| Arc::ptr_eq(j, job))
        {
            crate::metrics::metrics().migration_finished(job);
        }
        let info = job.info();
        let capped = job.options.bandwidth_mib.is_some_and(|m| m > 0);
        if let Some(rate) = info
            .pace_sample(capped)
            .filter(|_| job.role == Role::Source)
        {
            self.learned.learn(&job.domain, rate);
        }
        let rec = job.record();
        if let Some(dir) = &self.dir {
            if let Err(e) = record::finish(dir, &rec) {
                tracing::warn!(domain = %job.domain, error = %e,
                    "cannot write the finished migration's record");
            }
        }
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.domain.clone(), rec);
        let mut m = self.cur();
        if m.get(&job.domain).is_some_and(|j| Arc::ptr_eq(j, job)) {
            m.remove(&job.domain);
        }
        drop(m);
        // Long polls waiting on the job learn that it is over.
        job.changed.send_modify(|v| *v += 1);
    }

    /// Whether `job` is still the current job of its domain (not finished).
    pub fn is_current(&self, job: &Arc<Job>) -> bool {
        self.cur()
            .get(&job.domain)
            .is_some_and(|j| Arc::ptr_eq(j, job))
    }

    /// The last finished job of a domain.
    pub fn completed(&self, domain: &str) -> Option<(JobInfo, Vec<JobEvent>)> {
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .map(|r| (r.info.clone(), r.events.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_end_of_a_job_wakes_whoever_waits_on_it() {
        let jobs = Jobs::default();
        let job = Job::new(Uuid::new_v4(), Role::Source, "g", MigrateOptions::default());
        jobs.insert(job.clone()).unwrap();
        assert!(jobs.is_current(&job));
        // Subscribed before the end, and the end comes after the kind
        // already said "completed": the waiter still learns it.
        let mut changes = job.changes();
        job.update(|i| i.kind = JobKind::Completed);
        changes.borrow_and_update();
        jobs.finish(&job);
        assert!(!jobs.is_current(&job));
        tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed())
            .await
            .expect("finish wakes the waiter")
            .unwrap();
        assert!(jobs.get("g").is_none());
        assert!(jobs.completed("g").is_some());
    }
}
