//! Disks copied along a live migration (`--copy-storage-all`,
//! `--copy-storage-inc`, `--migrate-disks`).
//!
//! The destination creates each volume in the pool of the same name and
//! exports it over NBD from its paused incoming QEMU; the source mirrors each
//! disk into that export (`blockdev-mirror`) until every mirror is ready,
//! then migrates memory with `pause-before-switchover`: once QEMU has paused
//! the guest for the final pass, the mirrors are completed (every write the
//! guest made is on the destination) and only then does QEMU switch over.
//! The source's images are only ever read.

use super::Job;
use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tern_migrate::options::TLS_CREDS_ID;
use tern_migrate::protocol::{CopyMode, DiskCopy, NbdTarget};
use tern_migrate::MigrateOptions;
use tern_model::{DiskFormat, Domain};
use tern_qemu::cmdline::drive_node;
use tern_qemu::states::mirror_end;
use tern_qemu::{img, BlockJobStatus, MirrorEnd, Qmp};

/// Source, Begin: describes the disks to copy, refusing disks that are
/// neither copied nor on shared storage.
pub async fn describe(agent: &Agent, d: &Domain, o: &MigrateOptions) -> Result<Vec<DiskCopy>> {
    for wanted in &o.migrate_disks {
        if !d.devices.disks.iter().any(|k| &k.target_dev == wanted) {
            return Err(AgentError::Invalid(format!(
                "--migrate-disks names '{wanted}', which domain '{}' does not have",
                d.name
            )));
        }
    }
    let mut out = Vec::new();
    for disk in &d.devices.disks {
        let Some(src) = &disk.source else { continue };
        if disk.readonly || disk.shareable || !o.copies_disk(&disk.target_dev) {
            continue;
        }
        let format = match disk.format {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        };
        // Never probed: a raw disk may carry a qcow2 header its guest wrote.
        // A file on an export QEMU reaches is read on its nfs:// URL.
        let info = img::info(&agent.pools.img_path(src).await, format).await?;
        let pool = agent.pools.pool_of(src).await.map(|p| p.name);
        let volume = src
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                AgentError::Invalid(format!("disk path {} has no file name", src.display()))
            })?
            .to_string();
        let (mode, backing) = if o.copy_storage_inc {
            match (&info.backing, &info.backing_format) {
                (Some(b), Some(f)) => (CopyMode::Top, Some((b.clone(), f.clone()))),
                (Some(b), None) => (CopyMode::Top, Some((b.clone(), "raw".into()))),
                (None, _) => (CopyMode::Full, None),
            }
        } else {
            (CopyMode::Full, None)
        };
        out.push(DiskCopy {
            target: disk.target_dev.clone(),
            pool,
            volume,
            format: match disk.format {
                DiskFormat::Qcow2 => "qcow2".into(),
                DiskFormat::Raw => "raw".into(),
            },
            virtual_size: info.virtual_size,
            backing,
            mode,
        });
    }
    Ok(out)
}

