//! The destination side: one run per migration (`dest/run.rs`), from
//! Prepare (define, start QEMU paused with `-incoming defer`, listen,
//! `dest/prepare.rs`) to the verdict (resume, or discard everything
//! Prepare created, `dest/finish.rs`). This file holds the steps they
//! share with recovery (starting the incoming QEMU, `cont`, discarding).

use super::qemu_tls::Endpoint;
use super::{set_capabilities, Job};
use crate::error::{AgentError, Result};
use crate::faults;
use crate::launch::{self, LaunchMode};
use crate::monitor;
use crate::registry::{self, DomainSlot};
use crate::Agent;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_migrate::options::parse_migrate_uri;
use tern_migrate::options::TLS_CREDS_ID;
use tern_migrate::protocol::{
    FinishReply, FinishRequest, IncomingTarget, NbdTarget, PrepareRequest,
};
use tern_migrate::Phase;
use tern_model::{DomainState, StateReason};
use tern_qemu::MigrationStatus;

/// How long Finish waits for the incoming QEMU to have loaded everything.
const LOAD_WAIT: Duration = Duration::from_secs(60);

mod finish;
mod postcopy_start;
mod prepare;
mod run;
pub use run::{attach, finish, prepare, resume, Verdict};

fn invalid(e: impl ToString) -> AgentError {
    AgentError::Invalid(e.to_string())
}

pub(super) async fn remove_created(agent: &Agent, job: &Job) {
    let files = std::mem::take(&mut *job.created.lock().unwrap_or_else(|p| p.into_inner()));
    if !files.is_empty() {
        job.event(format!(
            "removing {} volume(s) created for this migration",
            files.len()
        ));
    }
    super::storage::remove_files(agent, &files).await;
}

async fn start_incoming(
    agent: &Arc<Agent>,
    slot: &Arc<DomainSlot>,
    req: &PrepareRequest,
    job: &Arc<Job>,
) -> Result<(IncomingTarget, Option<NbdTarget>)> {
    let mut e = slot.inner.lock().await;
    let run = launch::launch(agent, &req.domain, LaunchMode::Incoming).await?;
    let qmp = run.qmp.clone();
    if !e.persistent {
        e.def = req.domain.clone();
    }
    monitor::install(agent, slot, &mut e, run);
    slot.set(DomainState::Paused, StateReason::Incoming);
    drop(e);

    let o = &req.options;
    if o.postcopy {
        // QEMU opens /dev/userfaultfd as the guest (it checks already when
        // the capability is set); the entry goes when this QEMU ends.
        crate::confine::user::userfaultfd_for(agent.held_user(slot.uuid).as_ref(), true);
    }
    let mut caps = o.shared_capabilities();
    caps.push(("events", true));
    set_capabilities(&qmp, &caps).await?;
    if postcopy_start::starts_at_switch(o) {
        postcopy_start::arm(&qmp, job);
    }
    let params = o.shared_parameters();
    if !params.is_empty() {
        qmp.execute(
            "migrate-set-parameters",
            Some(serde_json::Value::Object(params)),
        )
        .await?;
    }
    let run_dir = agent.layout.run_dir(&slot.name);
    if o.tls {
        super::qemu_tls::add_credentials(agent, &qmp, &run_dir, Endpoint::Server).await?;
        let peer = req.source_tls_identity.as_deref();
        let authz = super::qemu_tls::add_authz(&qmp, peer).await?;
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "tls-creds": TLS_CREDS_ID, "tls-authz": authz })),
        )
        .await?;
        job.event(format!(
            "QEMU's own TLS on: this host is the server; only {} may connect (tls-authz)",
            peer.unwrap_or("?")
        ));
    }
    let wanted = match &o.migrate_uri {
        Some(u) => Some(parse_migrate_uri(u).map_err(invalid)?),
        None => None,
    };
    let listen = o
        .listen_address
        .clone()
        .unwrap_or_else(|| agent.migration_bind_address());
    let advertise = match (&wanted, &o.listen_address) {
        (Some(w), _) => w.host.clone(),
        (None, Some(l)) if l != "0.0.0.0" && l != "::" => l.clone(),
        _ => agent.migration_address(),
    };
    if !req.disks.is_empty() {
        // Holes arrive as holes (see `sparse`); only a cost if it fails.
        let live = slot.inner.lock().await.run.as_ref().map(|r| r.live.clone());
        if let Some(live) = live {
            *job.receiving.lock().unwrap_or_else(|p| p.into_inner()) = req.disks.clone();
            if let Err(err) = super::sparse::set_unmap(agent, &qmp, &live, &req.disks, true).await {
                job.event(format!(
                    "disks arrive without unmapping zeros (holes get allocated): {err}"
                ));
            }
        }
    }
    if o.tunnelled {
        return tunnelled_incoming(agent, &qmp, req, job, &listen, &advertise).await;
    }
    let ports = match wanted.as_ref().and_then(|w| w.port) {
        Some(p) => p..=p,
        None => agent.cfg.migration_ports.clone(),
    };
    // QEMU listens on a unix socket; the agent's guard on the network.
    let port = super::guard::incoming(agent, &qmp, req, job, &listen, ports).await?;
    let nbd = if req.disks.is_empty() {
        None
    } else {
        Some(super::storage::export(agent, &qmp, &listen, &advertise, &req.disks, o.tls).await?)
    };
    Ok((
        IncomingTarget {
            host: advertise,
            port,
            tunnel: false,
        },
        nbd,
    ))
}

