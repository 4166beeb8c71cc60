//! Host down: the leader's health pass and the evacuation of a dead host.
//!
//! Each host's lease key is checked every tick; [`crate::health::step`]
//! decides. A host declared down (lease lapsed, grace over, agent silent)
//! is evacuated once — the transition to `Down` is a CAS on its record:
//! with auto-migrate-on-host-down enabled, each shared-storage server gets
//! a rescue job whose id is derived from the server and the death, so it is
//! created exactly once whoever leads; servers with local disks are marked
//! lost; without the policy, servers are marked unknown.

use crate::error::Result;
use crate::health::{step, Action};
use crate::inventory::{now_ms, ALIVE, JOBS};
use crate::Controller;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tern_api::cluster::{
    HostRecord, HostStatus, JobKind, JobRecord, JobState, MigrateRequestOptions, ServerState,
};
use tern_api::{Client, Request};

/// How long the confirming probe waits for the agent.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A client for a host's API: its reported URI, if that may be followed
/// (see [`crate::agents`]), with the controller's certificates.
pub fn host_client(h: &HostRecord) -> std::result::Result<Client, tern_api::ClientError> {
    crate::agents::client(&h.report.api_uri)
}

/// Whether the host's agent answers.
async fn answers(h: &HostRecord) -> bool {
    match host_client(h) {
        Ok(c) => c
            .with_timeout(PROBE_TIMEOUT)
            .call::<serde_json::Value>(&Request::NodeInfo)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Looks at every host's lease and acts on lapses.
pub async fn health_tick(ctl: &Arc<Controller>) -> Result<()> {
    let alive: HashSet<String> = ctl
        .inv
        .store
        .list(ALIVE)
        .await?
        .into_iter()
        .map(|e| e.key[ALIVE.len()..].to_string())
        .collect();
    for h in ctl.inv.hosts().await? {
        let name = h.report.name.clone();
        let now = now_ms();
        match step(
            h.status,
            alive.contains(&name),
            now,
            ctl.cfg.grace.as_millis() as u64,
        ) {
            Action::Stay => {}
            Action::Set(s) => {
                tracing::info!(host = %name, status = ?s, "host status");
                ctl.inv
                    .update_host(&name, |r| {
                        let same = r.status == h.status;
                        if same {
                            r.status = s;
                        }
                        Ok(same)
                    })
                    .await?;
            }
            Action::Probe => {
                if answers(&h).await {
                    // Alive but not heartbeating: wait another grace.
                    tracing::warn!(host = %name, "lease lapsed but the agent answers; waiting");
                    ctl.inv
                        .update_host(&name, |r| {
                            r.status = HostStatus::Lapsed { since_ms: now_ms() };
                            Ok(true)
                        })
                        .await?;
                    continue;
                }
                let mut won = false;
                let rec = ctl
                    .inv
                    .update_host(&name, |r| {
                        won = matches!(r.status, HostStatus::Lapsed { .. });
                        if won {
                            r.status = HostStatus::Down { since_ms: now };
                        }
                        Ok(won)
                    })
                    .await?;
                if let (true, Some(rec)) = (won, rec) {
                    tracing::warn!(host = %name, "host is down");
                    evacuate(ctl, &rec, now).await?;
                }
            }
        }
    }
    Ok(())
}

/// Deals with a dead host's servers and jobs.
pub async fn evacuate(ctl: &Arc<Controller>, host: &HostRecord, since_ms: u64) -> Result<()> {
    let name = &host.report.name;
    // Queued jobs leaving the dead host can no longer run.
    for j in ctl.inv.jobs().await? {
        if j.state == JobState::Queued && j.source == *name && j.kind != JobKind::Rescue {
            ctl.inv
                .update_job(&j.id, |r| {
                    if r.state != JobState::Queued {
                        return Ok(false);
                    }
                    r.state = JobState::Failed;
                    r.note = Some(format!("host {name} died before the migration started"));
                    r.finished_ms = Some(now_ms());
                    Ok(true)
                })
                .await?;
            let prior = j.prior_state;
            ctl.inv
                .update_server(&j.server, |s| {
                    s.state = prior;
                    Ok(true)
                })
                .await?;
        }
    }
    for s in ctl.inv.servers().await? {
        if s.host != *name || s.state.in_flight() {
            continue;
        }
        let server = s.domain.name.clone();
        let all_shared = s.domain.disks.iter().all(|d| d.shared);
        let state = if !host.auto_migrate_on_host_down {
            ServerState::Unknown
        } else if !all_shared {
            ServerState::Lost
        } else {
            let job = JobRecord {
                id: format!("rescue-{server}-{since_ms}"),
                kind: JobKind::Rescue,
                server: server.clone(),
                source: name.clone(),
                dest: None,
                state: JobState::Queued,
                migration_id: uuid::Uuid::new_v4().to_string(),
                opts: MigrateRequestOptions {
                    rescue_mode: true,
                    auto_start: true,
                    ..Default::default()
                },
                note: Some(format!("host {name} died")),
                created_ms: since_ms,
                started_ms: None,
                finished_ms: None,
                prior_state: s.state,
                cancel_requested: false,
            };
            if !ctl.inv.create(&format!("{JOBS}{}", job.id), &job).await? {
                continue;
            }
            tracing::info!(%server, host = %name, "rescue queued");
            ServerState::StartMigrate
        };
        ctl.inv
            .update_server(&server, |r| {
                if r.host != *name || r.state.in_flight() && state != ServerState::StartMigrate {
                    return Ok(false);
                }
                r.state = state;
                if state == ServerState::Lost {
                    r.error = Some(format!("host {name} died with this server's local disks"));
                }
                Ok(true)
            })
            .await?;
    }
    Ok(())
}
