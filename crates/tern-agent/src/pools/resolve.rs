//! What QEMU opens for each disk on this host: a `<disk type='volume'>`
//! becomes the volume's file (dir or mounted netfs pool) or its `nfs://`
//! network source (netfs pool reached by QEMU), and a file path under such
//! a pool's target becomes that network source too. The stored definition
//! keeps what the operator wrote; only the launched QEMU sees the result.

use super::{Pools, Store};
use crate::error::{AgentError, Result};
use std::path::Path;
use tern_model::{
    Disk, DiskRemote, DiskSourceType, Domain, NetHost, NetProtocol, NetfsSource, NetworkSource,
};

/// The network source QEMU opens a file of an export by.
fn nfs_source(src: &NetfsSource, file: &str) -> DiskRemote {
    DiskRemote::Network(NetworkSource {
        protocol: NetProtocol::Nfs,
        name: src.file_path(file).trim_start_matches('/').to_string(),
        hosts: vec![NetHost {
            name: src.host.clone(),
            port: None,
        }],
    })
}

fn as_network(disk: &mut Disk, remote: DiskRemote) {
    disk.source_type = DiskSourceType::Network;
    disk.source = None;
    disk.remote = Some(remote);
}

impl Pools {
    /// The store of the active pool whose target directly holds `path`.
    async fn store_holding(&self, path: &Path) -> Option<Store> {
        let m = self.pools.lock().await;
        m.values()
            .find(|p| p.active && path.parent() == Some(p.def.target.as_path()))
            .map(|p| p.store())
    }

    /// `d` with every disk as QEMU must open it on this host; refuses a
    /// volume disk whose pool or volume is missing here.
    pub async fn resolve_disks(&self, d: &Domain) -> Result<Domain> {
        let mut out = d.clone();
        for disk in &mut out.devices.disks {
            match (disk.source.clone(), disk.remote.clone()) {
                (_, Some(DiskRemote::Volume(v))) => {
                    let store = self.active_store(&v.pool).await.map_err(|e| {
                        AgentError::Invalid(format!(
                            "disk '{}' of domain '{}' names pool '{}': {e}",
                            disk.target_dev, d.name, v.pool
                        ))
                    })?;
                    tern_model::names::validate_name("volume", &v.volume)?;
                    match store {
                        Store::Dir(dir) => {
                            disk.source_type = DiskSourceType::File;
                            disk.remote = None;
                            disk.source = Some(dir.join(&v.volume));
                        }
                        Store::Nfs { src, .. } => as_network(disk, nfs_source(&src, &v.volume)),
                    }
                }
                (Some(path), None) if disk.source_type == DiskSourceType::File => {
                    if let Some(Store::Nfs { src, .. }) = self.store_holding(&path).await {
                        let file = path
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        as_network(disk, nfs_source(&src, &file));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
