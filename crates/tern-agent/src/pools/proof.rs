//! Proof that two hosts see the same export before a live migration that
//! copies no storage: in Prepare the destination writes a token file
//! (`.tern-share-<migration id>`, holding the id) into each netfs pool, and
//! each dir pool declared `--shared`, that the guest's uncopied disks live
//! in, as it sees that pool; in Perform the source reads the token through
//! its own view of the pool and removes it. Two pools that only share a
//! name and a target path, but not the export (or a `--shared` directory
//! that is a local one on each host), fail here, before any memory moves.
//!
//! A cold migration does the same for the disks it leaves in place (those on
//! an export the source reaches only through QEMU): the destination leaves
//! tokens for the disks it does not receive, and the source checks them
//! before sending anything.

use super::{Pool, Pools, Store};
use crate::error::{AgentError, Result};
use crate::netfs::Export;
use tern_migrate::protocol::ColdFile;
use tern_migrate::MigrateOptions;
use tern_model::{Disk, DiskDevice, DiskRemote, Domain, NetfsAccess, PoolKind};
use uuid::Uuid;

/// The token's file name for a migration.
pub fn token_name(id: &Uuid) -> String {
    format!(".tern-share-{id}")
}

impl Pools {
    /// The active netfs pools (with `shared_dirs`, also the dir pools
    /// declared `--shared`) holding the disks of `d` for which `stays`
    /// holds (those the migration leaves in place); with `qemu_only`, only
    /// pools this host reaches through QEMU.
    async fn netfs_pools_of(
        &self,
        d: &Domain,
        stays: impl Fn(&Disk) -> bool,
        qemu_only: bool,
        shared_dirs: bool,
    ) -> Vec<(String, Store)> {
        let m = self.pools.lock().await;
        let wanted = |p: &&Pool| {
            let netfs = p.def.kind == PoolKind::Netfs
                && (!qemu_only || p.access == Some(NetfsAccess::Qemu));
            let shared_dir =
                shared_dirs && !qemu_only && p.def.kind == PoolKind::Dir && p.def.shared;
            p.active && (netfs || shared_dir)
        };
        let mut out: Vec<(String, Store)> = Vec::new();
        for disk in &d.devices.disks {
            if disk.readonly || disk.device == DiskDevice::Cdrom || !stays(disk) {
                continue;
            }
            let pool = match (&disk.source, &disk.remote) {
                (Some(path), None) => m
                    .values()
                    .find(|p| path.parent() == Some(p.def.target.as_path())),
                (_, Some(DiskRemote::Volume(v))) => m.get(&v.pool),
                _ => None,
            };
            if let Some(p) = pool.filter(wanted) {
                if !out.iter().any(|(n, _)| n == &p.def.name) {
                    out.push((p.def.name.clone(), p.store()));
                }
            }
        }
        out
    }

    /// Destination, Prepare of a live migration: leaves a token in each
    /// netfs pool of the disks `o` does not copy.
    pub async fn leave_share_tokens(
        &self,
        d: &Domain,
        o: &MigrateOptions,
        id: &Uuid,
    ) -> Result<()> {
        let stays = |k: &Disk| !o.copies_disk(&k.target_dev);
        let pools = self.netfs_pools_of(d, stays, false, true).await;
        leave_tokens(pools, id).await
    }

    /// Destination, Prepare of a cold migration: leaves a token in each
    /// netfs pool of the disks it does not receive.
    pub async fn leave_cold_tokens(&self, d: &Domain, files: &[ColdFile], id: &Uuid) -> Result<()> {
        let stays = |k: &Disk| !files.iter().any(|f| f.target == k.target_dev);
        let pools = self.netfs_pools_of(d, stays, false, false).await;
        leave_tokens(pools, id).await
    }

