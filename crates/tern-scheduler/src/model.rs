//! What the scheduler sees of hosts, servers and the migration asked for.
//! Plain data, filled by the controller from its inventory.

use serde::{Deserialize, Serialize};

/// A storage pool as a host reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    /// Pool name (the same name on every host that sees a shared pool).
    pub name: String,
    /// Whether other hosts see the same files.
    pub shared: bool,
    /// Bytes free.
    pub free_bytes: u64,
    /// What identifies the storage beyond the name, when known (an rbd
    /// pool's `ceph:FSID/CEPHPOOL`): pools of one name with different
    /// identities are different storage.
    #[serde(default)]
    pub identity: Option<String>,
}

/// A host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostView {
    /// Unique host name.
    pub name: String,
    /// Whether it may receive guests now (up, not in maintenance).
    pub schedulable: bool,
    /// CPU `model name`.
    pub cpu_model: String,
    /// CPU microcode revision.
    pub microcode: String,
    /// Kernel release.
    pub kernel: String,
    /// Page size in bytes.
    pub page_size: u64,
    /// QEMU version, e.g. "7.2.22".
    pub qemu_version: String,
    /// vCPUs it may run in total.
    pub vcpus_total: u32,
    /// vCPUs its servers use.
    pub vcpus_used: u32,
    /// Memory it may give guests, MiB.
    pub memory_total_mib: u64,
    /// Memory its servers use, MiB.
    pub memory_used_mib: u64,
    /// Pools.
    pub pools: Vec<PoolView>,
    /// Networks (bridge names) guests can attach to.
    pub networks: Vec<String>,
    /// Machine types its QEMU offers (empty: not reported, not checked).
    #[serde(default)]
    pub machines: Vec<String>,
    /// Migrations arriving now.
    pub inbound: u32,
    /// Migrations leaving now.
    pub outbound: u32,
}

impl HostView {
    /// vCPUs still free.
    pub fn vcpus_free(&self) -> u32 {
        self.vcpus_total.saturating_sub(self.vcpus_used)
    }
    /// Memory still free, MiB.
    pub fn memory_free_mib(&self) -> u64 {
        self.memory_total_mib.saturating_sub(self.memory_used_mib)
    }
    /// The pool of that name.
    pub fn pool(&self, name: &str) -> Option<&PoolView> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// One disk of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskNeed {
    /// Pool holding it on the current host.
    pub pool: String,
    /// Whether that pool is shared (the file need not move).
    pub shared: bool,
    /// Bytes the destination must hold when the disk is copied.
    pub bytes: u64,
}

/// A server (guest) as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServerView {
    /// Server name.
    pub name: String,
    /// Host it is on.
    pub host: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Disks.
    pub disks: Vec<DiskNeed>,
    /// Networks it attaches to.
    pub networks: Vec<String>,
    /// Its machine type, e.g. `pc-q35-10.0`.
    #[serde(default)]
    pub machine: Option<String>,
}

/// Which kind of move is planned; the live checks apply to `Live` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MoveKind {
    /// Shut-off guest: definition and disks move.
    #[default]
    Cold,
    /// Running guest: memory moves while it runs.
    Live,
    /// Restart on another host after its host died (shared storage only).
    Rescue,
}

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MoveRequest {
    /// Kind of move.
    pub kind: MoveKind,
    /// `--prefer-host`: only this host is considered.
    pub prefer_host: Option<String>,
    /// `--skip-cpu-check`.
    pub skip_cpu_check: bool,
    /// `--skip-kernel-check`.
    pub skip_kernel_check: bool,
}