/// `--tunnelled`: QEMU listens on a unix socket (and exports the disks on
/// another) that only this agent reaches; the agent's tunnel listener is
/// what the source is told about.
async fn tunnelled_incoming(
    agent: &Arc<Agent>,
    qmp: &tern_qemu::Qmp,
    req: &PrepareRequest,
    job: &Arc<Job>,
    listen: &str,
    advertise: &str,
) -> Result<(IncomingTarget, Option<NbdTarget>)> {
    let run_dir = agent.layout.run_dir(&req.domain.name);
    let (memory, nbd) = super::tunnel::incoming_sockets(agent, &run_dir, !req.disks.is_empty())?;
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("unix:{}", memory.display()) })),
    )
    .await?;
    let exports = match &nbd {
        Some(p) => Some(super::storage::export_unix(qmp, p, &req.disks).await?),
        None => None,
    };
    let routes = tern_tunnel::Routes {
        memory: Some(memory),
        nbd,
    };
    let target = super::tunnel::listen(agent, job, listen, advertise, routes).await?;
    let nbd = exports.map(|exports| NbdTarget {
        host: target.host.clone(),
        port: target.port,
        exports,
    });
    Ok((target, nbd))
}

/// Kills the incoming QEMU and removes a transient slot.
pub(super) async fn discard(agent: &Arc<Agent>, slot: &Arc<DomainSlot>) {
    let pid = {
        let mut e = slot.inner.lock().await;
        e.stopping = Some(StateReason::Destroyed);
        e.run.as_ref().map(|r| r.pid)
    };
    if let Some(pid) = pid {
        crate::procs::signal(pid, libc::SIGKILL);
        slot.wait_for(|s| s == DomainState::ShutOff, Duration::from_secs(10))
            .await;
    }
    let e = slot.inner.lock().await;
    if !e.persistent {
        drop(e);
        agent.forget_domain(slot);
        let _ = std::fs::remove_dir_all(agent.layout.run_dir(&slot.name));
    }
}

/// How long the load wait sleeps when no MIGRATION event comes: events
/// wake it at once; this only bounds a lost one.
const LOAD_LOOK: Duration = Duration::from_millis(20);

/// Waits until the incoming QEMU has the whole guest (or is in post-copy).
/// Finish often arrives while QEMU is still loading what was on the wire
/// when the source finished (QEMU's downtime ends when the source has
/// sent its last byte): the wait ends on QEMU's MIGRATION event, since
/// every millisecond here is pause the guest sees. Looking every 5 ms cost
/// up to 5 of them.
async fn wait_loaded(qmp: &tern_qemu::Qmp) -> Result<()> {
    let mut events = qmp.events();
    let deadline = Instant::now() + LOAD_WAIT;
    loop {
        let (status, q) = qmp.migration().await?;
        match status {
            MigrationStatus::Completed => return Ok(()),
            s if s.is_postcopy() => return Ok(()),
            MigrationStatus::Failed | MigrationStatus::Cancelled => {
                return Err(AgentError::Failed(format!(
                    "incoming migration {status}: {}",
                    q["error-desc"].as_str().unwrap_or("unknown error")
                )))
            }
            _ if Instant::now() > deadline => {
                return Err(AgentError::Timeout(
                    "the incoming QEMU did not finish loading in time".into(),
                ))
            }
            _ => {
                tern_qemu::next_event(&mut events, "MIGRATION", LOAD_LOOK).await;
            }
        }
    }
}

