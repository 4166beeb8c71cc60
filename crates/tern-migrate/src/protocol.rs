//! The agent-to-agent migration protocol, version 2.
//!
//! Messages travel as JSON inside the host API (`tern-api`'s `Request`
//! variants `migrate-begin`, `migrate-prepare`, `migrate-perform`,
//! `migrate-finish`, `migrate-confirm`), so the same transport, limits and
//! (later) mutual TLS cover them. Whoever drives the migration — the CLI in
//! managed direct mode, the source agent with `--p2p` — sends, in order:
//!
//! ```text
//!  driver ──Begin{domain, options}──────────────────▶ source   → BeginReply{description}
//!  driver ──Prepare{version, id, description, opts}─▶ dest     → PrepareReply{version, id, incoming}
//!  driver ──Perform{id, incoming, options}──────────▶ source   (QEMU → QEMU; poll JobInfo)
//!  driver ──Finish{version, id, success}────────────▶ dest     → FinishReply{resumed}
//!  driver ──Confirm{id, success: resumed}───────────▶ source
//! ```
//!
//! Every message that crosses between agents carries [`PROTOCOL_VERSION`];
//! a receiver accepts its own version and the one before
//! ([`OLDEST_SUPPORTED_VERSION`]), so hosts can be upgraded one at a time,
//! and refuses any other with [`ProtocolError::Version`] before acting.
//! Replies carry the version too, and the driver checks them. Every message
//! names the migration by a random id, so a late Finish for an old attempt
//! cannot touch a newer one.
//!
//! # Settling a migration without its driver (version 2)
//!
//! The driver may vanish at any moment (`tern` killed, a link cut, an agent
//! restarted after `kill -9`). Each side then settles the migration by
//! itself, asking the other where it stands:
//!
//! ```text
//!  source ──Query{version, id}──▶ destination → QueryReply{version, role, view}
//!  source ──Finish{success}─────▶ destination    (only if the view is Prepared{complete})
//!  destination ──Query{id}──────▶ source      → QueryReply (orphan timer)
//! ```
//!
//! To reach each other, Perform names the destination agent's URI
//! ([`PerformRequest::dest_uri`]) and Prepare the source's
//! ([`PrepareRequest::source_uri`]). `crate::recovery` decides from the
//! answer; the rule of safety is written there.
//!
//! # Raising the version
//!
//! Raise [`PROTOCOL_VERSION`] when a message gains a field the receiver
//! must understand, or a new message is needed; set
//! [`OLDEST_SUPPORTED_VERSION`] to the previous version. New fields are
//! `#[serde(default)]` so the previous version's messages still parse, and
//! code that needs a new message checks the peer's version first (a
//! version-1 peer answers a `migrate-query` with "unknown request", which
//! the asker treats as "unreachable": it keeps waiting and never resumes on
//! that answer). Never remove a field while the previous version is
//! accepted.
//!
//! # Transports of the guest's bytes
//!
//! - **Native** (default): QEMU to QEMU over TCP, at the [`IncomingTarget`]
//!   the destination announces in Prepare (and NBD at [`NbdTarget`]).
//! - **Native TLS** (`--tls`): the same sockets, but both QEMUs wrap them in
//!   their own TLS (`tls-creds-x509` objects built from each agent's pki
//!   directory: the destination is the server, the source the client, and
//!   the source checks the destination's certificate against
//!   `IncomingTarget::host`).
//! - **Tunnelled** (`--tunnelled`, needs `--p2p`): neither QEMU touches the
//!   network. The destination agent opens a *dedicated* mutual-TLS listener
//!   for this one migration (a port from its migration range, not its API
//!   listener, so bulk bytes never queue behind API limits and the port
//!   closes with the migration) and announces it in Prepare as an
//!   [`IncomingTarget`] with `tunnel: true` (and, with disks, as the
//!   [`NbdTarget`] address). The source QEMU migrates to a unix socket of
//!   its agent, which carries every connection QEMU opens — the main
//!   channel, each multifd channel, each NBD connection of a disk mirror —
//!   as its own TLS stream:
//!
//! ```text
//!  src QEMU ──unix──▶ src agent ══TLS 1.3 (mutual)══▶ dst agent ──unix──▶ dst QEMU
//!                     │ TunnelHello{id, stream} ─────▶ │ checks id, CN; connects
//!                     │ ◀──────────── TunnelReply code │ the stream's local socket
//!                     │ ◀═════════ raw bytes, both ways ═════════▶ │
//! ```
//!
//! A stream opens with a fixed 32-byte [`TunnelHello`] (magic, version,
//! migration id, stream kind) and one reply byte ([`TunnelReply`]); after
//! an `Ok` the TLS stream is a transparent byte pipe until either QEMU
//! closes. From then on each agent seals and opens the stream's TLS 1.3
//! records itself with the keys the handshake agreed (no session tickets,
//! no key updates); a direction ends with a `close_notify` alert, and a FIN
//! without one is a truncated stream. The destination accepts streams only for the migration it
//! prepared, only from certificates its access rules allow to change
//! things, and stops accepting once the migration ends.

