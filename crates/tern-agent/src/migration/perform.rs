//! Following a running migration on the source: mirrors first (if any),
//! then QEMU's migration, watched until it ends — timeouts, post-copy
//! switches, cancels, stall detection and the convergence policy's steps.

use super::Job;
use crate::error::AgentError;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_migrate::forecast::{self, Follower, Prior};
use tern_migrate::policy::{self, Action, Observation, PolicyState};
use tern_migrate::protocol::PerformRequest;
use tern_migrate::{JobInfo, JobKind, MigrateOptions, TimeoutAction};
use tern_qemu::MigrationStatus;

mod events;
mod stall;
mod zero_sample;

use events::{note_queued_stop, wake};

/// How often Perform reads QEMU's figures.
const POLL: Duration = Duration::from_millis(100);

/// How often a paused post-copy tries to resume.
const RECOVER_EVERY: Duration = Duration::from_secs(2);

pub(super) fn fail(job: &Job, e: &AgentError) {
    job.event(format!("could not start: {e}"));
    job.update(|i| {
        i.kind = JobKind::Failed;
        i.error = Some(e.to_string());
    });
}

/// Where the source QEMU sends its bytes: the destination itself, or the
/// local sockets of this agent's tunnel.
#[derive(Debug, Clone)]
pub(super) struct Route {
    /// QEMU's `migrate` URI.
    pub uri: String,
    /// The NBD server disk mirrors dial instead of the destination's address.
    pub nbd_via: Option<serde_json::Value>,
}

/// Perform's background part: mirror disks (if any), start QEMU's
/// migration, then follow it.
pub(super) async fn run(
    agent: Arc<crate::Agent>,
    job: Arc<Job>,
    qmp: tern_qemu::Qmp,
    req: PerformRequest,
    stall: Duration,
    route: Route,
) {
    let o = &req.options;
    if let Some(nbd) = &req.nbd {
        if let Err(e) = super::storage::mirror(&qmp, nbd, route.nbd_via.clone(), o, &job).await {
            super::storage::abandon(&qmp, nbd).await;
            let cancelled = *job.cancel.borrow();
            fail(&job, &e);
            if cancelled {
                job.update(|i| i.kind = JobKind::Cancelled);
            }
            return;
        }
    }
    crate::faults::point(&agent, "source-before-migrate").await;
    if let Err(e) = qmp
        .execute("migrate", Some(json!({ "uri": route.uri })))
        .await
    {
        if let Some(nbd) = &req.nbd {
            super::storage::abandon(&qmp, nbd).await;
        }
        fail(&job, &e.into());
        return;
    }
    job.event(format!(
        "sending memory to {}{} (bandwidth {}, max downtime {} ms)",
        req.target.qemu_uri(),
        match (req.target.tunnel, o.tls) {
            (true, _) => " through the TLS tunnel",
            (false, true) => " over QEMU's TLS",
            _ => "",
        },
        match o.bandwidth_mib {
            None | Some(0) => "unlimited".to_string(),
            Some(m) => format!("{m} MiB/s"),
        },
        o.max_downtime_ms
            .unwrap_or(tern_migrate::options::DEFAULT_MAX_DOWNTIME_MS)
    ));
    watch(
        &agent,
        job.clone(),
        qmp.clone(),
        req.options.clone(),
        stall,
        req.nbd.clone(),
    )
    .await;
    if let Some(nbd) = &req.nbd {
        if job.info().kind != JobKind::Completed {
            super::storage::abandon(&qmp, nbd).await;
        }
    }
}

/// Follows QEMU's migration until it ends, applying timeouts, post-copy
/// switches, cancels, and stall detection.
async fn watch(
    agent: &crate::Agent,
    job: Arc<Job>,
    qmp: tern_qemu::Qmp,
    o: MigrateOptions,
    stall: Duration,
    nbd: Option<tern_migrate::protocol::NbdTarget>,
) {
    Watch::new(agent, job, qmp, o, stall, nbd).run().await
}

/// What one look at QEMU's migration gave.
enum Look {
    /// Its figures, in the job.
    Going(Box<JobInfo>),
    /// Nothing to act on this time (QEMU busy, mirrors completing).
    Again,
    /// The migration ended (completed, failed, cancelled, or QEMU died).
    Ended,
}

