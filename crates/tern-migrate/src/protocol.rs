//! The agent-to-agent migration protocol, version 1.
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
//! a receiver refuses any other version with [`ProtocolError::Version`]
//! before acting. Every message names the migration by a random id, so a
//! late Finish for an old attempt cannot touch a newer one.

use crate::options::MigrateOptions;
use serde::{Deserialize, Serialize};
use tern_model::Domain;
use thiserror::Error;
use uuid::Uuid;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Protocol-level refusals.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The peer speaks another version.
    #[error("peer speaks migration protocol version {got}, this agent speaks {PROTOCOL_VERSION}; upgrade the older agent")]
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
    if got == PROTOCOL_VERSION {
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
}

/// Where to send memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingTarget {
    /// Address the destination QEMU listens on.
    pub host: String,
    /// Port.
    pub port: u16,
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
    /// Where copied disks are exported.
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
                port: 5
            }
            .qemu_uri(),
            "tcp:[::1]:5"
        );
    }

    #[test]
    fn unknown_versions_are_refused_clearly() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let e = check_version(7).unwrap_err();
        assert!(e.to_string().contains("version 7"));
        // Unknown fields (a newer peer's options) are refused, not ignored.
        let bad = r#"{"live":true,"teleport":true}"#;
        assert!(serde_json::from_str::<MigrateOptions>(bad).is_err());
    }
}
