//! The source side: Begin (checks), Perform (QEMU sends memory while we
//! watch), Confirm (clean up, or resume on failure), and the `--p2p` flow.

use super::perform::Route;
use super::qemu_tls::Endpoint;
use super::{set_capabilities, Job};
use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tern_migrate::policy::Forecast;
use tern_migrate::protocol::{
    check_version, BeginReply, ConfirmRequest, PerformRequest, PROTOCOL_VERSION,
};
use tern_migrate::{JobKind, MigrateOptions, Phase, Role, TimeoutAction};
use tern_model::{xml, CacheMode, DomainState, StateReason};
use tern_qemu::{MigrationStatus, RunState};

/// Refuses disk setups that corrupt data when two hosts open the image:
/// images outside a shared pool, or a host page cache that would hold
/// writes the destination cannot see.
pub async fn check_storage(
    agent: &Agent,
    d: &tern_model::Domain,
    o: &MigrateOptions,
) -> Result<()> {
    for disk in &d.devices.disks {
        let Some(src) = &disk.source else { continue };
        if disk.readonly
            || disk.device == tern_model::DiskDevice::Cdrom
            || o.copies_disk(&disk.target_dev)
        {
            continue;
        }
        match agent.pools.pool_of(src).await {
            Some(p) if p.shared && p.kind == tern_model::PoolKind::Dir => {
                // Declared shared: the filesystem must say so too.
                crate::pools::sharedfs::check_shared_dir(
                    &p.name,
                    &p.target,
                    &agent.cfg.server.qemu.shared_filesystems,
                )?
            }
            Some(p) if p.shared => {}
            Some(p) => {
                return Err(AgentError::Conflict(format!(
                    "disk '{}' ({}) is in pool '{}' which is not shared; migrating it would leave the destination without its data: use --copy-storage-all, or --unsafe if the storage is shared after all",
                    disk.target_dev,
                    src.display(),
                    p.name
                )))
            }
            None => {
                return Err(AgentError::Conflict(format!(
                    "disk '{}' ({}) is not in a shared storage pool; define the pool with --shared on both hosts, or pass --unsafe",
                    disk.target_dev,
                    src.display()
                )))
            }
        }
        if !matches!(
            disk.cache,
            Some(CacheMode::None) | Some(CacheMode::Directsync)
        ) {
            return Err(AgentError::Conflict(format!(
                "disk '{}' uses cache mode '{}', which can lose writes when another host opens the image; set cache='none' or pass --unsafe",
                disk.target_dev,
                disk.cache
                    .map(|c| format!("{c:?}").to_lowercase())
                    .unwrap_or_else(|| "default (writeback)".into())
            )));
        }
    }
    Ok(())
}

/// How old a forecast may be for its start plan to apply.
const PLAN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(120);

/// The options with the policy's start plan applied, when a fresh forecast
/// of this guest made one and the operator left those knobs alone.
fn planned(o: &MigrateOptions, forecast: &Forecast) -> Option<MigrateOptions> {
    let mut p = o.clone();
    let mut why = Vec::new();
    // `--postcopy` allows post-copy; arming it costs pre-copy time, so not
    // when the forecast saw pre-copy finish comfortably on its own. The
    // operator's explicit switches (after the first pass, at the timeout)
    // keep it armed.
    let explicit = o.postcopy_after_precopy || o.timeout_action == TimeoutAction::Postcopy;
    if o.postcopy && !explicit && forecast.arm_postcopy == Some(false) {
        p.postcopy = false;
        why.push(format!(
            "post-copy allowed but not armed: pre-copy alone is forecast to finish in about {:.1} s",
            forecast.prediction.total_ms as f64 / 1000.0
        ));
    }
    let plan = forecast
        .plan
        .clone()
        .filter(|_| !o.compressed && !o.parallel);
    let Some(plan) = plan else {
        if why.is_empty() {
            return None;
        }
        p.start_plan = Some(format!("start plan: {}", why.join("; ")));
        return Some(p);
    };
    if let Some(cache) = plan.xbzrle_cache {
        p.compressed = true;
        p.xbzrle_cache = Some(cache);
    }
    if let Some(n) = plan.multifd_channels {
        p.parallel = true;
        p.parallel_connections = Some(n);
        if plan.zstd {
            p.parallel_compression = Some("zstd".into());
        }
    }
    why.insert(0, plan.reason);
    p.start_plan = Some(why.join("; "));
    Some(p)
}

