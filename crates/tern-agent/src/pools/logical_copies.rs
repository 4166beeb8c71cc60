//! Logical volumes as the place a migration's copy lands: created at the
//! copy's size, written in place from a staged file, checked, and the
//! device nodes confinement must admit.

use super::logical::{check_raw, device_nodes, zero_tail, Vg};
use crate::error::{AgentError, Result};
use std::path::{Path, PathBuf};
use tern_model::LogicalSource;
use tokio::process::Command;

impl super::Pools {
    /// The group and target of the active logical pool whose target
    /// directly holds `path`, with the pool's name.
    async fn logical_holding(&self, path: &Path) -> Option<(String, LogicalSource, PathBuf)> {
        let m = self.pools.lock().await;
        m.values()
            .find(|p| p.active && path.parent() == Some(p.def.target.as_path()))
            .and_then(|p| {
                let src = p.def.logical.clone()?;
                Some((p.def.name.clone(), src, p.def.target.clone()))
            })
    }

    /// Whether `path` is a volume of an active logical pool (a block
    /// device, which a copy writes in place and a disk opens as
    /// `type='block'`).
    pub async fn is_logical_path(&self, path: &Path) -> bool {
        self.logical_holding(path).await.is_some()
    }

    /// Refuses, before anything is created, an image pool `pool` cannot
    /// hold (a logical pool holds raw volumes without backing only).
    pub async fn accepts_image(&self, pool: &str, format: &str, backing: bool) -> Result<()> {
        match self.active_store(pool).await? {
            super::Store::Logical { .. } => check_raw(pool, format, backing),
            _ => Ok(()),
        }
    }

    /// Creates the image a copy arrives in at `path` (a path
    /// [`super::Pools::volume_slot`] gave): a logical volume of at least
    /// `size` bytes, or an image qemu-img makes (on its `nfs://` URL for a
    /// pool QEMU reaches).
    pub async fn create_image(
        &self,
        path: &Path,
        format: &str,
        size: u64,
        backing: Option<(&Path, &str)>,
    ) -> Result<()> {
        if let Some((pool, src, target)) = self.logical_holding(path).await {
            let name = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            Vg::new(&pool, &src, &target)
                .create(
                    &name,
                    Some(size),
                    format,
                    backing.map(|(b, _)| b.to_str().unwrap_or("")),
                )
                .await?;
            return Ok(());
        }
        let at = self.img_path(path).await;
        tern_qemu::img::create(&at, format, Some(size), backing).await?;
        Ok(())
    }

    /// Writes a received, verified raw file into a new logical volume at
    /// `path` of the same size (rounded up to whole extents, the rest
    /// zeroed), and checks the copy; the volume is removed if it differs.
    pub async fn write_to_volume(&self, file: &Path, path: &Path) -> Result<()> {
        let size = tern_qemu::img::info(file, "raw").await?.virtual_size;
        self.create_image(path, "raw", size, None).await?;
        let written = async {
            tern_qemu::img::copy_bytes(file, path).await?;
            zero_tail(path, size).map_err(|e| AgentError::state(path, e))?;
            if !same_prefix(file, path).await? {
                return Err(AgentError::Failed(format!(
                    "the copy written to {} differs from the verified one",
                    path.display()
                )));
            }
            Ok(())
        };
        if let Err(e) = written.await {
            let _ = self.remove_path(path).await;
            return Err(e);
        }
        Ok(())
    }

    /// The device nodes (`/dev/dm-N`) the volumes of every active logical
    /// pool resolve to: where a disk path of such a pool really leads,
    /// for [`crate::confine`].
    pub async fn logical_device_nodes(&self) -> Vec<PathBuf> {
        let m = self.pools.lock().await;
        m.values()
            .filter(|p| p.active && p.def.logical.is_some())
            .flat_map(|p| device_nodes(&p.def.target))
            .collect()
    }
}

/// Whether `dev` holds `file`'s bytes and only zeros after them
/// (`qemu-img compare` in its default, size-tolerant mode).
async fn same_prefix(file: &Path, dev: &Path) -> Result<bool> {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(file)
        .arg(dev)
        .output()
        .await
        .map_err(|e| AgentError::Failed(format!("cannot run qemu-img compare: {e}")))?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(AgentError::Failed(format!(
            "qemu-img compare {} {}: {}",
            file.display(),
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}
