//! Migration jobs: created by the API, queued, started by the leader when
//! the scheduler finds a destination within the limits, run by the source
//! agent and followed from here ([`crate::follow`]), and resumed or rolled
//! back by a leader that finds a running job nobody follows (after a
//! restart or a hand-over).

use crate::error::{CtlError, Result};
use crate::evacuate::host_client;
pub use crate::follow::{drive, Outcome};
use crate::inventory::{now_ms, JOBS};
use crate::views::{host_views, server_view};
use crate::Controller;
use std::sync::Arc;
use tern_api::cluster::{
    ForecastRow, HostStatus, JobKind, JobRecord, JobState, MigrateRequestOptions, ServerRecord,
    ServerState,
};
use tern_api::{MigrationRequest, Request};
use tern_migrate::MigrateOptions;
use tern_scheduler::{plan, MoveKind, MoveRequest, Queued, Step};
use uuid::Uuid;

fn move_request(kind: JobKind, o: &MigrateRequestOptions) -> MoveRequest {
    MoveRequest {
        kind: match kind {
            JobKind::Migrate => MoveKind::Cold,
            JobKind::LiveMigrate => MoveKind::Live,
            JobKind::Rescue => MoveKind::Rescue,
        },
        prefer_host: o.prefer_host.clone(),
        skip_cpu_check: o.skip_cpu_check,
        skip_kernel_check: o.skip_kernel_check,
    }
}

/// Checks a request against the server's state; the job kind it becomes.
pub fn admit(
    s: &ServerRecord,
    live: bool,
    o: &MigrateRequestOptions,
    source_status: HostStatus,
) -> Result<JobKind> {
    let name = &s.domain.name;
    if s.state.in_flight() {
        return Err(CtlError::Conflict(format!(
            "server '{name}' is in state {}; wait for its job or run 'tern migrate-cancel {name}'",
            s.state
        )));
    }
    let down = matches!(source_status, HostStatus::Down { .. });
    if live {
        if !s.domain.active || down {
            return Err(CtlError::Conflict(format!(
                "server '{name}' is not running on a live host; use 'tern server-migrate'"
            )));
        }
        return Ok(JobKind::LiveMigrate);
    }
    if o.rescue_mode {
        if !down {
            return Err(CtlError::Conflict(format!(
                "host '{}' is not down; --rescue-mode restarts servers of a dead host",
                s.host
            )));
        }
        if let Some(d) = s.domain.disks.iter().find(|d| !d.shared) {
            return Err(CtlError::Conflict(format!(
                "server '{name}' has disk {} outside a shared pool; it cannot be rescued",
                d.target
            )));
        }
        return Ok(JobKind::Rescue);
    }
    if down {
        return Err(CtlError::Conflict(format!(
            "host '{}' is down; use --rescue-mode",
            s.host
        )));
    }
    if s.domain.active {
        return Err(CtlError::Conflict(format!(
            "server '{name}' is running; stop it first or use 'tern server-live-migrate'"
        )));
    }
    Ok(JobKind::Migrate)
}

/// Queues a migration of `server`.
pub async fn create(
    ctl: &Arc<Controller>,
    server: &str,
    live: bool,
    opts: MigrateRequestOptions,
) -> Result<JobRecord> {
    let s = ctl.inv.server(server).await?;
    let src = ctl.inv.host(&s.host).await?;
    if let Some(p) = &opts.prefer_host {
        ctl.inv.host(p).await?;
    }
    let kind = admit(&s, live, &opts, src.status)?;
    // The cluster's --migration-tls makes encrypted migration the default:
    // QEMU's TLS for live migrations, TLS streams for cold copies (an
    // offline move carries no disk).
    let mut opts = opts;
    opts.enable_tls |= ctl.cfg.migration_tls;
    // The request is valid: from here on every write carries a term.
    let inv = ctl.operator().await?;
    let id = Uuid::new_v4().simple().to_string()[..12].to_string();
    let job = JobRecord {
        id: id.clone(),
        kind,
        server: server.to_string(),
        source: s.host.clone(),
        dest: None,
        state: JobState::Queued,
        migration_id: Uuid::new_v4().to_string(),
        opts,
        note: None,
        created_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
        prior_state: s.state,
        cancel_requested: false,
        attempts: 0,
        retry_at_ms: None,
        term: inv.term(),
    };
    // Claim the server first: of two racing requests only one gets it.
    let mut claimed = false;
    inv.update_server(server, |r| {
        claimed = !r.state.in_flight();
        if claimed {
            r.state = ServerState::StartMigrate;
            r.error = None;
        }
        Ok(claimed)
    })
    .await?;
    if !claimed {
        return Err(CtlError::Conflict(format!(
            "server '{server}' already has a migration job"
        )));
    }
    if let Err(e) = inv.create(&format!("{JOBS}{id}"), &job).await {
        // Leadership changed between the claim and the job: give the
        // claim back under the term that holds now, and say so.
        release_claim(ctl, server, s.state).await;
        return Err(e);
    }
    tracing::info!(job = %id, %server, ?kind, "job queued");
    Ok(job)
}