/// The options Begin settles on: the start plan of a fresh forecast (see
/// [`planned`]), and post-copy's preempt channel where post-copy is sure
/// or foreseen ([`MigrateOptions::wants_preempt`]). `None`: as asked.
fn begin_options(
    agent: &Agent,
    name: &str,
    o: &MigrateOptions,
    active: bool,
) -> Option<MigrateOptions> {
    if !active || !o.live {
        return None;
    }
    let forecast = o
        .policy_on()
        .then(|| agent.jobs.fresh_forecast(name, PLAN_MAX_AGE))
        .flatten();
    let mut p = forecast.as_ref().and_then(|f| planned(o, f));
    let foreseen = forecast.is_some_and(|f| f.arm_postcopy == Some(true));
    if p.as_ref().unwrap_or(o).wants_preempt(foreseen) {
        let mut q = p.unwrap_or_else(|| o.clone());
        q.postcopy_preempt = true;
        let line = "post-copy's page requests get a connection of their own (postcopy-preempt)";
        q.start_plan = Some(match q.start_plan.take() {
            Some(plan) => format!("{plan}; {line}"),
            None => format!("start plan: {line}"),
        });
        p = Some(q);
    }
    p
}

/// Begin: validates and describes the guest for the destination.
pub async fn begin(agent: &Arc<Agent>, name: &str, o: &MigrateOptions) -> Result<BeginReply> {
    o.validate()
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    if let Some(j) = agent.jobs.get(name) {
        if !j.phase().is_terminal() && j.phase() != Phase::Begin {
            return Err(AgentError::Conflict(format!(
                "domain '{name}' is already migrating (phase {})",
                j.phase()
            )));
        }
    }
    let slot = agent.domains.find(name)?;
    if let Some(why) = agent.unplugs.refusal(&slot.name) {
        return Err(AgentError::Conflict(format!(
            "cannot migrate '{name}': {why}"
        )));
    }
    let e = slot.inner.lock().await;
    let active = e.run.is_some();
    if o.cold && active {
        return Err(AgentError::Conflict(format!(
            "domain '{name}' is running; a cold migration needs it shut off (or use --live)"
        )));
    }
    if !active && !o.offline && !o.cold {
        return Err(AgentError::Conflict(format!(
            "domain '{name}' is not running; use --offline --persistent to move its definition"
        )));
    }
    let mut d = e
        .run
        .as_ref()
        .map(|r| r.live.clone())
        .unwrap_or_else(|| e.def.clone());
    if (o.offline || o.cold) && !e.persistent {
        return Err(AgentError::Conflict(format!(
            "domain '{name}' is transient; offline migration needs a stored definition"
        )));
    }
    drop(e);
    if let Some(x) = &o.xml {
        let alt = xml::parse_domain(x)?;
        if alt.uuid != d.uuid {
            return Err(AgentError::Invalid(format!(
                "--xml describes uuid {}, not the migrating domain's {}; keep the same <uuid>",
                alt.uuid, d.uuid
            )));
        }
        if alt.memory_kib != d.memory_kib
            || alt.vcpus != d.vcpus
            || alt.devices.disks.len() != d.devices.disks.len()
            || alt.devices.interfaces.len() != d.devices.interfaces.len()
        {
            return Err(AgentError::Invalid(
                "--xml changes guest-visible hardware (memory, vCPUs, disks or NICs); only host-side details such as paths may differ".into(),
            ));
        }
        d = alt;
    }
    if let Some(n) = &o.dname {
        tern_model::names::validate_name("domain", n)?;
        d.name = n.clone();
    }
    if let Some(why) = o.machine_refusal(name, d.os.machine.as_deref()) {
        return Err(AgentError::Conflict(why));
    }
    if active && !o.unsafe_ {
        check_storage(agent, &d, o).await?;
    }
    let disks = if active && o.copies_storage() {
        super::storage::describe(agent, &d, o).await?
    } else {
        Vec::new()
    };
    let files = if o.cold {
        // Disks on an export QEMU reaches itself (netfs pools without a
        // kernel mount, network disks) are shared: they stay in place,
        // unless `--target-pool` names where to copy them.
        super::cold::describe(agent, &d, o.target_pool.is_some()).await?
    } else {
        Vec::new()
    };
    // RBD disks that stay where they are: the destination checks that its
    // monitors place them in the same cluster.
    let ceph_fsids = if o.cold && o.target_pool.is_some() {
        Default::default()
    } else {
        match agent.pools.resolve_disks(&d).await {
            Ok(r) => agent.pools.rbd_fsids(&r).await?,
            Err(_) => Default::default(),
        }
    };
    Ok(BeginReply {
        version: PROTOCOL_VERSION,
        domain: d,
        active,
        disks,
        files,
        options: begin_options(agent, name, o, active),
        source_uri: Some(agent.self_uri()),
        tls_identity: if o.tls {
            Some(super::qemu_tls::own_identity(agent)?)
        } else {
            None
        },
        nvram_dir: Some(crate::guest_setup::nvram_dir(agent)),
        ceph_fsids,
        addresses: super::guard::own_addresses(),
    })
}