use crate::options::MigrateOptions;
use serde::{Deserialize, Serialize};
use tern_model::Domain;
use thiserror::Error;
use uuid::Uuid;

mod tunnel;
pub use tunnel::*;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest version this build still accepts (the previous one).
pub const OLDEST_SUPPORTED_VERSION: u32 = 1;

/// Protocol-level refusals.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The peer speaks another version.
    #[error("peer speaks migration protocol version {got}, this agent speaks {OLDEST_SUPPORTED_VERSION} to {PROTOCOL_VERSION}; upgrade the older agent")]
    Version {
        /// Version received.
        got: u32,
    },
    /// A message names a migration this agent does not know.
    #[error("no migration {0} is in progress here; it may have been cancelled or timed out")]
    UnknownMigration(Uuid),
}

/// Checks a received version.
pub fn check_version(got: u32) -> Result<(), ProtocolError> {
    if (OLDEST_SUPPORTED_VERSION..=PROTOCOL_VERSION).contains(&got) {
        Ok(())
    } else {
        Err(ProtocolError::Version { got })
    }
}

/// What the source says about the guest (Begin's reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeginReply {
    /// Version.
    pub version: u32,
    /// The definition the destination must start (after `--xml`/`--dname`).
    pub domain: Domain,
    /// Whether the guest runs (offline migration moves definitions only).
    pub active: bool,
    /// Disks to copy along, when storage is migrated.
    #[serde(default)]
    pub disks: Vec<DiskCopy>,
    /// Files to copy, for a cold migration.
    #[serde(default)]
    pub files: Vec<ColdFile>,
    /// The options every later phase must use, when the source changed
    /// them (the policy's start plan); absent: the ones given.
    #[serde(default)]
    pub options: Option<MigrateOptions>,
    /// How the destination reaches the source agent (version 2).
    #[serde(default)]
    pub source_uri: Option<String>,
    /// With `--tls`: the subject DN of the certificate the source's QEMU
    /// presents (its agent's `clientcert.pem`), which the destination's
    /// QEMU alone accepts (`tls-authz`).
    #[serde(default)]
    pub tls_identity: Option<String>,
    /// The source agent's own UEFI variable directory. A store there was
    /// placed by the agent (not chosen by the operator) and moves to the
    /// destination agent's own directory.
    #[serde(default)]
    pub nvram_dir: Option<std::path::PathBuf>,
    /// The Ceph fsid of each RBD disk's cluster as the source sees it, by
    /// target: the destination refuses a disk its monitors place in
    /// another cluster (issue 21).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ceph_fsids: std::collections::BTreeMap<String, String>,
    /// The source host's own addresses: the destination's guard hands
    /// QEMU only connections from these (empty: from any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<std::net::IpAddr>,
}

