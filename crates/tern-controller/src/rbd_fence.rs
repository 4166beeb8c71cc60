//! Fencing with the storage itself for RBD-backed guests (issue 21).
//!
//! A host's agent reports the Ceph client address of each of its running
//! guests' RBD images (`HostReport::rbd_clients`). Once the host is down,
//! before any rescue, the leader has another host that sees the same rbd
//! pool add every such address to the cluster's OSD blocklist and read it
//! back: from then on the OSDs refuse every write of those clients, so a
//! QEMU still running on the cut-off host cannot touch an image its guest's
//! rescue opens, whatever that host does. A confirmed blocklist is the
//! host's RBD verdict ([`crate::fencing::Verdict::Proven`]).
//!
//! The reports alone leave a gap: a host that dies right after starting a
//! guest never reported that guest's client. So the same call also
//! blocklists every client the cluster itself shows at fence time on the
//! images of the servers the inventory places on the dead host: their
//! watchers and exclusive lock owners (the lock record outlives an
//! expired watch, so a writer is found even once its host has been cut
//! off for longer than the 30 s watch timeout). Addresses other live
//! hosts report, the reading host's own clients, and images of servers in
//! a migration (whose destination may hold them open) are spared. Only a
//! running guest whose client was never reported and whose images cannot
//! be read this way leaves the host's fencing unproven. The entries are
//! stored (`rbd-fenced/HOST`). When
//! the host is back, fenced QEMUs of guests rescued elsewhere are destroyed
//! there, and once none of the fenced guests runs there the entries go.

use crate::evacuate::host_client;
use crate::fencing::Verdict;
use crate::Controller;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tern_api::cluster::{DomainReport, HostRecord, HostReport, HostStatus};
use tern_api::Request;

/// Store prefix of blocklist entries made for a host: `rbd-fenced/HOST`.
pub const RBD_FENCED: &str = "rbd-fenced/";

/// How long one blocklist call through another host may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// What fencing one rbd pool of a dead host takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolFence {
    /// Client addresses the host reported.
    pub addrs: Vec<String>,
    /// Images of its guests whose every client the cluster shows at fence
    /// time (watchers and exclusive lock owners) is blocklisted too.
    pub images: Vec<String>,
}

/// What fencing a dead host's RBD clients takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// None of its guests has an RBD disk.
    Nothing,
    /// Blocklist these clients, per rbd pool, for these guests.
    Fence {
        /// Per rbd pool.
        pools: BTreeMap<String, PoolFence>,
        /// The guests whose clients they are.
        domains: Vec<String>,
    },
    /// A guest's client is unknown: the host cannot be fenced this way.
    Unknown(String),
}

/// The blocklist entries made for one host, kept until they are removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fenced {
    /// Per rbd pool, the addresses.
    pub pools: BTreeMap<String, Vec<String>>,
    /// The guests whose clients they are.
    pub domains: Vec<String>,
}

/// Whether a disk path a report shows is an RBD image.
fn on_rbd(path: &str) -> bool {
    path.starts_with("rbd:")
}

/// The rbd pool of `pools` (its name on the hosts) and the image a disk
/// is: `rbd:CEPHPOOL/IMAGE` (a volume) or `rbd://MON/CEPHPOOL/IMAGE` (a
/// network disk).
pub fn rbd_image(pools: &[tern_model::PoolInfo], path: &str) -> Option<(String, String)> {
    let rest = match path.strip_prefix("rbd://") {
        Some(net) => net.split_once('/')?.1,
        None => path.strip_prefix("rbd:")?,
    };
    let (ceph_pool, image) = rest.split_once('/')?;
    let pool = pools.iter().find(|p| {
        p.def.kind == tern_model::PoolKind::Rbd
            && p.def.rbd.as_ref().is_some_and(|r| r.name == ceph_pool)
    })?;
    Some((pool.def.name.clone(), image.to_string()))
}

