//! Storage pools and volumes.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A directory pool (`pool-define-as NAME dir --target PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDef {
    /// Pool name, unique per host.
    pub name: String,
    /// Directory holding the volumes.
    pub target: PathBuf,
    /// Whether other hosts see the same files (NFS, CephFS...). Live
    /// migration without storage copy is only safe for disks in shared pools.
    pub shared: bool,
    /// Start the pool when the agent starts.
    pub autostart: bool,
}

/// What `pool-list` / `pool-info` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// The definition.
    #[serde(flatten)]
    pub def: PoolDef,
    /// Whether the pool is started (its directory checked and usable).
    pub active: bool,
    /// Bytes of the filesystem holding the pool.
    pub capacity: u64,
    /// Bytes used on that filesystem.
    pub allocation: u64,
    /// Bytes free for non-root users on that filesystem.
    pub available: u64,
}

/// What `vol-list` / `vol-info` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// File name inside the pool.
    pub name: String,
    /// Absolute path.
    pub path: PathBuf,
    /// "qcow2" or "raw" (as qemu-img reports it).
    pub format: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes allocated on the host.
    pub allocation: u64,
    /// Backing file, if any.
    pub backing: Option<PathBuf>,
}