/// The watch of one outgoing migration: what it has seen so far.
struct Watch<'a> {
    agent: &'a crate::Agent,
    job: Arc<Job>,
    qmp: tern_qemu::Qmp,
    o: MigrateOptions,
    stall: Duration,
    nbd: Option<tern_migrate::protocol::NbdTarget>,
    start: Instant,
    last_iter: u64,
    last_bytes: u64,
    last_status: MigrationStatus,
    last_progress: Instant,
    timeout_fired: bool,
    postcopy_started: bool,
    cancelled: bool,
    /// When Tern paused the guest itself (timeout, policy): downtime
    /// counts from then.
    paused_at: Option<Instant>,
    /// A recovery needs time to resend its bitmap before pages flow: no
    /// stall is called within four stall periods of one.
    last_recovery: Instant,
    recovery_failed: bool,
    /// Stall periods in a row with a cancel that changed nothing.
    unanswered_cancels: u32,
    /// Set when QEMU's pre-copy neither moves nor ends after a cancel: the
    /// status it is stuck in.
    stuck: Option<MigrationStatus>,
    policy: Option<policy::PolicyConfig>,
    pstate: PolicyState,
    /// Forecasts the rest of the run from the run so far.
    follower: Follower,
    /// Its zero fraction, when no forecast before the run gave it.
    zero_sample: zero_sample::ZeroSample,
}

/// QEMU's figures as the policy and the forecast see them.
fn observation(info: &JobInfo) -> Observation {
    Observation {
        elapsed_ms: info.time_elapsed_ms,
        iteration: info.iteration,
        remaining: info.memory_remaining,
        bandwidth: info.memory_bandwidth,
        dirty_rate: info.dirty_rate,
        throttle: info.auto_converge_throttle.unwrap_or(0),
        transferred: info.memory_processed,
        zero_pages: info.constant_pages,
        memory: info.memory_total,
        page_size: info.page_size,
    }
}

impl<'a> Watch<'a> {
    fn new(
        agent: &'a crate::Agent,
        job: Arc<Job>,
        qmp: tern_qemu::Qmp,
        o: MigrateOptions,
        stall: Duration,
        nbd: Option<tern_migrate::protocol::NbdTarget>,
    ) -> Self {
        let policy = o.policy_on().then(|| o.policy_config());
        let pstate = PolicyState::new(o.initial_downtime_ms());
        // What the forecast before the run sampled (zero pages, dirty rate).
        let before = agent
            .jobs
            .fresh_forecast(&job.domain, Duration::from_secs(120));
        let zero_sample = match before {
            Some(_) => zero_sample::ZeroSample::Settled,
            None => zero_sample::ZeroSample::Due(super::forecast::sample_file(
                agent,
                &job.domain,
                "sample-run.page",
            )),
        };
        let follower = Follower::new(
            before
                .map(|f| Prior {
                    zero_fraction: Some(f.zero_fraction),
                    dirty_rate: f.dirty_rate,
                    send_rate: f.bandwidth,
                    later_pass_speedup: f.range.as_ref().map_or(1.0, |r| {
                        tern_migrate::forecast::later_pass_speedup(&r.inputs)
                    }),
                    postcopy_rate: f
                        .range
                        .as_ref()
                        .map_or(0, |r| r.inputs.postcopy_rate.p50 as u64),
                })
                .unwrap_or_default(),
        );
        Watch {
            agent,
            job,
            qmp,
            o,
            stall,
            nbd,
            start: Instant::now(),
            last_iter: 0,
            last_bytes: 0,
            last_status: MigrationStatus::None,
            last_progress: Instant::now(),
            timeout_fired: false,
            postcopy_started: false,
            cancelled: false,
            paused_at: None,
            last_recovery: Instant::now()
                .checked_sub(RECOVER_EVERY)
                .unwrap_or_else(Instant::now),
            recovery_failed: false,
            unanswered_cancels: 0,
            stuck: None,
            policy,
            pstate,
            follower,
            zero_sample,
        }
    }