/// How one disk's contents reach the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMode {
    /// The whole chain, flattened into one image.
    Full,
    /// Only the top image; the backing chain is already there.
    Top,
}

/// A disk the destination must create and receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCopy {
    /// Target device, e.g. "vda".
    pub target: String,
    /// The source pool holding it, if any (the destination uses the pool of
    /// the same name unless `--target-pool`).
    pub pool: Option<String>,
    /// File name inside the pool.
    pub volume: String,
    /// "qcow2" or "raw".
    pub format: String,
    /// Virtual size, bytes.
    pub virtual_size: u64,
    /// Backing file and its format (kept for `Top`).
    pub backing: Option<(std::path::PathBuf, String)>,
    /// Full or top-only.
    pub mode: CopyMode,
}

/// One image file of a cold migration (a disk's top image or one of its
/// backing files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdFile {
    /// Index in the list.
    pub id: u32,
    /// Disk it belongs to, e.g. "vda".
    pub target: String,
    /// 0 for the top image, 1 for its backing file, and so on.
    pub depth: u32,
    /// Source pool, if any (the destination uses the pool of the same name
    /// unless `--target-pool`).
    pub pool: Option<String>,
    /// File name.
    pub volume: String,
    /// Image format.
    pub format: String,
    /// File length, bytes.
    pub size: u64,
    /// Bytes allocated on the source.
    pub allocated: u64,
    /// File name of its backing file (the entry with `depth + 1`).
    pub backing_volume: Option<String>,
    /// Transfer session id, hex; stable across retries of the same copy so
    /// that a second attempt resumes.
    pub session: String,
    /// Path on the source (the source reads it; the destination never uses it).
    pub source_path: std::path::PathBuf,
    /// The copy's MAC key (64 hex digits), sent only over the agents'
    /// authenticated API, never on the data connection: the destination's
    /// receiver accepts only a sender holding it and checks every chunk's
    /// MAC (see `tern_transfer::Checksum::Mac`). Stable across retries,
    /// like `session`.
    #[serde(default)]
    pub mac_key: Option<SecretHex>,
    /// The guest's UEFI variable store (`<nvram>`), not a disk: it goes to
    /// the destination agent's NVRAM directory, not to a pool.
    #[serde(default)]
    pub nvram: bool,
}

/// A secret as hex; `Debug` never shows it, so requests logged with `{:?}`
/// do not leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHex(pub String);

impl std::fmt::Debug for SecretHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHex(..)")
    }
}

/// Where the destination receives cold files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdTarget {
    /// Address.
    pub host: String,
    /// (file id, port) pairs.
    pub ports: Vec<(u32, u16)>,
}

/// Where the destination exports the disks it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdTarget {
    /// Address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// (target dev, export name) pairs.
    pub exports: Vec<(String, String)>,
}

/// Ask the destination to get ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareRequest {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
    /// The guest.
    pub domain: Domain,
    /// Options (capabilities must match the source's).
    pub options: MigrateOptions,
    /// The source host's name, for logs.
    pub source_host: String,
    /// Disks to receive.
    #[serde(default)]
    pub disks: Vec<DiskCopy>,
    /// Files to receive, for a cold migration.
    #[serde(default)]
    pub files: Vec<ColdFile>,
    /// The source agent's URI, so an orphaned destination can ask it where
    /// the migration stands (version 2).
    #[serde(default)]
    pub source_uri: Option<String>,
    /// The domain's name on the source (version 2).
    #[serde(default)]
    pub source_name: Option<String>,
    /// [`BeginReply::tls_identity`], relayed by the driver.
    #[serde(default)]
    pub source_tls_identity: Option<String>,
    /// [`BeginReply::nvram_dir`], relayed by the driver.
    #[serde(default)]
    pub source_nvram_dir: Option<std::path::PathBuf>,
    /// [`BeginReply::ceph_fsids`], relayed by the driver.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub source_ceph_fsids: std::collections::BTreeMap<String, String>,
    /// [`BeginReply::addresses`], relayed by the driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_addresses: Vec<std::net::IpAddr>,
}

