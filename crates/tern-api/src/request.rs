//! Every operation of the host API as one typed enum.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tern_migrate::options::MigrateOptions;
use tern_migrate::protocol::{ConfirmRequest, FinishRequest, PerformRequest, PrepareRequest};

/// A host API request. The JSON form is `{"op": "<kebab-name>", ...fields}`.
// Requests are decoded once per call and dispatched at once; boxing the
// larger variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Host facts (`nodeinfo`).
    NodeInfo,
    /// Domains (`list [--all]`).
    List {
        /// Include inactive (shut off) domains.
        #[serde(default)]
        all: bool,
    },
    /// One domain's details (`dominfo`).
    DomInfo {
        /// Domain name or uuid.
        name: String,
    },
    /// One domain's disks (`domblklist`).
    DomBlkList {
        /// Domain name or uuid.
        name: String,
    },
    /// libvirt XML of a domain (`dumpxml`).
    DumpXml {
        /// Domain name or uuid.
        name: String,
    },
    /// Define or update a persistent domain from libvirt XML (`define`).
    Define {
        /// The XML document.
        xml: String,
    },
    /// Start a transient domain from XML (`create`).
    Create {
        /// The XML document.
        xml: String,
        /// Leave vCPUs stopped.
        #[serde(default)]
        paused: bool,
    },
    /// Start a defined domain (`start`).
    Start {
        /// Domain name or uuid.
        name: String,
        /// Leave vCPUs stopped.
        #[serde(default)]
        paused: bool,
    },
    /// ACPI power-off request, waiting up to `timeout_secs` (`shutdown`).
    Shutdown {
        /// Domain name or uuid.
        name: String,
        /// Seconds to wait for the guest to power off.
        timeout_secs: u64,
    },
    /// Kill the guest's QEMU (`destroy`).
    Destroy {
        /// Domain name or uuid.
        name: String,
    },
    /// Reset the guest (`reboot`).
    Reboot {
        /// Domain name or uuid.
        name: String,
    },
    /// Stop vCPUs (`suspend`).
    Suspend {
        /// Domain name or uuid.
        name: String,
    },
    /// Restart vCPUs (`resume`).
    Resume {
        /// Domain name or uuid.
        name: String,
    },
    /// Remove a definition (`undefine`).
    Undefine {
        /// Domain name or uuid.
        name: String,
        /// Also delete disk images that live in a pool.
        #[serde(default)]
        remove_all_storage: bool,
    },
    /// Serial console output from byte `offset` (`console`).
    Console {
        /// Domain name or uuid.
        name: String,
        /// Byte offset into the console log.
        #[serde(default)]
        offset: u64,
        /// Maximum bytes to return.
        #[serde(default = "default_console_max")]
        max: u64,
    },
    /// Define a directory pool (`pool-define-as`).
    PoolDefineAs {
        /// Pool name.
        name: String,
        /// Directory.
        target: PathBuf,
        /// Whether other hosts see the same files.
        #[serde(default)]
        shared: bool,
    },
    /// Create a pool's directory (`pool-build`).
    PoolBuild {
        /// Pool name.
        name: String,
    },
    /// Activate a pool (`pool-start`).
    PoolStart {
        /// Pool name.
        name: String,
    },
    /// Set or clear autostart (`pool-autostart [--disable]`).
    PoolAutostart {
        /// Pool name.
        name: String,
        /// Clear instead of set.
        #[serde(default)]
        disable: bool,
    },
    /// Pools (`pool-list`).
    PoolList {
        /// Include inactive pools.
        #[serde(default)]
        all: bool,
    },
    /// One pool (`pool-info`).
    PoolInfo {
        /// Pool name.
        name: String,
    },
    /// Rescan a pool (`pool-refresh`).
    PoolRefresh {
        /// Pool name.
        name: String,
    },
    /// Deactivate a pool (`pool-destroy`); files are kept.
    PoolDestroy {
        /// Pool name.
        name: String,
    },
    /// Remove a pool's definition (`pool-undefine`); files are kept.
    PoolUndefine {
        /// Pool name.
        name: String,
    },
    /// Create a volume (`vol-create-as`).
    VolCreateAs {
        /// Pool name.
        pool: String,
        /// Volume (file) name.
        name: String,
        /// Size in bytes; may be omitted with a backing volume.
        capacity: Option<u64>,
        /// "qcow2" or "raw".
        format: String,
        /// Name of a volume in the same pool to use as backing image.
        #[serde(default)]
        backing_vol: Option<String>,
    },
    /// Volumes of a pool (`vol-list`).
    VolList {
        /// Pool name.
        pool: String,
    },
    /// One volume (`vol-info`).
    VolInfo {
        /// Pool name.
        pool: String,
        /// Volume name.
        name: String,
    },
    /// Delete a volume (`vol-delete`).
    VolDelete {
        /// Pool name.
        pool: String,
        /// Volume name.
        name: String,
    },
    /// The API server's own figures: connections and busy workers
    /// (`srv-info`, as virt-admin's srv-clients-info and srv-threadpool-info).
    /// Answered by the server itself, without a worker, so it works when
    /// every worker is busy.
    ServerInfo,
    /// A migration request.
    #[serde(untagged)]
    Migration(MigrationRequest),
}

