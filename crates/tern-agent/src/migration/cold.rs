//! Cold migration: a shut-off guest's definition and every disk file (with
//! its backing chain) move with the transfer engine (`tern-transfer`):
//! allocated extents only, verified end to end, resumable.
//!
//! Begin lists the files; Prepare (destination) checks pools, room and
//! names before anything is copied, then opens one receiver per file;
//! Perform (source) sends them; Finish (destination) re-points backing
//! files, defines the guest and starts it with `--auto-start`; Confirm
//! (source) undefines and deletes source disks only when asked, and only
//! after the destination verified its copies.

use super::Job;
use crate::error::{AgentError, Result};
use crate::Agent;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use tern_migrate::protocol::{ColdFile, ColdTarget};
use tern_migrate::{JobKind, MigrateOptions};
use tern_model::{DiskDevice, Domain};
use tern_qemu::img;
use tern_transfer::durable::{self, Durability, Pending};
use tern_transfer::{Compression, ReceiveOptions, Receiver, SendOptions, SessionId, Stats};

/// Receivers of one cold migration on the destination.
#[derive(Debug, Default)]
pub struct Incoming {
    /// (file, final path, the receiver's result when it ends).
    pub files: Vec<(
        ColdFile,
        PathBuf,
        tokio::task::JoinHandle<tern_transfer::Result<Stats>>,
    )>,
    /// Cancel tokens.
    pub cancels: Vec<tern_transfer::CancelToken>,
}

fn session_of(uuid: &uuid::Uuid, path: &std::path::Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(uuid.as_bytes());
    h.update(path.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(meta.mtime().to_le_bytes());
    h.update(meta.mtime_nsec().to_le_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn session_id(hex: &str) -> Result<SessionId> {
    let mut b = [0u8; 16];
    if hex.len() != 32 {
        return Err(AgentError::Invalid(format!(
            "bad transfer session id '{hex}'"
        )));
    }
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| AgentError::Invalid(format!("bad transfer session id '{hex}'")))?;
    }
    Ok(SessionId(b))
}

/// Source, Begin: every file of every disk, top image first, backing after.
pub async fn describe(agent: &Agent, d: &Domain) -> Result<Vec<ColdFile>> {
    let mut out: Vec<ColdFile> = Vec::new();
    for disk in &d.devices.disks {
        let Some(top) = &disk.source else { continue };
        if disk.device == DiskDevice::Cdrom {
            continue;
        }
        // The disk's own format, never a guess: a raw disk may hold a
        // qcow2 header the guest wrote, naming any host file as backing.
        let format = match disk.format {
            tern_model::DiskFormat::Raw => "raw",
            tern_model::DiskFormat::Qcow2 => "qcow2",
        };
        for (depth, link) in img::backing_chain(top, format)
            .await?
            .into_iter()
            .enumerate()
        {
            let (path, info) = (link.path, link.info);
            let meta = std::fs::metadata(&path).map_err(|e| AgentError::state(&path, e))?;
            use std::os::unix::fs::MetadataExt;
            let volume = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| AgentError::Invalid(format!("{} has no file name", path.display())))?
                .to_string();
            if out
                .iter()
                .any(|f| f.volume == volume && f.source_path != path)
            {
                return Err(AgentError::Conflict(format!(
                    "two disk files are both named '{volume}'; they would collide in the destination pool"
                )));
            }
            let backing_volume = info
                .backing
                .as_ref()
                .and_then(|b| b.file_name())
                .and_then(|n| n.to_str())
                .map(str::to_string);
            if !out.iter().any(|f| f.source_path == path) {
                out.push(ColdFile {
                    id: out.len() as u32,
                    target: disk.target_dev.clone(),
                    depth: depth as u32,
                    pool: agent.pools.pool_of(&path).await.map(|p| p.name),
                    volume,
                    format: link.format.clone(),
                    size: meta.len(),
                    allocated: meta.blocks() * 512,
                    backing_volume,
                    mac_key: Some(super::cold_mac::key_for(
                        agent,
                        &session_of(&d.uuid, &path, &meta),
                    )?),
                    session: session_of(&d.uuid, &path, &meta),
                    source_path: path.clone(),
                    nvram: false,
                });
            }
        }
    }
    if let Some(f) = nvram_file(agent, d, out.len() as u32)? {
        out.push(f);
    }
    Ok(out)
}

