//! Migration jobs on this agent: the source side ([`source`]), the
//! destination side ([`dest`]), the job table and its records on disk
//! ([`job`], [`record`]), settling a migration whose driver vanished
//! ([`recover`]), and the operator's handles on a running job
//! (`domjobinfo`, `domjobabort`, speed and downtime).

pub mod cold;
mod cold_durable;
mod cold_files;
pub mod cold_mac;
pub mod cold_stage;
pub mod cold_tls;
pub mod dest;
pub mod forecast;
pub mod guard;
pub mod job;
pub mod learned;
mod perform;
pub mod postcopy;
pub mod qemu_tls;
pub mod record;
pub mod recover;
pub mod run;
pub mod source;
mod sparse;
pub mod storage;
pub mod tunnel;

use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::json;
use std::sync::Arc;
use tern_api::MigrationRequest;
use tern_migrate::{JobKind, MigrateOptions};

/// How long a long poll waits on a job that has ended but is still in the
/// table (confirming, or a cold destination syncing), ms.
const ENDED_JOB_WAIT_MS: u64 = 20;

pub use job::{Job, JobState, Jobs};
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
        MigrationRequest::MigrateQuery { req } => to(&recover::query(agent, req).await?),
        MigrationRequest::MigrateP2p {
            name,
            dest_uri,
            options,
            id,
        } => {
            run::start(agent, &name, &dest_uri, options, id).await?;
            ok(json!(null))
        }
        MigrationRequest::JobInfo {
            name,
            completed,
            wait_ms,
        } => {
            if !completed && wait_ms > 0 {
                if let Some(j) = agent.jobs.get(&name) {
                    // A driver's long poll: it is alive.
                    j.touch();
                    // Subscribed before the look: a change while looking
                    // wakes it. A job that ended (its kind says so) but
                    // is not yet out of the table is waited for only
                    // briefly: leaving the table wakes the poll, but a
                    // cold copy's destination stays in the table while it
                    // syncs, and a follower that only needs the end must
                    // not wait for that (a 500 ms wait there made every
                    // cold migration 0.4-0.8 s slower); the short wait
                    // still keeps a follower from asking in a tight loop.
                    let mut changes = j.changes();
                    if agent.jobs.is_current(&j) {
                        let ended = matches!(
                            j.info().kind,
                            JobKind::Completed | JobKind::Failed | JobKind::Cancelled
                        );
                        let ms = if ended {
                            ENDED_JOB_WAIT_MS
                        } else {
                            wait_ms.min(5000)
                        };
                        let wait = std::time::Duration::from_millis(ms.min(wait_ms));
                        let _ = tokio::time::timeout(wait, changes.changed()).await;
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
        MigrationRequest::JobAbort { name, postcopy } => {
            let job = agent.jobs.get(&name).ok_or_else(|| {
                AgentError::Conflict(format!("domain '{name}' has no migration job to abort"))
            })?;
            let status = job.info().qemu_status;
            if postcopy {
                if status != tern_qemu::MigrationStatus::PostcopyActive {
                    return Err(AgentError::Conflict(format!(
                        "the migration of '{name}' is {status}, not in post-copy; use domjobabort without --postcopy"
                    )));
                }
                if !recover::destination_runs(agent, &job).await {
                    return Err(AgentError::Conflict(format!(
                        "the destination of '{name}' has not started the guest yet, and QEMU cannot resume a post-copy paused before that; try again in a moment"
                    )));
                }
                job.postcopy_hold.send_replace(true);
                running_qmp(agent, &name)
                    .await?
                    .execute_oob("migrate-pause", None)
                    .await?;
                job.event(
                    "post-copy paused by the operator; 'tern migrate --postcopy-resume' resumes it",
                );
                return ok(json!(null));
            }
            if status.is_postcopy() {
                return Err(AgentError::Conflict(format!(
                    "the migration of '{name}' is in post-copy: the guest already runs on the destination and cannot come back; let it finish, or pause it with 'domjobabort --postcopy'"
                )));
            }
            job.event("abort requested by the operator");
            job.cancel.send_replace(true);
            ok(json!(null))
        }
        MigrationRequest::MigrateRecover { req } => to(&postcopy::listen(agent, req).await?),
        MigrationRequest::MigratePostcopyResume { name } => {
            let job = agent.jobs.get(&name).ok_or_else(|| {
                AgentError::Conflict(format!("domain '{name}' has no migration job to resume"))
            })?;
            let qmp = running_qmp(agent, &name).await?;
            let (status, _) = qmp.migration().await?;
            if status != tern_qemu::MigrationStatus::PostcopyPaused {
                return Err(AgentError::Conflict(format!(
                    "the migration of '{name}' is {status}; only a paused post-copy can be resumed"
                )));
            }
            // The migration's own watcher resumes it (within a couple of
            // seconds): one owner, so two recoveries never race on QEMU.
            job.postcopy_hold.send_replace(false);
            job.event("post-copy resume requested by the operator");
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