/// What to blocklist for `dead`, from its last report and the servers
/// the cluster places on it (`homed`):
/// - every reported client of its running RBD-backed guests, except
///   addresses another live host (`others`) reports as its own;
/// - every client the cluster shows at fence time on the images of the
///   servers homed there, so that a guest started just before the host
///   died, whose client was never reported, is fenced too; except images
///   of a server in a migration (`busy`: its destination may hold the
///   image open) or running on another live host.
///
/// Only a running guest with no reported client whose images cannot be
/// read this way leaves the host unfenceable by Ceph.
pub fn plan(
    dead: &HostReport,
    homed: &[&DomainReport],
    others: &[&HostReport],
    busy: &[String],
) -> Plan {
    let mut pools: BTreeMap<String, PoolFence> = BTreeMap::new();
    let mut domains: Vec<String> = Vec::new();
    let elsewhere = |n: &str| {
        others
            .iter()
            .any(|o| o.domains.iter().any(|d| d.active && d.name == n))
    };
    let mut readable: Vec<&str> = Vec::new();
    for d in homed {
        if busy.contains(&d.name) || elsewhere(&d.name) {
            continue;
        }
        for k in d.disks.iter().filter(|k| on_rbd(&k.path)) {
            let Some((pool, image)) = rbd_image(&dead.pools, &k.path) else {
                continue;
            };
            let e = pools.entry(pool).or_default();
            if !e.images.contains(&image) {
                e.images.push(image);
            }
            readable.push(&d.name);
        }
    }
    for d in dead
        .domains
        .iter()
        .filter(|d| d.active && d.disks.iter().any(|k| on_rbd(&k.path)))
    {
        let mine: Vec<_> = dead
            .rbd_clients
            .iter()
            .filter(|c| c.domain == d.name)
            .collect();
        if mine.is_empty() && !readable.contains(&d.name.as_str()) {
            return Plan::Unknown(format!(
                "the Ceph client of {} on {} was never reported: its RBD fencing cannot be proven",
                d.name, dead.name
            ));
        }
        for c in mine {
            let claimed = others
                .iter()
                .any(|o| o.rbd_clients.iter().any(|x| x.addr == c.addr));
            let e = pools.entry(c.pool.clone()).or_default();
            if !claimed && !e.addrs.contains(&c.addr) {
                e.addrs.push(c.addr.clone());
            }
        }
        if !domains.contains(&d.name) {
            domains.push(d.name.clone());
        }
    }
    for n in readable {
        if !domains.iter().any(|d| d == n) {
            domains.push(n.to_string());
        }
    }
    pools.retain(|_, v| !v.addrs.is_empty() || !v.images.is_empty());
    domains.sort();
    if pools.is_empty() {
        Plan::Nothing
    } else {
        Plan::Fence { pools, domains }
    }
}

/// The servers whose images a fence must not read: those in a migration
/// that has not ended, or whose migration from `host` failed in the last
/// minute (its destination may hold the image open, see
/// [`crate::interrupted`]).
pub fn busy(jobs: &[tern_api::cluster::JobRecord], host: &str, since_ms: u64) -> Vec<String> {
    jobs.iter()
        .filter(|j| j.kind != tern_api::cluster::JobKind::Rescue)
        .filter(|j| {
            !j.state.is_terminal()
                || (j.source == host && j.finished_ms.is_some_and(|f| f + 60_000 >= since_ms))
        })
        .map(|j| j.server.clone())
        .collect()
}

/// Whether the entries made for a host that is back may go: none of the
/// fenced guests runs there, and none of the addresses is one of its
/// clients (its old QEMUs are gone).
pub fn may_remove(f: &Fenced, back: &HostReport) -> bool {
    let runs = back
        .domains
        .iter()
        .any(|d| d.active && f.domains.contains(&d.name));
    let still = back
        .rbd_clients
        .iter()
        .any(|c| f.pools.values().any(|a| a.contains(&c.addr)));
    !runs && !still
}

/// An online host other than `not` with rbd pool `pool` active.
fn reader<'a>(pool: &str, not: &str, hosts: &'a [Arc<HostRecord>]) -> Option<&'a HostRecord> {
    hosts
        .iter()
        .find(|r| {
            r.report.name != not
                && r.status == HostStatus::Online
                && r.report.pools.iter().any(|p| {
                    p.def.name == pool && p.active && p.def.kind == tern_model::PoolKind::Rbd
                })
        })
        .map(|r| &**r)
}