/// Where to send memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingTarget {
    /// Address the destination QEMU (or, tunnelled, agent) listens on.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The address is the destination agent's mutual-TLS tunnel listener,
    /// not QEMU: the source agent carries QEMU's connections there.
    #[serde(default)]
    pub tunnel: bool,
}

impl IncomingTarget {
    /// QEMU's URI for it.
    pub fn qemu_uri(&self) -> String {
        if self.host.contains(':') {
            format!("tcp:[{}]:{}", self.host, self.port)
        } else {
            format!("tcp:{}:{}", self.host, self.port)
        }
    }
}

/// The destination is ready (or, for offline, done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareReply {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
    /// Where QEMU listens; `None` for offline migration.
    pub incoming: Option<IncomingTarget>,
    /// Where copied disks are exported (tunnelled: the tunnel listener).
    #[serde(default)]
    pub nbd: Option<NbdTarget>,
    /// Where cold files go.
    #[serde(default)]
    pub cold: Option<ColdTarget>,
}

/// Tell the source to migrate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerformRequest {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
    /// Domain name on the source.
    pub name: String,
    /// Where to send memory.
    pub target: IncomingTarget,
    /// Where to mirror disks.
    #[serde(default)]
    pub nbd: Option<NbdTarget>,
    /// Where to send cold files.
    #[serde(default)]
    pub cold: Option<ColdTarget>,
    /// The files, for a cold migration.
    #[serde(default)]
    pub files: Vec<ColdFile>,
    /// Options.
    pub options: MigrateOptions,
    /// The destination agent's URI, so a source whose driver vanished can
    /// ask it where the migration stands (version 2).
    #[serde(default)]
    pub dest_uri: Option<String>,
    /// The domain's name on the destination (version 2).
    #[serde(default)]
    pub dest_name: Option<String>,
}

/// Tell the destination how Perform ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishRequest {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
    /// Domain name on the destination.
    pub name: String,
    /// Whether QEMU completed on the source.
    pub success: bool,
    /// Options (`--suspend`, `--persistent`...).
    pub options: MigrateOptions,
}

/// The destination's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishReply {
    /// Version.
    pub version: u32,
    /// Whether the guest now runs (or is kept, with `--suspend`) on the destination.
    pub resumed: bool,
    /// Why not, if not.
    pub error: Option<String>,
    /// When the guest started running here, on the destination QEMU's
    /// clock (its RESUME event, µs since the epoch), if this Finish saw
    /// it: with the source QEMU's STOP, the pause the guest really had,
    /// which QEMU's own downtime figure does not cover (it ends when the
    /// source has sent everything, not when the destination runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at_us: Option<u64>,
}

/// Tell the source how the destination ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmRequest {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
    /// Domain name on the source.
    pub name: String,
    /// Whether the destination took over.
    pub success: bool,
    /// Options (`--undefinesource`...).
    pub options: MigrateOptions,
}

/// Source to destination: the post-copy of migration `id` broke (or was
/// paused); listen for the source to resume it (version 2). The
/// destination pauses its side first if it still thinks it is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverRequest {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
}

/// Where the destination's QEMU waits for the recovery channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverReply {
    /// Version.
    pub version: u32,
    /// Address and port (`migrate-recover`).
    pub target: IncomingTarget,
}

/// "Where does migration `id` stand on your side?" (version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
}

