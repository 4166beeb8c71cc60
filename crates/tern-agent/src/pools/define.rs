//! Defining pools: `pool-define-as` for each pool type.

use super::{rbd, remote, Pool, Pools};
use crate::error::{AgentError, Result};
use std::path::{Path, PathBuf};
use tern_model::names::validate_name;
use tern_model::{LogicalSource, NetfsSource, PoolDef, PoolKind, RbdSource};

impl Pools {
    /// `pool-define-as NAME dir --target PATH [--shared]`, or with `netfs`
    /// the export (a netfs pool is always shared).
    pub async fn define(
        &self,
        name: &str,
        target: &Path,
        shared: bool,
        netfs: Option<NetfsSource>,
    ) -> Result<()> {
        validate_name("pool", name)?;
        if let Some(src) = &netfs {
            remote::check_source(src)?;
        }
        if target.as_os_str().is_empty() {
            return Err(AgentError::Invalid(format!(
                "pool '{name}' has no target directory; give --target PATH (rbd pools take --source-host and --source-name instead)"
            )));
        }
        if !target.is_absolute() {
            return Err(AgentError::Invalid(format!(
                "pool target '{}' is not an absolute path; give the full directory path",
                target.display()
            )));
        }
        // Kept as libvirt keeps a pool's target path: no trailing or
        // doubled slashes (`/mykvm/nfspool/` is `/mykvm/nfspool`), the way
        // the kernel lists it once mounted.
        let target: PathBuf = target.components().collect();
        let target = target.as_path();
        let mut m = self.pools.lock().await;
        if m.contains_key(name) {
            return Err(AgentError::Conflict(format!(
                "storage pool '{name}' already exists; undefine it first or pick another name"
            )));
        }
        if let Some(p) = m.values().find(|p| p.def.target == target) {
            return Err(AgentError::Conflict(format!(
                "directory '{}' is already the target of pool '{}'",
                target.display(),
                p.def.name
            )));
        }
        let def = PoolDef {
            name: name.into(),
            target: target.into(),
            shared: shared || netfs.is_some(),
            autostart: false,
            kind: if netfs.is_some() {
                PoolKind::Netfs
            } else {
                PoolKind::Dir
            },
            source: netfs,
            rbd: None,
            logical: None,
        };
        self.save(&def)?;
        m.insert(
            name.into(),
            Pool {
                def,
                active: false,
                access: None,
            },
        );
        Ok(())
    }

    /// `pool-define-as NAME rbd --source-host MON --source-name POOL
    /// [--auth-username ID --secret-usage|uuid S]`: an rbd pool, always
    /// shared (every host reaching the cluster sees the same images). It
    /// has no directory: its target is the relative `rbd:CEPHPOOL`, which
    /// no disk path (always absolute) lies under, and which is what
    /// `domblklist` shows its volumes under (`rbd:CEPHPOOL/VOLUME`), so
    /// the cluster report finds their pool. (An empty target would hold
    /// every path: `Path::starts_with("")` is always true.)
    pub async fn define_rbd(&self, name: &str, src: RbdSource) -> Result<()> {
        validate_name("pool", name)?;
        rbd::check_source(&src)?;
        let mut m = self.pools.lock().await;
        if m.contains_key(name) {
            return Err(AgentError::Conflict(format!(
                "storage pool '{name}' already exists; undefine it first or pick another name"
            )));
        }
        let def = PoolDef {
            name: name.into(),
            target: PathBuf::from(format!("rbd:{}", src.name)),
            shared: true,
            autostart: false,
            kind: PoolKind::Rbd,
            source: None,
            rbd: Some(src),
            logical: None,
        };
        self.save(&def)?;
        m.insert(
            name.into(),
            Pool {
                def,
                active: false,
                access: None,
            },
        );
        Ok(())
    }

    /// `pool-define-as NAME logical --source-name VG [--source-dev PV]...
    /// [--target /dev/VG]`: an LVM volume group. Its target is where LVM
    /// names the group's volumes, `/dev/VG`; it is shared only when
    /// declared (a group on a SAN LUN that every host sees, with its
    /// locking set up outside Tern).
    pub async fn define_logical(
        &self,
        name: &str,
        src: LogicalSource,
        target: Option<&Path>,
        shared: bool,
    ) -> Result<()> {
        validate_name("pool", name)?;
        src.check().map_err(AgentError::Invalid)?;
        let target = match target.filter(|t| !t.as_os_str().is_empty()) {
            Some(t) if t != src.default_target() => {
                return Err(AgentError::Invalid(format!(
                    "a logical pool's target is where LVM puts its volumes, {}; drop --target or give that",
                    src.default_target().display()
                )))
            }
            _ => src.default_target(),
        };
        let mut m = self.pools.lock().await;
        if m.contains_key(name) {
            return Err(AgentError::Conflict(format!(
                "storage pool '{name}' already exists; undefine it first or pick another name"
            )));
        }
        if let Some(p) = m.values().find(|p| p.def.target == target) {
            return Err(AgentError::Conflict(format!(
                "volume group '{}' is already the pool '{}'",
                src.vg, p.def.name
            )));
        }
        let def = PoolDef {
            name: name.into(),
            target,
            shared,
            autostart: false,
            kind: PoolKind::Logical,
            source: None,
            rbd: None,
            logical: Some(src),
        };
        self.save(&def)?;
        m.insert(
            name.into(),
            Pool {
                def,
                active: false,
                access: None,
            },
        );
        Ok(())
    }
}
