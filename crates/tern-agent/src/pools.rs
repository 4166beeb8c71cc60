//! Storage pools and their volumes.
//!
//! A `dir` pool is a directory; a volume is a file directly inside it, named
//! by a plain file name (never a path), created and inspected with qemu-img.
//! A `netfs` pool is an NFS export: with kernel access it is mounted on the
//! target and then behaves as a directory; with QEMU access nothing is
//! mounted and volumes are `nfs://` URLs (see `netfs` and `pools::remote`).
//! An `rbd` pool is a Ceph pool: volumes are RBD images that QEMU opens
//! through librbd with a cephx key from a secret (see `pools::rbd`).
//! A `logical` pool is an LVM volume group: volumes are logical volumes,
//! block devices under `/dev/VG` (see `pools::logical`).

use crate::config::write_atomic;
use crate::error::{AgentError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tern_model::names::validate_name;
use tern_model::{
    LogicalSource, NetfsAccess, NetfsSource, PoolDef, PoolInfo, PoolKind, RbdSource, VolumeInfo,
};
use tern_qemu::img;
use tokio::sync::Mutex;

mod define;
mod logical;
mod logical_copies;
mod proof;
mod rbd;
pub mod rbd_clients;
mod rbd_identity;
mod remote;
mod resolve;
pub mod sharedfs;

pub use crate::secrets::Secrets;

pub use logical::is_block_device;
pub use resolve::{block_source, check_network_drivers};

#[derive(Debug, Clone)]
struct Pool {
    def: PoolDef,
    active: bool,
    /// How an active netfs pool reaches its export.
    access: Option<NetfsAccess>,
}

/// Where an active pool's volumes live.
#[derive(Debug, Clone)]
pub enum Store {
    /// Files in a local (or kernel-mounted) directory.
    Dir(PathBuf),
    /// Files on an NFS export that only QEMU and the agent's NFS client
    /// reach; `target` is the directory disk paths name them under.
    Nfs {
        /// The export.
        src: NetfsSource,
        /// The pool's target directory.
        target: PathBuf,
    },
    /// RBD images in a Ceph pool.
    Rbd(RbdSource),
    /// Logical volumes of an LVM volume group, block devices under `target`.
    Logical {
        /// The group.
        src: LogicalSource,
        /// The pool's target (`/dev/VG`).
        target: PathBuf,
    },
}

impl Pool {
    fn store(&self) -> Store {
        if let Some(r) = &self.def.rbd {
            return Store::Rbd(r.clone());
        }
        if let Some(l) = &self.def.logical {
            return Store::Logical {
                src: l.clone(),
                target: self.def.target.clone(),
            };
        }
        match (&self.def.source, self.access) {
            (Some(src), Some(NetfsAccess::Qemu)) => Store::Nfs {
                src: src.clone(),
                target: self.def.target.clone(),
            },
            _ => Store::Dir(self.def.target.clone()),
        }
    }
}

fn parse_access(marker: &str) -> Option<NetfsAccess> {
    match marker.trim() {
        "mount" => Some(NetfsAccess::Mount),
        "qemu" => Some(NetfsAccess::Qemu),
        _ => None,
    }
}

/// The agent's pools, persisted as `pools/<name>.json` plus a
/// `pools/<name>.active` marker while started.
#[derive(Debug)]
pub struct Pools {
    dir: PathBuf,
    pools: Mutex<BTreeMap<String, Pool>>,
    /// The host's secrets (`<state>/secrets`, next to the pools): rbd
    /// pools and disks take their cephx keys from them.
    pub secrets: Secrets,
}

fn statvfs(path: &Path) -> (u64, u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0, 0);
    };
    // SAFETY: statvfs fills a plain struct from a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0, 0);
    }
    let bs = s.f_frsize;
    let cap = s.f_blocks * bs;
    let free = s.f_bfree * bs;
    (cap, cap.saturating_sub(free), s.f_bavail * bs)
}