async fn call(
    reader: &HostRecord,
    pool: &str,
    addrs: &[String],
    remove: bool,
    images: &[String],
    spare: &[String],
) -> Result<Vec<String>, String> {
    let c = host_client(reader)
        .map_err(|e| e.to_string())?
        .with_timeout(CALL_TIMEOUT);
    c.call::<Vec<String>>(&Request::RbdBlocklist {
        pool: pool.to_string(),
        addrs: addrs.to_vec(),
        remove,
        images: images.to_vec(),
        spare: spare.to_vec(),
    })
    .await
    .map_err(|e| e.to_string())
}

/// The plan for down host `h` at `since_ms`, from the inventory.
async fn plan_for(
    ctl: &Arc<Controller>,
    h: &HostRecord,
    hosts: &[Arc<HostRecord>],
    since_ms: u64,
) -> Plan {
    let name = &h.report.name;
    let others: Vec<&HostReport> = hosts
        .iter()
        .filter(|r| &r.report.name != name && r.status == HostStatus::Online)
        .map(|r| &r.report)
        .collect();
    let servers = ctl.lead().servers_shared().await.unwrap_or_default();
    let homed: Vec<&DomainReport> = servers
        .iter()
        .filter(|s| &s.host == name)
        .map(|s| &s.domain)
        .collect();
    let jobs = ctl.lead().jobs().await.unwrap_or_default();
    plan(&h.report, &homed, &others, &busy(&jobs, name, since_ms))
}

/// For a down host: blocklists its guests' RBD clients (those it reported
/// and those its guests' images show now) through hosts that see the same
/// pools; one verdict and one line of evidence per pool, or none when the
/// host runs no RBD-backed guest.
pub async fn fence(
    ctl: &Arc<Controller>,
    h: &HostRecord,
    hosts: &[Arc<HostRecord>],
    since_ms: u64,
) -> Vec<(Verdict, String)> {
    let name = &h.report.name;
    let (pools, domains) = match plan_for(ctl, h, hosts, since_ms).await {
        Plan::Nothing => return Vec::new(),
        Plan::Unknown(why) => return vec![(Verdict::NotArmed, why)],
        Plan::Fence { pools, domains } => (pools, domains),
    };
    let spare: Vec<String> = hosts
        .iter()
        .filter(|r| &r.report.name != name && r.status == HostStatus::Online)
        .flat_map(|r| r.report.rbd_clients.iter().map(|c| c.addr.clone()))
        .collect();
    let key = format!("{RBD_FENCED}{name}");
    // Recorded before the first entry is made: cleanup must know them all
    // (the addresses found on the images are added once confirmed).
    let mut rec: Fenced = match ctl.lead().get::<Fenced>(&key).await {
        Ok(Some((_, f))) => f,
        _ => Fenced::default(),
    };
    for (pool, f) in &pools {
        let list = rec.pools.entry(pool.clone()).or_default();
        for a in &f.addrs {
            if !list.contains(a) {
                list.push(a.clone());
            }
        }
    }
    for d in &domains {
        if !rec.domains.contains(d) {
            rec.domains.push(d.clone());
        }
    }
    if let Err(e) = ctl.lead().put(&key, &rec).await {
        tracing::warn!(host = %name, error = %e, "cannot record the RBD fence");
        return vec![(
            Verdict::Waiting(Duration::from_secs(1)),
            "cannot record the RBD fence".into(),
        )];
    }
    let mut out = Vec::new();
    for (pool, f) in pools {
        let (v, line, found) = fence_pool(name, &pool, &f, hosts, &spare).await;
        if !found.is_empty() {
            let list = rec.pools.entry(pool.clone()).or_default();
            for a in found {
                if !list.contains(&a) {
                    list.push(a);
                }
            }
            if let Err(e) = ctl.lead().put(&key, &rec).await {
                tracing::warn!(host = %name, error = %e, "cannot record the RBD fence's found clients");
            }
        }
        out.push((v, line));
    }
    out
}