/// The guest's UEFI variable store, when this agent placed it in its own
/// NVRAM directory: it belongs to this host and must travel with the
/// guest. A store at a path the operator chose stays where it is, as the
/// disks of a shared pool do.
fn nvram_file(agent: &Agent, d: &Domain, id: u32) -> Result<Option<ColdFile>> {
    let Some(path) = d.os.nvram.as_ref().map(|n| n.path.clone()) else {
        return Ok(None);
    };
    if path.parent() != Some(crate::guest_setup::nvram_dir(agent).as_path()) || !path.is_file() {
        return Ok(None);
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&path).map_err(|e| AgentError::state(&path, e))?;
    let session = session_of(&d.uuid, &path, &meta);
    Ok(Some(ColdFile {
        id,
        target: "nvram".into(),
        depth: 0,
        pool: None,
        volume: path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string(),
        format: "raw".into(),
        size: meta.len(),
        allocated: meta.blocks() * 512,
        backing_volume: None,
        mac_key: Some(super::cold_mac::key_for(agent, &session)?),
        session,
        source_path: path,
        nvram: true,
    }))
}

/// Destination, Prepare: checks, then one receiver per file.
pub async fn prepare(
    agent: &Arc<Agent>,
    job: &Job,
    files: &[ColdFile],
    o: &MigrateOptions,
) -> Result<ColdTarget> {
    // Check everything before opening anything.
    let mut plan = Vec::new();
    let mut need: std::collections::BTreeMap<String, u64> = Default::default();
    for f in files {
        tern_model::names::validate_name("volume", &f.volume)?;
        if f.nvram {
            // The guest's own store (the definition names this path, see
            // `rehome_nvram`); a stale one from an earlier stay is replaced.
            let path = crate::guest_setup::nvram_dir(agent).join(&f.volume);
            plan.push((f.clone(), path));
            continue;
        }
        let pool = o.target_pool.clone().or(f.pool.clone()).ok_or_else(|| {
            AgentError::Invalid(format!(
                "'{}' is not in a pool on the source; pass --target-pool",
                f.volume
            ))
        })?;
        let dir = agent.pools.active_dir(&pool).await.map_err(|e| {
            AgentError::Conflict(format!("the destination cannot take '{}': {e}", f.volume))
        })?;
        let path = dir.join(&f.volume);
        if path.exists() {
            return Err(AgentError::Conflict(format!(
                "volume '{}' already exists in pool '{pool}' on the destination; delete it or use --target-pool",
                f.volume
            )));
        }
        *need.entry(pool.clone()).or_default() += f.allocated;
        plan.push((f.clone(), path));
    }
    for (pool, bytes) in &need {
        let info = agent.pools.info(pool).await?;
        if info.available < *bytes {
            return Err(AgentError::Conflict(format!(
                "pool '{pool}' on the destination has {} MiB free but the disks hold {} MiB; free space or pass --target-pool",
                info.available >> 20,
                bytes >> 20
            )));
        }
    }
    let mut incoming = Incoming::default();
    let mut ports = Vec::new();
    for (f, path) in plan {
        if f.nvram {
            let dir = crate::guest_setup::nvram_dir(agent);
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::state(&dir, e))?;
            let _ = std::fs::remove_file(&path);
        }
        let mut ro = ReceiveOptions::new(session_id(&f.session)?);
        ro.mac_key = Some(super::cold_mac::parse(f.mac_key.as_ref())?);
        ro.resume = true;
        ro.durability = durability(o);
        ro.io_timeout = agent
            .cfg
            .stall_timeout
            .max(std::time::Duration::from_secs(5));
        let rx = bind_receiver(agent, &path, ro)?;
        ports.push((f.id, rx.port()));
        incoming.cancels.push(rx.cancel_token());
        let handle = tokio::task::spawn_blocking(move || rx.wait());
        incoming.files.push((f, path, handle));
    }
    job.event(format!("receiving {} file(s)", incoming.files.len()));
    *job.cold.lock().unwrap_or_else(|p| p.into_inner()) = Some(incoming);
    Ok(ColdTarget {
        host: agent.migration_address(),
        ports,
    })
}

