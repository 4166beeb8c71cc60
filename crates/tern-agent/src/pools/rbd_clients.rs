//! The Ceph clients of this host's running guests, for the cluster report:
//! what the controller blocklists when it declares this host down (issue
//! 21), so that a QEMU still running on a cut-off host cannot write to an
//! image once its guest is rescued elsewhere.
//!
//! A client is known by its address in the cluster (`IP:PORT/NONCE`, the
//! image's watcher). While an image has exactly one watcher and this host
//! runs its guest, that watcher is this host's QEMU; the address is kept
//! for that run of the guest (its run-time id), so during a live migration,
//! when the destination's QEMU watches too, each host goes on reporting
//! only its own client: the source the one it had, the destination none
//! until the source's QEMU is gone.
//!
//! Each client is also reported as the image's exclusive lock owner once
//! `rbd lock ls` shows it holding the lock (librbd takes it at the guest's
//! first write): the writer. The lock record outlives a watch that expired
//! (a host cut off for 30 s), which is why the controller's fence also
//! reads the lock owners of a dead host's images at fence time.

use super::Pools;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};
use tern_api::cluster::RbdClient;
use tern_model::{PoolInfo, PoolKind};

/// Per (domain, run-time id, pool, image): the address learned, and
/// whether it was seen holding the image's exclusive lock.
type Known = HashMap<(String, u32, String, String), (String, bool)>;

static KNOWN: LazyLock<Mutex<Known>> = LazyLock::new(Default::default);

/// One running guest's RBD images: (domain, run-time id, `domblklist`
/// sources).
pub struct Running {
    /// The domain.
    pub name: String,
    /// Its run-time id (new at each start).
    pub id: u32,
    /// Its disks' sources as `domblklist` shows them (`rbd:CEPHPOOL/IMAGE`).
    pub sources: Vec<String>,
}

/// The rbd pool and image a `domblklist` source names, if any.
/// A `<disk type='network'>` shows as `rbd://MON/CEPHPOOL/IMAGE`, a
/// volume as `rbd:CEPHPOOL/IMAGE`; either counts when an rbd pool of this
/// host names the same Ceph pool.
pub fn image_of(pools: &[PoolInfo], source: &str) -> Option<(String, String)> {
    let rest = match source.strip_prefix("rbd://") {
        Some(net) => net.split_once('/')?.1,
        None => source.strip_prefix("rbd:")?,
    };
    let (ceph_pool, image) = rest.split_once('/')?;
    let pool = pools.iter().find(|p| {
        p.def.kind == PoolKind::Rbd
            && p.active
            && p.def.rbd.as_ref().is_some_and(|r| r.name == ceph_pool)
    })?;
    Some((pool.def.name.clone(), image.to_string()))
}

/// What a report says of one image: the address kept for this run, or
/// the single watcher (then kept); nothing while it is ambiguous.
pub fn own_address(kept: Option<&String>, watchers: &[String]) -> Option<String> {
    match (kept, watchers) {
        (Some(k), _) => Some(k.clone()),
        (None, [only]) => Some(only.clone()),
        _ => None,
    }
}

impl Pools {
    /// The Ceph clients of `running` guests' RBD images.
    pub async fn rbd_clients(&self, pools: &[PoolInfo], running: &[Running]) -> Vec<RbdClient> {
        let mut out = Vec::new();
        let mut seen: Vec<(String, u32, String, String)> = Vec::new();
        for r in running {
            for src in &r.sources {
                let Some((pool, image)) = image_of(pools, src) else {
                    continue;
                };
                let key = (r.name.clone(), r.id, pool.clone(), image.clone());
                seen.push(key.clone());
                let Some((addr, lock_owner)) = self.learn(&key, &pool, &image).await else {
                    continue;
                };
                known().insert(key, (addr.clone(), lock_owner));
                out.push(RbdClient {
                    domain: r.name.clone(),
                    pool,
                    image,
                    addr,
                    lock_owner,
                });
            }
        }
        // Runs that ended are forgotten.
        known().retain(|k, _| seen.contains(k));
        out
    }

    /// One image's client for this run and whether it holds the lock:
    /// from what is kept, asking the cluster only what is not known yet.
    async fn learn(
        &self,
        key: &(String, u32, String, String),
        pool: &str,
        image: &str,
    ) -> Option<(String, bool)> {
        let kept = known().get(key).cloned();
        let got = match &kept {
            Some((_, true)) => return kept,
            Some(_) => self
                .rbd_lock_owners(pool, image)
                .await
                .map(|o| (Vec::new(), o)),
            None => self.rbd_watchers_and_owners(pool, image).await,
        };
        let (watchers, owners) = match got {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(%pool, %image, error = %e, "cannot read an image's watchers and lock owners");
                return kept;
            }
        };
        let addr = own_address(kept.as_ref().map(|k| &k.0), &watchers)?;
        let owner = owners.contains(&addr);
        Some((addr, owner))
    }
}

/// Every address this host keeps as one of its own guests' clients: a
/// fence this host carries out for a dead one never blocklists them.
pub fn own_addresses() -> Vec<String> {
    known().values().map(|(a, _)| a.clone()).collect()
}

fn known() -> MutexGuard<'static, Known> {
    KNOWN.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_watcher_is_this_hosts_client_and_is_kept_for_the_run() {
        let a = "127.0.0.1:0/11".to_string();
        let b = "127.0.0.1:0/22".to_string();
        assert_eq!(own_address(None, std::slice::from_ref(&a)), Some(a.clone()));
        // Two watchers (a migration): only a kept address is reported.
        assert_eq!(own_address(None, &[a.clone(), b.clone()]), None);
        assert_eq!(own_address(Some(&a), &[a.clone(), b]), Some(a.clone()));
        assert_eq!(own_address(None, &[]), None);
    }

    #[test]
    fn only_rbd_pool_sources_name_an_image() {
        let pool: PoolInfo = serde_json::from_value(serde_json::json!({
            "name": "ceph", "target": "rbd:vms", "shared": true, "autostart": false,
            "kind": "rbd", "active": true, "capacity": 0, "allocation": 0, "available": 0,
            "rbd": {"hosts": [{"name": "127.0.0.1", "port": 6789}], "name": "vms"}
        }))
        .unwrap();
        let pools = [pool];
        assert_eq!(
            image_of(&pools, "rbd:vms/vm1-disk"),
            Some(("ceph".to_string(), "vm1-disk".to_string()))
        );
        assert_eq!(
            image_of(&pools, "rbd://127.0.0.1:6789/vms/vm2"),
            Some(("ceph".to_string(), "vm2".to_string()))
        );
        assert_eq!(image_of(&pools, "rbd:other/vm1-disk"), None);
        assert_eq!(image_of(&pools, "/var/lib/tern/images/vm1.raw"), None);
    }
}
