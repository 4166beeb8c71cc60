//! The cluster API between `tern-controller`, the agents and `tern`.
//!
//! Agents speak it on the same transport as the host API (`POST
//! /api/v1/call`, JSON tagged by `op`), another request enum; `tern` and
//! the web console reach the same operations as REST resources
//! ([`crate::rest`], `/v1/...`), which the controller runs as these
//! requests. The message sequence (`tern`'s arrows are REST calls):
//!
//! ```text
//! ternd                         tern-controller                      tern
//!   | register {report} ---------->|  host record, lease granted        |
//!   |<--------- {lease, ttl, hb}   |                                    |
//!   | heartbeat {lease, digest} -->|  lease renewed, servers synced     |
//!   |<--------- {fence, reregister}|  (the report itself only when it   |
//!   |                              |   changed, or on send_report)      |
//!   |        ...every heartbeat... |<-- POST /v1/servers/ID/migrate ---|
//!   |                              |  job queued ---------------------->|
//!   |<== migrate-begin/prepare/... |  (leader: scheduler + limits, then |
//!   |    perform/finish/confirm    |   the migration driver)            |
//!   |                              |<--------- GET /v1/jobs ------------|
//! ```
//!
//! Host down: the lease lapses (no heartbeat for `lease_ttl_ms`); the
//! controller waits a grace period, confirms the agent does not answer,
//! marks the host down and stores a rescue job for each shared-storage
//! server (each created once). The rescues start only once the host is
//! proven fenced: with `fence` set in its last reply, the host's fence
//! process renews a lease on each shared pool and kills its guests when it
//! cannot ([`crate::fence`]); the controller waits, through other hosts'
//! `fence-lease` reads, until those leases stood still past the host's
//! promise. `docs/FENCING.md` has the details.
//!
//! Clean host shutdown: the stopping agent sends `host-shutdown`; with the
//! host's auto-migrate-on-host-shutdown policy the controller queues a live
//! migration for each running server and the agent waits until none runs
//! on it before it exits.

use crate::{Client, ClientError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tern_model::{HostFacts, PoolInfo};

/// A cluster API request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClusterRequest {
    /// An agent joins (or re-joins) and gets a lease.
    Register {
        /// What the host is and runs.
        report: HostReport,
    },
    /// An agent renews its lease; the report keeps servers current.
    Heartbeat {
        /// Host name.
        host: String,
        /// The lease from `register`.
        lease: i64,
        /// What the host runs now; left out when it is the report the
        /// controller last acknowledged (`digest` says so). A report is
        /// about 1.5 KB per domain, and decoding it on every heartbeat was
        /// most of what a heartbeat cost the controller.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report: Option<HostReport>,
        /// [`HostReport::digest`] of the report the host runs now, sent or not.
        #[serde(default)]
        digest: String,
    },
    /// Hosts.
    HostList,
    /// One host.
    HostShow {
        /// Host name.
        id: String,
    },
    /// Servers.
    ServerList,
    /// One server.
    ServerShow {
        /// Server name.
        id: String,
    },
    /// Cold migration (or `rescue_mode`: restart a dead host's server elsewhere).
    ServerMigrate {
        /// Server name.
        id: String,
        /// Options.
        #[serde(default)]
        opts: MigrateRequestOptions,
    },
    /// Live migration.
    ServerLiveMigrate {
        /// Server name.
        id: String,
        /// Options.
        #[serde(default)]
        opts: MigrateRequestOptions,
    },
    /// Which hosts qualify, and why each other does not.
    MigrateForecast {
        /// Server name.
        id: String,
        /// Plan a live migration (default: as the server's state implies).
        #[serde(default)]
        live: Option<bool>,
        /// Options.
        #[serde(default)]
        opts: MigrateRequestOptions,
    },
    /// Cancel a queued or running job (by job id or server name).
    MigrateCancel {
        /// Job id or server name.
        id: String,
    },
    /// Jobs.
    JobList,
    /// Evacuate a host: live for running servers, cold for stopped.
    HostMaintenance {
        /// Host name.
        id: String,
    },
    /// A host in maintenance takes new servers again (its evacuated
    /// servers stay where they went).
    HostMaintenanceLeave {
        /// Host name.
        id: String,
    },
    /// Per-host evacuation policy.
    HostAutoMigrate {
        /// Host name.
        id: String,
        /// Restart servers elsewhere when the host dies.
        on_host_down: Option<bool>,
        /// Move servers away when the host shuts down cleanly.
        on_host_shutdown: Option<bool>,
    },
    /// An agent says its host is shutting down cleanly: with the host's
    /// auto-migrate-on-host-shutdown policy, its running servers are
    /// live-migrated away (the agent waits for them before it exits).
    HostShutdown {
        /// Host name.
        host: String,
    },
    /// The controller answering and the current leader.
    Status,
}