fn bind_receiver(agent: &Agent, path: &std::path::Path, ro: ReceiveOptions) -> Result<Receiver> {
    let mut last = None;
    for p in agent.cfg.migration_ports.clone() {
        match Receiver::bind(
            (agent.migration_bind_address().as_str(), p),
            path.to_path_buf(),
            ro.clone(),
        ) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(AgentError::Failed(format!(
        "cannot open a receiver for {}: {}",
        path.display(),
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "no free port".into())
    )))
}

/// Source, Perform: sends every file; the job completes when all arrived
/// and verified.
pub async fn send_all(
    job: Arc<Job>,
    files: Vec<ColdFile>,
    target: ColdTarget,
    o: MigrateOptions,
    stall: std::time::Duration,
) {
    let total: u64 = files.iter().map(|f| f.allocated).sum();
    job.update(|i| i.set_disk(0, total));
    let mut done_before = 0u64;
    for f in &files {
        let Some(port) = target
            .ports
            .iter()
            .find(|(id, _)| *id == f.id)
            .map(|(_, p)| *p)
        else {
            fail(
                &job,
                format!("the destination opened no receiver for '{}'", f.volume),
            );
            return;
        };
        let sid = match session_id(&f.session) {
            Ok(s) => s,
            Err(e) => return fail(&job, e.to_string()),
        };
        let mut so = SendOptions::new(sid);
        so.mac_key = match super::cold_mac::parse(f.mac_key.as_ref()) {
            Ok(k) => Some(k),
            Err(e) => return fail(&job, e.to_string()),
        };
        // `--compressed` on a cold copy: zstd per chunk (fast level; data
        // that does not compress is sent as is).
        so.compression = if o.compressed {
            Compression::Zstd(1)
        } else {
            Compression::None
        };
        // A cut link must fail the copy as quickly as it fails a live migration.
        so.io_timeout = stall;
        if let Some(m) = o.bandwidth_mib.filter(|m| *m > 0) {
            so.rate_limit = Some(m << 20);
        }
        let cancel = so.cancel.clone();
        let mut cancel_rx = job.cancel.subscribe();
        let watcher = tokio::spawn(async move {
            let _ = cancel_rx.wait_for(|c| *c).await;
            cancel.cancel();
        });
        let addr = (target.host.clone(), port);
        let path = f.source_path.clone();
        let j = job.clone();
        let base = done_before;
        let r = tokio::task::spawn_blocking(move || {
            tern_transfer::send(addr, &path, &so, |p| {
                j.update(|i| {
                    i.set_disk(base + p.bytes_done, total);
                    i.disk_rate = p.bytes_per_sec as u64;
                });
            })
        })
        .await;
        watcher.abort();
        match r {
            Ok(Ok(stats)) => {
                done_before += f.allocated;
                job.update(|i| {
                    i.wire_bytes += stats.bytes_sent_wire;
                    i.resumed_bytes += stats.bytes_skipped_resumed;
                    i.set_disk(done_before.min(total), total);
                });
                job.event(format!(
                    "sent {} ({} MiB data, {} MiB on the wire, {} MiB resumed, {} ms)",
                    f.volume,
                    stats.bytes_total_data >> 20,
                    stats.bytes_sent_wire >> 20,
                    stats.bytes_skipped_resumed >> 20,
                    stats.elapsed.as_millis()
                ));
            }
            Ok(Err(e)) => return fail(&job, format!("copying {}: {e}", f.volume)),
            Err(e) => return fail(&job, format!("copying {}: {e}", f.volume)),
        }
    }
    job.update(|i| {
        i.kind = JobKind::Completed;
        i.qemu_status = tern_qemu::MigrationStatus::Completed;
        i.time_elapsed_ms = job.started.elapsed().as_millis() as u64;
    });
    job.event("every file arrived and verified");
}

fn fail(job: &Job, msg: String) {
    job.event(format!("cold copy failed: {msg}"));
    let cancelled = *job.cancel.borrow();
    job.update(|i| {
        i.kind = if cancelled {
            JobKind::Cancelled
        } else {
            JobKind::Failed
        };
        i.error = Some(msg);
    });
}

