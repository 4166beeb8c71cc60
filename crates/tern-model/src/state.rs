//! Run-time states of domains and facts about hosts.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A domain's state as virsh names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainState {
    /// QEMU runs the guest's vCPUs.
    Running,
    /// QEMU is alive, vCPUs stopped.
    Paused,
    /// Shutting down after an ACPI request.
    InShutdown,
    /// No QEMU process.
    ShutOff,
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::InShutdown => "in shutdown",
            DomainState::ShutOff => "shut off",
        })
    }
}

/// Why a domain is in its state (virsh `domstate --reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateReason {
    /// Booted normally.
    Booted,
    /// Resumed after a pause.
    Unpaused,
    /// Paused by the user.
    User,
    /// Arrived by migration (running) or paused for migration.
    Migrated,
    /// Started on the destination but not yet resumed.
    Incoming,
    /// The guest powered itself off.
    Shutdown,
    /// Killed by `destroy`.
    Destroyed,
    /// QEMU died without a clean shutdown.
    Crashed,
    /// Never started since being defined.
    Unknown,
    /// Resumed after the agent restarted and re-attached.
    Reattached,
}

impl fmt::Display for StateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateReason::Booted => "booted",
            StateReason::Unpaused => "unpaused",
            StateReason::User => "user",
            StateReason::Migrated => "migrated",
            StateReason::Incoming => "incoming migration",
            StateReason::Shutdown => "shutdown",
            StateReason::Destroyed => "destroyed",
            StateReason::Crashed => "crashed",
            StateReason::Unknown => "unknown",
            StateReason::Reattached => "reattached",
        })
    }
}

/// Host facts that the scheduler filters on (`nodeinfo` / `hostinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// CPU architecture, e.g. "x86_64".
    pub arch: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `microcode` from /proc/cpuinfo.
    pub microcode: String,
    /// CPU flags.
    pub cpu_flags: Vec<String>,
    /// Logical CPUs.
    pub cpus: u32,
    /// Sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// Threads per core.
    pub threads_per_core: u32,
    /// CPU MHz.
    pub mhz: u32,
    /// Memory in KiB.
    pub memory_total_kib: u64,
    /// Available memory in KiB.
    pub memory_free_kib: u64,
    /// `uname -r`.
    pub kernel: String,
    /// Page size in bytes.
    pub page_size: u64,
    /// QEMU version string, e.g. "7.2.22".
    pub qemu_version: String,
    /// Accelerator in use: "kvm" or "tcg".
    pub accelerator: String,
    /// Machine types this QEMU offers (versioned names and aliases): a
    /// guest pinned to a machine the QEMU lacks cannot start or arrive.
    #[serde(default)]
    pub machines: Vec<String>,
}