/// The source's job for a Perform, in phase Perform: the one `--p2p`
/// registered already, or a new one (managed mode creates none in Begin).
fn performing_job(agent: &Agent, name: &str, req: &PerformRequest) -> Result<Arc<Job>> {
    let job = match agent.jobs.get(name) {
        Some(j) if j.id == req.id => j,
        _ => {
            let j = Job::new(req.id, Role::Source, name, req.options.clone());
            agent.jobs.insert(j.clone())?;
            j.advance(Phase::Begin)?;
            j
        }
    };
    job.advance(Phase::Perform)?;
    Ok(job)
}

/// Perform, phase by phase: the job (phase Perform, on disk), then
/// [`record_peer`], [`configure`] and [`route`]; then
/// `perform::run` follows it in the background (disk mirrors, QEMU's
/// migration, its watch, switch-over). A failed phase fails the job, and
/// the driver's Confirm rolls the source back.
pub async fn perform(agent: &Arc<Agent>, req: PerformRequest) -> Result<()> {
    check_version(req.version).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let slot = agent.domains.find(&req.name)?;
    if req.options.cold {
        return perform_cold(agent, &slot, req).await;
    }
    let (qmp, was_running, tcg) = {
        let e = slot.inner.lock().await;
        let run = e
            .run
            .as_ref()
            .ok_or_else(|| AgentError::Conflict(format!("domain '{}' is not running", req.name)))?;
        (
            run.qmp.clone(),
            slot.current().0 == DomainState::Running,
            run.accel == "tcg",
        )
    };
    let mut req = req;
    if tcg && !req.options.auto_converge {
        req.options.no_throttle = true;
    }
    let job = performing_job(agent, &slot.name, &req)?;
    let started = async {
        record_peer(&job, &req, was_running)?;
        configure(agent, &slot, &job, &qmp, &req, was_running).await?;
        route(agent, &slot, &job, &req)
    }
    .await;
    let route = match started {
        Ok(r) => r,
        Err(e) => {
            super::perform::fail(&job, &e);
            return Err(e);
        }
    };
    super::recover::watch_source(agent, &job);
    let stall = agent.cfg.stall_timeout;
    tokio::spawn(super::perform::run(
        agent.clone(),
        job,
        qmp,
        req,
        stall,
        route,
    ));
    Ok(())
}

/// Perform, cold: proves the disks left in place are shared, then sends
/// the files in the background.
async fn perform_cold(
    agent: &Arc<Agent>,
    slot: &Arc<crate::registry::DomainSlot>,
    req: PerformRequest,
) -> Result<()> {
    let target = req.cold.clone().ok_or_else(|| {
        AgentError::Invalid("a cold migration needs the destination's receivers".into())
    })?;
    let job = performing_job(agent, &slot.name, &req)?;
    job.update(|i| i.operation = "Cold migration".into());
    if !req.options.unsafe_ {
        let def = slot.inner.lock().await.def.clone();
        if let Err(e) = agent
            .pools
            .prove_shared_cold(&def, &req.files, &req.id)
            .await
        {
            super::perform::fail(&job, &e);
            return Err(e);
        }
    }
    tokio::spawn(super::cold::send_all(
        agent.clone(),
        job,
        req.files.clone(),
        target,
        req.options.clone(),
        agent.cfg.stall_timeout,
    ));
    Ok(())
}

/// Perform, phase 1: on disk before QEMU is told anything: who the
/// destination is, and whether the guest ran (a rollback resumes only a
/// guest that ran).
fn record_peer(job: &Arc<Job>, req: &PerformRequest, was_running: bool) -> Result<()> {
    job.set_links(|l| {
        l.was_running = was_running;
        l.peer_uri = req.dest_uri.clone();
        l.peer_name = req.dest_name.clone();
    })?;
    if let Some(plan) = &req.options.start_plan {
        job.event(format!("policy: {plan}"));
    }
    if req.options.no_throttle && req.options.policy_on() {
        job.event("TCG: the policy will not throttle vCPUs (guests throttled under TCG were seen to crash after migration)");
    }
    if req.options.tunnelled != req.target.tunnel {
        return Err(AgentError::Conflict(
            "the destination did not open a migration tunnel for --tunnelled (is it an older agent?)"
                .into(),
        ));
    }
    Ok(())
}

