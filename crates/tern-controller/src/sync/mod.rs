//! Keeping server records in step with what hosts report.
//!
//! [`reconcile`] is pure: given one host's domains and the server records,
//! it lists the changes. A record a job owns (`in_flight`) is never
//! touched by reports; a record is only refreshed by the host it belongs
//! to, so a guest arriving on a destination does not move the record
//! before the job says it succeeded.

pub mod apply;

use tern_api::cluster::{DomainReport, ServerRecord, ServerState};

/// One change to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A server the controller did not know.
    Create(ServerRecord),
    /// The host's view of a server it owns.
    Refresh {
        /// Server.
        name: String,
        /// As reported.
        domain: DomainReport,
        /// New state, if the report decides it.
        state: Option<ServerState>,
    },
    /// A server its host no longer has.
    Remove(String),
    /// A stale definition on a host the server was rescued from: remove it
    /// there so that host can never start a second copy.
    Undefine(String),
}

/// The state a report implies.
pub fn reported_state(d: &DomainReport) -> ServerState {
    if d.active {
        ServerState::Running
    } else {
        ServerState::Ready
    }
}

/// Changes implied by `host` reporting `domains`.
pub fn reconcile<S: std::borrow::Borrow<ServerRecord>>(
    host: &str,
    domains: &[DomainReport],
    servers: &[S],
) -> Vec<Change> {
    let servers: Vec<&ServerRecord> = servers.iter().map(|s| s.borrow()).collect();
    let mut out = Vec::new();
    for d in domains {
        match servers.iter().find(|s| s.domain.name == d.name) {
            None => out.push(Change::Create(ServerRecord {
                domain: d.clone(),
                host: host.to_string(),
                state: reported_state(d),
                error: None,
                rescued_from: None,
            })),
            Some(r) if r.host == host => {
                let state = match r.state {
                    s if s.in_flight() => None,
                    // Sticky until the operator acts (as Cloudpods).
                    ServerState::MigrateFailed => None,
                    s if s != reported_state(d) => Some(reported_state(d)),
                    _ => None,
                };
                if state.is_some() || r.domain != *d {
                    out.push(Change::Refresh {
                        name: d.name.clone(),
                        domain: d.clone(),
                        state,
                    });
                }
            }
            Some(r) => {
                if !d.active && r.rescued_from.as_deref() == Some(host) {
                    out.push(Change::Undefine(d.name.clone()));
                }
            }
        }
    }
    for s in servers {
        if s.host == host
            && !s.state.in_flight()
            && !domains.iter().any(|d| d.name == s.domain.name)
        {
            out.push(Change::Remove(s.domain.name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(name: &str, active: bool) -> DomainReport {
        DomainReport {
            name: name.into(),
            uuid: String::new(),
            active,
            vcpus: 1,
            memory_mib: 128,
            disks: vec![],
            networks: vec![],
            machine: None,
            xml: String::new(),
        }
    }

    fn rec(name: &str, host: &str, state: ServerState) -> ServerRecord {
        ServerRecord {
            domain: dom(name, state == ServerState::Running),
            host: host.into(),
            state,
            error: None,
            rescued_from: None,
        }
    }

    #[test]
    fn new_refreshed_removed() {
        let servers = vec![
            rec("a", "h1", ServerState::Running),
            rec("gone", "h1", ServerState::Ready),
            rec("moving", "h1", ServerState::LiveMigrating),
        ];
        let c = reconcile("h1", &[dom("a", false), dom("new", true)], &servers);
        assert!(c.contains(&Change::Refresh {
            name: "a".into(),
            domain: dom("a", false),
            state: Some(ServerState::Ready)
        }));
        assert!(
            matches!(&c[1], Change::Create(r) if r.state == ServerState::Running && r.host == "h1")
        );
        assert!(c.contains(&Change::Remove("gone".into())));
        assert!(
            !c.contains(&Change::Remove("moving".into())),
            "a job owns it"
        );
    }

    #[test]
    fn another_hosts_copy_is_ignored_or_undefined_after_rescue() {
        let mut r = rec("vm", "h2", ServerState::Running);
        assert!(reconcile("h1", &[dom("vm", true)], std::slice::from_ref(&r)).is_empty());
        r.rescued_from = Some("h1".into());
        assert_eq!(
            reconcile("h1", &[dom("vm", false)], &[r]),
            vec![Change::Undefine("vm".into())]
        );
    }

    #[test]
    fn failures_and_jobs_are_sticky() {
        let s = vec![
            rec("f", "h1", ServerState::MigrateFailed),
            rec("m", "h1", ServerState::StartMigrate),
        ];
        let c = reconcile("h1", &[dom("f", false), dom("m", true)], &s);
        assert!(
            c.iter()
                .all(|x| !matches!(x, Change::Refresh { state: Some(_), .. })),
            "{c:?}"
        );
    }
}
