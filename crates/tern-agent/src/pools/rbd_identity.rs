//! Which Ceph cluster an RBD disk is in: its fsid. Two hosts whose pools
//! name the same monitors and Ceph pool may still reach different clusters
//! (a rebuilt cluster, the same addresses on another site); an image name
//! alone would then let a migration start the guest on another disk. The
//! source sends the fsid of each RBD disk's cluster as it sees it (Begin),
//! and the destination refuses, naming the disk, when its own view of that
//! disk's cluster has another fsid (Prepare). No token file is needed: the
//! fsid is the storage's identity.

use super::Pools;
use crate::error::{AgentError, Result};
use std::collections::BTreeMap;
use tern_model::{DiskRemote, Domain, NetProtocol, RbdSource};

/// The RBD disks of `d` (disks resolved): (target, the cluster's source).
fn rbd_disks(d: &Domain) -> Vec<(String, RbdSource)> {
    d.devices
        .disks
        .iter()
        .filter_map(|disk| {
            let Some(DiskRemote::Network(n)) = &disk.remote else {
                return None;
            };
            if n.protocol != NetProtocol::Rbd || n.hosts.is_empty() || disk.source.is_some() {
                return None;
            }
            let (pool, _) = n.name.trim_start_matches('/').split_once('/')?;
            Some((
                disk.target_dev.clone(),
                RbdSource {
                    hosts: n.hosts.clone(),
                    name: pool.to_string(),
                    auth: n.auth.clone(),
                },
            ))
        })
        .collect()
}

/// Why disk `target` is not the same storage on both hosts, if it is not.
pub fn fsid_mismatch(target: &str, source: &str, here: &str) -> Option<String> {
    (source != here).then(|| {
        format!(
            "disk '{target}' is an RBD image in Ceph cluster {source} on the source, but this host's monitors for it answer as cluster {here}: not the same storage; point the pool (or the disk's <host>) at the same cluster, or copy the disk with --copy-storage-all --target-pool"
        )
    })
}

/// Fsids learned per (pool, monitors, Ceph pool): asked once, not at every
/// report.
static FSIDS: std::sync::LazyLock<std::sync::Mutex<BTreeMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

impl Pools {
    /// The fsid of rbd pool `name`'s cluster, asked once per definition;
    /// `None` while the cluster does not answer.
    pub(super) async fn pool_fsid(&self, name: &str, src: &RbdSource) -> Option<String> {
        let key = format!("{name}|{}|{}", src.mon_host(), src.name);
        let known = FSIDS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if known.is_some() {
            return known;
        }
        match super::rbd::Cluster::new(name, src, &self.secrets)
            .fsid()
            .await
        {
            Ok(f) => {
                FSIDS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::warn!(pool = %name, error = %e, "cannot read the Ceph cluster's fsid");
                None
            }
        }
    }

    /// The fsid of each RBD disk's cluster of `d` (disks resolved), by
    /// target: what the source tells the destination in Begin.
    pub async fn rbd_fsids(&self, d: &Domain) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (target, src) in rbd_disks(d) {
            let what = format!("disk '{target}' of domain '{}'", d.name);
            let fsid = super::rbd::Cluster::for_disk(what, &src, &self.secrets)
                .fsid()
                .await?;
            out.insert(target, fsid);
        }
        Ok(out)
    }

    /// Refuses `d` (disks resolved) when one of its RBD disks is in another
    /// cluster here than on the source (`source`: the source's fsids by
    /// target; a disk the source did not name is not checked).
    pub async fn check_rbd_fsids(
        &self,
        d: &Domain,
        source: &BTreeMap<String, String>,
    ) -> Result<()> {
        if source.is_empty() {
            return Ok(());
        }
        let here = self.rbd_fsids(d).await?;
        for (target, fsid) in source {
            if let Some(mine) = here.get(target) {
                if let Some(why) = fsid_mismatch(target, fsid, mine) {
                    return Err(AgentError::Conflict(why));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_fsid_is_another_storage_named_by_disk() {
        let a = "8b5f2c1e-0c1d-4d7e-9a53-1f0e2d3c4b5a";
        let b = "0f0e0d0c-0b0a-4090-8070-605040302010";
        assert_eq!(fsid_mismatch("vda", a, a), None);
        let e = fsid_mismatch("vdb", a, b).unwrap();
        assert!(
            e.contains("disk 'vdb'") && e.contains(a) && e.contains(b),
            "{e}"
        );
    }

    #[test]
    fn only_rbd_network_disks_with_monitors_count() {
        let xml = "<domain type='kvm'><name>vm</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
            <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
            <disk type='network' device='disk'><driver name='qemu' type='raw'/>\
            <source protocol='rbd' name='vms/vm-disk'><host name='10.0.0.1' port='6789'/></source>\
            <target dev='vda' bus='virtio'/></disk>\
            <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
            <source file='/srv/x.raw'/><target dev='vdb' bus='virtio'/></disk>\
            </devices></domain>";
        let d = tern_model::xml::parse_domain(xml).unwrap();
        let got = rbd_disks(&d);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "vda");
        assert_eq!(got[0].1.name, "vms");
    }
}