/// Reply to [`ClusterRequest::HostShutdown`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReply {
    /// The controller moves the running servers away; wait for them.
    pub evacuating: bool,
    /// The live migrations queued for them.
    pub jobs: Vec<JobRecord>,
    /// Why nothing moves, when `evacuating` is false.
    pub reason: Option<String>,
}

/// Options of `server-migrate` / `server-live-migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateRequestOptions {
    /// Only this host.
    pub prefer_host: Option<String>,
    /// Cold: start it on the destination.
    pub auto_start: bool,
    /// Cold: restart a dead host's server from shared storage.
    pub rescue_mode: bool,
    /// Live: accept another CPU model or microcode.
    pub skip_cpu_check: bool,
    /// Live: accept another kernel.
    pub skip_kernel_check: bool,
    /// Live: QEMU's migration stream over TLS.
    pub enable_tls: bool,
    /// Live: finish quickly (post-copy after the first pass).
    pub quickly_finish: bool,
    /// Live: bandwidth cap, MB/s.
    pub max_bandwidth_mb: Option<u64>,
    /// Live: keep the destination's guest when it fails (debugging).
    pub keep_dest_guest_on_failed: bool,
}

/// What an agent tells the controller about its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostReport {
    /// Host name, unique in the cluster.
    pub name: String,
    /// Where the controller (and other agents) reach its host API.
    pub api_uri: String,
    /// Facts from nodeinfo.
    pub facts: HostFacts,
    /// Pools.
    pub pools: Vec<PoolInfo>,
    /// Bridges guests can join.
    pub networks: Vec<String>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Defined and transient domains.
    pub domains: Vec<DomainReport>,
    /// The Ceph clients of this host's running guests (their RBD images'
    /// watchers and exclusive lock owners): what the controller blocklists when the host is declared
    /// down, before any of them is rescued.
    #[serde(default)]
    pub rbd_clients: Vec<RbdClient>,
}

impl HostReport {
    /// A digest of the report (SHA-256 of its JSON, in hex): equal for
    /// equal reports, so a heartbeat can name its report without sending it.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// One RBD image a running guest has open, and the client address its
/// QEMU has in the Ceph cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbdClient {
    /// The domain.
    pub domain: String,
    /// The rbd pool (its name on the hosts).
    pub pool: String,
    /// The image.
    pub image: String,
    /// The client address (`IP:PORT/NONCE`).
    pub addr: String,
    /// Whether this client holds the image's exclusive lock (the writer;
    /// librbd takes it at the guest's first write).
    #[serde(default)]
    pub lock_owner: bool,
}

/// One domain on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainReport {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Whether QEMU runs it (running or paused).
    pub active: bool,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Disks.
    pub disks: Vec<DiskReport>,
    /// Bridges its interfaces join.
    pub networks: Vec<String>,
    /// Its machine type (the versioned one it was pinned to at start).
    #[serde(default)]
    pub machine: Option<String>,
    /// Its definition as libvirt XML.
    pub xml: String,
}

/// One disk of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    /// Target, e.g. "vda".
    pub target: String,
    /// Image path.
    pub path: String,
    /// Pool holding it, if any.
    pub pool: Option<String>,
    /// Whether that pool is shared.
    pub shared: bool,
    /// Bytes of the image.
    pub bytes: u64,
}

/// Answer to `register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReply {
    /// The lease to renew.
    pub lease: i64,
    /// The lease lapses after this long without a heartbeat.
    pub lease_ttl_ms: u64,
    /// Send a heartbeat this often.
    pub heartbeat_ms: u64,
    /// Arm the host's fence: it kills the guests when it cannot renew its
    /// storage leases (losing the controller alone kills nothing).
    pub fence: bool,
    /// Host API URIs of the other online hosts (informational; fencing
    /// follows the storage, not the peers).
    #[serde(default)]
    pub peers: Vec<String>,
}

/// Answer to `heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The lease is gone: register again.
    pub reregister: bool,
    /// As in [`RegisterReply::fence`].
    pub fence: bool,
    /// Empty: the list is in [`RegisterReply::peers`] (sent on every
    /// heartbeat it cost O(hosts) bytes each, O(hosts²) per interval).
    #[serde(default)]
    pub peers: Vec<String>,
    /// The heartbeat left its report out, and the controller's copy has
    /// another digest (it restarted onto an older record, say): send the
    /// whole report now. The lease was renewed all the same.
    #[serde(default)]
    pub send_report: bool,
}