    /// Source, Perform: finds and removes the destination's token in each
    /// netfs pool of `d`; refuses the migration, naming the pool, when a
    /// token is missing or holds another id.
    pub async fn prove_shared(&self, d: &Domain, o: &MigrateOptions, id: &Uuid) -> Result<()> {
        let stays = |k: &Disk| !o.copies_disk(&k.target_dev);
        let pools = self.netfs_pools_of(d, stays, false, true).await;
        check_tokens(pools, id).await
    }

    /// Destination, Finish of a failed migration: removes this migration's
    /// tokens from every active netfs pool (the source may never have read
    /// them); best effort.
    pub async fn clear_tokens(&self, id: &Uuid) {
        let stores: Vec<Store> = {
            let m = self.pools.lock().await;
            m.values()
                .filter(|p| {
                    p.active
                        && (p.def.kind == PoolKind::Netfs
                            || (p.def.kind == PoolKind::Dir && p.def.shared))
                })
                .map(|p| p.store())
                .collect()
        };
        let name = token_name(id);
        for store in stores {
            match store {
                Store::Dir(dir) => {
                    let _ = std::fs::remove_file(dir.join(&name));
                }
                Store::Nfs { src, .. } => {
                    let e = Export::new(&src);
                    if e.exists(&name).await.unwrap_or(false) {
                        let _ = e.remove(&name).await;
                    }
                }
                // Only netfs pools carry tokens.
                Store::Rbd(_) | Store::Logical { .. } => {}
            }
        }
    }

    /// Source, Perform of a cold migration: the same proof for the disks
    /// it does not send (those on an export only QEMU reaches here, unless
    /// `--target-pool` copies them).
    pub async fn prove_shared_cold(&self, d: &Domain, files: &[ColdFile], id: &Uuid) -> Result<()> {
        let stays = |k: &Disk| !files.iter().any(|f| f.target == k.target_dev);
        let pools = self.netfs_pools_of(d, stays, true, false).await;
        check_tokens(pools, id).await
    }
}

async fn leave_tokens(pools: Vec<(String, Store)>, id: &Uuid) -> Result<()> {
    let name = token_name(id);
    for (pool, store) in pools {
        let fail = |e: String| {
            AgentError::Failed(format!(
                "cannot write the shared-storage token into pool '{pool}': {e}"
            ))
        };
        match store {
            Store::Dir(dir) => {
                std::fs::write(dir.join(&name), id.to_string()).map_err(|e| fail(e.to_string()))?
            }
            Store::Nfs { src, .. } => Export::new(&src)
                .write_small(&name, id.to_string().as_bytes())
                .await
                .map_err(|e| fail(e.to_string()))?,
            Store::Rbd(_) | Store::Logical { .. } => {}
        }
    }
    Ok(())
}

async fn check_tokens(pools: Vec<(String, Store)>, id: &Uuid) -> Result<()> {
    let name = token_name(id);
    for (pool, store) in pools {
        let found = match &store {
            Store::Dir(dir) => {
                let f = dir.join(&name);
                let t = std::fs::read(&f).ok();
                let _ = std::fs::remove_file(&f);
                t
            }
            Store::Nfs { src, .. } => {
                let e = Export::new(src);
                let t = e.read_small(&name).await.map_err(|e| {
                    AgentError::Failed(format!(
                        "cannot read the shared-storage token in pool '{pool}': {e}"
                    ))
                })?;
                if t.is_some() {
                    let _ = e.remove(&name).await;
                }
                t
            }
            Store::Rbd(_) | Store::Logical { .. } => continue,
        };
        if found.as_deref() != Some(id.to_string().as_bytes()) {
            return Err(AgentError::Conflict(format!(
                "pool '{pool}' is not the same storage on both hosts: the destination's token {name} is not visible here; define the pool with the same --source-host and --source-path on both hosts (a dir pool declared --shared: mount the same shared filesystem at its target on both), use --copy-storage-all, or pass --unsafe"
            )));
        }
    }
    Ok(())
}
