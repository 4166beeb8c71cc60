//! Every operation of the host API as one typed enum.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tern_migrate::options::MigrateOptions;
use tern_migrate::protocol::{
    ConfirmRequest, FinishRequest, PerformRequest, PrepareRequest, QueryRequest, RecoverRequest,
};

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
    /// Send a command to the QEMU guest agent in the guest
    /// (`qemu-agent-command`); the answer is the agent's JSON reply.
    QemuAgentCommand {
        /// Domain name or uuid.
        name: String,
        /// The command, e.g. `{"execute":"guest-ping"}`.
        command: String,
        /// Seconds to wait for the agent's answer.
        timeout_secs: u64,
    },
    /// Define a network: a name for a host bridge (`net-define-as`).
    NetDefineAs {
        /// The network's name.
        name: String,
        /// The host bridge.
        bridge: String,
    },
    /// Remove a network definition (`net-undefine`).
    NetUndefine {
        /// The network's name.
        name: String,
    },
    /// The host's networks (`net-list`).
    NetList,
    /// One network (`net-info`).
    NetInfo {
        /// The network's name.
        name: String,
    },
    /// Add a `<disk>` or `<interface>` (`attach-device`, `attach-interface`).
    AttachDevice {
        /// Domain name or uuid.
        name: String,
        /// The device's XML element.
        xml: String,
        /// Which definitions change.
        #[serde(default)]
        flags: crate::types::DeviceFlags,
    },
    /// Remove a `<disk>` or `<interface>` (`detach-device`, `detach-interface`).
    DetachDevice {
        /// Domain name or uuid.
        name: String,
        /// The device's XML element (a disk's target, an interface's MAC).
        xml: String,
        /// Which definitions change.
        #[serde(default)]
        flags: crate::types::DeviceFlags,
    },
    /// Change how many vCPUs are online (`setvcpus`): hot-plug into the
    /// running guest (`--live`), or the stored `<vcpu current=>` (`--config`).
    SetVcpus {
        /// Domain name or uuid.
        name: String,
        /// vCPUs online afterwards (1 to the `<vcpu>` maximum).
        count: u32,
        /// Which definitions change.
        #[serde(default)]
        flags: crate::types::DeviceFlags,
    },
    /// Send a non-maskable interrupt to the guest (`inject-nmi`).
    InjectNmi {
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
        /// Also delete the UEFI variable store (`--nvram`).
        #[serde(default)]
        nvram: bool,
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
    /// Define a directory or netfs pool (`pool-define-as`).
    PoolDefineAs {
        /// Pool name.
        name: String,
        /// Directory.
        target: PathBuf,
        /// Whether other hosts see the same files.
        #[serde(default)]
        shared: bool,
        /// The export of a netfs pool; `None` for a dir pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netfs: Option<tern_model::NetfsSource>,
        /// The Ceph pool of an rbd pool (whose `target` is empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rbd: Option<tern_model::RbdSource>,
        /// The volume group of a logical pool (`target` empty or `/dev/VG`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logical: Option<tern_model::LogicalSource>,
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
    /// Change a volume's size (`vol-resize`).
    VolResize {
        /// Pool name.
        pool: String,
        /// Volume name.
        name: String,
        /// The new size in bytes, or with `delta` the bytes to add.
        capacity: u64,
        /// `capacity` is added to the current size.
        #[serde(default)]
        delta: bool,
        /// Allow a smaller size (data past the new end is lost).
        #[serde(default)]
        shrink: bool,
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
    /// Reads `host`'s storage lease on `pool` (see [`crate::fence`]): the
    /// controller asks a host that sees the pool, before any rescue.
    FenceLease {
        /// Pool name on this host.
        pool: String,
        /// The host whose lease to read.
        host: String,
    },
    /// Blocklists (or, with `remove`, un-blocklists) Ceph client addresses
    /// in the cluster of rbd pool `pool` on this host, and answers the
    /// addresses the cluster's blocklist confirms (with `remove`: the ones
    /// no longer on it). The controller fences a dead host's RBD clients
    /// through another host that sees the pool (issue 21).
    RbdBlocklist {
        /// An rbd pool on this host.
        pool: String,
        /// Client addresses (`IP:PORT/NONCE`), as `rbd status` shows them.
        addrs: Vec<String>,
        /// Remove the entries instead of adding them.
        #[serde(default)]
        remove: bool,
        /// Images of the pool whose every client (watchers and exclusive
        /// lock owners, as the cluster shows them now) is blocklisted too,
        /// except `spare` and the answering host's own guests' clients:
        /// a guest whose client its dead host never reported is still
        /// fenced. The reply lists these addresses as well.
        #[serde(default)]
        images: Vec<String>,
        /// Addresses never blocklisted (other live hosts' own clients).
        #[serde(default)]
        spare: Vec<String>,
    },
    /// Agent events (`event`): lifecycle, migration phases, iterations and
    /// job events, as a long poll. Answered by the API server without a
    /// worker, like `ServerInfo`, so watchers never starve requests.
    Events {
        /// The last event seen; none: start from now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// Only this domain's events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
        /// Wait up to this many milliseconds for an event (0: answer at once).
        #[serde(default)]
        wait_ms: u64,
    },
    /// A migration request.
    #[serde(untagged)]
    Migration(MigrationRequest),
    /// A secret request (`secret-define`...).
    #[serde(untagged)]
    Secret(SecretRequest),
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
    /// Either side: where does a migration stand here? Asked by the other
    /// side when the driver vanished (protocol version 2).
    MigrateQuery {
        /// The message.
        req: QueryRequest,
    },
    /// Destination: listen for a paused post-copy's recovery channel
    /// (protocol version 2).
    MigrateRecover {
        /// The message.
        req: RecoverRequest,
    },
    /// Source: resume a post-copy that a broken link or
    /// `domjobabort --postcopy` paused (`migrate --postcopy-resume`).
    MigratePostcopyResume {
        /// Domain name.
        name: String,
    },
    /// Source: run the whole migration from this agent (every flow: the
    /// managed `tern migrate`, `--p2p` and the controller's jobs). The
    /// reply comes once the destination prepared; the caller then follows
    /// the job.
    MigrateP2p {
        /// Domain name or uuid.
        name: String,
        /// Destination connection URI as seen from the source host.
        dest_uri: String,
        /// Options.
        options: MigrateOptions,
        /// The migration's id, when the caller keeps its own record of it
        /// (the controller); a new one otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<uuid::Uuid>,
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
    /// `domjobabort [--postcopy]`.
    JobAbort {
        /// Domain name.
        name: String,
        /// Pause a post-copy migration instead (`migrate-pause`); it
        /// resumes with `migrate --postcopy-resume`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        postcopy: bool,
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

mod classify;
mod secret;
pub use secret::SecretRequest;

fn default_console_max() -> u64 {
    1 << 20
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
            id: None,
        });
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), p);
        assert!(serde_json::from_str::<Request>(r#"{"op":"job-info"}"#).is_err());
    }
}
