//! Running one job: a migration through the driver, or a rescue (define
//! and start the server's last known definition on the chosen host).

use crate::error::{CtlError, Result};
use crate::evacuate::host_client;
use crate::inventory::now_ms;
use crate::jobs::{drive, migrate_options, Outcome};
use crate::Controller;
use std::sync::Arc;
use tern_api::cluster::{JobKind, JobRecord, JobState, ServerState};
use tern_api::{Client, DomainInfo, DomainRef, Request};

fn client(ctl_host: &tern_api::cluster::HostRecord) -> Result<Client> {
    host_client(ctl_host).map_err(|source| CtlError::Agent {
        host: ctl_host.report.name.clone(),
        source,
    })
}

/// Runs (or resumes) a job to its end and records the outcome.
pub async fn run(ctl: &Arc<Controller>, job: &JobRecord, recovering: bool) -> Result<()> {
    let dest = job
        .dest
        .clone()
        .ok_or_else(|| CtlError::Conflict(format!("job {} runs without a destination", job.id)))?;
    let server = ctl.lead().server(&job.server).await?;
    let moving = match job.kind {
        JobKind::LiveMigrate => ServerState::LiveMigrating,
        _ => ServerState::Migrating,
    };
    ctl.lead()
        .update_server(&job.server, |s| {
            let change = s.state != moving;
            s.state = moving;
            Ok(change)
        })
        .await?;
    let dst_h = ctl.lead().host(&dest).await?;
    let dst = client(&dst_h)?;
    let outcome: Outcome = match job.kind {
        JobKind::Rescue => {
            match crate::rescue_check::check(&server.domain.name, &server.domain.xml, &dst_h.report)
            {
                // The definition the controller stored, checked against the rescue host.
                Ok(()) => rescue(&dst, &server.domain.name, &server.domain.xml).await,
                Err(why) => Err(format!("not rescued: {why}")),
            }
        }
        kind => {
            let src_h = ctl.lead().host(&job.source).await?;
            let src = client(&src_h)?;
            let options = migrate_options(kind, &job.opts, &server);
            let mut r = drive(&src, &dst, job, &options, recovering).await;
            if r.is_ok() && kind == JobKind::Migrate && job.opts.auto_start {
                r = start(&dst, &job.server).await;
            }
            r
        }
    };
    if let (Err(e), JobKind::Rescue) = (&outcome, job.kind) {
        if let Some(wait) = crate::rescue::backoff(job.attempts + 1) {
            return retry_rescue(ctl, job, &dst, e, wait).await;
        }
    }
    finish(ctl, job, &dest, outcome).await
}

/// A rescue attempt failed: removes what it left on its destination (a
/// definition that does not run) and queues the job again after `wait`.
async fn retry_rescue(
    ctl: &Arc<Controller>,
    job: &JobRecord,
    dst: &Client,
    e: &str,
    wait: std::time::Duration,
) -> Result<()> {
    let name = job.server.clone();
    let running = dst
        .call::<DomainInfo>(&Request::DomInfo { name: name.clone() })
        .await
        .map(|i| i.summary.id.is_some());
    if matches!(running, Ok(false)) {
        let _ = dst
            .call::<serde_json::Value>(&Request::Undefine {
                name: name.clone(),
                remove_all_storage: false,
                nvram: false,
            })
            .await;
    }
    let attempt = job.attempts + 1;
    tracing::warn!(job = %job.id, server = %name, attempt, error = %e, retry_in = ?wait, "rescue failed; retrying");
    ctl.lead()
        .update_job(&job.id, |r| {
            r.state = JobState::Queued;
            r.dest = None;
            r.attempts = attempt;
            r.retry_at_ms = Some(now_ms() + wait.as_millis() as u64);
            r.note = Some(format!(
                "attempt {attempt} failed: {e}; retrying in {} s",
                wait.as_secs()
            ));
            Ok(true)
        })
        .await?;
    ctl.lead()
        .update_server(&name, |s| {
            s.state = ServerState::StartMigrate;
            Ok(true)
        })
        .await?;
    Ok(())
}

async fn start(dst: &Client, name: &str) -> Outcome {
    let info = dst
        .call::<DomainInfo>(&Request::DomInfo {
            name: name.to_string(),
        })
        .await
        .map_err(|e| e.to_string())?;
    if info.summary.id.is_some() {
        return Ok(());
    }
    dst.call::<DomainRef>(&Request::Start {
        name: name.to_string(),
        paused: false,
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("moved, but starting it failed: {e}"))
}

/// Restarts a dead host's server from its definition. Idempotent: a
/// resumed rescue finds the server already running and stops there.
async fn rescue(dst: &Client, name: &str, xml: &str) -> Outcome {
    let running = dst
        .call::<DomainInfo>(&Request::DomInfo {
            name: name.to_string(),
        })
        .await
        .map(|i| i.summary.id.is_some())
        .unwrap_or(false);
    if running {
        return Ok(());
    }
    dst.call::<DomainRef>(&Request::Define {
        xml: xml.to_string(),
    })
    .await
    .map_err(|e| format!("defining it on the rescue host failed: {e}"))?;
    start(dst, name).await
}

async fn finish(
    ctl: &Arc<Controller>,
    job: &JobRecord,
    dest: &str,
    outcome: Outcome,
) -> Result<()> {
    let cancelled = ctl
        .inv
        .get::<JobRecord>(&format!("{}{}", crate::inventory::JOBS, job.id))
        .await?
        .is_some_and(|(_, j)| j.cancel_requested);
    let (state, note) = match &outcome {
        Ok(()) => (JobState::Succeeded, None),
        Err(_) if cancelled => (
            JobState::Cancelled,
            Some("cancelled by the operator".to_string()),
        ),
        Err(e) => (JobState::Failed, Some(e.clone())),
    };
    match &outcome {
        Ok(()) => tracing::info!(job = %job.id, server = %job.server, %dest, "job succeeded"),
        Err(e) => tracing::warn!(job = %job.id, server = %job.server, error = %e, "job ended"),
    }
    let live = job.kind == JobKind::LiveMigrate;
    ctl.lead()
        .update_server(&job.server, |s| {
            match (&outcome, job.kind) {
                (Ok(()), kind) => {
                    s.host = dest.to_string();
                    let running = live || kind == JobKind::Rescue || job.opts.auto_start;
                    s.state = if running {
                        ServerState::Running
                    } else {
                        ServerState::Ready
                    };
                    s.domain.active = running;
                    s.error = None;
                    if kind == JobKind::Rescue {
                        s.rescued_from = Some(job.source.clone());
                    }
                }
                (Err(_), _) if cancelled => {
                    s.state = job.prior_state;
                    s.error = None;
                }
                (Err(e), JobKind::Rescue) => {
                    s.state = ServerState::Unknown;
                    s.error = Some(e.clone());
                }
                (Err(e), _) => {
                    s.state = ServerState::MigrateFailed;
                    s.error = Some(e.clone());
                }
            }
            Ok(true)
        })
        .await?;
    ctl.lead()
        .update_job(&job.id, |r| {
            r.state = state;
            r.note = note.clone();
            r.finished_ms = Some(now_ms());
            Ok(true)
        })
        .await?;
    Ok(())
}
