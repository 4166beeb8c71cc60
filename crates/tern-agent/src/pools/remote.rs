//! netfs pools: checking a definition, starting a pool in the mode the host
//! allows, and the volume operations of a pool that QEMU reaches over
//! `nfs://` (qemu-img on the URLs, the agent's NFSv3 client for listing,
//! space and deletion).

use crate::error::{AgentError, Result};
use crate::netfs::{self, Export};
use std::path::{Path, PathBuf};
use tern_model::{NetfsAccess, NetfsSource, VolumeInfo};
use tern_qemu::img;

/// Refuses an export that cannot be written into a URL or a mount source.
pub(super) fn check_source(src: &NetfsSource) -> Result<()> {
    let host_ok = !src.host.is_empty()
        && src
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if !host_ok {
        return Err(AgentError::Invalid(format!(
            "NFS server '{}' is not a host name or address; give --source-host HOST",
            src.host
        )));
    }
    let path_ok = src.path.starts_with('/')
        && !src
            .path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, ',' | '?' | '#'))
        && !src.path.split('/').any(|c| c == "..");
    if !path_ok {
        return Err(AgentError::Invalid(format!(
            "export path '{}' is not an absolute path without spaces, commas, '?', '#' or '..'; give --source-path /EXPORT",
            src.path
        )));
    }
    Ok(())
}

/// Brings a netfs pool up: mounts it (kernel access) or proves QEMU's way
/// in works by mounting it over NFSv3 from the agent (QEMU access).
/// Returns the access in use.
pub(super) async fn start(name: &str, src: &NetfsSource, target: &Path) -> Result<NetfsAccess> {
    let access = src.access.resolve(netfs::kernel_has_nfs());
    let fail =
        |e: netfs::NetfsError| AgentError::Failed(format!("cannot start pool '{name}': {e}"));
    match access {
        NetfsAccess::Mount => {
            if !target.is_dir() {
                return Err(AgentError::Invalid(format!(
                    "directory '{}' of pool '{name}' does not exist; run 'tern pool-build {name}' or create it",
                    target.display()
                )));
            }
            netfs::mount(src, target).await.map_err(fail)?;
        }
        _ => {
            Export::new(src).space().await.map_err(fail)?;
        }
    }
    Ok(access)
}

/// How long `pool-list` (and the cluster report that lists pools on every
/// heartbeat) waits for an export's space figures.
const SPACE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// (capacity, allocation, available) of an export; zeros when it does not
/// answer within [`SPACE_WAIT`] (the pool stays listed).
pub(super) async fn space(src: &NetfsSource) -> (u64, u64, u64) {
    let answer = tokio::time::timeout(SPACE_WAIT, Export::new(src).space())
        .await
        .unwrap_or_else(|_| {
            Err(netfs::NetfsError::Timeout {
                host: src.host.clone(),
                secs: SPACE_WAIT.as_secs(),
            })
        });
    match answer {
        Ok(s) => (s.total, s.total.saturating_sub(s.free), s.available),
        Err(e) => {
            tracing::warn!(host = %src.host, path = %src.path, error = %e, "cannot read NFS export space");
            (0, 0, 0)
        }
    }
}

/// Names the transfer engine gives files it is still receiving.
fn is_partial(n: &str) -> bool {
    n.starts_with('.')
        || [".tern-partial", ".tern-journal", ".tern-unsynced"]
            .iter()
            .any(|s| n.ends_with(s))
}

/// Volume operations of one pool reached over `nfs://`.
pub(super) struct Vols<'a> {
    pool: &'a str,
    src: &'a NetfsSource,
    target: &'a Path,
}

impl<'a> Vols<'a> {
    pub(super) fn new(pool: &'a str, src: &'a NetfsSource, target: &'a Path) -> Self {
        Vols { pool, src, target }
    }

    fn nfs_err(&self, e: netfs::NetfsError) -> AgentError {
        AgentError::Failed(format!("storage pool '{}': {e}", self.pool))
    }

    fn url(&self, name: &str) -> PathBuf {
        PathBuf::from(self.src.url(name))
    }