/// Perform, phase 2: proves shared storage is shared, then sets QEMU's
/// capabilities, parameters and TLS credentials; pauses a non-live guest.
async fn configure(
    agent: &Arc<Agent>,
    slot: &Arc<crate::registry::DomainSlot>,
    job: &Arc<Job>,
    qmp: &tern_qemu::Qmp,
    req: &PerformRequest,
    was_running: bool,
) -> Result<()> {
    let o = &req.options;
    let run_dir = agent.layout.run_dir(&slot.name);
    let live = slot.inner.lock().await.run.as_ref().map(|r| r.live.clone());
    if let Some(d) = live.as_ref().filter(|_| !o.unsafe_ && !o.offline) {
        agent.pools.prove_shared(d, o, &req.id).await?;
    }
    set_capabilities(qmp, &o.source_capabilities()).await?;
    let mut params = o.source_parameters();
    if o.tls {
        super::qemu_tls::add_credentials(agent, qmp, &run_dir, Endpoint::Client).await?;
        // The destination's certificate must name the address it announced.
        params.insert("tls-hostname".into(), json!(req.target.host));
    }
    qmp.execute(
        "migrate-set-parameters",
        Some(serde_json::Value::Object(params)),
    )
    .await?;
    if !o.live && was_running {
        qmp.execute("stop", None).await?;
        job.event("guest paused for a non-live migration");
    }
    Ok(())
}

/// Perform, phase 3: where QEMU sends its bytes (the destination, or this
/// agent's tunnel).
fn route(
    agent: &Arc<Agent>,
    slot: &Arc<crate::registry::DomainSlot>,
    job: &Arc<Job>,
    req: &PerformRequest,
) -> Result<Route> {
    if !req.options.tunnelled {
        return Ok(Route {
            uri: req.target.qemu_uri(),
            nbd_via: None,
        });
    }
    let run_dir = agent.layout.run_dir(&slot.name);
    super::tunnel::outgoing(agent, job, &run_dir, req)?;
    job.event("QEMU's connections go through this agent's TLS tunnel");
    let (uri, nbd_via) = job.tunnel_route().unwrap_or_default();
    Ok(Route { uri, nbd_via })
}

/// Confirm: after success stop the source QEMU and clean up; after failure
/// resume the guest here.
pub async fn confirm(agent: &Arc<Agent>, req: ConfirmRequest) -> Result<()> {
    check_version(req.version).map_err(|e| AgentError::Invalid(e.to_string()))?;
    if req.options.cold {
        let job = agent.jobs.get_id(&req.name, req.id)?;
        job.advance(Phase::Confirm)?;
        if req.success {
            if req.options.delete_source_storage {
                let def = agent
                    .domains
                    .find(&req.name)?
                    .inner
                    .lock()
                    .await
                    .def
                    .clone();
                delete_sent_disks(agent, &job, &def, &req.options).await;
            }
            if req.options.undefine_source {
                agent.undefine(&req.name, false).await?;
            }
            job.advance(Phase::Completed)?;
        } else {
            job.advance(if *job.cancel.borrow() {
                Phase::Cancelled
            } else {
                Phase::Failed
            })?;
        }
        agent.jobs.finish(&job);
        return Ok(());
    }
    if req.options.offline {
        // Only the definition moved; the source keeps running as it was.
        if req.success && req.options.undefine_source {
            agent.undefine(&req.name, false).await?;
        }
        return Ok(());
    }
    if let Some(super::job::Found::Done(r)) = agent.jobs.by_id(req.id) {
        // Settled here already (the orphan watcher was faster).
        return if (r.phase == Phase::Completed) == req.success {
            Ok(())
        } else {
            Err(AgentError::Conflict(format!(
                "migration {} of '{}' already ended here as {}",
                req.id, req.name, r.phase
            )))
        };
    }
    let job = agent.jobs.get_id(&req.name, req.id)?;
    job.touch();
    let slot = agent.domains.find(&req.name)?;
    job.advance(Phase::Confirm)?;
    if req.success {
        stop_migrated(agent, &slot, &job).await?;
    } else {
        resume_after_failure(&slot, &job).await;
        end_failed(agent, &job);
    }
    Ok(())
}