    /// Each look: the figures, then every rule in turn.
    async fn run(mut self) {
        self.announce_policy();
        let mut cancel_rx = self.job.cancel.subscribe();
        let mut post_rx = self.job.postcopy.subscribe();
        let mut events = self.qmp.events();
        loop {
            let io_error = wake(&mut events, &self.job).await;
            self.abort_on_io_error(io_error).await;
            let info = match self.look().await {
                Look::Going(i) => i,
                Look::Again => continue,
                Look::Ended => {
                    // The tick may have found the migration completed before
                    // the queued STOP was read.
                    note_queued_stop(&mut events, &self.job);
                    return;
                }
            };
            if *cancel_rx.borrow_and_update() && !self.cancelled {
                self.cancelled = true;
                let _ = self.qmp.execute("migrate_cancel", None).await;
            }
            self.stall_check(&info).await;
            if let Some(status) = self.stuck {
                self.give_up(status);
                return;
            }
            self.follow(&info);
            self.policy_step(&info).await;
            self.recover_postcopy(&info).await;
            let asked = *post_rx.borrow_and_update();
            self.timeout(&info).await;
            self.switch_to_postcopy(&info, asked).await;
        }
    }

    /// Ends the job failed while QEMU's migration is stuck in `status`:
    /// it never completed, so the destination never had the whole guest
    /// and the source's copy stays the one (the run tells the destination
    /// to give up, and resumes the guest here if it was paused).
    fn give_up(&self, status: MigrationStatus) {
        let why = format!(
            "QEMU's migration neither moved nor ended after migrate_cancel (still {status}); \
             ending the job: the guest stays on this host"
        );
        self.job.event(&why);
        self.job.update(|i| {
            i.kind = JobKind::Failed;
            i.error = Some(why.clone());
        });
    }

    fn announce_policy(&self) {
        self.job
            .update(|i| i.downtime_limit_ms = Some(self.pstate.downtime_ms));
        if let Some(c) = &self.policy {
            self.job.event(format!(
                "convergence policy on: deadline {} s, downtime {} ms up to {} ms",
                c.deadline_ms / 1000,
                self.pstate.downtime_ms,
                c.max_downtime_ms
            ));
        }
    }

    async fn abort_on_io_error(&mut self, io_error: bool) {
        if io_error && self.o.abort_on_error && !self.cancelled {
            self.job
                .event("disk I/O error during migration: aborting (--abort-on-error)");
            self.cancelled = true;
            let _ = self.qmp.execute("migrate_cancel", None).await;
            self.job.update(|i| {
                i.error = Some("aborted after a disk I/O error (--abort-on-error)".into())
            });
        }
    }

    /// Reads QEMU's figures into the job, completes the disk mirrors at
    /// pre-switchover, and says whether the migration ended.
    async fn look(&mut self) -> Look {
        let (job, qmp) = (&self.job, &self.qmp);
        let q = match qmp.execute("query-migrate", None).await {
            Ok(q) => q,
            Err(tern_qemu::QmpError::Timeout(_)) => {
                unblock(qmp, job, self.last_status).await;
                self.last_progress = Instant::now();
                return Look::Again;
            }
            Err(e) => {
                lost_source_qemu(self.agent, job, &e).await;
                return Look::Ended;
            }
        };
        if MigrationStatus::of_reply(&q) == MigrationStatus::Completed {
            crate::faults::point(self.agent, "source-completed").await;
        }
        let q = with_final_figures(qmp, q).await;
        job.update(|i| i.update_from_qemu(&q));
        if let Some(nbd) = &self.nbd {
            if let Ok((_, done, total)) = super::storage::progress(qmp, nbd).await {
                job.update(|i| i.set_disk(done, total));
            }
        }
        if MigrationStatus::of_reply(&q) == MigrationStatus::PreSwitchover {
            // Once: after `migrate-continue` QEMU may still say
            // pre-switchover at the next look, when the mirrors are gone
            // (completing them again failed and cancelled a good migration).
            if let Some(nbd) = self.nbd.take() {
                if let Err(e) = super::storage::complete(qmp, &nbd, job).await {
                    job.event(format!("could not complete the disk mirrors: {e}"));
                    let _ = qmp.execute("migrate_cancel", None).await;
                    job.update(|i| i.error = Some(e.to_string()));
                }
                return Look::Again;
            }
        }
        let info = job.info();
        if info.iteration != self.last_iter && info.iteration > 0 {
            self.last_iter = info.iteration;
            job.event(format!(
                "iteration {}: {} MiB remaining, {} MiB/s, dirtying {} MiB/s, expected downtime {} ms",
                info.iteration,
                info.memory_remaining >> 20,
                info.memory_bandwidth >> 20,
                info.dirty_rate >> 20,
                info.expected_downtime_ms
            ));
        }
        match info.kind {
            JobKind::Completed => {
                self.completed();
                Look::Ended
            }
            JobKind::Failed | JobKind::Cancelled => {
                self.failed(&info);
                Look::Ended
            }
            _ => Look::Going(Box::new(info)),
        }
    }

