//! Which requests only read (allowed on read-only connections) and which
//! may use the priority workers: pure functions over [`Request`].

use super::{MigrationRequest, Request};

impl Request {
    /// Whether the request only reads state, and so is allowed on a
    /// read-only connection. Every variant is named (no wildcard) so a new
    /// request cannot slip in without being classified.
    pub fn is_read_only(&self) -> bool {
        match self {
            Request::NodeInfo
            | Request::List { .. }
            | Request::DomInfo { .. }
            | Request::DomBlkList { .. }
            | Request::DumpXml { .. }
            | Request::PoolList { .. }
            | Request::PoolInfo { .. }
            | Request::VolList { .. }
            | Request::VolInfo { .. }
            | Request::NetList
            | Request::NetInfo { .. }
            | Request::ServerInfo
            | Request::FenceLease { .. }
            | Request::Events { .. } => true,
            // A console shows what the guest prints (passwords typed at a
            // login prompt among it): read-write only, as in libvirt.
            Request::Console { .. }
            | Request::Define { .. }
            | Request::Create { .. }
            | Request::Start { .. }
            | Request::Shutdown { .. }
            | Request::Destroy { .. }
            | Request::Reboot { .. }
            | Request::QemuAgentCommand { .. }
            | Request::InjectNmi { .. }
            | Request::AttachDevice { .. }
            | Request::SetVcpus { .. }
            | Request::DetachDevice { .. }
            | Request::NetDefineAs { .. }
            | Request::NetUndefine { .. }
            | Request::Suspend { .. }
            | Request::Resume { .. }
            | Request::Undefine { .. }
            | Request::PoolDefineAs { .. }
            | Request::PoolBuild { .. }
            | Request::PoolStart { .. }
            | Request::PoolAutostart { .. }
            // A refresh rescans and may change what the agent records.
            | Request::PoolRefresh { .. }
            | Request::PoolDestroy { .. }
            | Request::PoolUndefine { .. }
            | Request::VolCreateAs { .. }
            | Request::VolResize { .. }
            | Request::VolDelete { .. }
            | Request::RbdBlocklist { .. } => false,
            Request::Migration(m) => m.is_read_only(),
            Request::Secret(s) => s.is_read_only(),
        }
    }

    /// Whether the request may use the priority workers (libvirtd's
    /// prio_workers): the ones that stop things, which must get through
    /// when every ordinary worker is busy.
    pub fn is_priority(&self) -> bool {
        matches!(
            self,
            Request::Destroy { .. } | Request::Migration(MigrationRequest::JobAbort { .. })
        )
    }
}

