//! What QEMU opens for each disk on this host: a `<disk type='volume'>`
//! becomes the volume's file (dir or mounted netfs pool) or its `nfs://`
//! network source (netfs pool reached by QEMU), and a file path under such
//! a pool's target becomes that network source too. The stored definition
//! keeps what the operator wrote; only the launched QEMU sees the result.

use super::{Pools, Store};
use crate::error::{AgentError, Result};
use std::path::{Path, PathBuf};
use tern_model::{
    Disk, DiskRemote, DiskSourceType, Domain, NetHost, NetProtocol, NetfsSource, NetworkSource,
    RbdSource,
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
        auth: None,
    })
}

/// The network source QEMU opens an image of an rbd pool by: the pool's
/// monitors and credentials, as libvirt builds it for a volume disk.
fn rbd_source(src: &RbdSource, image: &str) -> DiskRemote {
    DiskRemote::Network(NetworkSource {
        protocol: NetProtocol::Rbd,
        name: format!("{}/{image}", src.name),
        hosts: src.hosts.clone(),
        auth: src.auth.clone(),
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
                        Store::Rbd(src) => as_network(disk, rbd_source(&src, &v.volume)),
                        Store::Logical { target, .. } => {
                            disk.source_type = DiskSourceType::Block;
                            disk.remote = None;
                            disk.source = Some(target.join(&v.volume));
                        }
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

impl Pools {
    /// Refuses `d` (disks resolved) when Ceph does not take the credentials
    /// of one of its rbd disks or the image is missing, naming the disk:
    /// checked with the `rbd` CLI before QEMU, which would retry a wrong key
    /// for minutes. Disks without monitors (read from the host's ceph.conf)
    /// are left to QEMU.
    pub async fn check_rbd_disks(&self, d: &Domain) -> Result<()> {
        for disk in &d.devices.disks {
            let Some(DiskRemote::Network(n)) = &disk.remote else {
                continue;
            };
            if n.protocol != NetProtocol::Rbd || n.hosts.is_empty() || disk.source.is_some() {
                continue;
            }
            let name = n.name.trim_start_matches('/');
            let Some((pool, image)) = name.split_once('/') else {
                continue;
            };
            let src = RbdSource {
                hosts: n.hosts.clone(),
                name: pool.to_string(),
                auth: n.auth.clone(),
            };
            let what = format!("disk '{}' of domain '{}'", disk.target_dev, d.name);
            super::rbd::Cluster::for_disk(what, &src, &self.secrets)
                .probe_image(image)
                .await?;
        }
        Ok(())
    }
}

/// An rbd pool's target, `rbd:CEPHPOOL` (see `Pools::define`): where
/// [`Pools::volume_slot`] names its images.
fn rbd_target(src: &RbdSource) -> PathBuf {
    PathBuf::from(format!("rbd:{}", src.name))
}

/// The first protocol `drivers` lacks.
fn missing_driver(protocols: &[NetProtocol], drivers: &[String]) -> Option<NetProtocol> {
    protocols
        .iter()
        .copied()
        .find(|p| !drivers.iter().any(|x| x == p.as_str()))
}

/// Block drivers of the QEMU in use, probed once.
static DRIVERS: tokio::sync::OnceCell<Vec<String>> = tokio::sync::OnceCell::const_new();

/// Refuses a network disk whose protocol this host's QEMU cannot open,
/// naming the protocol and the package that brings it.
pub async fn check_network_drivers(d: &Domain) -> Result<()> {
    let protocols: Vec<NetProtocol> = d
        .devices
        .disks
        .iter()
        .filter_map(|disk| match &disk.remote {
            Some(DiskRemote::Network(n)) => Some(n.protocol),
            _ => None,
        })
        .collect();
    if protocols.is_empty() {
        return Ok(());
    }
    let drivers = DRIVERS
        .get_or_init(|| async {
            tern_qemu::img::block_drivers().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list QEMU block drivers");
                Vec::new()
            })
        })
        .await;
    match missing_driver(&protocols, drivers) {
        Some(p) => Err(AgentError::Unsupported(format!(
            "domain '{}' has a protocol='{}' network disk but this host's QEMU has no '{}' block driver; install qemu-block-extra (from the same release as QEMU) or use another disk type",
            d.name,
            p.as_str(),
            p.as_str()
        ))),
        None => Ok(()),
    }
}

/// What `domblklist` shows as a disk's source: the path, a network disk's
/// URL (`nfs://host/export/file`), or a volume's path under its pool's
/// target (`pool/volume` when the pool is not defined here).
pub async fn block_source(pools: &Pools, disk: &Disk) -> Option<String> {
    match (&disk.source, &disk.remote) {
        (Some(p), _) => Some(p.display().to_string()),
        (None, Some(DiskRemote::Network(n))) => {
            let host = n
                .hosts
                .first()
                .map(|h| match h.port {
                    Some(p) => format!("{}:{p}", h.name),
                    None => h.name.clone(),
                })
                .unwrap_or_default();
            Some(format!(
                "{}://{host}/{}",
                n.protocol.as_str(),
                n.name.trim_start_matches('/')
            ))
        }
        (None, Some(DiskRemote::Volume(v))) => {
            let m = pools.pools.lock().await;
            Some(match m.get(&v.pool) {
                Some(p) if p.def.rbd.is_some() => {
                    let r = p
                        .def
                        .rbd
                        .as_ref()
                        .map(|r| r.name.as_str())
                        .unwrap_or_default();
                    format!("rbd:{r}/{}", v.volume)
                }
                Some(p) => p.def.target.join(&v.volume).display().to_string(),
                None => format!("{}/{}", v.pool, v.volume),
            })
        }
        (None, None) => None,
    }
}

impl Pools {
    /// `undefine --remove-all-storage` for one disk: deletes its volume when
    /// it is one of an active pool's (a file in a directory, a file on an
    /// export QEMU reaches, or a `type='volume'` disk); what was removed.
    pub async fn remove_disk_volume(&self, disk: &Disk) -> Option<String> {
        let (store, file, shown) = match (&disk.source, &disk.remote) {
            (Some(path), None) => {
                let file = path.file_name()?.to_string_lossy().into_owned();
                (
                    self.store_holding(path).await?,
                    file,
                    path.display().to_string(),
                )
            }
            (None, Some(DiskRemote::Volume(v))) => {
                let store = self.active_store(&v.pool).await.ok()?;
                (store, v.volume.clone(), format!("{}/{}", v.pool, v.volume))
            }
            _ => return None,
        };
        match store {
            Store::Dir(dir) => {
                let p = dir.join(&file);
                std::fs::remove_file(&p).ok()?;
                Some(p.display().to_string())
            }
            Store::Nfs { src, .. } => {
                crate::netfs::Export::new(&src).remove(&file).await.ok()?;
                Some(shown)
            }
            Store::Rbd(src) => {
                let pool = match &disk.remote {
                    Some(DiskRemote::Volume(v)) => v.pool.clone(),
                    _ => return None,
                };
                super::rbd::Cluster::new(&pool, &src, &self.secrets)
                    .delete(&file)
                    .await
                    .ok()?;
                Some(shown)
            }
            Store::Logical { src, target } => {
                let pool = self.pool_of(&target.join(&file)).await?.name;
                super::logical::Vg::new(&pool, &src, &target)
                    .delete(&file)
                    .await
                    .ok()?;
                Some(target.join(&file).display().to_string())
            }
        }
    }
}

impl Pools {
    /// Where a volume named `volume` of active pool `pool` would be, as a
    /// disk names it (a path under the pool's target), and whether it
    /// exists already: a file in a directory, or a file on an export that
    /// only QEMU and the agent's NFS client reach.
    pub async fn volume_slot(&self, pool: &str, volume: &str) -> Result<(PathBuf, bool)> {
        tern_model::names::validate_name("volume", volume)?;
        match self.active_store(pool).await? {
            Store::Dir(dir) => {
                let p = dir.join(volume);
                let exists = p.exists();
                Ok((p, exists))
            }
            Store::Nfs { src, target } => {
                let exists = crate::netfs::Export::new(&src)
                    .exists(volume)
                    .await
                    .map_err(|e| AgentError::Failed(format!("storage pool '{pool}': {e}")))?;
                Ok((target.join(volume), exists))
            }
            Store::Rbd(src) => {
                // `rbd:CEPHPOOL/IMAGE`: the pool's relative target and the
                // image, what `img_path` turns into qemu-img's filename.
                let exists = super::rbd::Cluster::new(pool, &src, &self.secrets)
                    .list()
                    .await?
                    .iter()
                    .any(|v| v.name == volume);
                Ok((rbd_target(&src).join(volume), exists))
            }
            Store::Logical { src, target } => {
                let exists = super::logical::Vg::new(pool, &src, &target)
                    .exists(volume)
                    .await?;
                Ok((target.join(volume), exists))
            }
        }
    }

    /// The active rbd pool whose target (`rbd:CEPHPOOL`) holds `path`:
    /// (pool name, its source, the image name).
    async fn rbd_holding(&self, path: &Path) -> Option<(String, RbdSource, String)> {
        let image = path.file_name()?.to_string_lossy().into_owned();
        let m = self.pools.lock().await;
        m.values()
            .filter(|p| p.active && path.parent() == Some(p.def.target.as_path()))
            .find_map(|p| {
                p.def
                    .rbd
                    .clone()
                    .map(|r| (p.def.name.clone(), r, image.clone()))
            })
    }

    /// The client addresses that have image `image` of rbd pool `pool`
    /// open (its watchers) and those holding its lock.
    pub async fn rbd_watchers_and_owners(
        &self,
        pool: &str,
        image: &str,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let Store::Rbd(src) = self.active_store(pool).await? else {
            return Err(AgentError::Invalid(format!(
                "storage pool '{pool}' is not an rbd pool"
            )));
        };
        let c = super::rbd::Cluster::new(pool, &src, &self.secrets);
        Ok((c.watchers(image).await?, c.lock_owners(image).await?))
    }

    /// The lock owners of image `image` of rbd pool `pool`.
    pub async fn rbd_lock_owners(&self, pool: &str, image: &str) -> Result<Vec<String>> {
        let Store::Rbd(src) = self.active_store(pool).await? else {
            return Err(AgentError::Invalid(format!(
                "storage pool '{pool}' is not an rbd pool"
            )));
        };
        super::rbd::Cluster::new(pool, &src, &self.secrets)
            .lock_owners(image)
            .await
    }

    /// Blocklists (or un-blocklists) client addresses in the cluster of
    /// rbd pool `pool`; the addresses the cluster confirms.
    /// With `images`, every client those images have now (watchers and
    /// lock owners) is added too, except `spare` and this host's own
    /// guests' clients (see [`Request::RbdBlocklist`]).
    ///
    /// [`Request::RbdBlocklist`]: tern_api::Request::RbdBlocklist
    pub async fn rbd_blocklist(
        &self,
        pool: &str,
        addrs: &[String],
        remove: bool,
        images: &[String],
        spare: &[String],
    ) -> Result<Vec<String>> {
        let Store::Rbd(src) = self.active_store(pool).await? else {
            return Err(AgentError::Invalid(format!(
                "storage pool '{pool}' is not an rbd pool; only Ceph clients are blocklisted"
            )));
        };
        let c = super::rbd::Cluster::new(pool, &src, &self.secrets);
        let mut all = addrs.to_vec();
        if !remove {
            let own = super::rbd_clients::own_addresses();
            for image in images {
                tern_model::names::validate_name("volume", image)?;
                for a in c.clients(image).await? {
                    if !all.contains(&a) && !spare.contains(&a) && !own.contains(&a) {
                        tracing::warn!(%pool, %image, addr = %a, "fencing a client the dead host never reported");
                        all.push(a);
                    }
                }
            }
        }
        c.blocklist(&all, remove).await
    }

    /// Points `disk` at a copy placed at `path` (from [`Pools::volume_slot`]):
    /// an image of an rbd pool becomes a `type='volume'` disk of that pool
    /// (what QEMU opens through librbd), a logical volume a block disk,
    /// anything else a file disk.
    pub async fn point_disk(&self, disk: &mut Disk, path: &Path) {
        match self.rbd_holding(path).await {
            Some((pool, _, volume)) => {
                disk.source_type = DiskSourceType::Volume;
                disk.source = None;
                disk.remote = Some(DiskRemote::Volume(tern_model::VolumeSource {
                    pool,
                    volume,
                }));
            }
            None => {
                // A logical volume is a block device.
                disk.source_type = if self.is_logical_path(path).await {
                    DiskSourceType::Block
                } else {
                    DiskSourceType::File
                };
                disk.remote = None;
                disk.source = Some(path.to_path_buf());
            }
        }
    }

    /// Whether `pool` is an active RBD pool (its volumes are shared images,
    /// never files).
    pub async fn is_rbd(&self, pool: &str) -> bool {
        matches!(self.active_store(pool).await, Ok(Store::Rbd(_)))
    }

    /// What qemu-img opens for `path`: the path itself, or the `nfs://`
    /// URL of a file under a pool QEMU reaches over NFS.
    /// For an image of an rbd pool (`rbd:CEPHPOOL/IMAGE`), QEMU's `rbd:`
    /// filename with the pool's monitors and key file.
    pub async fn img_path(&self, path: &Path) -> PathBuf {
        match (self.store_holding(path).await, path.file_name()) {
            (Some(Store::Nfs { src, .. }), Some(f)) => PathBuf::from(src.url(&f.to_string_lossy())),
            (Some(Store::Rbd(src)), Some(f)) => {
                let key = src.auth.as_ref().and_then(|a| {
                    self.secrets
                        .value_file(&a.secret)
                        .map_err(|e| tracing::warn!(error = %e, "rbd image without its key"))
                        .ok()
                });
                PathBuf::from(super::rbd::img_filename(
                    &src,
                    &f.to_string_lossy(),
                    key.as_deref(),
                ))
            }
            _ => path.to_path_buf(),
        }
    }

    /// Removes the file a disk path names (see [`Pools::img_path`]);
    /// a file already gone is not an error.
    pub async fn remove_path(&self, path: &Path) -> Result<()> {
        if let Some((pool, src, image)) = self.rbd_holding(path).await {
            let c = super::rbd::Cluster::new(&pool, &src, &self.secrets);
            if !c.list().await?.iter().any(|v| v.name == image) {
                return Ok(());
            }
            return c.delete(&image).await;
        }
        match (self.store_holding(path).await, path.file_name()) {
            (Some(Store::Nfs { src, .. }), Some(f)) => {
                let export = crate::netfs::Export::new(&src);
                let f = f.to_string_lossy();
                let gone = !export.exists(&f).await.unwrap_or(true);
                if gone {
                    return Ok(());
                }
                export.remove(&f).await.map_err(|e| {
                    AgentError::Failed(format!("cannot remove {}: {e}", path.display()))
                })
            }
            (Some(Store::Logical { src, target }), Some(f)) => {
                let pool = self.pool_of(path).await.map(|p| p.name).unwrap_or_default();
                let vg = super::logical::Vg::new(&pool, &src, &target);
                let f = f.to_string_lossy();
                if !vg.exists(&f).await.unwrap_or(true) {
                    return Ok(());
                }
                vg.delete(&f).await
            }
            _ => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(AgentError::state(path, e))
                }
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protocol_without_its_driver_is_named() {
        let have: Vec<String> = ["file", "nfs", "qcow2", "raw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(missing_driver(&[NetProtocol::Nfs], &have), None);
        assert_eq!(
            missing_driver(&[NetProtocol::Nfs, NetProtocol::Rbd], &have),
            Some(NetProtocol::Rbd)
        );
        assert_eq!(
            missing_driver(&[NetProtocol::Gluster], &[]),
            Some(NetProtocol::Gluster)
        );
    }

    #[test]
    fn nfs_sources_name_the_file_on_the_export() {
        let src = NetfsSource {
            host: "10.0.0.3".into(),
            path: "/nfs/".into(),
            access: tern_model::NetfsAccess::Qemu,
        };
        match nfs_source(&src, "test01") {
            DiskRemote::Network(n) => {
                assert_eq!(n.name, "nfs/test01");
                assert_eq!(n.hosts[0].name, "10.0.0.3");
                assert_eq!(n.protocol, NetProtocol::Nfs);
            }
            other => panic!("{other:?}"),
        }
    }
}