/// Destination, Prepare: creates the volumes and points the definition at
/// them. Returns the files created, for removal on failure. Checks every
/// disk (pool, room, name clash, backing image) before creating any.
pub async fn create_volumes(
    agent: &Agent,
    d: &mut Domain,
    disks: &[DiskCopy],
    o: &MigrateOptions,
    record: impl FnOnce(&[PathBuf]) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let mut plan = Vec::new();
    for dc in disks {
        // Names from the peer become paths: no separators, no "..".
        tern_model::names::validate_name("volume", &dc.volume)?;
        let pool = o.target_pool.clone().or(dc.pool.clone()).ok_or_else(|| {
            AgentError::Invalid(format!(
                "disk '{}' is not in a pool on the source; pass --target-pool",
                dc.target
            ))
        })?;
        let (path, exists) = agent
            .pools
            .volume_slot(&pool, &dc.volume)
            .await
            .map_err(|e| {
                AgentError::Conflict(format!(
                "the destination cannot hold disk '{}': {e}; create the pool or pass --target-pool",
                dc.target
            ))
            })?;
        if exists {
            return Err(AgentError::Conflict(format!(
                "volume '{}' already exists in pool '{pool}' on the destination; remove it or use --target-pool",
                dc.volume
            )));
        }
        agent
            .pools
            .accepts_image(
                &pool,
                &dc.format,
                dc.mode == CopyMode::Top && dc.backing.is_some(),
            )
            .await
            .map_err(|e| {
                AgentError::Conflict(format!(
                    "the destination cannot hold disk '{}' ({}): {e}",
                    dc.target, dc.format
                ))
            })?;
        if let (CopyMode::Top, Some((b, _))) = (dc.mode, &dc.backing) {
            // The new image would make QEMU read its backing file: only
            // images of this host's pools qualify, never any path a peer names.
            if agent.pools.pool_of(b).await.is_none() {
                return Err(AgentError::Conflict(format!(
                    "backing image '{}' of disk '{}' is not in a storage pool on the destination; define a pool holding it there, or use --copy-storage-all",
                    b.display(),
                    dc.target
                )));
            }
            if !b.exists() {
                return Err(AgentError::Conflict(format!(
                    "backing image '{}' of disk '{}' is missing on the destination; copy it there first or use --copy-storage-all",
                    b.display(),
                    dc.target
                )));
            }
        }
        plan.push((dc, path, pool));
    }
    let need: u64 = disks.iter().map(|d| d.virtual_size).sum();
    for (_, _, pool) in &plan {
        let info = agent.pools.info(pool).await?;
        if info.available < need {
            return Err(AgentError::Conflict(format!(
                "pool '{pool}' on the destination has {} MiB free, the disks need up to {} MiB; free space or use --target-pool",
                info.available >> 20,
                need >> 20
            )));
        }
    }
    // Received volumes belong to this guest's uid on this host.
    let user = agent.guest_user(d.uuid)?;
    // Recorded before any is created: an agent killed half-way knows every
    // file that may be its own (none existed before: checked above).
    let planned: Vec<PathBuf> = plan.iter().map(|(_, p, _)| p.clone()).collect();
    record(&planned)?;
    let mut created = Vec::new();
    for (dc, path, _) in &plan {
        let backing = match (dc.mode, &dc.backing) {
            (CopyMode::Top, Some((b, f))) => Some((b.as_path(), f.as_str())),
            _ => None,
        };
        // A volume of a pool QEMU reaches over NFS is created on its URL,
        // one of a logical pool as a logical volume.
        let at = agent.pools.img_path(path).await;
        if let Err(e) = agent
            .pools
            .create_image(path, &dc.format, dc.virtual_size, backing)
            .await
        {
            remove_files(agent, &created).await;
            return Err(e);
        }
        created.push(path.clone());
        if at == *path {
            // QEMU, as the guest's uid, reopens it while it arrives (see
            // `sparse`); it goes back to root when that QEMU ends.
            if let Err(e) = crate::confine::user::hand_over(path, user.as_ref()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot give a received volume to QEMU's user");
            }
        }
        if let Some(disk) = d
            .devices
            .disks
            .iter_mut()
            .find(|k| k.target_dev == dc.target)
        {
            // A file, or a volume disk of the rbd pool the image is in.
            agent.pools.point_disk(disk, path).await;
        }
    }
    Ok(created)
}

/// Removes volume files this migration created, in a directory or on an
/// NFS export, ignoring ones already gone.
pub async fn remove_files(agent: &Agent, files: &[PathBuf]) {
    for f in files {
        if let Err(e) = agent.pools.remove_path(f).await {
            tracing::warn!(path = %f.display(), error = %e, "cannot remove a volume created for a migration");
        }
    }
}