    fn completed(&self) {
        // QEMU counts downtime from its own final stop; a guest we paused
        // earlier (timeout, policy) was down since then.
        if let Some(t) = self.paused_at {
            let ms = t.elapsed().as_millis() as u64;
            self.job
                .update(|i| i.downtime_ms = Some(i.downtime_ms.unwrap_or(0).max(ms)));
        }
        let info = self.job.info();
        self.job.event(format!(
            "QEMU completed: downtime {} ms, {} MiB sent in {} ms",
            info.downtime_ms.unwrap_or(0),
            info.memory_processed >> 20,
            info.time_elapsed_ms
        ));
    }

    fn failed(&self, info: &JobInfo) {
        if self.cancelled {
            self.job.update(|i| {
                i.kind = JobKind::Cancelled;
                i.error = Some(
                    i.error
                        .clone()
                        .unwrap_or_else(|| "migration cancelled by the operator".into()),
                );
            });
        }
        self.job.event(format!(
            "QEMU {}: {}",
            info.qemu_status,
            self.job.info().error.unwrap_or_default()
        ));
    }

    /// The forecast of the rest of a pre-copy run, in the job and, one
    /// every `RECORD_EVERY_MS`, in its record of updates.
    fn follow(&mut self, info: &JobInfo) {
        if info.qemu_status != MigrationStatus::Active {
            return;
        }
        let sampled = self
            .zero_sample
            .step(&self.qmp, info.memory_total, &mut self.follower);
        if let Some(z) = sampled {
            self.job.event(format!(
                "forecast: {:.0} % of the guest's memory sampled as zero pages (no forecast before the run)",
                z * 100.0
            ));
        }
        self.follower.see(&observation(info));
        let cfg = self.policy.unwrap_or_else(|| self.o.policy_config());
        let Some(u) = self.follower.forecast(&cfg, self.pstate.downtime_ms) else {
            return;
        };
        self.job.update(|i| {
            i.forecast_remaining_ms = Some(u.remaining_ms);
            i.forecast_downtime_ms = Some(u.downtime_ms);
            if forecast::worth_recording(i.forecast_updates.last(), &u)
                && i.forecast_updates.len() < forecast::MAX_UPDATES
            {
                i.forecast_updates.push(u);
            }
        });
    }

    /// The convergence policy's step for this look, if it takes one.
    async fn policy_step(&mut self, info: &JobInfo) {
        let Some(cfg) = &self.policy else { return };
        if info.qemu_status != MigrationStatus::Active {
            return;
        }
        let obs = observation(info);
        // One JSON line per look: the traces the policy's tests replay
        // (crates/tern-migrate/traces) are cut from these.
        tracing::debug!(
            target: "tern_agent::policy_trace",
            domain = %self.job.domain,
            obs = %serde_json::to_string(&obs).unwrap_or_default(),
            "policy observation"
        );
        let (next, decision) = policy::decide(cfg, &self.pstate, &obs);
        self.pstate = next;
        let Some(d) = decision else { return };
        apply(&self.qmp, &self.job, &d.action).await;
        match d.action {
            Action::StartPostcopy => {
                self.postcopy_started = true;
                self.job.update(|i| i.went_postcopy = true);
            }
            Action::PauseAndFinish => self.paused_at = Some(Instant::now()),
            _ => {}
        }
        self.job.event(format!("policy: {}", d.reason));
        let downtime = self.pstate.downtime_ms;
        self.job.update(|i| {
            i.policy_steps += 1;
            i.policy_last = Some(d.reason.clone());
            i.downtime_limit_ms = Some(downtime);
        });
    }

    /// `--timeout`: pause the guest, or switch to post-copy, once.
    async fn timeout(&mut self, info: &JobInfo) {
        let timed_out = self
            .o
            .timeout_s
            .is_some_and(|t| self.start.elapsed() >= Duration::from_secs(t));
        if !timed_out || self.timeout_fired || info.qemu_status != MigrationStatus::Active {
            return;
        }
        self.timeout_fired = true;
        match self.o.timeout_action {
            TimeoutAction::Suspend => {
                self.job
                    .event("timeout reached: pausing the guest to finish");
                if self.qmp.execute("stop", None).await.is_ok() {
                    self.paused_at = Some(Instant::now());
                }
            }
            TimeoutAction::Postcopy if !self.postcopy_started => {
                self.job.event("timeout reached: switching to post-copy");
                if self
                    .qmp
                    .execute("migrate-start-postcopy", None)
                    .await
                    .is_ok()
                {
                    self.postcopy_started = true;
                    self.job.update(|i| i.went_postcopy = true);
                }
            }
            TimeoutAction::Postcopy => {}
        }
    }

