//! Host down: the leader's health pass and the evacuation of a dead host.
//!
//! Each host's lease key is checked every tick; [`crate::health::step`]
//! decides. A host declared down (lease lapsed, grace over, agent silent)
//! is marked `Down { since }` by a CAS on its record; from then on every
//! tick of whoever leads evacuates it again ([`evacuate`], idempotent)
//! until every server has its fate, and only then stores
//! `evacuated/HOST/SINCE`: a leader that dies between the mark and the
//! rescues leaves the work to the next tick of the next leader. Fates come
//! from [`crate::rescue::decide`]; each rescue is a job whose id is derived
//! from the server and the death, stored before anything acts on it, and
//! started only once the host is proven fenced ([`crate::fencing`]).

use crate::error::Result;
use crate::health::{down_at, step, Action, Timing};
use crate::inventory::{now_ms, ALIVE, JOBS};
use crate::rescue::{decide, Decision, ServerFacts};
use crate::Controller;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_api::cluster::{
    HostRecord, HostStatus, JobKind, JobRecord, JobState, MigrateRequestOptions, ServerRecord,
    ServerState,
};
use tern_api::{Client, Request};

/// Store prefix of finished evacuations: `evacuated/HOST/SINCE_MS`.
pub const EVACUATED: &str = "evacuated/";

/// How long the confirming probe waits for the agent.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Host actions (status writes and probes) one tick runs at once. A probe
/// waits up to [`PROBE_TIMEOUT`] for a silent agent: one after another, a
/// rack of forty dead hosts took forty seconds to be declared down, and at
/// 5 000 hosts a tick that found thousands of leases changed wrote their
/// statuses for twenty seconds.
const ACTIONS_AT_ONCE: usize = 16;

/// How old the listing of lease keys may be when it decides that a host's
/// status changes. Listing every host's record can take seconds at
/// thousands of hosts; a host that registered meanwhile was marked lapsed
/// on a listing older than its lease, and online again a tick later.
const ALIVE_MAX_AGE: Duration = Duration::from_secs(1);

/// The hosts whose lease key exists, and when that was listed.
struct Alive {
    names: HashSet<String>,
    listed_at: Instant,
}

impl Alive {
    async fn list(ctl: &Controller) -> Result<Alive> {
        let listed_at = Instant::now();
        let names = ctl
            .inv
            .store
            .list(ALIVE)
            .await?
            .into_iter()
            .map(|e| e.key[ALIVE.len()..].to_string())
            .collect();
        Ok(Alive { names, listed_at })
    }
}

/// Looks at every host's lease and acts on lapses, then watches fencing
/// and evacuates every down host whose evacuation is unfinished.
pub async fn health_tick(ctl: &Arc<Controller>) -> Result<()> {
    let mut alive = Alive::list(ctl).await?;
    let listed = ctl.lead().hosts_shared().await?;
    let mut actions = Vec::new();
    for h in &listed {
        let decide = |a: &Alive| {
            let name = &h.report.name;
            step(h.status, a.names.contains(name), timing(ctl, h))
        };
        let mut action = decide(&alive);
        if action != Action::Stay && alive.listed_at.elapsed() > ALIVE_MAX_AGE {
            alive = Alive::list(ctl).await?;
            action = decide(&alive);
        }
        if action != Action::Stay {
            actions.push((h.clone(), action));
        }
    }
    let changed = !actions.is_empty();
    act_on_all(ctl, actions).await?;
    // Read every host again only if this tick changed one: at thousands
    // of hosts each read decodes every report.
    let hosts = match changed {
        true => ctl.lead().hosts_shared().await?,
        false => listed,
    };
    crate::fencing::watch_tick(ctl, &hosts).await?;
    for h in &hosts {
        let HostStatus::Down { since_ms } = h.status else {
            continue;
        };
        let key = format!("{EVACUATED}{}/{since_ms}", h.report.name);
        if ctl.lead().store.get(&key).await?.is_some() {
            continue;
        }
        if evacuate(ctl, h, since_ms).await? {
            tracing::info!(host = %h.report.name, "evacuation decided for every server");
            ctl.lead().create(&key, &now_ms()).await?;
        }
    }
    Ok(())
}

