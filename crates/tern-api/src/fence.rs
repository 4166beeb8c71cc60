//! The storage lease a host keeps on each shared pool, as both sides see
//! it: the host's fence process writes it, other hosts read it for the
//! controller. See `docs/FENCING.md`.
//!
//! The record is a promise, in the style of sanlock's delta leases: "while
//! `counter` keeps changing I am alive; if it stops, my guests are dead at
//! most `fence_after_ms` after the start of my last counted renewal". A
//! reader judges expiry only by how long it has itself seen the same
//! `(instance, counter)`, on its own monotonic clock, never by comparing
//! clocks.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Magic of a lease file.
pub const LEASE_MAGIC: &str = "tern-fence-lease";
/// Format version of a lease file.
pub const LEASE_VERSION: u32 = 1;
/// Directory inside a pool's target holding one lease file per host.
pub const LEASE_DIR: &str = ".tern-fence";

/// One host's lease on one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// [`LEASE_MAGIC`].
    pub magic: String,
    /// [`LEASE_VERSION`].
    pub version: u32,
    /// The host (its cluster name).
    pub host: String,
    /// Random id of the fence process's life: a restarted fence process
    /// starts a new instance, which a reader also counts as a renewal.
    pub instance: String,
    /// Increases on every renewal.
    pub counter: u64,
    /// Whether the fence kills the host's guests when it cannot renew.
    /// Without that promise a lapsed lease proves nothing.
    pub armed: bool,
    /// The promise: guests are dead at most this long after the start of
    /// the last renewal that counted.
    pub fence_after_ms: u64,
    /// A renewal counts only if it completed within this long; a reader
    /// adds it to its wait (a slow write may land after it looked).
    pub io_timeout_ms: u64,
    /// Wall-clock time of the write, ms since the epoch: for people and
    /// logs only, never for deciding.
    pub written_ms: u64,
    /// The timeout of the watchdog the fence feeds after each counted
    /// renewal, ms; 0 when none is armed. A host with one stops its guests
    /// within its promise even if its fence process dies or freezes too.
    #[serde(default)]
    pub watchdog_ms: u64,
}

/// The lease file of `host` in a pool whose target is `pool_dir`.
pub fn lease_path(pool_dir: &Path, host: &str) -> PathBuf {
    pool_dir.join(LEASE_DIR).join(format!("{host}.lease"))
}

/// The lease file of `host` in the top directory of an NFS export that
/// only QEMU and the agents' NFS clients reach (no mount, no subdirectory).
pub fn nfs_lease_name(host: &str) -> String {
    format!("{LEASE_DIR}-{host}.lease")
}

/// Whether `host` is a name that can be a lease file's stem.
pub fn valid_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !host.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_paths_stay_in_the_pool() {
        assert_eq!(
            lease_path(Path::new("/p"), "a"),
            PathBuf::from("/p/.tern-fence/a.lease")
        );
        assert!(valid_host_name("host-1.example"));
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(!valid_host_name(bad), "{bad}");
        }
    }
}