/// Fences one rbd pool of dead host `name` through another host: the
/// verdict, its line of evidence, and the addresses found on the images
/// (beyond the reported ones) that the blocklist confirms.
async fn fence_pool(
    name: &str,
    pool: &str,
    f: &PoolFence,
    hosts: &[Arc<HostRecord>],
    spare: &[String],
) -> (Verdict, String, Vec<String>) {
    let wait = Verdict::Waiting(Duration::from_secs(1));
    let Some(r) = reader(pool, name, hosts) else {
        let line = format!(
            "pool {pool}: no other online host sees it to blocklist {} and the clients of {}",
            f.addrs.join(", "),
            f.images.join(", ")
        );
        return (wait, line, Vec::new());
    };
    match call(r, pool, &f.addrs, false, &f.images, spare).await {
        Ok(done) if f.addrs.iter().all(|a| done.contains(a)) => {
            tracing::warn!(host = %name, %pool, ?done, by = %r.report.name, "RBD clients blocklisted");
            let what = if done.is_empty() {
                "no client to blocklist".to_string()
            } else {
                format!("blocklisted {}", done.join(", "))
            };
            let found = done.into_iter().filter(|a| !f.addrs.contains(a)).collect();
            let line = format!("pool {pool}: {what} (by {})", r.report.name);
            (Verdict::Proven(Duration::ZERO), line, found)
        }
        Ok(done) => {
            let line = format!(
                "pool {pool}: the blocklist confirms only {done:?} of {:?}",
                f.addrs
            );
            // Entries made all the same: recorded, so they are removed later.
            let found = done.into_iter().filter(|a| !f.addrs.contains(a)).collect();
            (wait, line, found)
        }
        Err(e) => {
            tracing::warn!(host = %name, %pool, error = %e, "blocklisting RBD clients failed");
            let line = format!(
                "pool {pool}: blocklisting through {} failed: {e}",
                r.report.name
            );
            (wait, line, Vec::new())
        }
    }
}

/// Whether guest `name`, still running on `host` after its client was
/// fenced there, is a stale copy: its server was rescued from that host
/// and runs elsewhere.
pub fn is_stale(
    name: &str,
    host: &str,
    f: &Fenced,
    server: &tern_api::cluster::ServerRecord,
) -> bool {
    f.domains.iter().any(|d| d == name)
        && server.host != host
        && server.rescued_from.as_deref() == Some(host)
}

/// Ends the fenced QEMUs still running on a returned host whose guests
/// were rescued elsewhere: the blocklist keeps them from writing, and
/// once they are gone the entries can go.
async fn end_stale_copies(ctl: &Arc<Controller>, h: &HostRecord, f: &Fenced) {
    let name = &h.report.name;
    for d in h.report.domains.iter().filter(|d| d.active) {
        let Ok(server) = ctl.inv.server(&d.name).await else {
            continue;
        };
        if !is_stale(&d.name, name, f, &server) {
            continue;
        }
        let Ok(c) = host_client(h) else { return };
        tracing::warn!(host = %name, server = %d.name, runs_on = %server.host, "ending a fenced stale copy on a returned host");
        if let Err(e) = c
            .with_timeout(CALL_TIMEOUT)
            .call::<serde_json::Value>(&Request::Destroy {
                name: d.name.clone(),
            })
            .await
        {
            tracing::warn!(host = %name, server = %d.name, error = %e, "cannot end a fenced stale copy");
        }
    }
}