/// Destination, Prepare: exports the received disks over NBD on TCP (with
/// `tls`, wrapped in QEMU's TLS with the migration's credentials).
pub async fn export(
    agent: &Agent,
    qmp: &Qmp,
    listen: &str,
    advertise: &str,
    disks: &[DiskCopy],
    tls: bool,
) -> Result<NbdTarget> {
    let mut last = None;
    let mut port = None;
    for p in agent.cfg.migration_ports.clone().rev() {
        let mut args =
            json!({"addr": {"type": "inet", "data": {"host": listen, "port": p.to_string()}}});
        if tls {
            // Same credentials and the same single peer as the migration stream.
            args["tls-creds"] = json!(TLS_CREDS_ID);
            args["tls-authz"] = json!(super::qemu_tls::TLS_AUTHZ_ID);
        }
        let r = qmp.execute("nbd-server-start", Some(args)).await;
        match r {
            Ok(_) => {
                port = Some(p);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let port = port.ok_or_else(|| {
        AgentError::Failed(format!(
            "the destination could not start its NBD server: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    })?;
    Ok(NbdTarget {
        host: advertise.to_string(),
        port,
        exports: add_exports(qmp, disks).await?,
    })
}

/// Destination, Prepare (`--tunnelled`): exports the received disks on a
/// unix socket only this agent's tunnel reaches.
pub async fn export_unix(
    qmp: &Qmp,
    path: &std::path::Path,
    disks: &[DiskCopy],
) -> Result<Vec<(String, String)>> {
    qmp.execute(
        "nbd-server-start",
        Some(json!({"addr": {"type": "unix", "data": {"path": path}}})),
    )
    .await?;
    add_exports(qmp, disks).await
}

async fn add_exports(qmp: &Qmp, disks: &[DiskCopy]) -> Result<Vec<(String, String)>> {
    let mut exports = Vec::new();
    for dc in disks {
        let node = drive_node(&dc.target);
        qmp.execute(
            "block-export-add",
            Some(json!({"type": "nbd", "id": format!("export-{}", dc.target),
                        "node-name": node, "name": node, "writable": true})),
        )
        .await?;
        exports.push((dc.target.clone(), node));
    }
    Ok(exports)
}

fn mirror_job(target: &str) -> String {
    format!("mirror-{target}")
}

fn target_node(target: &str) -> String {
    format!("nbd-{target}")
}

/// Source, Perform: starts one mirror per exported disk and waits until all
/// are ready (in sync), reporting progress into the job. `via` is the NBD
/// server to dial instead of `nbd`'s address (the tunnel's local socket).
pub async fn mirror(
    qmp: &Qmp,
    nbd: &NbdTarget,
    via: Option<serde_json::Value>,
    o: &MigrateOptions,
    job: &Job,
) -> Result<()> {
    let sync = if o.copy_storage_inc { "top" } else { "full" };
    let speed = match o.bandwidth_mib {
        None | Some(0) => 0,
        Some(m) => m << 20,
    };
    let server = via
        .clone()
        .unwrap_or_else(|| json!({"type": "inet", "host": nbd.host, "port": nbd.port.to_string()}));
    for (dev, export) in &nbd.exports {
        // `discard=unmap` on this node lets the mirror's zero writes ask
        // the destination to unmap (see `sparse`); the guest never sees it.
        let mut node = json!({"driver": "nbd", "node-name": target_node(dev),
                              "server": server, "export": export, "discard": "unmap"});
        if o.tls {
            node["tls-creds"] = json!(TLS_CREDS_ID);
            node["tls-hostname"] = json!(nbd.host);
        }
        qmp.execute("blockdev-add", Some(node)).await?;
        let mut args = json!({"job-id": mirror_job(dev), "device": drive_node(dev),
                              "target": target_node(dev), "sync": sync, "speed": speed,
                              "auto-finalize": true, "auto-dismiss": false});
        if o.copy_storage_synchronous_writes {
            args["copy-mode"] = json!("write-blocking");
        }
        qmp.execute("blockdev-mirror", Some(args)).await?;
    }
    job.event(format!(
        "mirroring {} disk(s) to nbd://{}:{} (sync {sync}{})",
        nbd.exports.len(),
        nbd.host,
        nbd.port,
        match (via.is_some(), o.tls) {
            (true, _) => ", tunnelled",
            (false, true) => ", TLS",
            _ => "",
        }
    ));
    let mut cancel = job.cancel.subscribe();
    loop {
        let (ready, done, total) = progress(qmp, nbd).await?;
        job.update(|i| i.set_disk(done, total));
        if ready {
            job.event(format!(
                "disks in sync ({} MiB); sending memory",
                total >> 20
            ));
            return Ok(());
        }
        if *cancel.borrow_and_update() {
            return Err(AgentError::Failed(
                "migration cancelled by the operator".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (all ready, bytes done, bytes total) of our mirror jobs; an error if one
/// vanished before being ready (it failed).
pub async fn progress(qmp: &Qmp, nbd: &NbdTarget) -> Result<(bool, u64, u64)> {
    let list = qmp.block_jobs().await?;
    let (mut all_ready, mut done, mut total) = (true, 0, 0);
    for (dev, _) in &nbd.exports {
        let id = mirror_job(dev);
        let j = list.iter().find(|j| j.id == id);
        // Mirrors run with auto-dismiss off, so one that ended before it was
        // in sync stays listed as concluded with its error.
        if let Some(j) = j.filter(|j| j.status != BlockJobStatus::Concluded) {
            all_ready &= j.ready;
            done += j.offset;
            total += j.len;
            continue;
        }
        let why = match mirror_end(j) {
            MirrorEnd::Failed(e) => e,
            _ => "it ended early".into(),
        };
        return Err(AgentError::Failed(format!(
            "the mirror of disk '{dev}' stopped before it was in sync ({why}): destination gone or out of space?"
        )));
    }
    Ok((all_ready, done, total))
}

/// Source, at pre-switchover (guest paused): completes every mirror so the
/// destination holds every write, checks that each one concluded without
/// an error, then lets QEMU switch over. A mirror that failed or vanished
/// is never taken for a completed one: the switch-over does not happen.
pub async fn complete(qmp: &Qmp, nbd: &NbdTarget, job: &Job) -> Result<()> {
    for (dev, _) in &nbd.exports {
        qmp.execute("block-job-cancel", Some(json!({"device": mirror_job(dev)})))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let ends = loop {
        let list = qmp.block_jobs().await?;
        let ends: Vec<(String, MirrorEnd)> = nbd
            .exports
            .iter()
            .map(|(d, _)| {
                let id = mirror_job(d);
                (d.clone(), mirror_end(list.iter().find(|j| j.id == id)))
            })
            .collect();
        if ends.iter().all(|(_, e)| *e != MirrorEnd::Busy) {
            break ends;
        }
        if Instant::now() > deadline {
            return Err(AgentError::Timeout(
                "the disk mirrors did not complete within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    dismiss(qmp, nbd).await;
    if let Some((dev, MirrorEnd::Failed(why))) =
        ends.iter().find(|(_, e)| matches!(e, MirrorEnd::Failed(_)))
    {
        return Err(AgentError::Failed(format!(
            "the mirror of disk '{dev}' failed at switch-over ({why}); not switching over"
        )));
    }
    for (dev, _) in &nbd.exports {
        let _ = qmp
            .execute("blockdev-del", Some(json!({"node-name": target_node(dev)})))
            .await;
    }
    job.event("disk mirrors completed while paused, each without an error; switching over");
    qmp.execute("migrate-continue", Some(json!({"state": "pre-switchover"})))
        .await?;
    Ok(())
}

/// Removes the concluded entries of our mirrors (auto-dismiss is off).
async fn dismiss(qmp: &Qmp, nbd: &NbdTarget) {
    for (dev, _) in &nbd.exports {
        let _ = qmp
            .execute("job-dismiss", Some(json!({"id": mirror_job(dev)})))
            .await;
    }
}

/// Source, on failure: stops the mirrors and drops the NBD connections;
/// the guest keeps using its own disks, untouched.
pub async fn abandon(qmp: &Qmp, nbd: &NbdTarget) {
    let devs: Vec<String> = nbd.exports.iter().map(|(d, _)| d.clone()).collect();
    abandon_devs(qmp, &devs).await;
}

/// Source, when an agent restarted during a storage migration: the same
/// as [`abandon`] for whatever mirrors and NBD targets QEMU still holds.
/// Their names depend on the disk only (`mirror-vda`, `nbd-vda`), so the
/// lost NBD target need not be known; left in place, they would refuse
/// the next migration ("Duplicate nodes").
pub async fn abandon_left_over(qmp: &Qmp) {
    let mut devs: Vec<String> = qmp
        .block_jobs()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|j| j.id.strip_prefix("mirror-").map(str::to_string))
        .collect();
    if let Ok(nodes) = qmp
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .await
    {
        for n in nodes.as_array().into_iter().flatten() {
            if let Some(dev) = n["node-name"].as_str().and_then(|s| s.strip_prefix("nbd-")) {
                if !devs.iter().any(|d| d == dev) {
                    devs.push(dev.to_string());
                }
            }
        }
    }
    if !devs.is_empty() {
        abandon_devs(qmp, &devs).await;
    }
}

/// Cancels the mirrors of `devs`, waits until they concluded, dismisses
/// them and deletes their NBD target nodes.
async fn abandon_devs(qmp: &Qmp, devs: &[String]) {
    for dev in devs {
        let _ = qmp
            .execute(
                "block-job-cancel",
                Some(json!({"device": mirror_job(dev), "force": true})),
            )
            .await;
    }
    for _ in 0..200 {
        let ours = |j: &tern_qemu::BlockJob| devs.iter().any(|d| j.id == mirror_job(d));
        let busy = qmp.block_jobs().await.ok().is_some_and(|l| {
            l.iter()
                .any(|j| ours(j) && j.status != BlockJobStatus::Concluded)
        });
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for dev in devs {
        let _ = qmp
            .execute("job-dismiss", Some(json!({"id": mirror_job(dev)})))
            .await;
        let _ = qmp
            .execute("blockdev-del", Some(json!({"node-name": target_node(dev)})))
            .await;
    }
}
