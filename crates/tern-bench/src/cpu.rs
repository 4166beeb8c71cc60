//! CPU time per GiB moved (issue 19): what a transport costs the hosts.
//!
//! Each side of a migration (its agent or libvirtd, and every QEMU they
//! start) runs in a cgroup of its own ([`CpuGroup`]). A cgroup's
//! `cpu.stat` `usage_usec` counts every task that ever ran in it,
//! including the source QEMU that exits at the end of the migration and
//! the destination QEMU that starts during it, which sampling
//! `/proc/PID/stat` before and after would miss. The arithmetic is in
//! small pure functions ([`per_gib`], [`cores_for`]).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 25 Gbit/s in GiB/s (25e9 / 8 / 2^30 ≈ 2.91): the link the issue asks
/// the cost to be put against.
pub const LINK_25G_GIB_S: f64 = 25e9 / 8.0 / 1_073_741_824.0;

/// `usage_usec` from a cgroup v2 `cpu.stat` (user plus system time of
/// every task that ran in the cgroup), if present.
pub fn parse_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "usage_usec").then(|| v.trim().parse().ok())?
    })
}

/// CPU seconds per GiB: the CPU microseconds spent between two readings of
/// one cgroup, over the bytes QEMU moved. `None` when nothing moved or the
/// counter went backwards (a cgroup replaced between readings).
pub fn per_gib(before_usec: u64, after_usec: u64, bytes: u64) -> Option<f64> {
    let used = after_usec.checked_sub(before_usec)?;
    if bytes == 0 {
        return None;
    }
    Some(used as f64 / 1e6 / (bytes as f64 / 1_073_741_824.0))
}

/// Cores kept busy to move `gib_s` GiB/s at `cpu_s_per_gib` CPU seconds per
/// GiB (CPU seconds per second is cores).
pub fn cores_for(cpu_s_per_gib: f64, gib_s: f64) -> f64 {
    cpu_s_per_gib * gib_s
}

/// The cost of one migration on each side, CPU seconds per GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// The sending host's agent (or libvirtd) and QEMU.
    pub src: f64,
    /// The receiving host's.
    pub dst: f64,
}

impl Cost {
    /// Both hosts together.
    pub fn total(&self) -> f64 {
        self.src + self.dst
    }

    /// The cost of one migration from readings of the two sides' groups
    /// just before and just after it; `a_is_src` says which way it went.
    pub fn from_readings(span: Span, a_is_src: bool, bytes: u64) -> Option<Cost> {
        let a = per_gib(span.before.a, span.after.a, bytes)?;
        let b = per_gib(span.before.b, span.after.b, bytes)?;
        Some(if a_is_src {
            Cost { src: a, dst: b }
        } else {
            Cost { src: b, dst: a }
        })
    }

    /// The median of each side separately (the upper of the middle two).
    pub fn median(costs: &[Cost]) -> Option<Cost> {
        let mid = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        Some(Cost {
            src: mid(costs.iter().map(|c| c.src).collect())?,
            dst: mid(costs.iter().map(|c| c.dst).collect())?,
        })
    }
}

/// Whether a cost is at most a reference: the check that the
/// tunnel costs no more per GiB than QEMU's own TLS.
pub fn at_most(cost: f64, reference: f64) -> bool {
    cost <= reference
}

/// CPU microseconds of the two sides at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Side A's group.
    pub a: u64,
    /// Side B's group.
    pub b: u64,
}

/// Readings just before and just after one migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Before the migration command started.
    pub before: Reading,
    /// After it returned.
    pub after: Reading,
}

/// A cgroup (v2) that one side's processes and their children run in.
#[derive(Debug)]
pub struct CpuGroup {
    path: PathBuf,
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one).
fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mounts").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