/// `--delete-source-storage` after a cold copy the destination verified:
/// the disks that were sent go (a disk on an export QEMU reaches was sent
/// only with `--target-pool`; otherwise it is the destination's disk too).
async fn delete_sent_disks(agent: &Agent, job: &Job, def: &tern_model::Domain, o: &MigrateOptions) {
    for disk in def
        .devices
        .disks
        .iter()
        .filter(|k| k.device != tern_model::DiskDevice::Cdrom)
    {
        let Some(p) = &disk.source else {
            // An rbd volume was sent only with `--target-pool`.
            if let Some(tern_model::DiskRemote::Volume(v)) = &disk.remote {
                if o.target_pool.is_some() && agent.pools.is_rbd(&v.pool).await {
                    match agent.pools.remove_disk_volume(disk).await {
                        Some(shown) => job.event(format!("deleted source disk {shown}")),
                        None => {
                            job.event(format!("cannot delete source disk {}/{}", v.pool, v.volume))
                        }
                    }
                }
            }
            continue;
        };
        let on_export = agent.pools.img_path(p).await != *p;
        if on_export && o.target_pool.is_none() {
            continue;
        }
        match agent.pools.remove_path(p).await {
            Ok(()) => job.event(format!("deleted source disk {}", p.display())),
            Err(e) => job.event(format!("cannot delete source disk {}: {e}", p.display())),
        }
    }
}

/// The destination runs the guest: stops this copy for good (and removes
/// its definition with `--undefinesource`), and ends the job completed.
pub async fn stop_migrated(
    agent: &Arc<Agent>,
    slot: &Arc<crate::registry::DomainSlot>,
    job: &Arc<Job>,
) -> Result<()> {
    crate::faults::point(agent, "source-before-quit").await;
    let pid = {
        let mut e = slot.inner.lock().await;
        e.stopping = Some(StateReason::Migrated);
        if job.options.undefine_source && e.persistent {
            let p = crate::registry::def_path(&agent.layout.domains(), &slot.name);
            let _ = std::fs::remove_file(p);
            e.persistent = false;
        }
        let pid = e.run.as_ref().map(|r| r.pid);
        if let Some(r) = &e.run {
            let _ = r.qmp.execute("quit", None).await;
        }
        pid
    };
    if !slot
        .wait_for(|s| s == DomainState::ShutOff, Duration::from_secs(10))
        .await
    {
        if let Some(pid) = pid {
            crate::procs::signal(pid, libc::SIGKILL);
        }
    }
    if job.phase() != Phase::Confirm {
        job.advance(Phase::Confirm)?;
    }
    job.advance(Phase::Completed)?;
    job.update(|i| i.kind = JobKind::Completed);
    job.event("source stopped and cleaned; the guest runs on the destination");
    agent.jobs.finish(job);
    Ok(())
}

/// The destination never ran the guest: cancels what is left of QEMU's
/// migration and runs the guest here again, if it ran before.
pub async fn resume_after_failure(slot: &Arc<crate::registry::DomainSlot>, job: &Arc<Job>) {
    let qmp = slot.inner.lock().await.run.as_ref().map(|r| r.qmp.clone());
    let Some(qmp) = qmp else {
        job.event("the source QEMU is gone; nothing to resume here");
        return;
    };
    if let Ok((m, _)) = qmp.migration().await {
        if m.is_precopy_in_flight() {
            job.event(format!("cancelling QEMU's unfinished migration ({m})"));
            let _ = qmp.execute("migrate_cancel", None).await;
            for _ in 0..500 {
                match qmp.migration().await {
                    Ok((m, _)) if m.is_precopy_in_flight() || m == MigrationStatus::Cancelling => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    _ => break,
                }
            }
        }
    }
    let status = qmp.run_state().await.unwrap_or(RunState::Running);
    if status.is_running() {
        return;
    }
    if !job.links().was_running {
        job.event(format!(
            "the guest was paused before the migration; leaving it {status}"
        ));
        return;
    }
    match qmp.execute("cont", None).await {
        Ok(_) => {
            slot.set(DomainState::Running, StateReason::Unpaused);
            job.event(format!("guest resumed on the source (was {status})"));
        }
        Err(err) => job.event(format!("could not resume the source: {err}")),
    }
}

/// Ends a source job that did not move the guest.
pub fn end_failed(agent: &Agent, job: &Arc<Job>) {
    let cancelled = *job.cancel.borrow() || job.info().kind == JobKind::Cancelled;
    if !job.phase().is_terminal() {
        if job.phase() == Phase::Perform {
            let _ = job.advance(Phase::Confirm);
        }
        let _ = job.advance(if cancelled {
            Phase::Cancelled
        } else {
            Phase::Failed
        });
    }
    job.update(|i| {
        if i.kind == JobKind::Unbounded || i.kind == JobKind::Completed {
            i.kind = JobKind::Failed;
        }
    });
    job.event("migration failed; the guest keeps running on the source");
    agent.jobs.finish(job);
}