/// Migration requests (see `tern_migrate::protocol` for the sequence).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MigrationRequest {
    /// Source: check and describe the guest.
    MigrateBegin {
        /// Domain name or uuid.
        name: String,
        /// Options.
        options: MigrateOptions,
    },
    /// Destination: get ready to receive.
    MigratePrepare {
        /// The message.
        req: PrepareRequest,
    },
    /// Source: start sending (returns at once; poll `job-info`).
    MigratePerform {
        /// The message.
        req: PerformRequest,
    },
    /// Destination: resume or discard.
    MigrateFinish {
        /// The message.
        req: FinishRequest,
    },
    /// Source: clean up or resume.
    MigrateConfirm {
        /// The message.
        req: ConfirmRequest,
    },
    /// Source: drive the whole migration from this agent (`--p2p`).
    MigrateP2p {
        /// Domain name or uuid.
        name: String,
        /// Destination connection URI as seen from the source host.
        dest_uri: String,
        /// Options.
        options: MigrateOptions,
    },
    /// `domjobinfo [--completed]`.
    JobInfo {
        /// Domain name.
        name: String,
        /// The last finished job instead of the current one.
        #[serde(default)]
        completed: bool,
        /// Long poll: answer as soon as the job changes, or after this many
        /// milliseconds (0: answer at once).
        #[serde(default)]
        wait_ms: u64,
    },
    /// The job's events from index `since`.
    JobEvents {
        /// Domain name.
        name: String,
        /// First event index wanted.
        #[serde(default)]
        since: usize,
    },
    /// `domjobabort`.
    JobAbort {
        /// Domain name.
        name: String,
    },
    /// `migrate-setspeed` (MiB/s, 0 = unlimited).
    MigrateSetSpeed {
        /// Domain name.
        name: String,
        /// MiB/s.
        bandwidth_mib: u64,
    },
    /// `migrate-getspeed`.
    MigrateGetSpeed {
        /// Domain name.
        name: String,
    },
    /// `migrate-setmaxdowntime`.
    MigrateSetMaxDowntime {
        /// Domain name.
        name: String,
        /// Milliseconds.
        downtime_ms: u64,
    },
    /// `migrate-getmaxdowntime`.
    MigrateGetMaxDowntime {
        /// Domain name.
        name: String,
    },
    /// `migrate-compcache [--size]`.
    MigrateCompCache {
        /// Domain name.
        name: String,
        /// New size in bytes, if setting.
        size: Option<u64>,
    },
    /// `migrate-postcopy`: switch a running migration to post-copy.
    MigratePostcopy {
        /// Domain name.
        name: String,
    },
    /// `migrate-forecast` / `migrate --dry-run`: sample and predict.
    MigrateForecast {
        /// Domain name.
        name: String,
        /// Destination URI as seen from the source host (for the link probe).
        dest_uri: Option<String>,
        /// Options of the planned migration.
        options: MigrateOptions,
    },
    /// Destination: open a TCP sink for a link-speed probe; answers (host, port).
    ProbeSink {},
}