/// The answer to a [`QueryRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryReply {
    /// Version.
    pub version: u32,
    /// Migration id.
    pub id: Uuid,
    /// The answering side's role, if it knows the migration.
    pub role: Option<crate::phase::Role>,
    /// Where it stands.
    pub view: crate::recovery::PeerView,
    /// Destination: its guest runs (its Finish ran `cont`). A post-copy may
    /// be paused only from then on: QEMU cannot recover an incoming copy
    /// that has not loaded the device state yet. Absent from version-1
    /// peers' replies, read as `false`.
    #[serde(default)]
    pub runs: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(v: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let s = serde_json::to_string(v).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&s).unwrap(), v);
    }

    #[test]
    fn messages_round_trip() {
        let id = Uuid::new_v4();
        let target = IncomingTarget {
            host: "10.0.0.2".into(),
            port: 49152,
            tunnel: false,
        };
        round_trip(&PrepareReply {
            version: PROTOCOL_VERSION,
            id,
            incoming: Some(target.clone()),
            nbd: Some(NbdTarget {
                host: "h".into(),
                port: 10809,
                exports: vec![("vda".into(), "drive-vda".into())],
            }),
            cold: None,
        });
        round_trip(&DiskCopy {
            target: "vda".into(),
            pool: Some("images".into()),
            volume: "g.qcow2".into(),
            format: "qcow2".into(),
            virtual_size: 1 << 30,
            backing: Some(("/b/base.qcow2".into(), "qcow2".into())),
            mode: CopyMode::Top,
        });
        round_trip(&PerformRequest {
            version: PROTOCOL_VERSION,
            id,
            name: "g".into(),
            target: target.clone(),
            nbd: None,
            cold: None,
            files: vec![],
            options: MigrateOptions {
                live: true,
                bandwidth_mib: Some(10),
                ..Default::default()
            },
            dest_uri: Some("tern+tcp://b/system".into()),
            dest_name: Some("g".into()),
        });
        round_trip(&QueryReply {
            version: PROTOCOL_VERSION,
            id,
            role: Some(crate::Role::Destination),
            view: crate::recovery::PeerView::Prepared { complete: true },
            runs: false,
        });
        round_trip(&FinishRequest {
            version: PROTOCOL_VERSION,
            id,
            name: "g".into(),
            success: true,
            options: MigrateOptions::default(),
        });
        round_trip(&FinishReply {
            version: PROTOCOL_VERSION,
            resumed: false,
            error: Some("x".into()),
            resumed_at_us: Some(1_796_675_190_654_228),
        });
        round_trip(&ConfirmRequest {
            version: PROTOCOL_VERSION,
            id,
            name: "g".into(),
            success: false,
            options: MigrateOptions::default(),
        });
        assert_eq!(target.qemu_uri(), "tcp:10.0.0.2:49152");
        assert_eq!(
            IncomingTarget {
                host: "::1".into(),
                port: 5,
                tunnel: false,
            }
            .qemu_uri(),
            "tcp:[::1]:5"
        );
    }

    #[test]
    fn tunnel_targets_say_so() {
        // A tunnel target says so; an old peer's target (no field) is native.
        let t = IncomingTarget {
            host: "h".into(),
            port: 1,
            tunnel: true,
        };
        round_trip(&t);
        let old: IncomingTarget = serde_json::from_str(r#"{"host":"h","port":1}"#).unwrap();
        assert!(!old.tunnel);
    }

    #[test]
    fn unknown_versions_are_refused_clearly() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        // The previous version is still spoken, so hosts upgrade one by one.
        assert!(check_version(PROTOCOL_VERSION - 1).is_ok());
        assert!(check_version(OLDEST_SUPPORTED_VERSION - 1).is_err());
        // A version-1 Perform (no dest_uri) still parses.
        let v1 = r#"{"version":1,"id":"00000000-0000-0000-0000-000000000001","name":"g",
            "target":{"host":"h","port":1},"options":{}}"#;
        assert!(serde_json::from_str::<PerformRequest>(v1).is_ok());
        let e = check_version(7).unwrap_err();
        assert!(e.to_string().contains("version 7"));
        // Unknown fields (a newer peer's options) are refused, not ignored.
        let bad = r#"{"live":true,"teleport":true}"#;
        assert!(serde_json::from_str::<MigrateOptions>(bad).is_err());
    }
}
