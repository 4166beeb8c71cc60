//! Fencing with the storage itself for RBD-backed guests (issue 21).
//!
//! A host's agent reports the Ceph client address of each of its running
//! guests' RBD images (`HostReport::rbd_clients`). Once the host is down,
//! before any rescue, the leader has another host that sees the same rbd
//! pool add every such address to the cluster's OSD blocklist and read it
//! back: from then on the OSDs refuse every write of those clients, so a
//! QEMU still running on the cut-off host cannot touch an image its guest's
//! rescue opens, whatever that host does. A confirmed blocklist is the
//! host's RBD verdict ([`crate::fencing::Verdict::Proven`]); a guest whose
//! client was never reported cannot be fenced this way and its host's
//! fencing stays unproven. The entries are stored (`rbd-fenced/HOST`). When
//! the host is back, fenced QEMUs of guests rescued elsewhere are destroyed
//! there, and once none of the fenced guests runs there the entries go.

use crate::evacuate::host_client;
use crate::fencing::Verdict;
use crate::Controller;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tern_api::cluster::{HostRecord, HostReport, HostStatus};
use tern_api::Request;

/// Store prefix of blocklist entries made for a host: `rbd-fenced/HOST`.
pub const RBD_FENCED: &str = "rbd-fenced/";

/// How long one blocklist call through another host may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// What fencing a dead host's RBD clients takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// None of its running guests has an RBD disk.
    Nothing,
    /// Blocklist these addresses, per rbd pool.
    Fence(BTreeMap<String, Vec<String>>),
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

/// What to blocklist for `dead`, from its last report: every reported
/// client of its running RBD-backed guests, except addresses another host
/// (`others`) reports as its own.
pub fn plan(dead: &HostReport, others: &[&HostReport]) -> Plan {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
        if mine.is_empty() {
            return Plan::Unknown(format!(
                "the Ceph client of {} on {} was never reported: its RBD fencing cannot be proven",
                d.name, dead.name
            ));
        }
        for c in mine {
            let claimed = others
                .iter()
                .any(|o| o.rbd_clients.iter().any(|x| x.addr == c.addr));
            let list = out.entry(c.pool.clone()).or_default();
            if !claimed && !list.contains(&c.addr) {
                list.push(c.addr.clone());
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    if out.is_empty() {
        Plan::Nothing
    } else {
        Plan::Fence(out)
    }
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
fn reader<'a>(pool: &str, not: &str, hosts: &'a [HostRecord]) -> Option<&'a HostRecord> {
    hosts.iter().find(|r| {
        r.report.name != not
            && r.status == HostStatus::Online
            && r.report
                .pools
                .iter()
                .any(|p| p.def.name == pool && p.active && p.def.kind == tern_model::PoolKind::Rbd)
    })
}

async fn call(
    reader: &HostRecord,
    pool: &str,
    addrs: &[String],
    remove: bool,
) -> Result<Vec<String>, String> {
    let c = host_client(reader)
        .map_err(|e| e.to_string())?
        .with_timeout(CALL_TIMEOUT);
    c.call::<Vec<String>>(&Request::RbdBlocklist {
        pool: pool.to_string(),
        addrs: addrs.to_vec(),
        remove,
    })
    .await
    .map_err(|e| e.to_string())
}

/// For a down host: blocklists its guests' RBD clients through hosts that
/// see the same pools; one verdict and one line of evidence per pool, or
/// none when the host runs no RBD-backed guest.
pub async fn fence(
    ctl: &Arc<Controller>,
    h: &HostRecord,
    hosts: &[HostRecord],
) -> Vec<(Verdict, String)> {
    let name = &h.report.name;
    let others: Vec<&HostReport> = hosts
        .iter()
        .filter(|r| &r.report.name != name && r.status == HostStatus::Online)
        .map(|r| &r.report)
        .collect();
    let pools = match plan(&h.report, &others) {
        Plan::Nothing => return Vec::new(),
        Plan::Unknown(why) => return vec![(Verdict::NotArmed, why)],
        Plan::Fence(p) => p,
    };
    // Recorded before the first entry is made: cleanup must know them all.
    let rec = Fenced {
        pools: pools.clone(),
        domains: h
            .report
            .rbd_clients
            .iter()
            .map(|c| c.domain.clone())
            .collect(),
    };
    if let Err(e) = ctl.lead().put(&format!("{RBD_FENCED}{name}"), &rec).await {
        tracing::warn!(host = %name, error = %e, "cannot record the RBD fence");
        return vec![(
            Verdict::Waiting(Duration::from_secs(1)),
            "cannot record the RBD fence".into(),
        )];
    }
    let mut out = Vec::new();
    for (pool, addrs) in pools {
        let Some(r) = reader(&pool, name, hosts) else {
            out.push((
                Verdict::Waiting(Duration::from_secs(1)),
                format!(
                    "pool {pool}: no other online host sees it to blocklist {}",
                    addrs.join(", ")
                ),
            ));
            continue;
        };
        match call(r, &pool, &addrs, false).await {
            Ok(done) if done.len() == addrs.len() => {
                tracing::warn!(host = %name, %pool, ?addrs, by = %r.report.name, "RBD clients blocklisted");
                out.push((
                    Verdict::Proven(Duration::ZERO),
                    format!(
                        "pool {pool}: blocklisted {} (by {})",
                        addrs.join(", "),
                        r.report.name
                    ),
                ));
            }
            Ok(done) => out.push((
                Verdict::Waiting(Duration::from_secs(1)),
                format!("pool {pool}: the blocklist confirms only {done:?} of {addrs:?}"),
            )),
            Err(e) => {
                tracing::warn!(host = %name, %pool, error = %e, "blocklisting RBD clients failed");
                out.push((
                    Verdict::Waiting(Duration::from_secs(1)),
                    format!(
                        "pool {pool}: blocklisting through {} failed: {e}",
                        r.report.name
                    ),
                ));
            }
        }
    }
    out
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
pub async fn cleanup(ctl: &Arc<Controller>, h: &HostRecord, hosts: &[HostRecord]) {
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
        match call(r, pool, addrs, true).await {
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
        let want: BTreeMap<_, _> = [("ceph".to_string(), vec!["127.0.0.1:0/1".to_string()])].into();
        assert_eq!(plan(&a, &[]), Plan::Fence(want));
        // The address is another live host's own client: never blocklisted.
        let b = host("b", vec![], vec![client("vm1", "127.0.0.1:0/1")]);
        assert_eq!(plan(&a, &[&b]), Plan::Nothing);
        // No RBD guest running: nothing to do.
        let idle = host("a", vec![dom("vm1", "rbd:vms/vm1-disk", false)], vec![]);
        assert_eq!(plan(&idle, &[]), Plan::Nothing);
    }

    #[test]
    fn a_guest_whose_client_is_unknown_cannot_be_fenced_by_ceph() {
        let a = host("a", vec![dom("vm1", "rbd:vms/vm1-disk", true)], vec![]);
        match plan(&a, &[]) {
            Plan::Unknown(why) => assert!(
                why.contains("vm1") && why.contains("never reported"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
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
