//! Huge pages for a test: reserves pages of the host's default size and
//! mounts a hugetlbfs of that size in a temporary directory; on drop
//! unmounts it and gives the reservation back as it was.
//!
//! Declare it before the hosts whose guests use it, so they (and their
//! QEMUs) are dropped first.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `/sys/kernel/mm/hugepages/hugepages-<default>kB`.
fn pool_dir() -> PathBuf {
    let kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(2048);
    PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"))
}

fn read(name: &str) -> u64 {
    std::fs::read_to_string(pool_dir().join(name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Pages of the default size reserved on this host.
pub fn total() -> u64 {
    read("nr_hugepages")
}

/// Pages of the default size reserved and not in use.
pub fn free() -> u64 {
    read("free_hugepages")
}

/// A reservation and its hugetlbfs mount.
#[derive(Debug)]
pub struct HugePages {
    mount: tempfile::TempDir,
    before: u64,
}

impl HugePages {
    /// Reserves `count` more pages and mounts a hugetlbfs; panics when
    /// the kernel cannot reserve them.
    pub fn reserve(count: u64) -> HugePages {
        let before = total();
        let nr = pool_dir().join("nr_hugepages");
        std::fs::write(&nr, (before + count).to_string()).expect("write nr_hugepages");
        assert!(
            total() >= before + count,
            "the kernel reserved {} of {} huge pages asked for (memory too fragmented?)",
            total().saturating_sub(before),
            count
        );
        let mount = tempfile::Builder::new()
            .prefix("tern-hugetlbfs-")
            .tempdir()
            .expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "hugetlbfs", "none"])
            .arg(mount.path())
            .status()
            .expect("run mount");
        let pages = HugePages { mount, before };
        assert!(ok.success(), "cannot mount hugetlbfs");
        pages
    }

    /// Where the hugetlbfs is mounted.
    pub fn dir(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        // Lazily: a QEMU still exiting may map a page of it for a moment.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
        let _ = std::fs::write(pool_dir().join("nr_hugepages"), self.before.to_string());
    }
}