/// A host's health, as the controller's state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Lease current.
    Online,
    /// Lease lapsed at `since_ms`; within the grace period.
    Lapsed {
        /// When the lapse was seen, ms since the epoch.
        since_ms: u64,
    },
    /// Confirmed gone (lease lapsed, grace over, agent unreachable).
    Down {
        /// When it was declared down.
        since_ms: u64,
    },
}

/// A host as the controller keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The last report.
    pub report: HostReport,
    /// Health.
    pub status: HostStatus,
    /// The current lease.
    pub lease: i64,
    /// Excluded from scheduling (being evacuated).
    pub maintenance: bool,
    /// Restart its servers elsewhere when it dies.
    pub auto_migrate_on_host_down: bool,
    /// Move its servers away when it shuts down cleanly.
    pub auto_migrate_on_host_shutdown: bool,
    /// It said it is shutting down: excluded from scheduling until it
    /// registers again.
    #[serde(default)]
    pub shutting_down: bool,
    /// [`HostReport::digest`] of `report`, so a heartbeat that sends only
    /// a digest is checked without encoding the report again.
    #[serde(default)]
    pub report_digest: String,
}

impl HostRecord {
    /// The record of a host that just registered with `report` under
    /// `lease`: online, schedulable, no policies turned on yet.
    pub fn online(report: HostReport, lease: i64) -> HostRecord {
        HostRecord {
            report_digest: report.digest(),
            report,
            status: HostStatus::Online,
            lease,
            maintenance: false,
            auto_migrate_on_host_down: false,
            auto_migrate_on_host_shutdown: false,
            shutting_down: false,
        }
    }
}

/// Server states, as Cloudpods names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Running.
    Running,
    /// Defined, not running.
    Ready,
    /// A migration was accepted and waits for its turn.
    StartMigrate,
    /// Moving while stopped (cold) or being restarted elsewhere (rescue).
    Migrating,
    /// Moving while running.
    LiveMigrating,
    /// The last migration failed; the reason is in `error`.
    MigrateFailed,
    /// Its host is down and it is not restarted elsewhere.
    Unknown,
    /// Its host died and its local disks went with it.
    Lost,
}

impl ServerState {
    /// A job owns the server: reports must not overwrite its state.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            ServerState::StartMigrate | ServerState::Migrating | ServerState::LiveMigrating
        )
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// A server as the controller keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The domain as its host last reported it.
    pub domain: DomainReport,
    /// Host it belongs to.
    pub host: String,
    /// State.
    pub state: ServerState,
    /// Why the last migration failed.
    pub error: Option<String>,
    /// A host this server was rescued from: if it returns with a stale
    /// definition, the controller removes that definition.
    pub rescued_from: Option<String>,
}

/// Kinds of jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Cold migration.
    Migrate,
    /// Live migration.
    LiveMigrate,
    /// Restart of a dead host's server elsewhere.
    Rescue,
}

/// Job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the limits.
    Queued,
    /// Running towards `dest`.
    Running,
    /// Done.
    Succeeded,
    /// Failed; see `error`.
    Failed,
    /// Cancelled by the operator.
    Cancelled,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A migration job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// Kind.
    pub kind: JobKind,
    /// Server name.
    pub server: String,
    /// Host it leaves.
    pub source: String,
    /// Host it goes to, once chosen.
    pub dest: Option<String>,
    /// State.
    pub state: JobState,
    /// The migration id the agents know it by.
    pub migration_id: String,
    /// Options.
    pub opts: MigrateRequestOptions,
    /// Why it waits, or why it failed.
    pub note: Option<String>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Started, ms since the epoch.
    pub started_ms: Option<u64>,
    /// Finished, ms since the epoch.
    pub finished_ms: Option<u64>,
    /// The server's state before the job, restored on cancel.
    pub prior_state: ServerState,
    /// The operator asked to cancel it while it ran.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Attempts that failed so far (a rescue is retried with a backoff).
    #[serde(default)]
    pub attempts: u32,
    /// A queued retry waits until then, ms since the epoch.
    #[serde(default)]
    pub retry_at_ms: Option<u64>,
    /// Term of the leader that last wrote it (its election key's revision;
    /// the write was refused had another controller led by then).
    #[serde(default)]
    pub term: Option<u64>,
}

/// One host's verdict in `migrate-forecast`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForecastRow {
    /// Host.
    pub host: String,
    /// Whether it qualifies.
    pub ok: bool,
    /// Its score, or why not.
    pub detail: String,
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// This controller's id.
    pub id: String,
    /// The leader's id, if any.
    pub leader: Option<String>,
}