/// Undoes a claim whose job could not be stored.
async fn release_claim(ctl: &Arc<Controller>, server: &str, prior: ServerState) {
    let Ok(inv) = ctl.operator().await else {
        return;
    };
    let r = inv
        .update_server(server, |r| {
            let change = r.state == ServerState::StartMigrate;
            if change {
                r.state = prior;
            }
            Ok(change)
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(%server, error = %e, "could not release the claim of a job that was not stored");
    }
}

/// Every host's verdict for moving `server`.
pub async fn forecast(
    ctl: &Arc<Controller>,
    server: &str,
    live: Option<bool>,
    opts: &MigrateRequestOptions,
) -> Result<Vec<ForecastRow>> {
    let s = ctl.inv.server(server).await?;
    let hosts = ctl.inv.hosts_shared().await?;
    let servers = ctl.inv.servers_shared().await?;
    let jobs = ctl.inv.jobs().await?;
    let live = live.unwrap_or(s.domain.active);
    let kind = if live {
        JobKind::LiveMigrate
    } else if opts.rescue_mode {
        JobKind::Rescue
    } else {
        JobKind::Migrate
    };
    let views = host_views(&hosts, &servers, &jobs);
    let v = tern_scheduler::forecast(
        &move_request(kind, opts),
        &server_view(&s),
        &views,
        &ctl.cfg.limits,
    );
    Ok(v.into_iter()
        .map(|x| match x.result {
            Ok(score) => ForecastRow {
                host: x.host,
                ok: true,
                detail: format!("qualifies (score {score})"),
            },
            Err(r) => ForecastRow {
                host: x.host,
                ok: false,
                detail: r.to_string(),
            },
        })
        .collect())
}

/// Cancels a job, by id or by server name.
pub async fn cancel(ctl: &Arc<Controller>, id: &str) -> Result<JobRecord> {
    let jobs = ctl.inv.jobs().await?;
    let j = jobs
        .iter()
        .find(|j| j.id == id)
        .or_else(|| {
            jobs.iter()
                .rev()
                .find(|j| j.server == id && !j.state.is_terminal())
        })
        .cloned()
        .ok_or_else(|| {
            CtlError::NotFound(format!(
                "no job or running job of a server '{id}'; see 'tern job-list'"
            ))
        })?;
    // From here on every write carries a term.
    let inv = ctl.operator().await?;
    match j.state {
        JobState::Queued => {
            let mut done = false;
            let r = inv
                .update_job(&j.id, |r| {
                    done = r.state == JobState::Queued;
                    if done {
                        r.state = JobState::Cancelled;
                        r.finished_ms = Some(now_ms());
                        r.note = Some("cancelled before it started".into());
                    }
                    Ok(done)
                })
                .await?;
            if !done {
                return Err(CtlError::Conflict(format!(
                    "job {} just started; cancel it again",
                    j.id
                )));
            }
            let prior = j.prior_state;
            inv.update_server(&j.server, |s| {
                s.state = prior;
                Ok(true)
            })
            .await?;
            r.ok_or_else(|| CtlError::NotFound(format!("job {} vanished", j.id)))
        }
        JobState::Running if j.kind == JobKind::Rescue => Err(CtlError::Conflict(
            "a rescue restarts a dead host's server and cannot be cancelled".into(),
        )),
        JobState::Running => {
            let r = inv
                .update_job(&j.id, |r| {
                    r.cancel_requested = true;
                    Ok(true)
                })
                .await?;
            let src = inv.host(&j.source).await?;
            let c = host_client(&src).map_err(|source| CtlError::Agent {
                host: j.source.clone(),
                source,
            })?;
            c.call::<serde_json::Value>(&Request::Migration(MigrationRequest::JobAbort {
                name: j.server.clone(),
                postcopy: false,
            }))
            .await
            .map_err(|source| CtlError::Agent {
                host: j.source.clone(),
                source,
            })?;
            r.ok_or_else(|| CtlError::NotFound(format!("job {} vanished", j.id)))
        }
        _ => Err(CtlError::Conflict(format!(
            "job {} is already {:?}",
            j.id, j.state
        ))),
    }
}

/// The leader's pass over the jobs: start what the limits allow, resume
/// running jobs nobody drives.
pub async fn schedule_tick(ctl: &Arc<Controller>) -> Result<()> {
    let jobs = ctl.lead().jobs().await?;
    for j in jobs.iter().filter(|j| j.state == JobState::Running) {
        if !ctl.has_runner(&j.id) {
            tracing::info!(job = %j.id, "resuming a running job nobody drives");
            spawn_runner(ctl, j.clone(), true);
        }
    }
    let now = now_ms();
    let mut queued: Vec<&JobRecord> = Vec::new();
    for j in jobs.iter().filter(|j| j.state == JobState::Queued) {
        if j.retry_at_ms.is_some_and(|t| t > now) {
            continue;
        }
        if j.kind == JobKind::Rescue && !crate::evacuate::rescue_may_start(ctl, j).await? {
            continue;
        }
        queued.push(j);
    }
    if queued.is_empty() {
        return Ok(());
    }
    let hosts = ctl.lead().hosts_shared().await?;
    let servers = ctl.lead().servers_shared().await?;
    let views = host_views(&hosts, &servers, &jobs);
    let mut queue = Vec::new();
    for j in &queued {
        match servers.iter().find(|s| s.domain.name == j.server) {
            Some(s) => queue.push(Queued {
                id: j.id.clone(),
                server: server_view(s),
                req: move_request(j.kind, &j.opts),
            }),
            None => fail(ctl, j, "the server no longer exists".into()).await?,
        }
    }
    let running = jobs.iter().filter(|j| j.state == JobState::Running).count() as u32;
    for step in plan(&queue, &views, running, &ctl.cfg.limits) {
        match step {
            Step::Start { id, dest } => {
                let mut won = false;
                let r = ctl
                    .inv
                    .update_job(&id, |r| {
                        won = r.state == JobState::Queued;
                        if won {
                            r.state = JobState::Running;
                            r.dest = Some(dest.clone());
                            r.started_ms = Some(now_ms());
                            r.note = None;
                        }
                        Ok(won)
                    })
                    .await?;
                if let (true, Some(j)) = (won, r) {
                    tracing::info!(job = %id, server = %j.server, %dest, "job starts");
                    spawn_runner(ctl, j, false);
                }
            }
            Step::Wait { id, why } => {
                ctl.lead()
                    .update_job(&id, |r| {
                        let change = r.note.as_deref() != Some(why.as_str());
                        r.note = Some(why.clone());
                        Ok(change)
                    })
                    .await?;
            }
            Step::Fail { id, why } => {
                if let Some(j) = queued.iter().find(|j| j.id == id) {
                    fail(ctl, j, why.to_string()).await?;
                }
            }
        }
    }
    Ok(())
}

/// Ends a job as failed and records why on the server.
async fn fail(ctl: &Arc<Controller>, j: &JobRecord, why: String) -> Result<()> {
    tracing::warn!(job = %j.id, server = %j.server, %why, "job failed");
    ctl.lead()
        .update_job(&j.id, |r| {
            r.state = JobState::Failed;
            r.note = Some(why.clone());
            r.finished_ms = Some(now_ms());
            Ok(true)
        })
        .await?;
    let state = if j.kind == JobKind::Rescue {
        ServerState::Unknown
    } else {
        ServerState::MigrateFailed
    };
    ctl.lead()
        .update_server(&j.server, |s| {
            s.state = state;
            s.error = Some(why.clone());
            Ok(true)
        })
        .await?;
    Ok(())
}

fn spawn_runner(ctl: &Arc<Controller>, job: JobRecord, recovering: bool) {
    if !ctl.runner_claim(&job.id) {
        return;
    }
    let id = job.id.clone();
    let c = ctl.clone();
    let h = tokio::spawn(async move {
        let id = job.id.clone();
        let r = crate::runner::run(&c, &job, recovering).await;
        if let Err(e) = r {
            tracing::warn!(job = %id, error = %e, "job runner failed");
        }
        c.runner_release(&id);
    });
    ctl.runner_started(&id, h.abort_handle());
}

/// The migrate options a job runs with.
pub fn migrate_options(
    kind: JobKind,
    o: &MigrateRequestOptions,
    s: &ServerRecord,
) -> MigrateOptions {
    let local = s.domain.disks.iter().any(|d| !d.shared);
    let mut m = MigrateOptions {
        persistent: true,
        undefine_source: true,
        ..Default::default()
    };
    match kind {
        JobKind::LiveMigrate => {
            m.live = true;
            m.copy_storage_all = local;
            m.bandwidth_mib = o.max_bandwidth_mb;
            m.keep_dest_on_failure = o.keep_dest_guest_on_failed;
            // QEMU's TLS with certificates from each agent's pki directory.
            m.tls = o.enable_tls;
            // Post-copy cannot carry mirrored disks: with local disks,
            // quickly-finish leaves it out rather than fail.
            if o.quickly_finish && !local {
                m.postcopy = true;
                m.postcopy_after_precopy = true;
            }
        }
        JobKind::Migrate if local => {
            m.cold = true;
            m.auto_start = o.auto_start;
            // The disks' copy over TLS with the agents' certificates.
            m.tls = o.enable_tls;
        }
        _ => m.offline = true,
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::cluster::{DiskReport, DomainReport};

    fn server(active: bool, shared: bool, state: ServerState) -> ServerRecord {
        ServerRecord {
            domain: DomainReport {
                name: "vm".into(),
                uuid: String::new(),
                active,
                vcpus: 1,
                memory_mib: 128,
                disks: vec![DiskReport {
                    target: "vda".into(),
                    path: "/p/vm.raw".into(),
                    pool: Some("p".into()),
                    shared,
                    bytes: 1 << 20,
                }],
                networks: vec![],
                machine: None,
                xml: String::new(),
            },
            host: "a".into(),
            state,
            error: None,
            rescued_from: None,
        }
    }

    #[test]
    fn admit_matches_requests_to_server_states() {
        let o = MigrateRequestOptions::default();
        let up = HostStatus::Online;
        let down = HostStatus::Down { since_ms: 1 };
        let running = server(true, true, ServerState::Running);
        let ready = server(false, true, ServerState::Ready);
        assert_eq!(admit(&running, true, &o, up).unwrap(), JobKind::LiveMigrate);
        assert_eq!(admit(&ready, false, &o, up).unwrap(), JobKind::Migrate);
        assert!(admit(&running, false, &o, up)
            .unwrap_err()
            .to_string()
            .contains("is running"));
        assert!(admit(&ready, true, &o, up)
            .unwrap_err()
            .to_string()
            .contains("server-migrate"));
        let moving = server(true, true, ServerState::LiveMigrating);
        assert!(admit(&moving, true, &o, up)
            .unwrap_err()
            .to_string()
            .contains("migrate-cancel"));
        let rescue = MigrateRequestOptions {
            rescue_mode: true,
            ..Default::default()
        };
        let unknown = server(true, true, ServerState::Unknown);
        assert!(
            admit(&unknown, false, &rescue, up).is_err(),
            "host is not down"
        );
        assert_eq!(
            admit(&unknown, false, &rescue, down).unwrap(),
            JobKind::Rescue
        );
        let local = server(true, false, ServerState::Unknown);
        assert!(admit(&local, false, &rescue, down)
            .unwrap_err()
            .to_string()
            .contains("shared pool"));
        assert!(admit(&unknown, false, &o, down)
            .unwrap_err()
            .to_string()
            .contains("--rescue-mode"));
    }

    #[test]
    fn options_follow_the_kind_and_the_disks() {
        let o = MigrateRequestOptions {
            max_bandwidth_mb: Some(50),
            quickly_finish: true,
            auto_start: true,
            ..Default::default()
        };
        let m = migrate_options(
            JobKind::LiveMigrate,
            &o,
            &server(true, false, ServerState::Running),
        );
        assert!(m.live && m.copy_storage_all && !m.postcopy);
        assert_eq!(m.bandwidth_mib, Some(50));
        assert!(m.persistent && m.undefine_source);
        assert!(m.validate().is_ok(), "{:?}", m.validate());
        let m = migrate_options(
            JobKind::LiveMigrate,
            &o,
            &server(true, true, ServerState::Running),
        );
        assert!(!m.copy_storage_all);
        let m = migrate_options(
            JobKind::Migrate,
            &o,
            &server(false, false, ServerState::Ready),
        );
        assert!(m.cold && m.auto_start && !m.live);
        assert!(m.validate().is_ok(), "{:?}", m.validate());
        let m = migrate_options(
            JobKind::Migrate,
            &o,
            &server(false, true, ServerState::Ready),
        );
        assert!(m.offline && !m.cold);
        assert!(m.validate().is_ok());
        let tls = MigrateRequestOptions {
            enable_tls: true,
            ..Default::default()
        };
        let m = migrate_options(
            JobKind::LiveMigrate,
            &tls,
            &server(true, true, ServerState::Running),
        );
        assert!(m.tls && m.validate().is_ok(), "{:?}", m.validate());
    }
}