/// For a host that is online: removes the blocklist entries made when it
/// was declared down, once its old QEMUs are gone.
pub async fn cleanup(ctl: &Arc<Controller>, h: &HostRecord, hosts: &[Arc<HostRecord>]) {
    let name = &h.report.name;
    let key = format!("{RBD_FENCED}{name}");
    let Ok(Some((_, f))) = ctl.lead().get::<Fenced>(&key).await else {
        return;
    };
    if !may_remove(&f, &h.report) {
        end_stale_copies(ctl, h, &f).await;
        return;
    }
    for (pool, addrs) in &f.pools {
        // Any online host with the pool, the returned one included.
        let Some(r) = reader(pool, "", hosts) else {
            return;
        };
        match call(r, pool, addrs, true, &[], &[]).await {
            Ok(done) if done.len() == addrs.len() => {}
            Ok(_) | Err(_) => {
                tracing::warn!(host = %name, %pool, "cannot remove the RBD blocklist entries yet");
                return;
            }
        }
    }
    tracing::info!(host = %name, "RBD blocklist entries removed: the host is back and its fenced guests are gone");
    let _ = ctl.lead().store.delete(&key).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::cluster::{DiskReport, DomainReport, RbdClient};

    fn dom(name: &str, path: &str, active: bool) -> DomainReport {
        DomainReport {
            name: name.into(),
            uuid: String::new(),
            active,
            vcpus: 1,
            memory_mib: 64,
            disks: vec![DiskReport {
                target: "vda".into(),
                path: path.into(),
                pool: None,
                shared: true,
                bytes: 0,
            }],
            networks: vec![],
            machine: None,
            xml: String::new(),
        }
    }

    fn client(domain: &str, addr: &str) -> RbdClient {
        RbdClient {
            domain: domain.into(),
            pool: "ceph".into(),
            image: format!("{domain}-disk"),
            addr: addr.into(),
            lock_owner: true,
        }
    }

    fn host(name: &str, domains: Vec<DomainReport>, clients: Vec<RbdClient>) -> HostReport {
        HostReport {
            name: name.into(),
            domains,
            rbd_clients: clients,
            ..Default::default()
        }
    }

    fn rbd_pool() -> tern_model::PoolInfo {
        serde_json::from_value(serde_json::json!({
            "name": "ceph", "target": "rbd:vms", "shared": true, "autostart": false,
            "kind": "rbd", "active": true, "capacity": 0, "allocation": 0, "available": 0,
            "rbd": {"hosts": [{"name": "127.0.0.1", "port": 6789}], "name": "vms"}
        }))
        .unwrap()
    }

    fn fence(pool: &str, addrs: &[&str], images: &[&str], domains: &[&str]) -> Plan {
        let f = PoolFence {
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            images: images.iter().map(|a| a.to_string()).collect(),
        };
        Plan::Fence {
            pools: [(pool.to_string(), f)].into(),
            domains: domains.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn a_dead_hosts_reported_clients_are_blocklisted_but_not_another_hosts() {
        let a = host(
            "a",
            vec![
                dom("vm1", "rbd:vms/vm1-disk", true),
                dom("vm2", "/srv/x.raw", true),
            ],
            vec![client("vm1", "127.0.0.1:0/1")],
        );
        assert_eq!(
            plan(&a, &[], &[], &[]),
            fence("ceph", &["127.0.0.1:0/1"], &[], &["vm1"])
        );
        // The address is another live host's own client: never blocklisted.
        let b = host("b", vec![], vec![client("vm1", "127.0.0.1:0/1")]);
        assert_eq!(plan(&a, &[], &[&b], &[]), Plan::Nothing);
        // No RBD guest running: nothing to do.
        let idle = host("a", vec![dom("vm1", "rbd:vms/vm1-disk", false)], vec![]);
        assert_eq!(plan(&idle, &[], &[], &[]), Plan::Nothing);
    }

    #[test]
    fn the_images_of_servers_homed_on_the_dead_host_are_read_at_fence_time() {
        // Reported shut off, started since, never reported running: its
        // image's clients are read and blocklisted, and it counts as fenced.
        let mut a = host("a", vec![dom("vm1", "rbd:vms/vm1-disk", false)], vec![]);
        a.pools = vec![rbd_pool()];
        let vm1 = dom("vm1", "rbd:vms/vm1-disk", false);
        let net = dom("vm2", "rbd://127.0.0.1:6789/vms/vm2-disk", true);
        assert_eq!(
            plan(&a, &[&vm1], &[], &[]),
            fence("ceph", &[], &["vm1-disk"], &["vm1"])
        );
        // Running and unreported, but its image can be read: fenced.
        a.domains.push(net.clone());
        assert_eq!(
            plan(&a, &[&vm1, &net], &[], &[]),
            fence("ceph", &[], &["vm1-disk", "vm2-disk"], &["vm1", "vm2"])
        );
        // In a migration (its destination may have the image open): not
        // read, so its unreported client leaves the host unfenceable.
        assert!(matches!(
            plan(&a, &[&vm1, &net], &[], &["vm2".into()]),
            Plan::Unknown(_)
        ));
        // Running on another live host: its image is not this host's.
        let b = host("b", vec![dom("vm1", "rbd:vms/vm1-disk", true)], vec![]);
        assert_eq!(
            plan(&a, &[&vm1, &net], &[&b], &[]),
            fence("ceph", &[], &["vm2-disk"], &["vm2"])
        );
    }

    #[test]
    fn a_guest_whose_client_is_unknown_cannot_be_fenced_by_ceph() {
        let a = host("a", vec![dom("vm1", "rbd:vms/vm1-disk", true)], vec![]);
        // Not homed on a per the inventory (or no rbd pool names it).
        match plan(&a, &[], &[], &[]) {
            Plan::Unknown(why) => assert!(
                why.contains("vm1") && why.contains("never reported"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_open_or_recently_failed_migrations_keep_images_unread() {
        use tern_api::cluster::{JobKind, JobRecord, JobState};
        let job = |server: &str, kind: JobKind, state: JobState, finished: Option<u64>| JobRecord {
            id: format!("j-{server}"),
            kind,
            server: server.into(),
            source: "a".into(),
            dest: Some("b".into()),
            state,
            migration_id: String::new(),
            opts: Default::default(),
            note: None,
            created_ms: 0,
            started_ms: None,
            finished_ms: finished,
            prior_state: tern_api::cluster::ServerState::Running,
            cancel_requested: false,
            attempts: 0,
            retry_at_ms: None,
            term: None,
        };
        let jobs = [
            job("open", JobKind::LiveMigrate, JobState::Running, None),
            job(
                "failed",
                JobKind::LiveMigrate,
                JobState::Failed,
                Some(95_000),
            ),
            job("old", JobKind::LiveMigrate, JobState::Failed, Some(10_000)),
            job("rescue", JobKind::Rescue, JobState::Running, None),
        ];
        assert_eq!(busy(&jobs, "a", 100_000), vec!["open", "failed"]);
    }

    #[test]
    fn only_a_rescued_servers_fenced_copy_is_stale() {
        let f = Fenced {
            pools: BTreeMap::new(),
            domains: vec!["vm1".into()],
        };
        let rec = |host: &str, from: Option<&str>| tern_api::cluster::ServerRecord {
            domain: dom("vm1", "rbd:vms/vm1-disk", true),
            host: host.into(),
            state: tern_api::cluster::ServerState::Running,
            error: None,
            rescued_from: from.map(str::to_string),
        };
        assert!(is_stale("vm1", "a", &f, &rec("b", Some("a"))));
        // Not rescued (the rescue was cancelled): the guest still lives on a.
        assert!(!is_stale("vm1", "a", &f, &rec("a", None)));
        assert!(!is_stale("vm1", "a", &f, &rec("b", None)));
        // A guest whose client was not fenced is not touched.
        assert!(!is_stale("vm2", "a", &f, &rec("b", Some("a"))));
    }

    #[test]
    fn entries_go_only_once_the_old_qemus_are_gone() {
        let f = Fenced {
            pools: [("ceph".to_string(), vec!["127.0.0.1:0/1".to_string()])].into(),
            domains: vec!["vm1".into()],
        };
        let stale = host("a", vec![dom("vm1", "rbd:vms/vm1-disk", true)], vec![]);
        assert!(!may_remove(&f, &stale));
        let old_client = host("a", vec![], vec![client("vm9", "127.0.0.1:0/1")]);
        assert!(!may_remove(&f, &old_client));
        let clean = host("a", vec![dom("vm1", "rbd:vms/vm1-disk", false)], vec![]);
        assert!(may_remove(&f, &clean));
    }
}