/// How long an agent waits after its `failures`-th failed call in a row
/// (1 for the first) before the next: the protocol's retry rule, which
/// the agent and `tern-bench cluster-scale`'s simulated agents share.
///
/// Agents cut off together (a controller restarting, a switch rebooting)
/// must not come back as one herd: the controller admits only so many TLS
/// handshakes at once (`--max-anonymous-clients`) and turns away the rest,
/// who would all retry together again. So every wait is partly random
/// (`unit_random` in [0, 1), half of the wait at most), and an agent that
/// is not registered doubles its wait from 0.5 s up to
/// [`MAX_REGISTER_RETRY`]. A registered agent keeps retrying within half
/// a heartbeat period to a whole one, so that a short outage costs it no
/// lease.
pub fn retry_delay(
    failures: u32,
    registered: Option<std::time::Duration>,
    unit_random: f64,
) -> std::time::Duration {
    use std::time::Duration;
    let full = match registered {
        Some(heartbeat) => heartbeat.max(Duration::from_millis(100)),
        None => {
            let doublings = failures.saturating_sub(1).min(16);
            (Duration::from_millis(500) * (1u32 << doublings)).min(MAX_REGISTER_RETRY)
        }
    };
    full.mul_f64(0.5 + 0.5 * unit_random.clamp(0.0, 1.0))
}

/// The longest wait between two registration attempts.
pub const MAX_REGISTER_RETRY: std::time::Duration = std::time::Duration::from_secs(16);

/// How long an agent waits for its registration to be answered. A
/// heartbeat must come back within a fraction of the lease (agents give it
/// 2 s), but a registration writes the host's record and every server it
/// reports, and when thousands of hosts register at once (a controller or
/// store restart) the store is at its busiest. With the heartbeat's 2 s,
/// 5 000 agents on etcd abandoned 97 % of their registrations just before
/// they finished (38 000 leases granted in two minutes for 934 hosts
/// registered), each retry adding to the load that made them slow.
pub const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A client for a controller URL, with client certificates from
/// `$TERN_PKI_DIR` (else /etc/pki/tern): see [`controller_client_with_pki`].
pub fn controller_client(url: &str) -> Result<Client, ClientError> {
    controller_client_with_pki(url, &tern_pki::PkiDir::from_env())
}

/// A client for a controller URL: `https://HOST:PORT` (mutual TLS,
/// presenting `pki`'s `clientcert.pem`, the controller checked against its
/// `cacert.pem`), or for development controllers started with
/// `--auth none`: `http://HOST:PORT`, `HOST:PORT` or `tern+tcp://HOST:PORT`.
pub fn controller_client_with_pki(
    url: &str,
    pki: &tern_pki::PkiDir,
) -> Result<Client, ClientError> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (
            false,
            url.strip_prefix("http://")
                .or_else(|| url.strip_prefix("tern+tcp://"))
                .unwrap_or(url),
        ),
    };
    let hostport = rest.split('/').next().unwrap_or("");
    let (host, port) = hostport
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| ClientError::Http {
            target: url.to_string(),
            message: "a controller URL is https://HOST:PORT".into(),
        })?;
    if tls {
        return Client::tls(host, port, pki);
    }
    Ok(Client::tcp(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistered_agents_back_off_and_spread_out() {
        use std::time::Duration;
        let ms = |f, r| retry_delay(f, None, r).as_millis();
        assert_eq!((ms(1, 0.0), ms(1, 0.999_999)), (250, 499));
        assert_eq!(ms(2, 0.0), 500);
        assert_eq!(ms(4, 1.0), 4000);
        // Capped, however long the outage.
        assert_eq!(retry_delay(40, None, 1.0), MAX_REGISTER_RETRY);
        // Registered: within one heartbeat, never growing.
        let hb = Some(Duration::from_secs(1));
        assert_eq!(retry_delay(1, hb, 0.0), retry_delay(30, hb, 0.0));
        assert_eq!(retry_delay(30, hb, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn requests_are_tagged_and_strict() {
        let r = ClusterRequest::ServerLiveMigrate {
            id: "vm".into(),
            opts: MigrateRequestOptions {
                skip_cpu_check: true,
                ..Default::default()
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.starts_with(r#"{"op":"server-live-migrate""#), "{s}");
        assert_eq!(serde_json::from_str::<ClusterRequest>(&s).unwrap(), r);
        assert!(
            serde_json::from_str::<ClusterRequest>(r#"{"op":"server-show","id":"a","x":1}"#)
                .is_err()
        );
        assert_eq!(ServerState::LiveMigrating.to_string(), "live_migrating");
    }

    #[test]
    fn controller_urls() {
        assert_eq!(
            controller_client("http://127.0.0.1:7000")
                .unwrap()
                .describe(),
            "127.0.0.1:7000"
        );
        assert_eq!(controller_client("h:1/").unwrap().describe(), "h:1");
        assert!(controller_client("nowhere").is_err());
    }
}