/// How late the store itself may delete an expired lease's keys: etcd
/// looks for expired leases every 500 ms; with margin.
const NOTICE_LAG_STORE: Duration = Duration::from_secs(1);

/// The times one host's health is decided by, now.
fn timing(ctl: &Controller, h: &HostRecord) -> Timing {
    Timing {
        now_ms: now_ms(),
        grace_ms: ctl.cfg.grace.as_millis() as u64,
        probe_lead_ms: (PROBE_TIMEOUT + ctl.cfg.tick).as_millis() as u64,
        lease_end_ms: ctl.lease_ends.end_of(&h.report.name, h.lease),
        notice_lag_max_ms: (NOTICE_LAG_STORE + ctl.cfg.tick * 2).as_millis() as u64,
    }
}

/// Runs the tick's host actions, [`ACTIONS_AT_ONCE`] at a time; the first
/// error, once all have run. Dropping the future (leadership lost) aborts
/// them.
async fn act_on_all(ctl: &Arc<Controller>, actions: Vec<(Arc<HostRecord>, Action)>) -> Result<()> {
    let mut running = tokio::task::JoinSet::new();
    let mut first_error = None;
    let mut note = |r: std::result::Result<Result<()>, tokio::task::JoinError>| {
        if let Ok(Err(e)) = r {
            first_error.get_or_insert(e);
        }
    };
    for (h, action) in actions {
        if running.len() >= ACTIONS_AT_ONCE {
            if let Some(r) = running.join_next().await {
                note(r);
            }
        }
        let ctl = ctl.clone();
        running.spawn(async move { act_on(&ctl, &h, action).await });
    }
    while let Some(r) = running.join_next().await {
        note(r);
    }
    first_error.map_or(Ok(()), Err)
}

/// One host's action: a new status (written only if the record still has
/// the status it was decided from), or a probe.
async fn act_on(ctl: &Arc<Controller>, h: &HostRecord, action: Action) -> Result<()> {
    let name = &h.report.name;
    match action {
        Action::Stay => Ok(()),
        Action::Set(s) => {
            tracing::info!(host = %name, status = ?s, "host status");
            ctl.lead()
                .update_host(name, |r| {
                    let same = r.status == h.status;
                    if same {
                        r.status = s;
                    }
                    Ok(same)
                })
                .await?;
            Ok(())
        }
        Action::Probe => probe(ctl, h).await,
    }
}

/// The grace is nearly over: probes the agent; if it is silent, marks the
/// host down when the grace is over, unless its record changed meanwhile
/// (it registered again).
async fn probe(ctl: &Arc<Controller>, h: &HostRecord) -> Result<()> {
    let name = &h.report.name;
    let HostStatus::Lapsed { since_ms } = h.status else {
        return Ok(());
    };
    if answers(h).await {
        // Alive but not heartbeating: wait another grace.
        tracing::warn!(host = %name, "lease lapsed but the agent answers; waiting");
        ctl.lead()
            .update_host(name, |r| {
                r.status = HostStatus::Lapsed { since_ms: now_ms() };
                Ok(true)
            })
            .await?;
        return Ok(());
    }
    let due = down_at(since_ms, ctl.cfg.grace.as_millis() as u64);
    let wait = due.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let now = now_ms();
    let mut won = false;
    ctl.lead()
        .update_host(name, |r| {
            won = r.status == h.status;
            if won {
                r.status = HostStatus::Down { since_ms: now };
            }
            Ok(won)
        })
        .await?;
    if won {
        tracing::warn!(host = %name, since_ms = now, "host is down");
        crate::metrics::metrics().host_declared_down();
        if ctl.cfg.fault_exit_after_mark_down {
            tracing::error!(
                "fault injection: exiting between marking the host down and its rescues"
            );
            std::process::exit(3);
        }
    }
    Ok(())
}