fn default_console_max() -> u64 {
    1 << 20
}

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
            | Request::Console { .. }
            | Request::PoolList { .. }
            | Request::PoolInfo { .. }
            | Request::VolList { .. }
            | Request::VolInfo { .. }
            | Request::ServerInfo => true,
            Request::Define { .. }
            | Request::Create { .. }
            | Request::Start { .. }
            | Request::Shutdown { .. }
            | Request::Destroy { .. }
            | Request::Reboot { .. }
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
            | Request::VolDelete { .. } => false,
            Request::Migration(m) => m.is_read_only(),
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
            | MigrationRequest::MigrateGetSpeed { .. }
            | MigrationRequest::MigrateGetMaxDowntime { .. } => true,
            MigrationRequest::MigrateCompCache { size, .. } => size.is_none(),
            MigrationRequest::MigrateBegin { .. }
            | MigrationRequest::MigratePrepare { .. }
            | MigrationRequest::MigratePerform { .. }
            | MigrationRequest::MigrateFinish { .. }
            | MigrationRequest::MigrateConfirm { .. }
            | MigrationRequest::MigrateP2p { .. }
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

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let reqs = vec![
            Request::NodeInfo,
            Request::List { all: true },
            Request::Shutdown {
                name: "g".into(),
                timeout_secs: 5,
            },
            Request::VolCreateAs {
                pool: "p".into(),
                name: "v".into(),
                capacity: Some(1),
                format: "raw".into(),
                backing_vol: None,
            },
        ];
        for r in reqs {
            let s = serde_json::to_string(&r).unwrap();
            assert!(s.contains("\"op\":"));
            assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        }
        let e = serde_json::from_str::<Request>(r#"{"op":"list","bogus":1}"#);
        assert!(e.is_err());
        let e = serde_json::from_str::<Request>(r#"{"op":"format-disk"}"#);
        assert!(e.is_err());
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn migration_requests_share_the_op_namespace() {
        let r = Request::Migration(MigrationRequest::JobInfo {
            name: "g".into(),
            completed: true,
            wait_ms: 0,
        });
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"job-info","name":"g","completed":true,"wait_ms":0}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let p = Request::Migration(MigrationRequest::MigrateP2p {
            name: "g".into(),
            dest_uri: "tern+tcp://h/system".into(),
            options: MigrateOptions {
                live: true,
                ..Default::default()
            },
        });
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), p);
        assert!(serde_json::from_str::<Request>(r#"{"op":"job-info"}"#).is_err());
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;
    use tern_migrate::protocol::IncomingTarget;
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
            (Request::Suspend { name: n() }, false),
            (Request::Resume { name: n() }, false),
            (
                Request::Undefine {
                    name: n(),
                    remove_all_storage: false,
                },
                false,
            ),
            (
                Request::Console {
                    name: n(),
                    offset: 0,
                    max: 1,
                },
                true,
            ),
            (
                Request::PoolDefineAs {
                    name: n(),
                    target: "/p".into(),
                    shared: false,
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
            (Request::ServerInfo, true),
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
                        target: IncomingTarget { host: n(), port: 1 },
                        nbd: None,
                        cold: None,
                        files: vec![],
                        options: o(),
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
            (m(M::JobAbort { name: n() }), false),
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
            | Request::VolDelete { .. }
            | Request::ServerInfo => {}
            Request::Migration(m) => match m {
                MigrationRequest::MigrateBegin { .. }
                | MigrationRequest::MigratePrepare { .. }
                | MigrationRequest::MigratePerform { .. }
                | MigrationRequest::MigrateFinish { .. }
                | MigrationRequest::MigrateConfirm { .. }
                | MigrationRequest::MigrateP2p { .. }
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
        // 29 plain requests + 17 migration requests (+1 for compcache's
        // two forms): every variant appears.
        assert_eq!(all.len(), 29 + 17 + 1);
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
