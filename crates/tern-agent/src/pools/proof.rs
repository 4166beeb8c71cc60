//! Proof that two hosts see the same export before a live migration that
//! copies no storage: in Prepare the destination writes a token file
//! (`.tern-share-<migration id>`, holding the id) into each netfs pool the
//! guest's uncopied disks live in, as it sees that pool; in Perform the
//! source reads the token through its own view of the pool and removes it.
//! Two pools that only share a name and a target path, but not the export,
//! fail here, before any memory moves.

use super::{Pools, Store};
use crate::error::{AgentError, Result};
use crate::netfs::Export;
use tern_migrate::MigrateOptions;
use tern_model::{DiskDevice, DiskRemote, Domain, PoolKind};
use uuid::Uuid;

/// The token's file name for a migration.
pub fn token_name(id: &Uuid) -> String {
    format!(".tern-share-{id}")
}

impl Pools {
    /// Names of the active netfs pools holding disks of `d` that this
    /// migration leaves in place.
    async fn netfs_pools_of(&self, d: &Domain, o: &MigrateOptions) -> Vec<(String, Store)> {
        let m = self.pools.lock().await;
        let mut out: Vec<(String, Store)> = Vec::new();
        for disk in &d.devices.disks {
            if disk.readonly || disk.device == DiskDevice::Cdrom || o.copies_disk(&disk.target_dev)
            {
                continue;
            }
            let pool = match (&disk.source, &disk.remote) {
                (Some(path), None) => m
                    .values()
                    .find(|p| path.parent() == Some(p.def.target.as_path())),
                (_, Some(DiskRemote::Volume(v))) => m.get(&v.pool),
                _ => None,
            };
            if let Some(p) = pool.filter(|p| p.active && p.def.kind == PoolKind::Netfs) {
                if !out.iter().any(|(n, _)| n == &p.def.name) {
                    out.push((p.def.name.clone(), p.store()));
                }
            }
        }
        out
    }

    /// Destination, Prepare: leaves a token in each netfs pool of `d`.
    pub async fn leave_share_tokens(
        &self,
        d: &Domain,
        o: &MigrateOptions,
        id: &Uuid,
    ) -> Result<()> {
        let name = token_name(id);
        for (pool, store) in self.netfs_pools_of(d, o).await {
            let fail = |e: String| {
                AgentError::Failed(format!(
                    "cannot write the shared-storage token into pool '{pool}': {e}"
                ))
            };
            match store {
                Store::Dir(dir) => std::fs::write(dir.join(&name), id.to_string())
                    .map_err(|e| fail(e.to_string()))?,
                Store::Nfs { src, .. } => Export::new(&src)
                    .write_small(&name, id.to_string().as_bytes())
                    .await
                    .map_err(|e| fail(e.to_string()))?,
            }
        }
        Ok(())
    }

    /// Source, Perform: finds and removes the destination's token in each
    /// netfs pool of `d`; refuses the migration, naming the pool, when a
    /// token is missing or holds another id.
    pub async fn prove_shared(&self, d: &Domain, o: &MigrateOptions, id: &Uuid) -> Result<()> {
        let name = token_name(id);
        for (pool, store) in self.netfs_pools_of(d, o).await {
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
            };
            if found.as_deref() != Some(id.to_string().as_bytes()) {
                return Err(AgentError::Conflict(format!(
                    "pool '{pool}' is not the same storage on both hosts: the destination's token {name} is not visible here; define the pool with the same --source-host and --source-path on both hosts, use --copy-storage-all, or pass --unsafe"
                )));
            }
        }
        Ok(())
    }
}