/// Fails queued migrations leaving a dead host: they can no longer run.
async fn fail_queued_leaving(ctl: &Arc<Controller>, name: &str) -> Result<()> {
    for j in ctl.lead().jobs().await? {
        if j.state == JobState::Queued && j.source == *name && j.kind != JobKind::Rescue {
            let mut done = false;
            ctl.lead()
                .update_job(&j.id, |r| {
                    done = r.state == JobState::Queued;
                    if !done {
                        return Ok(false);
                    }
                    r.state = JobState::Failed;
                    r.note = Some(format!("host {name} died before the migration started"));
                    r.finished_ms = Some(now_ms());
                    Ok(true)
                })
                .await?;
            if done {
                let prior = j.prior_state;
                ctl.lead()
                    .update_server(&j.server, |s| {
                        s.state = prior;
                        Ok(true)
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// Gives every server of a dead host its fate; whether all have one.
pub async fn evacuate(ctl: &Arc<Controller>, host: &HostRecord, since_ms: u64) -> Result<bool> {
    let name = &host.report.name;
    fail_queued_leaving(ctl, name).await?;
    let jobs = ctl.lead().jobs().await?;
    let fenced = crate::fencing::proven(ctl, name, since_ms).await?;
    let mut complete = true;
    for s in ctl.lead().servers_shared().await? {
        if s.host != *name {
            continue;
        }
        let server = s.domain.name.clone();
        let rescue_id = format!("rescue-{server}-{since_ms}");
        let dest = crate::interrupted::find(ctl, &jobs, &s, since_ms).await;
        let facts = ServerFacts {
            policy: host.auto_migrate_on_host_down,
            all_shared: s.domain.disks.iter().all(|d| d.shared),
            rescue_exists: jobs.iter().any(|j| j.id == rescue_id),
            open_job: jobs
                .iter()
                .any(|j| j.server == server && !j.state.is_terminal()),
            dest: dest.as_ref().map(|d| d.state),
            fenced,
        };
        match decide(&facts) {
            Decision::Done => {}
            Decision::Wait(why) => {
                tracing::debug!(%server, host = %name, why, "evacuation waits");
                complete = false;
            }
            Decision::Adopt => {
                let to = dest.map(|d| d.dest).unwrap_or_default();
                tracing::warn!(%server, from = %name, %to, "its host died mid-migration; it runs on the destination");
                set_server(ctl, &server, name, Some(&to), ServerState::Running, None).await?;
            }
            Decision::ResumeAtDest | Decision::DiscardAtDest => {
                // Settled on the destination; the next tick sees it
                // running there (adopted) or gone (rescued).
                complete = false;
                let Some(i) = dest else { continue };
                let resume = decide(&facts) == Decision::ResumeAtDest;
                match crate::interrupted::settle(ctl, &i, &s, resume).await {
                    Ok(true) => {
                        tracing::warn!(%server, from = %name, to = %i.dest, "the complete copy resumed on the destination");
                        set_server(
                            ctl,
                            &server,
                            name,
                            Some(&i.dest),
                            ServerState::Running,
                            None,
                        )
                        .await?;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(%server, to = %i.dest, error = %e, "settling the destination's copy failed; trying again");
                    }
                }
            }
            Decision::Rescue => {
                queue_rescue(ctl, &s, name, &rescue_id, since_ms).await?;
            }
            Decision::Unknown(why) => {
                set_server(ctl, &server, name, None, ServerState::Unknown, Some(why)).await?;
            }
            Decision::Lost(why) => {
                set_server(ctl, &server, name, None, ServerState::Lost, Some(why)).await?;
            }
        }
    }
    Ok(complete)
}

/// Records a server's fate (only while it is still on the dead host and
/// no job owns it); `to` moves it to another host.
async fn set_server(
    ctl: &Arc<Controller>,
    server: &str,
    host: &str,
    to: Option<&str>,
    state: ServerState,
    why: Option<&str>,
) -> Result<()> {
    ctl.lead()
        .update_server(server, |r| {
            let error = why.map(str::to_string);
            let change = r.host == host
                && !r.state.in_flight()
                && (r.state != state || r.error != error || to.is_some());
            if change {
                r.state = state;
                r.error = error;
                if let Some(to) = to {
                    r.host = to.to_string();
                    r.domain.active = state == ServerState::Running;
                    // A definition the dead host still keeps is stale: it
                    // is removed when the host registers again.
                    r.rescued_from = Some(host.to_string());
                }
            }
            Ok(change)
        })
        .await?;
    Ok(())
}

/// Stores the rescue job (before anything acts on it), then claims the
/// server for it.
async fn queue_rescue(
    ctl: &Arc<Controller>,
    s: &ServerRecord,
    host: &str,
    id: &str,
    since_ms: u64,
) -> Result<()> {
    let server = s.domain.name.clone();
    let job = JobRecord {
        id: id.to_string(),
        kind: JobKind::Rescue,
        server: server.clone(),
        source: host.to_string(),
        dest: None,
        state: JobState::Queued,
        migration_id: uuid::Uuid::new_v4().to_string(),
        opts: MigrateRequestOptions {
            rescue_mode: true,
            // Always started, even when the last report said shut off: a
            // guest started on the host just before it died was never
            // reported running (ceph_fencing's "host dying right after a
            // start" test), and the controller does not own a requested
            // state (Proxmox HA's started/stopped) that would tell the two
            // apart, because operators start guests on the agents directly.
            auto_start: true,
            ..Default::default()
        },
        note: Some(format!("host {host} died; waiting for its fencing")),
        created_ms: since_ms,
        started_ms: None,
        finished_ms: None,
        prior_state: s.state,
        cancel_requested: false,
        attempts: 0,
        retry_at_ms: None,
        term: None,
    };
    let inv = ctl.lead();
    let job = JobRecord {
        term: inv.term(),
        ..job
    };
    if inv.create(&format!("{JOBS}{id}"), &job).await? {
        tracing::info!(%server, %host, "rescue queued");
    }
    ctl.lead()
        .update_server(&server, |r| {
            let change = r.host == host && !r.state.in_flight();
            if change {
                r.state = ServerState::StartMigrate;
            }
            Ok(change)
        })
        .await?;
    Ok(())
}

/// Whether a queued rescue may start now: only once its host is proven
/// fenced. Meanwhile its note says why it waits; a host that came back
/// before it was fenced still runs the guest, so the rescue is cancelled.
pub async fn rescue_may_start(ctl: &Arc<Controller>, j: &JobRecord) -> Result<bool> {
    let h = ctl.lead().host(&j.source).await?;
    let mut proven = crate::fencing::proven(ctl, &j.source, j.created_ms).await?;
    if let HostStatus::Down { since_ms } = h.status {
        proven = proven || crate::fencing::proven(ctl, &j.source, since_ms).await?;
    }
    match crate::rescue::gate(h.status, proven) {
        crate::rescue::Gate::Go => Ok(true),
        crate::rescue::Gate::Wait => {
            let why = ctl
                .fence_note(&j.source)
                .unwrap_or_else(|| "waiting for the host's fencing to be proven".into());
            let why = format!("host {} is down; {why}", j.source);
            ctl.lead()
                .update_job(&j.id, |r| {
                    let change = r.note.as_deref() != Some(why.as_str());
                    r.note = Some(why.clone());
                    Ok(change)
                })
                .await?;
            Ok(false)
        }
        crate::rescue::Gate::Cancel => {
            let mut done = false;
            ctl.lead()
                .update_job(&j.id, |r| {
                    done = r.state == JobState::Queued;
                    if done {
                        r.state = JobState::Cancelled;
                        r.note = Some(format!(
                            "host {} came back before it was proven fenced: the server kept running there",
                            j.source
                        ));
                        r.finished_ms = Some(now_ms());
                    }
                    Ok(done)
                })
                .await?;
            if done {
                tracing::warn!(job = %j.id, host = %j.source, "host back unfenced: rescue cancelled");
                let prior = j.prior_state;
                let source = j.source.clone();
                ctl.lead()
                    .update_server(&j.server, |s| {
                        let change = s.host == source && s.state == ServerState::StartMigrate;
                        if change {
                            s.state = prior;
                        }
                        Ok(change)
                    })
                    .await?;
            }
            Ok(false)
        }
    }
}