/// Destination, Finish: waits for the receivers, re-points backing files,
/// defines the guest (with its disks at their new paths) and starts it if
/// asked. On failure the receivers are stopped; partial files stay for a
/// retry to resume (a full disk removes them, see tern-transfer).
pub async fn finish(
    agent: &Arc<Agent>,
    job: &Job,
    success: bool,
    o: &MigrateOptions,
) -> Result<()> {
    let incoming = job.cold.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(incoming) = incoming else {
        return Err(AgentError::Failed("no cold transfer was prepared".into()));
    };
    if !success {
        for c in &incoming.cancels {
            c.cancel();
        }
        for (_, _, h) in incoming.files {
            let _ = h.await;
        }
        return Ok(());
    }
    let mut placed: Vec<(ColdFile, PathBuf)> = Vec::new();
    for (f, path, h) in incoming.files {
        match h.await {
            Ok(Ok(_)) => placed.push((f, path)),
            Ok(Err(e)) => return Err(AgentError::Failed(format!("receiving {}: {e}", f.volume))),
            Err(e) => return Err(AgentError::Failed(format!("receiving {}: {e}", f.volume))),
        }
    }
    // Backing references inside qcow2 images name source paths: re-point
    // them at the copies (metadata only).
    for (f, path) in &placed {
        if let Some(bv) = &f.backing_volume {
            let Some((bf, bpath)) = placed
                .iter()
                .find(|(g, _)| &g.volume == bv && g.target == f.target)
            else {
                continue;
            };
            img::rebase_unsafe(path, bpath, &bf.format).await?;
        }
    }
    // An image names its backing file in its own header, which the peer
    // wrote: after re-pointing, every backing file must be one of the
    // copies or an image of this host's pools, or QEMU would read any file
    // the peer named.
    let copies: Vec<PathBuf> = placed.iter().map(|(_, p)| p.clone()).collect();
    for (f, path) in &placed {
        let backing = img::info(path, &f.format).await?.backing;
        let in_pool = match &backing {
            Some(b) => agent
                .pools
                .pool_of(&resolve_backing(path, b))
                .await
                .is_some(),
            None => false,
        };
        if let Some(why) = foreign_backing(path, backing.as_deref(), &copies, in_pool) {
            return Err(AgentError::Conflict(format!(
                "refusing '{}': {why}",
                f.volume
            )));
        }
    }
    let mut d = job
        .take_offline_def()
        .ok_or_else(|| AgentError::Failed("no prepared definition".into()))?;
    if let (Some(n), Some((_, p))) = (d.os.nvram.as_mut(), placed.iter().find(|(f, _)| f.nvram)) {
        n.path = p.clone();
    }
    for disk in d.devices.disks.iter_mut() {
        if let Some((_, p)) = placed
            .iter()
            .find(|(f, _)| !f.nvram && f.target == disk.target_dev && f.depth == 0)
        {
            disk.source = Some(p.clone());
        }
    }
    let name = d.name.clone();
    agent.define_domain(d).await?;
    job.event("definition stored with the disks at their new paths");
    if durability(o) == Durability::Deferred {
        // Backing files first: a top image without a marker then says its
        // whole chain is on disk (see `ensure_durable`).
        placed.sort_by_key(|(f, _)| std::cmp::Reverse(f.depth));
        let paths: Vec<PathBuf> = placed.into_iter().map(|(_, p)| p).collect();
        tokio::task::spawn_blocking(move || sync_in_background(&paths));
    }
    if o.auto_start {
        agent.start(&name, false).await?;
        job.event("started on this host (--auto-start)");
    }
    Ok(())
}

/// When the destination makes the copies durable. The source keeps its
/// disks until Confirm, and keeps them for good unless asked to delete
/// them: while it does, the copies need not be on disk before the
/// migration reports success, as with cp or rsync, and they are synced in
/// the background. Deleting the source, or starting the guest on the
/// copies, waits for the sync first.
fn durability(o: &MigrateOptions) -> Durability {
    if o.delete_source_storage || o.auto_start {
        Durability::Synced
    } else {
        Durability::Deferred
    }
}