impl CpuGroup {
    /// Creates `tern-bench-<pid>-<name>` at the root of the cgroup v2
    /// hierarchy. Fails (with what is missing) where there is none or it is
    /// not writable, e.g. without root.
    pub fn create(name: &str) -> Result<CpuGroup> {
        let root = cgroup2_root()
            .context("no cgroup v2 hierarchy is mounted: CPU accounting per side needs one")?;
        let path = root.join(format!("tern-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("create cgroup {} (needs root)", path.display()))?;
        let g = CpuGroup { path };
        g.usage_usec()?;
        Ok(g)
    }

    /// The group's directory (its `cgroup.procs` takes a pid).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves a process into the group; its later children start there.
    pub fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move pid {pid} into {}", self.path.display()))
    }

    /// CPU microseconds of every task that ran in the group so far.
    pub fn usage_usec(&self) -> Result<u64> {
        let p = self.path.join("cpu.stat");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        match parse_usage_usec(&text) {
            Some(u) => Ok(u),
            None => bail!("{} has no usage_usec", p.display()),
        }
    }

    /// Pids in the group now.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the group (`cgroup.kill`, else one by
    /// one) and waits up to `wait` for the group to empty. Only for groups
    /// holding nothing but what this benchmark started.
    pub fn kill_all(&self, wait: Duration) {
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for pid in self.pids() {
                // SAFETY: kill with a pid from our own cgroup; no memory is touched.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let deadline = std::time::Instant::now() + wait;
        while !self.pids().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CpuGroup {
    /// Moves whatever still runs in the group back to the root (their
    /// owners' guards end them) and removes the group.
    fn drop(&mut self) {
        if let Some(root) = self.path.parent() {
            for pid in self.pids() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid.to_string());
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!(
                "tern-bench: cannot remove cgroup {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The two sides' groups, and the readings taken around each migration
/// of the current cell.
#[derive(Debug)]
pub struct Meter {
    a: Arc<CpuGroup>,
    b: Arc<CpuGroup>,
    spans: Mutex<Vec<Span>>,
}

impl Meter {
    /// A meter over two sides' groups.
    pub fn new(a: Arc<CpuGroup>, b: Arc<CpuGroup>) -> Meter {
        Meter {
            a,
            b,
            spans: Mutex::default(),
        }
    }

    /// Both sides now (0 for a side that cannot be read: its cost then
    /// comes out wrong rather than the migration failing; see the notes).
    pub fn read(&self) -> Reading {
        Reading {
            a: self.a.usage_usec().unwrap_or(0),
            b: self.b.usage_usec().unwrap_or(0),
        }
    }

    /// Records one migration: `before` was read just before it started,
    /// the other reading is taken now.
    pub fn record(&self, before: Reading) {
        let after = self.read();
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Span { before, after });
    }

    /// The spans recorded since the last call, in migration order.
    pub fn take(&self) -> Vec<Span> {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_cpu_stat() {
        let s = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n";
        assert_eq!(parse_usage_usec(s), Some(1_234_567));
        assert_eq!(parse_usage_usec("user_usec 5\n"), None);
        assert_eq!(parse_usage_usec("usage_usec x\n"), None);
    }

    #[test]
    fn seconds_per_gib() {
        // 1.5 CPU seconds for half a GiB: 3 s/GiB.
        assert_eq!(per_gib(500_000, 2_000_000, 512 << 20), Some(3.0));
        assert_eq!(per_gib(10, 10, 1 << 30), Some(0.0));
        assert_eq!(per_gib(2, 1, 1 << 30), None, "counter went backwards");
        assert_eq!(per_gib(1, 2, 0), None, "nothing moved");
    }

    #[test]
    fn a_25_gbit_link_needs_cores_in_proportion() {
        assert!((LINK_25G_GIB_S - 2.910).abs() < 0.001);
        assert!((cores_for(1.0, LINK_25G_GIB_S) - 2.910).abs() < 0.001);
        assert_eq!(cores_for(0.5, 4.0), 2.0);
    }

    #[test]
    fn roles_follow_the_direction_of_the_migration() {
        let span = Span {
            before: Reading { a: 0, b: 1_000_000 },
            after: Reading {
                a: 2_000_000,
                b: 2_000_000,
            },
        };
        let there = Cost::from_readings(span, true, 1 << 30).unwrap();
        assert_eq!((there.src, there.dst), (2.0, 1.0));
        let back = Cost::from_readings(span, false, 1 << 30).unwrap();
        assert_eq!((back.src, back.dst), (1.0, 2.0));
        assert_eq!(back.total(), 3.0);
        assert_eq!(Cost::from_readings(span, true, 0), None);
    }

    #[test]
    fn medians_are_taken_side_by_side() {
        let c = |src, dst| Cost { src, dst };
        let m = Cost::median(&[c(3.0, 1.0), c(1.0, 3.0), c(2.0, 2.0)]).unwrap();
        assert_eq!((m.src, m.dst), (2.0, 2.0));
        assert_eq!(Cost::median(&[]), None);
    }

    #[test]
    fn the_tunnel_check_allows_equal_cost() {
        assert!(at_most(1.0, 1.0));
        assert!(at_most(0.9, 1.0));
        assert!(!at_most(1.1, 1.0));
    }
}