    /// `--postcopy-after-precopy` after the first pass, or the operator's
    /// `migrate-postcopy`.
    async fn switch_to_postcopy(&mut self, info: &JobInfo, asked: bool) {
        let want = self.o.postcopy
            && !self.postcopy_started
            && info.qemu_status == MigrationStatus::Active
            && ((self.o.postcopy_after_precopy && info.iteration >= 2) || asked);
        if !want {
            return;
        }
        self.job.event("switching to post-copy");
        match self.qmp.execute("migrate-start-postcopy", None).await {
            Ok(_) => {
                self.postcopy_started = true;
                self.job.update(|i| i.went_postcopy = true);
            }
            Err(e) => self.job.event(format!("post-copy refused: {e}")),
        }
    }
}

/// QEMU announces "completed" a moment before it has filled in the total
/// time and downtime; waits (briefly) for the figures.
async fn with_final_figures(qmp: &tern_qemu::Qmp, mut q: serde_json::Value) -> serde_json::Value {
    for _ in 0..500 {
        if MigrationStatus::of_reply(&q) != MigrationStatus::Completed
            || q["total-time"].as_u64().unwrap_or(0) > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        match qmp.execute("query-migrate", None).await {
            Ok(again) => q = again,
            Err(_) => break,
        }
    }
    q
}

/// QEMU lives but does not answer `query-migrate`: on a dead link its
/// migration thread blocks in a send, and the main loop waits behind it.
/// That QEMU is not lost (in post-copy it holds the guest's missing
/// pages); the stuck channel is broken out of band instead. A post-copy
/// is paused, to be resumed when the link returns; a pre-copy is failed
/// (`yank`), and the source, whose guest never ran elsewhere, goes on.
async fn unblock(qmp: &tern_qemu::Qmp, job: &Job, last: MigrationStatus) {
    let (what, r) = if last.is_postcopy() {
        (
            "pausing the post-copy",
            qmp.execute_oob("migrate-pause", None).await,
        )
    } else {
        (
            "breaking the migration channel",
            qmp.execute_oob("yank", Some(json!({"instances": [{"type": "migration"}]})))
                .await,
        )
    };
    match r {
        Ok(_) => job.event(format!(
            "QEMU does not answer while migrating (link down?): {what}"
        )),
        Err(e) => job.event(format!(
            "QEMU does not answer while migrating, and {what} failed: {e}"
        )),
    }
}

/// The source QEMU died mid-migration. If the destination loaded the
/// whole guest first, the guest lives on there: the job completes and the
/// driver resumes it there. Otherwise it is lost with its QEMU.
async fn lost_source_qemu(agent: &crate::Agent, job: &Job, e: &tern_qemu::QmpError) {
    job.event(format!("lost the source QEMU: {e}"));
    if super::recover::destination_has_everything(agent, job).await {
        job.event(
            "the destination loaded the whole guest before the source QEMU died: completing there",
        );
        job.update(|i| {
            i.kind = JobKind::Completed;
            i.qemu_status = MigrationStatus::Completed;
        });
        return;
    }
    job.update(|i| {
        i.kind = JobKind::Failed;
        i.error = Some(format!("source QEMU went away: {e}"));
    });
}

/// Carries out a policy step.
async fn apply(qmp: &tern_qemu::Qmp, job: &Job, a: &Action) {
    let r = match a {
        Action::SetDowntime { ms } => {
            qmp.execute("migrate-set-parameters", Some(json!({"downtime-limit": ms})))
                .await
        }
        Action::SetMaxThrottle { percent } => {
            qmp.execute(
                "migrate-set-parameters",
                Some(json!({"max-cpu-throttle": percent, "cpu-throttle-initial": (*percent).min(30)})),
            )
            .await
        }
        Action::StartPostcopy => qmp.execute("migrate-start-postcopy", None).await,
        Action::PauseAndFinish => qmp.execute("stop", None).await,
    };
    if let Err(e) = r {
        job.event(format!("policy step {a:?} refused by QEMU: {e}"));
    }
}