/// Syncs copies received with deferred durability, in order.
fn sync_in_background(paths: &[PathBuf]) {
    let t = std::time::Instant::now();
    for p in paths {
        match durable::make_durable(p) {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "a migrated disk could not be synced; the guest will not start on it");
                return;
            }
        }
    }
    tracing::info!(
        files = paths.len(),
        ms = t.elapsed().as_millis() as u64,
        "migrated disks are on disk"
    );
}

/// Before a guest boots: every disk received with deferred durability is
/// synced first, and one whose sync a host restart interrupted is refused.
pub async fn ensure_durable(d: &Domain) -> Result<()> {
    for disk in &d.devices.disks {
        let Some(path) = disk.source.clone() else {
            continue;
        };
        let p = path.clone();
        let state = tokio::task::spawn_blocking(move || match durable::pending(&p)? {
            Pending::ThisBoot => durable::make_durable(&p).map(|_| Pending::ThisBoot),
            other => Ok(other),
        })
        .await
        .map_err(|e| AgentError::Failed(format!("syncing {}: {e}", path.display())))?
        .map_err(|e| AgentError::state(&path, e))?;
        if state == Pending::EarlierBoot {
            return Err(AgentError::Conflict(format!(
                "disk {} of '{}' may be incomplete: this host restarted before the migrated copy reached the disk; migrate the guest again from its source, or delete {} if you know the disk is whole",
                path.display(),
                d.name,
                durable::marker_path(&path).display()
            )));
        }
    }
    Ok(())
}

/// At agent start: copies of this boot still waiting for their sync are
/// synced; those of an earlier boot are reported (a guest will not boot on
/// them, see [`ensure_durable`]).
pub fn settle_markers(dirs: Vec<PathBuf>) {
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(file) = name.to_str().and_then(|n| n.strip_suffix(".tern-unsynced")) else {
                continue;
            };
            let path = dir.join(file);
            match durable::pending(&path) {
                Ok(Pending::ThisBoot) => sync_in_background(&[path]),
                Ok(Pending::EarlierBoot) => {
                    tracing::warn!(path = %path.display(), "a migrated disk may be incomplete: the host restarted before it reached the disk")
                }
                _ => {}
            }
        }
    }
}

/// The backing file's path as QEMU opens it: a relative name is relative
/// to the image's directory.
pub fn resolve_backing(image: &std::path::Path, backing: &std::path::Path) -> PathBuf {
    match image.parent() {
        Some(dir) if backing.is_relative() => dir.join(backing),
        _ => backing.to_path_buf(),
    }
}

/// Why a received image's backing file is not acceptable, if it is not: it
/// must be one of the copies (`copies`) or inside one of this host's pools
/// (`in_pool`).
pub fn foreign_backing(
    image: &std::path::Path,
    backing: Option<&std::path::Path>,
    copies: &[PathBuf],
    in_pool: bool,
) -> Option<String> {
    let b = backing?;
    let resolved = resolve_backing(image, b);
    if in_pool || copies.contains(&resolved) {
        return None;
    }
    Some(format!(
        "its backing file {} is neither one of the copied images nor in a storage pool of this host",
        b.display()
    ))
}

#[cfg(test)]
mod backing_tests {
    use super::foreign_backing;
    use std::path::{Path, PathBuf};

    #[test]
    fn received_images_may_only_lean_on_copies_or_pool_images() {
        let copies = vec![
            PathBuf::from("/pool/top.qcow2"),
            PathBuf::from("/pool/base.qcow2"),
        ];
        let top = Path::new("/pool/top.qcow2");
        assert_eq!(foreign_backing(top, None, &copies, false), None);
        assert_eq!(
            foreign_backing(top, Some(Path::new("/pool/base.qcow2")), &copies, false),
            None
        );
        assert_eq!(
            foreign_backing(top, Some(Path::new("base.qcow2")), &copies, false),
            None
        );
        assert_eq!(
            foreign_backing(top, Some(Path::new("/golden/base.qcow2")), &copies, true),
            None
        );
        let e = foreign_backing(top, Some(Path::new("/etc/shadow")), &copies, false).unwrap();
        assert!(
            e.contains("/etc/shadow") && e.contains("storage pool"),
            "{e}"
        );
        assert!(foreign_backing(top, Some(Path::new("../etc/shadow")), &copies, false).is_some());
    }
}
