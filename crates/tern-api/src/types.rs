//! Results of host API calls.

use serde::{Deserialize, Serialize};
use tern_model::{DomainState, StateReason};
use uuid::Uuid;

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSummary {
    /// Run-time id while active (as virsh's Id column).
    pub id: Option<u32>,
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
    /// State.
    pub state: DomainState,
    /// Why it is in that state.
    pub reason: StateReason,
    /// Has a stored definition (false for `create`d transient domains).
    pub persistent: bool,
}

/// `dominfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// The `list` fields.
    #[serde(flatten)]
    pub summary: DomainSummary,
    /// OS type ("hvm").
    pub os_type: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Maximum memory, KiB.
    pub max_memory_kib: u64,
    /// Current memory, KiB.
    pub used_memory_kib: u64,
    /// QEMU's pid while active.
    pub pid: Option<u32>,
    /// Accelerator the running QEMU uses.
    pub accel: Option<String>,
    /// The serial console's pty, if any.
    pub console_pty: Option<String>,
    /// Where the console log is kept on the host.
    pub console_log: Option<String>,
    /// The uid and gid its QEMU runs as on this host, as libvirt's DAC
    /// label (`+UID:+GID`); absent when QEMU runs as root or the guest
    /// holds no uid yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_label: Option<String>,
}

/// One row of `domblklist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// Target device, e.g. "vda".
    pub target: String,
    /// Source path, "-" style `None` for an empty cdrom.
    pub source: Option<String>,
    /// "disk" or "cdrom".
    pub device: String,
}

/// A slice of the serial console log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleChunk {
    /// Text from `offset` (lossy UTF-8).
    pub data: String,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Whether the guest is still active (a follower stops when it is not).
    pub active: bool,
}

/// Result of `define` / `create` / `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRef {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
    /// Whether `define` updated an existing definition.
    #[serde(default)]
    pub updated: bool,
}

/// `srv-info`: the API server's connections and workers, and who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Connections open now (authenticated and not).
    pub clients: usize,
    /// Of those, connections still in their TLS handshake.
    pub anonymous_clients: usize,
    /// `max_clients`.
    pub max_clients: usize,
    /// `max_anonymous_clients`.
    pub max_anonymous_clients: usize,
    /// Ordinary workers running a request now.
    pub workers_busy: usize,
    /// `max_workers`.
    pub max_workers: usize,
    /// Priority workers running a request now.
    pub prio_workers_busy: usize,
    /// `prio_workers`.
    pub prio_workers: usize,
    /// The caller's identity as the server sees it (certificate CN,
    /// `unix`, `unix-ro`, `tcp`).
    pub identity: String,
    /// Whether the caller's connection is read-only.
    pub read_only: bool,
}

/// Which definitions `attach-device` and `detach-device` change, as
/// virsh's `--live`, `--config`, `--current` and `--persistent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceFlags {
    /// `--live`: the running guest.
    #[serde(default)]
    pub live: bool,
    /// `--config`: the stored definition.
    #[serde(default)]
    pub config: bool,
    /// `--current`: the running guest if it runs, else the stored one.
    #[serde(default)]
    pub current: bool,
    /// `--persistent`: both (the stored one only, when the guest is off).
    #[serde(default)]
    pub persistent: bool,
}

/// A network of a host (`net-list`, `net-info`): a name guests use for a
/// host bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The name `<source network=...>` uses.
    pub name: String,
    /// The host bridge.
    pub bridge: String,
    /// Whether the bridge exists on the host now.
    pub active: bool,
}