impl MigrationRequest {
    /// See [`Request::is_read_only`].
    pub fn is_read_only(&self) -> bool {
        match self {
            MigrationRequest::JobInfo { .. }
            | MigrationRequest::JobEvents { .. }
            | MigrationRequest::MigrateQuery { .. }
            | MigrationRequest::MigrateGetSpeed { .. }
            | MigrationRequest::MigrateGetMaxDowntime { .. } => true,
            MigrationRequest::MigrateCompCache { size, .. } => size.is_none(),
            MigrationRequest::MigrateBegin { .. }
            | MigrationRequest::MigratePrepare { .. }
            | MigrationRequest::MigratePerform { .. }
            | MigrationRequest::MigrateFinish { .. }
            | MigrationRequest::MigrateConfirm { .. }
            | MigrationRequest::MigrateP2p { .. }
            | MigrationRequest::MigrateRecover { .. }
            | MigrationRequest::MigratePostcopyResume { .. }
            | MigrationRequest::JobAbort { .. }
            | MigrationRequest::MigrateSetSpeed { .. }
            | MigrationRequest::MigrateSetMaxDowntime { .. }
            | MigrationRequest::MigratePostcopy { .. }
            // Forecasting samples the guest's dirty rate and makes the
            // destination open a probe sink: it acts, if gently.
            | MigrationRequest::MigrateForecast { .. }
            | MigrationRequest::ProbeSink {} => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_migrate::options::MigrateOptions;
    use tern_migrate::protocol::IncomingTarget;
    use tern_migrate::protocol::{ConfirmRequest, FinishRequest, PerformRequest, PrepareRequest};
    use uuid::Uuid;

    /// One value of every variant, with the class it must have. The match
    /// below has no wildcard: a new variant fails to compile here until it
    /// is added to the table.
    fn every_request() -> Vec<(Request, bool)> {
        let n = || "g".to_string();
        let o = MigrateOptions::default;
        let domain = tern_model::xml::parse_domain(
            "<domain type='kvm'><name>g</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>",
        )
        .expect("minimal domain");
        let id = Uuid::nil();
        let m = Request::Migration;
        use MigrationRequest as M;
        vec![
            (Request::NodeInfo, true),
            (Request::List { all: true }, true),
            (Request::DomInfo { name: n() }, true),
            (Request::DomBlkList { name: n() }, true),
            (Request::DumpXml { name: n() }, true),
            (Request::Define { xml: n() }, false),
            (
                Request::Create {
                    xml: n(),
                    paused: false,
                },
                false,
            ),
            (
                Request::Start {
                    name: n(),
                    paused: false,
                },
                false,
            ),
            (
                Request::Shutdown {
                    name: n(),
                    timeout_secs: 1,
                },
                false,
            ),
            (Request::Destroy { name: n() }, false),
            (Request::Reboot { name: n() }, false),
            (Request::InjectNmi { name: n() }, false),
            (
                Request::NetDefineAs {
                    name: n(),
                    bridge: n(),
                },
                false,
            ),
            (Request::NetUndefine { name: n() }, false),
            (Request::NetList, true),
            (Request::NetInfo { name: n() }, true),
            (
                Request::AttachDevice {
                    name: n(),
                    xml: n(),
                    flags: Default::default(),
                },
                false,
            ),
            (
                Request::SetVcpus {
                    name: n(),
                    count: 2,
                    flags: Default::default(),
                },
                false,
            ),
            (
                Request::DetachDevice {
                    name: n(),
                    xml: n(),
                    flags: Default::default(),
                },
                false,
            ),
            (
                Request::QemuAgentCommand {
                    name: n(),
                    command: n(),
                    timeout_secs: 1,
                },
                false,
            ),
            (Request::Suspend { name: n() }, false),
            (Request::Resume { name: n() }, false),
            (
                Request::Undefine {
                    name: n(),
                    remove_all_storage: false,
                    nvram: false,
                },
                false,
            ),
            (
                Request::Console {
                    name: n(),
                    offset: 0,
                    max: 1,
                },
                false,
            ),
            (
                Request::PoolDefineAs {
                    name: n(),
                    target: "/p".into(),
                    shared: false,
                    netfs: None,
                    rbd: None,
                    logical: None,
                },
                false,
            ),
            (Request::PoolBuild { name: n() }, false),
            (Request::PoolStart { name: n() }, false),
            (
                Request::PoolAutostart {
                    name: n(),
                    disable: false,
                },
                false,
            ),
            (Request::PoolList { all: false }, true),
            (Request::PoolInfo { name: n() }, true),
            (Request::PoolRefresh { name: n() }, false),
            (Request::PoolDestroy { name: n() }, false),
            (Request::PoolUndefine { name: n() }, false),
            (
                Request::VolCreateAs {
                    pool: n(),
                    name: n(),
                    capacity: Some(1),
                    format: "raw".into(),
                    backing_vol: None,
                },
                false,
            ),
            (Request::VolList { pool: n() }, true),
            (
                Request::VolInfo {
                    pool: n(),
                    name: n(),
                },
                true,
            ),
            (
                Request::VolDelete {
                    pool: n(),
                    name: n(),
                },
                false,
            ),
            (
                Request::Events {
                    after: None,
                    domain: None,
                    wait_ms: 1,
                },
                true,
            ),
            (Request::ServerInfo, true),
            (
                Request::FenceLease {
                    pool: "p".into(),
                    host: "h".into(),
                },
                true,
            ),
            (
                Request::RbdBlocklist {
                    pool: "p".into(),
                    addrs: vec![],
                    remove: false,
                    images: vec![],
                    spare: vec![],
                },
                false,
            ),
            (
                m(M::MigrateBegin {
                    name: n(),
                    options: o(),
                }),
                false,
            ),
            (
                m(M::MigratePrepare {
                    req: PrepareRequest {
                        version: 1,
                        id,
                        domain,
                        options: o(),
                        source_host: n(),
                        disks: vec![],
                        files: vec![],
                        source_uri: None,
                        source_name: None,
                        source_tls_identity: None,
                        source_nvram_dir: None,
                        source_ceph_fsids: Default::default(),
                        source_addresses: Vec::new(),
                    },
                }),
                false,
            ),
            (
                m(M::MigratePerform {
                    req: PerformRequest {
                        version: 1,
                        id,
                        name: n(),
                        target: IncomingTarget {
                            host: n(),
                            port: 1,
                            tunnel: false,
                        },
                        nbd: None,
                        cold: None,
                        files: vec![],
                        options: o(),
                        dest_uri: None,
                        dest_name: None,
                    },
                }),
                false,
            ),
            (
                m(M::MigrateFinish {
                    req: FinishRequest {
                        version: 1,
                        id,
                        name: n(),
                        success: true,
                        options: o(),
                    },
                }),
                false,
            ),
            (
                m(M::MigrateConfirm {
                    req: ConfirmRequest {
                        version: 1,
                        id,
                        name: n(),
                        success: true,
                        options: o(),
                    },
                }),
                false,
            ),
            (
                m(M::MigrateP2p {
                    name: n(),
                    dest_uri: n(),
                    options: o(),
                    id: None,
                }),
                false,
            ),
            (
                m(M::JobInfo {
                    name: n(),
                    completed: false,
                    wait_ms: 0,
                }),
                true,
            ),
            (
                m(M::JobEvents {
                    name: n(),
                    since: 0,
                }),
                true,
            ),
            (
                m(M::JobAbort {
                    name: n(),
                    postcopy: false,
                }),
                false,
            ),
            (
                m(M::MigrateRecover {
                    req: tern_migrate::protocol::RecoverRequest { version: 2, id },
                }),
                false,
            ),
            (m(M::MigratePostcopyResume { name: n() }), false),
            (
                m(M::MigrateQuery {
                    req: tern_migrate::protocol::QueryRequest { version: 2, id },
                }),
                true,
            ),
            (
                m(M::MigrateSetSpeed {
                    name: n(),
                    bandwidth_mib: 1,
                }),
                false,
            ),
            (m(M::MigrateGetSpeed { name: n() }), true),
            (
                m(M::MigrateSetMaxDowntime {
                    name: n(),
                    downtime_ms: 1,
                }),
                false,
            ),
            (m(M::MigrateGetMaxDowntime { name: n() }), true),
            (
                m(M::MigrateCompCache {
                    name: n(),
                    size: None,
                }),
                true,
            ),
            (
                m(M::MigrateCompCache {
                    name: n(),
                    size: Some(1),
                }),
                false,
            ),
            (m(M::MigratePostcopy { name: n() }), false),
            (
                m(M::MigrateForecast {
                    name: n(),
                    dest_uri: None,
                    options: o(),
                }),
                false,
            ),
            (m(M::ProbeSink {}), false),
        ]
    }

    /// Compile-time completeness: names every variant.
    fn covered(r: &Request) {
        match r {
            Request::NodeInfo
            | Request::List { .. }
            | Request::DomInfo { .. }
            | Request::DomBlkList { .. }
            | Request::DumpXml { .. }
            | Request::Define { .. }
            | Request::Create { .. }
            | Request::Start { .. }
            | Request::Shutdown { .. }
            | Request::Destroy { .. }
            | Request::Reboot { .. }
            | Request::QemuAgentCommand { .. }
            | Request::InjectNmi { .. }
            | Request::AttachDevice { .. }
            | Request::SetVcpus { .. }
            | Request::DetachDevice { .. }
            | Request::NetDefineAs { .. }
            | Request::NetUndefine { .. }
            | Request::NetList
            | Request::NetInfo { .. }
            | Request::Suspend { .. }
            | Request::Resume { .. }
            | Request::Undefine { .. }
            | Request::Console { .. }
            | Request::PoolDefineAs { .. }
            | Request::PoolBuild { .. }
            | Request::PoolStart { .. }
            | Request::PoolAutostart { .. }
            | Request::PoolList { .. }
            | Request::PoolInfo { .. }
            | Request::PoolRefresh { .. }
            | Request::PoolDestroy { .. }
            | Request::PoolUndefine { .. }
            | Request::VolCreateAs { .. }
            | Request::VolList { .. }
            | Request::VolInfo { .. }
            | Request::VolResize { .. }
            | Request::VolDelete { .. }
            | Request::ServerInfo
            | Request::FenceLease { .. }
            | Request::RbdBlocklist { .. }
            | Request::Events { .. }
            | Request::Secret(_) => {}
            Request::Migration(m) => match m {
                MigrationRequest::MigrateBegin { .. }
                | MigrationRequest::MigratePrepare { .. }
                | MigrationRequest::MigratePerform { .. }
                | MigrationRequest::MigrateFinish { .. }
                | MigrationRequest::MigrateConfirm { .. }
                | MigrationRequest::MigrateP2p { .. }
                | MigrationRequest::MigrateQuery { .. }
                | MigrationRequest::MigrateRecover { .. }
                | MigrationRequest::MigratePostcopyResume { .. }
                | MigrationRequest::JobInfo { .. }
                | MigrationRequest::JobEvents { .. }
                | MigrationRequest::JobAbort { .. }
                | MigrationRequest::MigrateSetSpeed { .. }
                | MigrationRequest::MigrateGetSpeed { .. }
                | MigrationRequest::MigrateSetMaxDowntime { .. }
                | MigrationRequest::MigrateGetMaxDowntime { .. }
                | MigrationRequest::MigrateCompCache { .. }
                | MigrationRequest::MigratePostcopy { .. }
                | MigrationRequest::MigrateForecast { .. }
                | MigrationRequest::ProbeSink {} => {}
            },
        }
    }

    #[test]
    fn every_request_is_classified_read_only_or_not() {
        let all = every_request();
        // 41 plain requests + 20 migration requests (+1 for compcache's
        // two forms): every variant appears.
        assert_eq!(all.len(), 41 + 20 + 1);
        for (r, read_only) in &all {
            covered(r);
            assert_eq!(r.is_read_only(), *read_only, "{r:?}");
        }
    }

    #[test]
    fn only_stopping_requests_are_priority() {
        for (r, _) in every_request() {
            let expect = matches!(
                r,
                Request::Destroy { .. } | Request::Migration(MigrationRequest::JobAbort { .. })
            );
            assert_eq!(r.is_priority(), expect, "{r:?}");
        }
    }
}