    fn no_volume(&self, name: &str) -> AgentError {
        AgentError::NoVolume {
            pool: self.pool.into(),
            name: name.into(),
        }
    }

    /// `vol-create-as` with qemu-img on the URL.
    pub(super) async fn create(
        &self,
        name: &str,
        capacity: Option<u64>,
        format: &str,
        backing: Option<&str>,
    ) -> Result<VolumeInfo> {
        let export = Export::new(self.src);
        if export.exists(name).await.map_err(|e| self.nfs_err(e))? {
            return Err(AgentError::Conflict(format!(
                "storage volume '{name}' already exists in pool '{}'",
                self.pool
            )));
        }
        let backing = match backing {
            Some(b) => {
                if format != "qcow2" {
                    return Err(AgentError::Invalid(
                        "a backing volume needs --format qcow2".into(),
                    ));
                }
                tern_model::names::validate_name("volume", b)?;
                if !export.exists(b).await.map_err(|e| self.nfs_err(e))? {
                    return Err(self.no_volume(b));
                }
                // qemu-img's guess (see Pools::backing_format's caveat).
                let bi = img::probe(&self.url(b)).await?;
                Some((self.url(b), bi.format))
            }
            None => None,
        };
        if capacity.is_none() && backing.is_none() {
            return Err(AgentError::Invalid(
                "volume size is missing; give a size such as 1G".into(),
            ));
        }
        img::create(
            &self.url(name),
            format,
            capacity,
            backing.as_ref().map(|(p, f)| (p.as_path(), f.as_str())),
        )
        .await?;
        self.info(name).await
    }

    /// `vol-info`: qemu-img on the URL; the path is the one disks name.
    pub(super) async fn info(&self, name: &str) -> Result<VolumeInfo> {
        if !Export::new(self.src)
            .exists(name)
            .await
            .map_err(|e| self.nfs_err(e))?
        {
            return Err(self.no_volume(name));
        }
        // A report only: nothing opens the volume with this guess.
        let i = img::probe(&self.url(name)).await?;
        Ok(VolumeInfo {
            name: name.into(),
            path: self.target.join(name),
            format: i.format,
            capacity: i.virtual_size,
            allocation: i.actual_size,
            backing: i.backing,
        })
    }

    /// `vol-list`.
    pub(super) async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let names = Export::new(self.src)
            .list()
            .await
            .map_err(|e| self.nfs_err(e))?;
        let mut out = Vec::new();
        for n in names.iter().filter(|n| !is_partial(n)) {
            if tern_model::names::validate_name("volume", n).is_err() {
                continue;
            }
            if let Ok(v) = self.info(n).await {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// `vol-delete`.
    pub(super) async fn delete(&self, name: &str) -> Result<()> {
        let export = Export::new(self.src);
        if !export.exists(name).await.map_err(|e| self.nfs_err(e))? {
            return Err(self.no_volume(name));
        }
        export.remove(name).await.map_err(|e| self.nfs_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(host: &str, path: &str) -> NetfsSource {
        NetfsSource {
            host: host.into(),
            path: path.into(),
            access: NetfsAccess::Auto,
        }
    }

    #[test]
    fn sources_that_cannot_become_urls_are_refused() {
        assert!(check_source(&src("192.168.1.101", "/nfs")).is_ok());
        assert!(check_source(&src("nfs-1.example.org", "/srv/vm")).is_ok());
        for (h, p) in [
            ("", "/nfs"),
            ("a b", "/nfs"),
            ("h", "nfs"),
            ("h", "/a,b"),
            ("h", "/a/../b"),
            ("h", "/a?x"),
        ] {
            let e = check_source(&src(h, p)).unwrap_err().to_string();
            assert!(e.contains("; give --source-"), "{h} {p}: {e}");
        }
    }

    #[test]
    fn receiving_files_are_not_volumes() {
        assert!(is_partial("a.tern-partial"));
        assert!(is_partial(".hidden"));
        assert!(!is_partial("test01"));
    }
}