impl Pools {
    /// Loads pool definitions from `dir`, and the secrets from `secrets`
    /// next to it.
    pub fn load(dir: PathBuf) -> Pools {
        let secrets = Secrets::open(dir.with_file_name("secrets"));
        let mut map = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                match std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<PoolDef>(&b).ok())
                {
                    Some(def) => {
                        let marker =
                            std::fs::read_to_string(dir.join(format!("{}.active", def.name)));
                        let access = marker.as_deref().ok().and_then(parse_access);
                        let active = match (def.kind, access) {
                            (PoolKind::Netfs, Some(NetfsAccess::Qemu)) => true,
                            (PoolKind::Netfs, _) => {
                                marker.is_ok() && crate::netfs::is_mounted(&def.target)
                            }
                            (PoolKind::Dir, _) => marker.is_ok() && def.target.is_dir(),
                            (PoolKind::Rbd | PoolKind::Logical, _) => marker.is_ok(),
                        };
                        let access = access.filter(|_| active && def.kind == PoolKind::Netfs);
                        map.insert(
                            def.name.clone(),
                            Pool {
                                def,
                                active,
                                access,
                            },
                        );
                    }
                    None => tracing::warn!(path = %p.display(), "skipping unreadable pool"),
                }
            }
        }
        Pools {
            dir,
            pools: Mutex::new(map),
            secrets,
        }
    }

    /// Starts every autostart pool whose directory exists.
    pub async fn autostart(&self) {
        let names: Vec<String> = {
            let m = self.pools.lock().await;
            m.values()
                .filter(|p| p.def.autostart && !p.active)
                .map(|p| p.def.name.clone())
                .collect()
        };
        for n in names {
            if let Err(e) = self.start(&n).await {
                tracing::warn!(pool = %n, error = %e, "cannot autostart pool");
            }
        }
    }

    pub(super) fn save(&self, def: &PoolDef) -> Result<()> {
        let path = self.dir.join(format!("{}.json", def.name));
        let text = serde_json::to_vec_pretty(def)
            .map_err(|e| AgentError::Failed(format!("cannot serialise pool: {e}")))?;
        write_atomic(&path, &text).map_err(|e| AgentError::state(&path, e))
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.active"))
    }

    /// `pool-build`: creates the directory.
    pub async fn build(&self, name: &str) -> Result<()> {
        let m = self.pools.lock().await;
        let p = m.get(name).ok_or_else(|| AgentError::NoPool(name.into()))?;
        if let Some(src) = &p.def.logical {
            return logical::Vg::new(name, src, &p.def.target).build().await;
        }
        std::fs::create_dir_all(&p.def.target).map_err(|e| {
            AgentError::Failed(format!(
                "cannot create directory '{}' of pool '{name}': {e}",
                p.def.target.display()
            ))
        })
    }

    /// `pool-start`.
    pub async fn start(&self, name: &str) -> Result<()> {
        let mut m = self.pools.lock().await;
        let p = m
            .get_mut(name)
            .ok_or_else(|| AgentError::NoPool(name.into()))?;
        if p.active {
            return Err(AgentError::Conflict(format!(
                "storage pool '{name}' is already active"
            )));
        }
        if let Some(src) = &p.def.rbd {
            rbd::Cluster::new(name, src, &self.secrets).check().await?;
            let marker = self.marker(name);
            std::fs::write(&marker, "rbd").map_err(|e| AgentError::state(&marker, e))?;
            p.active = true;
            return Ok(());
        }
        if let Some(src) = &p.def.logical {
            logical::Vg::new(name, src, &p.def.target)
                .activate()
                .await?;
            let marker = self.marker(name);
            std::fs::write(&marker, "logical").map_err(|e| AgentError::state(&marker, e))?;
            p.active = true;
            return Ok(());
        }
        let access = match &p.def.source {
            Some(src) => Some(remote::start(name, src, &p.def.target).await?),
            None => None,
        };
        if access != Some(NetfsAccess::Qemu) && !p.def.target.is_dir() {
            return Err(AgentError::Invalid(format!(
                "directory '{}' of pool '{name}' does not exist; run 'tern pool-build {name}' or create it",
                p.def.target.display()
            )));
        }
        let marker = self.marker(name);
        let text = access.map(|a| a.as_str()).unwrap_or("");
        std::fs::write(&marker, text).map_err(|e| AgentError::state(&marker, e))?;
        p.active = true;
        p.access = access;
        Ok(())
    }

    /// `pool-autostart [--disable]`.
    pub async fn set_autostart(&self, name: &str, on: bool) -> Result<()> {
        let mut m = self.pools.lock().await;
        let p = m
            .get_mut(name)
            .ok_or_else(|| AgentError::NoPool(name.into()))?;
        let mut def = p.def.clone();
        def.autostart = on;
        self.save(&def)?;
        p.def = def;
        Ok(())
    }

    /// `pool-destroy`: deactivates; files stay.
    pub async fn destroy(&self, name: &str) -> Result<()> {
        let mut m = self.pools.lock().await;
        let p = m
            .get_mut(name)
            .ok_or_else(|| AgentError::NoPool(name.into()))?;
        if !p.active {
            return Err(AgentError::Conflict(format!(
                "storage pool '{name}' is not active"
            )));
        }
        if let Some(src) = &p.def.logical {
            logical::Vg::new(name, src, &p.def.target)
                .deactivate()
                .await?;
        }
        if p.access == Some(NetfsAccess::Mount) {
            crate::netfs::unmount(&p.def.target)
                .await
                .map_err(|e| AgentError::Failed(format!("cannot stop pool '{name}': {e}")))?;
        }
        let _ = std::fs::remove_file(self.marker(name));
        p.active = false;
        p.access = None;
        Ok(())
    }

    /// `pool-undefine`: only an inactive pool; files stay.
    pub async fn undefine(&self, name: &str) -> Result<()> {
        let mut m = self.pools.lock().await;
        let p = m.get(name).ok_or_else(|| AgentError::NoPool(name.into()))?;
        if p.active {
            return Err(AgentError::Conflict(format!(
                "storage pool '{name}' is active; run 'tern pool-destroy {name}' first"
            )));
        }
        let path = self.dir.join(format!("{name}.json"));
        std::fs::remove_file(&path).map_err(|e| AgentError::state(&path, e))?;
        m.remove(name);
        Ok(())
    }

    /// `pool-list` / `pool-info` rows.
    pub async fn list(&self, all: bool) -> Vec<PoolInfo> {
        let pools: Vec<Pool> = {
            let m = self.pools.lock().await;
            m.values().filter(|p| all || p.active).cloned().collect()
        };
        let mut out = Vec::with_capacity(pools.len());
        for p in pools {
            let (capacity, allocation, available) = match (p.active, p.store()) {
                (false, _) => (0, 0, 0),
                (true, Store::Dir(d)) => statvfs(&d),
                (true, Store::Nfs { src, .. }) => remote::space(&src).await,
                (true, Store::Rbd(src)) => {
                    rbd::Cluster::new(&p.def.name, &src, &self.secrets)
                        .space()
                        .await
                }
                (true, Store::Logical { src, target }) => {
                    logical::Vg::new(&p.def.name, &src, &target).space().await
                }
            };
            out.push(PoolInfo {
                def: p.def.clone(),
                active: p.active,
                capacity,
                allocation,
                available,
                access: p.access,
                ceph_fsid: match (p.active, p.store()) {
                    (true, Store::Rbd(src)) => self.pool_fsid(&p.def.name, &src).await,
                    _ => None,
                },
            });
        }
        out
    }

    /// `pool-info`.
    pub async fn info(&self, name: &str) -> Result<PoolInfo> {
        self.list(true)
            .await
            .into_iter()
            .find(|p| p.def.name == name)
            .ok_or_else(|| AgentError::NoPool(name.into()))
    }

    /// The directory of an active pool whose volumes are local files.
    pub async fn active_dir(&self, name: &str) -> Result<PathBuf> {
        match self.active_store(name).await? {
            Store::Dir(d) => Ok(d),
            Store::Nfs { .. } => Err(AgentError::Unsupported(format!(
                "storage pool '{name}' is reached by QEMU over nfs:// (no kernel NFS client here), so its volumes are not local files; copy them with qemu-img, or start the pool where the kernel can mount NFS"
            ))),
            Store::Rbd(_) => Err(AgentError::Unsupported(format!(
                "storage pool '{name}' is an rbd pool: its volumes are RBD images, not local files; use a dir or netfs pool for this"
            ))),
            Store::Logical { .. } => Err(AgentError::Unsupported(format!(
                "storage pool '{name}' is a logical pool: its volumes are LVM block devices, not files; use a dir or netfs pool for this"
            ))),
        }
    }

    /// Where an active pool's volumes live.
    pub async fn active_store(&self, name: &str) -> Result<Store> {
        let m = self.pools.lock().await;
        let p = m.get(name).ok_or_else(|| AgentError::NoPool(name.into()))?;
        if !p.active {
            return Err(AgentError::Conflict(format!(
                "storage pool '{name}' is not active; run 'tern pool-start {name}'"
            )));
        }
        Ok(p.store())
    }

    /// The directories of every defined pool: where a definition's files
    /// may lie (see [`crate::confine`]).
    /// rbd pools have none (an empty path would admit every file).
    pub async fn targets(&self) -> Vec<PathBuf> {
        let m = self.pools.lock().await;
        m.values()
            .filter(|p| p.def.kind != PoolKind::Rbd)
            .map(|p| p.def.target.clone())
            .collect()
    }

    /// Whether `path` is a file directly inside one of the active pools.
    pub async fn owns(&self, path: &Path) -> bool {
        let m = self.pools.lock().await;
        m.values().any(|p| {
            p.active && p.def.kind != PoolKind::Rbd && path.parent() == Some(p.def.target.as_path())
        })
    }

    /// The pool definition whose directory holds `path`.
    pub async fn pool_of(&self, path: &Path) -> Option<PoolDef> {
        let m = self.pools.lock().await;
        m.values()
            .filter(|p| p.def.kind != PoolKind::Rbd)
            .find(|p| path.parent() == Some(p.def.target.as_path()))
            .map(|p| p.def.clone())
    }

    async fn vol_path(&self, pool: &str, name: &str) -> Result<PathBuf> {
        validate_name("volume", name)?;
        Ok(self.active_dir(pool).await?.join(name))
    }

    /// `vol-create-as`.
    pub async fn vol_create(
        &self,
        pool: &str,
        name: &str,
        capacity: Option<u64>,
        format: &str,
        backing: Option<&str>,
    ) -> Result<VolumeInfo> {
        if !matches!(format, "qcow2" | "raw") {
            return Err(AgentError::Invalid(format!(
                "volume format '{format}' is not supported; use qcow2 or raw"
            )));
        }
        validate_name("volume", name)?;
        match self.active_store(pool).await? {
            Store::Nfs { src, target } => {
                let v = remote::Vols::new(pool, &src, &target);
                return v.create(name, capacity, format, backing).await;
            }
            Store::Rbd(src) => {
                let c = rbd::Cluster::new(pool, &src, &self.secrets);
                return c.create(name, capacity, format, backing).await;
            }
            Store::Logical { src, target } => {
                let vg = logical::Vg::new(pool, &src, &target);
                return vg.create(name, capacity, format, backing).await;
            }
            Store::Dir(_) => {}
        }
        let path = self.vol_path(pool, name).await?;
        if path.exists() {
            return Err(AgentError::Conflict(format!(
                "storage volume '{name}' already exists in pool '{pool}'"
            )));
        }
        let backing = match backing {
            Some(b) => {
                if format != "qcow2" {
                    return Err(AgentError::Invalid(
                        "a backing volume needs --format qcow2".into(),
                    ));
                }
                let bp = self.vol_path(pool, b).await?;
                if !bp.is_file() {
                    return Err(AgentError::NoVolume {
                        pool: pool.into(),
                        name: b.into(),
                    });
                }
                let format = self.backing_format(&bp).await?;
                Some((bp, format))
            }
            None => None,
        };
        if capacity.is_none() && backing.is_none() {
            return Err(AgentError::Invalid(
                "volume size is missing; give a size such as 1G".into(),
            ));
        }
        img::create(
            &path,
            format,
            capacity,
            backing.as_ref().map(|(p, f)| (p.as_path(), f.as_str())),
        )
        .await?;
        self.vol_info(pool, name).await
    }

    /// `vol-list`.
    pub async fn vol_list(&self, pool: &str) -> Result<Vec<VolumeInfo>> {
        match self.active_store(pool).await? {
            Store::Nfs { src, target } => {
                return remote::Vols::new(pool, &src, &target).list().await
            }
            Store::Rbd(src) => return rbd::Cluster::new(pool, &src, &self.secrets).list().await,
            Store::Logical { src, target } => {
                return logical::Vg::new(pool, &src, &target).list().await
            }
            Store::Dir(_) => {}
        }
        let dir = self.active_dir(pool).await?;
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| AgentError::state(&dir, e))?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            // The transfer engine's companions of a file being received.
            .filter(|n| {
                ![".tern-partial", ".tern-journal", ".tern-unsynced"]
                    .iter()
                    .any(|s| n.ends_with(s))
            })
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Ok(v) = self.vol_info(pool, &n).await {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// `vol-info` / `vol-path`.
    pub async fn vol_info(&self, pool: &str, name: &str) -> Result<VolumeInfo> {
        validate_name("volume", name)?;
        match self.active_store(pool).await? {
            Store::Nfs { src, target } => {
                return remote::Vols::new(pool, &src, &target).info(name).await
            }
            Store::Rbd(src) => {
                return rbd::Cluster::new(pool, &src, &self.secrets)
                    .info(name)
                    .await
            }
            Store::Logical { src, target } => {
                return logical::Vg::new(pool, &src, &target).info(name).await
            }
            Store::Dir(_) => {}
        }
        let path = self.vol_path(pool, name).await?;
        if !path.is_file() {
            return Err(AgentError::NoVolume {
                pool: pool.into(),
                name: name.into(),
            });
        }
        // A report only: nothing opens the volume with this guess.
        let i = img::probe(&path).await?;
        Ok(VolumeInfo {
            name: name.into(),
            path,
            format: i.format,
            capacity: i.virtual_size,
            allocation: i.actual_size,
            backing: i.backing,
        })
    }

    /// The format to record for a new overlay's backing volume. A pool
    /// volume's format is not recorded anywhere, so qemu-img guesses it; a
    /// guess of qcow2 may be a raw guest disk carrying a qcow2 header, so
    /// its whole chain (read without further guessing) must stay inside
    /// the storage pools, or the overlay would show a host file to a guest.
    async fn backing_format(&self, bp: &Path) -> Result<String> {
        let guess = img::probe(bp).await?.format;
        if guess == "raw" {
            return Ok(guess);
        }
        let targets = self.targets().await;
        for link in img::backing_chain(bp, &guess).await? {
            let dir = std::fs::canonicalize(&link.path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf));
            let inside = dir.is_some_and(|d| {
                targets
                    .iter()
                    .any(|t| std::fs::canonicalize(t).is_ok_and(|t| t == d))
            });
            if !inside {
                return Err(AgentError::Invalid(format!(
                    "backing volume {} reads {}, which is not in a storage pool; pick another backing volume or copy it with 'qemu-img convert -f raw'",
                    bp.display(),
                    link.path.display()
                )));
            }
        }
        Ok(guess)
    }

    /// `vol-resize`: to `size` bytes from `current`; a smaller size needs
    /// `shrink`.
    pub async fn vol_resize(
        &self,
        pool: &str,
        name: &str,
        current: u64,
        size: u64,
        shrink: bool,
    ) -> Result<VolumeInfo> {
        validate_name("volume", name)?;
        if size < current && !shrink {
            return Err(AgentError::Invalid(format!(
                "vol-resize would shrink '{name}' from {current} to {size} bytes, losing the data past the new end; pass --shrink if that is what you want"
            )));
        }
        if size == 0 {
            return Err(AgentError::Invalid(
                "a volume cannot be resized to 0 bytes; give a size such as 10G".into(),
            ));
        }
        let info = self.vol_info(pool, name).await?;
        match self.active_store(pool).await? {
            Store::Rbd(src) => {
                rbd::Cluster::new(pool, &src, &self.secrets)
                    .resize(name, size, shrink)
                    .await?
            }
            Store::Nfs { src, .. } => {
                let url = PathBuf::from(src.url(name));
                img::resize(&url, &info.format, size, shrink).await?
            }
            Store::Logical { src, target } => {
                logical::Vg::new(pool, &src, &target)
                    .resize(name, size, shrink)
                    .await?
            }
            Store::Dir(dir) => img::resize(&dir.join(name), &info.format, size, shrink).await?,
        }
        self.vol_info(pool, name).await
    }

    /// `vol-delete`.
    pub async fn vol_delete(&self, pool: &str, name: &str) -> Result<()> {
        validate_name("volume", name)?;
        match self.active_store(pool).await? {
            Store::Nfs { src, target } => {
                return remote::Vols::new(pool, &src, &target).delete(name).await
            }
            Store::Rbd(src) => {
                return rbd::Cluster::new(pool, &src, &self.secrets)
                    .delete(name)
                    .await
            }
            Store::Logical { src, target } => {
                return logical::Vg::new(pool, &src, &target).delete(name).await
            }
            Store::Dir(_) => {}
        }
        let path = self.vol_path(pool, name).await?;
        if !path.is_file() {
            return Err(AgentError::NoVolume {
                pool: pool.into(),
                name: name.into(),
            });
        }
        std::fs::remove_file(&path).map_err(|e| AgentError::state(&path, e))
    }
}