/// The time (QEMU's clock, µs since the epoch) of the next `name` event
/// within `wait`. After a plain `cont` QEMU sends RESUME before the
/// command's reply, so it is queued already.
pub(super) async fn event_time(
    events: &mut tokio::sync::broadcast::Receiver<tern_qemu::QmpEvent>,
    name: &str,
    wait: Duration,
) -> Option<u64> {
    tern_qemu::next_event(events, name, wait)
        .await
        .map(|e| e.timestamp_us)
}

/// Resumes the incoming guest. Errors before `cont` mean the guest never
/// ran here; once `cont` succeeded this host is the copy, so a later
/// failure (the definition cannot be saved, say) is only a warning: the
/// source must not resume too.
pub(super) async fn resume_here(
    agent: &Arc<Agent>,
    slot: &Arc<DomainSlot>,
    job: &Arc<Job>,
) -> Result<Option<String>> {
    let o = &job.options;
    let mut e = slot.inner.lock().await;
    let qmp = e
        .run
        .as_ref()
        .map(|r| r.qmp.clone())
        .ok_or_else(|| AgentError::Failed("the incoming QEMU is gone".into()))?;
    wait_loaded(&qmp).await?;
    if o.copies_storage() {
        let _ = qmp.execute("nbd-server-stop", None).await;
        // The disks as their definition says, before the guest runs here.
        if let Some(run) = e.run.as_ref() {
            let disks = job
                .receiving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Err(err) = super::sparse::set_unmap(agent, &qmp, &run.live, &disks, false).await
            {
                job.event(format!(
                    "warning: the received disks keep discard=unmap: {err}"
                ));
            }
        }
    }
    faults::point(agent, "dest-before-cont").await;
    if o.suspend {
        slot.set(DomainState::Paused, StateReason::Migrated);
    } else {
        // In post-copy the guest may run already (see `postcopy_start`); a
        // second `cont` would show as a pause and a resume.
        let may_run = postcopy_start::starts_at_switch(o);
        if !(may_run && qmp.run_state().await?.is_running()) {
            let mut events = qmp.events();
            qmp.execute("cont", None).await?;
            if let Some(us) = event_time(&mut events, "RESUME", Duration::from_millis(50)).await {
                job.note_resumed(us);
            }
        }
        slot.set(DomainState::Running, StateReason::Migrated);
    }
    // From here on this host is the copy, whatever fails next.
    let mut warnings = Vec::new();
    if let Err(err) = job.set_links(|l| l.owns = true) {
        warnings.push(err.to_string());
    }
    faults::point(agent, "dest-after-cont").await;
    if !o.suspend {
        // Tell the network where the guest is now (gratuitous ARP/RARP).
        let _ = qmp
            .execute(
                "announce-self",
                Some(json!({"initial": 50, "max": 550, "rounds": 5, "step": 100})),
            )
            .await;
    }
    if o.persistent {
        let def = e
            .run
            .as_ref()
            .map(|r| r.live.clone())
            .unwrap_or_else(|| e.def.clone());
        match registry::save_def(&agent.layout.domains(), &def) {
            Ok(()) => {
                e.def = def;
                e.persistent = true;
            }
            Err(err) => warnings.push(format!(
                "the guest runs here, but its definition could not be stored ({err}); \
                 it stays transient: free space and run 'tern define' with 'tern dumpxml' output"
            )),
        }
    }
    for w in &warnings {
        job.event(format!("warning: {w}"));
    }
    Ok((!warnings.is_empty()).then(|| warnings.join("; ")))
}

async fn finish_offline(
    agent: &Arc<Agent>,
    job: &Arc<Job>,
    _req: &FinishRequest,
) -> Result<FinishReply> {
    let def = job.take_offline_def();
    let result = match def {
        Some(def) => agent.define_domain(def).await.map(|_| ()),
        None => Err(AgentError::Failed("no prepared definition".into())),
    };
    let reply = match result {
        Ok(()) => {
            job.advance(Phase::Completed)?;
            job.event("definition stored");
            finish::reply(true, None)
        }
        Err(e) => {
            job.advance(Phase::Failed)?;
            finish::reply(false, Some(e.to_string()))
        }
    };
    agent.jobs.finish(job);
    Ok(reply)
}
