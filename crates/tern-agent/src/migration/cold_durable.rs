//! When cold-migrated copies reach the disk: synced before the migration
//! reports success when the source's disks go or the guest starts at once,
//! in the background otherwise (as cp or rsync), with a marker that keeps a
//! guest from booting on a copy a host restart left unsynced.

use crate::error::{AgentError, Result};
use std::path::PathBuf;
use tern_migrate::MigrateOptions;
use tern_model::Domain;
use tern_transfer::durable::{self, Durability, Pending};

/// When the destination makes the copies durable. The source keeps its
/// disks until Confirm, and keeps them for good unless asked to delete
/// them: while it does, the copies need not be on disk before the
/// migration reports success, as with cp or rsync, and they are synced in
/// the background. Deleting the source, or starting the guest on the
/// copies, waits for the sync first.
pub(super) fn durability(o: &MigrateOptions) -> Durability {
    if o.delete_source_storage || o.auto_start {
        Durability::Synced
    } else {
        Durability::Deferred
    }
}

/// Syncs copies received with deferred durability, in order.
pub(super) fn sync_in_background(paths: &[PathBuf]) {
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
