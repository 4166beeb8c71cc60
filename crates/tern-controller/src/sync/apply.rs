//! Applying a host's report to the server records: which records to read
//! for it ([`SyncScope`]), then the changes [`super::reconcile`] finds,
//! made in the store. Registration and heartbeats (`crate::api`) call it.

use super::{reconcile, Change};
use crate::error::{CtlError, Result};
use crate::inventory::SERVERS;
use crate::Controller;
use std::collections::HashMap;
use std::sync::Arc;
use tern_api::cluster::HostReport;
use tern_api::Request;

/// Which server records a sync reads, besides the ones the report names.
/// None reads every server record: that was O(servers) per changed report
/// and per returning host, and a mass re-registration O(hosts × servers).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SyncScope<'a> {
    /// No more: a new host, which owns no record yet.
    Reported,
    /// The ones the host's previous report named, among which are those it
    /// no longer has: a heartbeat whose report changed.
    Since(&'a HostReport),
    /// Those, and every record that says it is on this host: a known host
    /// registering again may have lost a server that a job moved to it
    /// before it reported it.
    Returning(&'a HostReport),
}

/// How old the listing of where servers are may be when a known host
/// registers again. It only nominates records; each is read again before
/// anything is decided. When thousands of hosts register again at once
/// (the store was unreachable for longer than the lease), one listing
/// serves all of them.
pub const PLACEMENT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Names of the servers on each host, by their records.
pub type Placement = HashMap<String, Vec<String>>;

/// Names of the servers whose records say they are on `host`, from a
/// listing at most [`PLACEMENT_MAX_AGE`] old.
async fn placed_on(ctl: &Arc<Controller>, host: &str) -> Result<Vec<String>> {
    let by_host = ctl
        .placement
        .get(|| async {
            let mut m = Placement::new();
            for s in ctl.inv.servers_shared().await? {
                m.entry(s.host.clone())
                    .or_default()
                    .push(s.domain.name.clone());
            }
            Ok::<_, CtlError>(m)
        })
        .await?;
    Ok(by_host.get(host).cloned().unwrap_or_default())
}

/// The names of the server records `scope` reads for `report`.
async fn sync_names(
    ctl: &Arc<Controller>,
    report: &HostReport,
    scope: SyncScope<'_>,
) -> Result<Vec<String>> {
    Ok(match scope {
        SyncScope::Reported => names_to_read(report, None, Vec::new()),
        SyncScope::Since(old) => names_to_read(report, Some(old), Vec::new()),
        SyncScope::Returning(old) => {
            names_to_read(report, Some(old), placed_on(ctl, &report.name).await?)
        }
    })
}

/// The servers named in `report`, in the host's previous report `old`,
/// and in `placed`, once each.
fn names_to_read(
    report: &HostReport,
    old: Option<&HostReport>,
    placed: Vec<String>,
) -> Vec<String> {
    let mut names = placed;
    let reports = std::iter::once(report).chain(old);
    names.extend(reports.flat_map(|r| r.domains.iter().map(|d| d.name.clone())));
    names.sort();
    names.dedup();
    names
}

/// Brings server records in line with a host's report.
pub(crate) async fn apply_sync(
    ctl: &Arc<Controller>,
    report: &HostReport,
    scope: SyncScope<'_>,
) -> Result<()> {
    let keys: Vec<String> = sync_names(ctl, report, scope)
        .await?
        .iter()
        .map(|n| format!("{SERVERS}{n}"))
        .collect();
    let servers: Vec<_> = ctl
        .inv
        .kept::<tern_api::cluster::ServerRecord>(&keys)
        .await?
        .into_iter()
        .flatten()
        .collect();
    apply_changes(ctl, report, &servers).await
}

/// Makes the changes [`reconcile`] finds between a host's report and the
/// server records read for it.
pub(crate) async fn apply_changes(
    ctl: &Arc<Controller>,
    report: &HostReport,
    servers: &[Arc<tern_api::cluster::ServerRecord>],
) -> Result<()> {
    let host = report.name.as_str();
    let mut created = Vec::new();
    for c in reconcile(host, &report.domains, servers) {
        match c {
            Change::Create(r) => created.push((format!("{SERVERS}{}", r.domain.name), r)),
            Change::Refresh {
                name,
                domain,
                state,
            } => {
                ctl.inv
                    .update_server(&name, |r| {
                        if r.host != host || r.state.in_flight() {
                            return Ok(false);
                        }
                        r.domain = domain.clone();
                        if let Some(s) = state {
                            r.state = s;
                        }
                        Ok(true)
                    })
                    .await?;
            }
            Change::Remove(name) => {
                let key = format!("{SERVERS}{name}");
                if let Some((_, r)) = ctl.inv.get::<tern_api::cluster::ServerRecord>(&key).await? {
                    if r.host == host && !r.state.in_flight() {
                        ctl.inv.store.delete(&key).await?;
                    }
                }
            }
            Change::Undefine(name) => {
                let c =
                    crate::agents::client(&report.api_uri).map_err(|source| CtlError::Agent {
                        host: host.to_string(),
                        source,
                    })?;
                tracing::info!(%host, server = %name, "removing a stale definition from a returning host");
                let r = c
                    .call::<serde_json::Value>(&Request::Undefine {
                        name: name.clone(),
                        remove_all_storage: false,
                        nvram: false,
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(%host, server = %name, error = %e, "could not remove a stale definition");
                    continue;
                }
                ctl.inv
                    .update_server(&name, |r| {
                        let change = r.rescued_from.as_deref() == Some(host);
                        if change {
                            r.rescued_from = None;
                        }
                        Ok(change)
                    })
                    .await?;
            }
        }
    }
    ctl.inv.create_all(&created).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::names_to_read;
    use crate::heartbeat_tests::report;

    #[test]
    fn a_sync_reads_the_servers_of_both_reports_and_the_placed_ones_once() {
        let new = report(&["b", "c"]);
        assert_eq!(names_to_read(&new, None, vec![]), ["b", "c"]);
        // A changed report: "a" was dropped, so its record must be read.
        let old = report(&["a", "b"]);
        assert_eq!(names_to_read(&new, Some(&old), vec![]), ["a", "b", "c"]);
        // A returning host: "m" was moved here before the host reported it.
        let placed = vec!["m".to_string(), "c".to_string()];
        assert_eq!(
            names_to_read(&new, Some(&old), placed),
            ["a", "b", "c", "m"]
        );
    }
}
