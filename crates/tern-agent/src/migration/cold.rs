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

use super::cold_durable::{durability, sync_in_background};
pub use super::cold_durable::{ensure_durable, settle_markers};
pub use super::cold_files::describe;
use super::Job;
use crate::error::{AgentError, Result};
use crate::Agent;
use std::path::PathBuf;
use std::sync::Arc;
use tern_migrate::protocol::{ColdFile, ColdTarget};
use tern_migrate::{JobKind, MigrateOptions};

use tern_qemu::img;
use tern_transfer::durable::Durability;
use tern_transfer::{Compression, ReceiveOptions, Receiver, SendOptions, SessionId, Stats};

/// Receivers of one cold migration on the destination.
#[derive(Debug, Default)]
pub struct Incoming {
    /// (file, where it is received, the receiver's result when it ends).
    pub files: Vec<(
        ColdFile,
        PathBuf,
        tokio::task::JoinHandle<tern_transfer::Result<Stats>>,
    )>,
    /// Cancel tokens.
    pub cancels: Vec<tern_transfer::CancelToken>,
    /// Files bound for an export only QEMU reaches: (file id, where it is
    /// received, its path in the pool), written there at Finish.
    pub uploads: Vec<(u32, PathBuf, PathBuf)>,
    /// With `--tls`: the TLS listeners in front of the receivers (which
    /// then listen on loopback only).
    pub fronts: Vec<super::cold_tls::Front>,
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

/// Destination, Prepare: checks, then one receiver per file.
pub async fn prepare(
    agent: &Arc<Agent>,
    job: &Job,
    files: &[ColdFile],
    o: &MigrateOptions,
    source_identity: Option<&str>,
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
            plan.push((f.clone(), path, false));
            continue;
        }
        let pool = o.target_pool.clone().or(f.pool.clone()).ok_or_else(|| {
            AgentError::Invalid(format!(
                "'{}' is not in a pool on the source; pass --target-pool",
                f.volume
            ))
        })?;
        let (path, exists) = agent
            .pools
            .volume_slot(&pool, &f.volume)
            .await
            .map_err(|e| {
                AgentError::Conflict(format!("the destination cannot take '{}': {e}", f.volume))
            })?;
        if exists {
            return Err(AgentError::Conflict(format!(
                "volume '{}' already exists in pool '{pool}' on the destination; delete it or use --target-pool",
                f.volume
            )));
        }
        // A pool only QEMU reaches, and a logical pool, take the file
        // through a staged copy.
        let logical = agent.pools.is_logical_path(&path).await;
        if logical {
            agent
                .pools
                .accepts_image(&pool, &f.format, f.depth > 0 || f.backing_volume.is_some())
                .await
                .map_err(|e| {
                    AgentError::Conflict(format!("the destination cannot take '{}': {e}", f.volume))
                })?;
        }
        let to_export = logical || agent.pools.img_path(&path).await != path;
        if to_export && (f.depth > 0 || f.backing_volume.is_some()) {
            return Err(AgentError::Unsupported(format!(
                "'{}' is part of a backing chain, and pool '{pool}' is reached by QEMU itself (nfs:// or rbd:), where a chain's backing names cannot be re-pointed; flatten the disk first, or pass --target-pool with a directory pool",
                f.volume
            )));
        }
        *need.entry(pool.clone()).or_default() += f.allocated;
        plan.push((f.clone(), path, to_export));
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
    for (f, path, to_export) in plan {
        let receive_at = if to_export {
            let at = super::cold_stage::incoming_path(agent, &f.session)?;
            super::cold_stage::remove_with_partials(&at);
            incoming.uploads.push((f.id, at.clone(), path.clone()));
            at
        } else {
            path.clone()
        };
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
        let rx = if o.tls {
            // Only the TLS front reaches it.
            Receiver::bind(("127.0.0.1", 0), receive_at.clone(), ro).map_err(|e| {
                AgentError::Failed(format!(
                    "cannot open a receiver for {}: {e}",
                    receive_at.display()
                ))
            })?
        } else {
            bind_receiver(agent, &receive_at, ro)?
        };
        if o.tls {
            let front = super::cold_tls::front(agent, rx.local_addr(), source_identity).await?;
            ports.push((f.id, front.port()));
            incoming.fronts.push(front);
        } else {
            ports.push((f.id, rx.port()));
        }
        incoming.cancels.push(rx.cancel_token());
        let handle = tokio::task::spawn_blocking(move || rx.wait());
        incoming.files.push((f, receive_at, handle));
    }
    job.event(format!("receiving {} file(s)", incoming.files.len()));
    if o.tls {
        job.event(format!(
            "cold copy over TLS: only {} may send",
            source_identity.unwrap_or("-")
        ));
    }
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
    agent: Arc<Agent>,
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
        // A file on an export only QEMU reaches is staged first (and the
        // staged copy removed when this iteration ends).
        let staged = match super::cold_stage::stage_out(&agent, &f.source_path, &f.session).await {
            Ok(s) => s,
            Err(e) => {
                watcher.abort();
                return fail(&job, format!("staging {}: {e}", f.volume));
            }
        };
        if staged.is_some() {
            job.event(format!("{} staged from the export", f.volume));
        }
        let path = staged
            .as_ref()
            .map_or_else(|| f.source_path.clone(), |s| s.path().to_path_buf());
        // With --tls the sender talks to a local relay that carries each
        // stream to the destination's TLS front.
        let relay = if o.tls {
            match super::cold_tls::relay(&agent, &target.host, port).await {
                Ok(r) => Some(r),
                Err(e) => {
                    watcher.abort();
                    return fail(&job, e.to_string());
                }
            }
        } else {
            None
        };
        let addr = match &relay {
            Some(r) => (r.addr().ip().to_string(), r.addr().port()),
            None => (target.host.clone(), port),
        };
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
        drop(relay);
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
        for (_, at, _) in &incoming.uploads {
            super::cold_stage::remove_with_partials(at);
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
    // Files bound for an export: written there and checked, then the
    // definition names them by their path in the pool.
    let mut local: Vec<PathBuf> = placed.iter().map(|(_, p)| p.clone()).collect();
    for (id, at, final_path) in &incoming.uploads {
        let staged = super::cold_stage::adopt(at.clone());
        super::cold_stage::upload(agent, staged, final_path).await?;
        local.retain(|p| p != at);
        if let Some((f, p)) = placed.iter_mut().find(|(f, _)| f.id == *id) {
            job.event(format!("{} written to the export", f.volume));
            *p = final_path.clone();
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
            // A `type='volume'` disk becomes a file disk (the copy's pool
            // may not be the one the source named), an image written into
            // an rbd pool a volume disk of that pool.
            agent.pools.point_disk(disk, p).await;
        }
    }
    let name = d.name.clone();
    agent.define_domain(d).await?;
    job.event("definition stored with the disks at their new paths");
    if durability(o) == Durability::Deferred {
        // Backing files first: a top image without a marker then says its
        // whole chain is on disk (see `ensure_durable`).
        placed.sort_by_key(|(f, _)| std::cmp::Reverse(f.depth));
        let paths: Vec<PathBuf> = placed
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| local.contains(p))
            .collect();
        tokio::task::spawn_blocking(move || sync_in_background(&paths));
    }
    if o.auto_start {
        agent.start(&name, false).await?;
        job.event("started on this host (--auto-start)");
    }
    Ok(())
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
