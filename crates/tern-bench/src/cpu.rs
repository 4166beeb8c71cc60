//! CPU time per GiB moved (issue 19): what a transport costs the hosts.
//!
//! Each side of a migration (its agent or libvirtd, and every QEMU they
//! start) runs in a cgroup of its own ([`CpuGroup`]). A cgroup's
//! `cpu.stat` `usage_usec` counts every task that ever ran in it,
//! including the source QEMU that exits at the end of the migration and
//! the destination QEMU that starts during it, which sampling
//! `/proc/PID/stat` before and after would miss. The guest's own vCPU
//! threads (`CPU n/TCG`) are not the transport's cost (an idle guest's
//! verifier and a dirtying guest's writer run for as long as the migration
//! lasts): a thread samples their run time (`/proc/TID/schedstat`) every
//! few milliseconds during the migration, and their share is taken out.
//! The arithmetic is in small pure functions ([`per_gib`], [`VcpuTrack`],
//! [`cores_for`]).

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the vCPU threads' run time is sampled during a migration.
const VCPU_SAMPLE: Duration = Duration::from_millis(10);

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
    /// The guest's vCPU time in the span is not counted.
    pub fn from_readings(span: Span, a_is_src: bool, bytes: u64) -> Option<Cost> {
        let a = per_gib(span.before.a + span.vcpu.a, span.after.a, bytes)?;
        let b = per_gib(span.before.b + span.vcpu.b, span.after.b, bytes)?;
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
    /// CPU microseconds the guest's vCPU threads ran in between.
    pub vcpu: Reading,
}

/// Run time of vCPU threads over a span, from samples: a thread seen at
/// the start counts from its first value, one born later (the
/// destination's vCPU) from zero, and each up to the last value seen (the
/// source's vCPU stops at the switch-over, before its QEMU exits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuTrack {
    first: HashMap<u32, u64>,
    last: HashMap<u32, u64>,
}

impl VcpuTrack {
    /// Adds one sample: run time in ns by thread id.
    pub fn observe(&mut self, sample: &HashMap<u32, u64>, at_start: bool) {
        for (&tid, &ns) in sample {
            self.first
                .entry(tid)
                .or_insert(if at_start { ns } else { 0 });
            self.last.insert(tid, ns);
        }
    }

    /// Microseconds run over the span, all threads together.
    pub fn usec(&self) -> u64 {
        let ns: u64 = self
            .last
            .iter()
            .map(|(tid, &l)| l.saturating_sub(self.first.get(tid).copied().unwrap_or(0)))
            .sum();
        ns / 1000
    }
}

/// Whether a thread name is a QEMU vCPU's (`CPU 0/TCG`, `CPU 1/KVM`).
pub fn is_vcpu_thread(comm: &str) -> bool {
    comm.starts_with("CPU ") && comm.contains('/')
}

/// The first field of `/proc/TID/schedstat`: ns the thread has run.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
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
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        match parse_usage_usec(&text) {
            Some(u) => Ok(u),
            None => bail!("{} has no usage_usec", p.display()),
        }
    }

    /// Run time (ns) of every QEMU vCPU thread in the group now.
    pub fn vcpu_ns(&self) -> HashMap<u32, u64> {
        let text = std::fs::read_to_string(self.path.join("cgroup.threads")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .filter(|tid| {
                std::fs::read_to_string(format!("/proc/{tid}/comm"))
                    .is_ok_and(|c| is_vcpu_thread(c.trim()))
            })
            .filter_map(|tid| {
                let s = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
                Some((tid, parse_schedstat(&s)?))
            })
            .collect()
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
    sampler: Mutex<Option<Sampler>>,
}

/// The thread sampling both sides' vCPU threads during one migration.
#[derive(Debug)]
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(VcpuTrack, VcpuTrack)>,
}

impl Meter {
    /// A meter over two sides' groups.
    pub fn new(a: Arc<CpuGroup>, b: Arc<CpuGroup>) -> Meter {
        Meter {
            a,
            b,
            spans: Mutex::default(),
            sampler: Mutex::default(),
        }
    }

    /// Both sides now (0 for a side that cannot be read: its cost then
    /// comes out wrong rather than the migration failing).
    fn read(&self) -> Reading {
        Reading {
            a: self.a.usage_usec().unwrap_or(0),
            b: self.b.usage_usec().unwrap_or(0),
        }
    }

    /// Call just before a migration starts: reads both sides and starts
    /// sampling their vCPU threads. Pass the reading to [`Meter::record`].
    pub fn begin(&self) -> Reading {
        // A migration that timed out was never recorded: end its sampler.
        let _ = self.stop_sampler();
        let (a, b) = (self.a.clone(), self.b.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let mut ta = VcpuTrack::default();
        let mut tb = VcpuTrack::default();
        ta.observe(&a.vcpu_ns(), true);
        tb.observe(&b.vcpu_ns(), true);
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(VCPU_SAMPLE);
                ta.observe(&a.vcpu_ns(), false);
                tb.observe(&b.vcpu_ns(), false);
            }
            (ta, tb)
        });
        *self.sampler.lock().unwrap_or_else(|p| p.into_inner()) = Some(Sampler { stop, thread });
        self.read()
    }

    /// Call just after the migration returned: records its span.
    pub fn record(&self, before: Reading) {
        let after = self.read();
        let vcpu = self
            .stop_sampler()
            .map_or(Reading::default(), |(ta, tb)| Reading {
                a: ta.usec(),
                b: tb.usec(),
            });
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Span {
                before,
                after,
                vcpu,
            });
    }

    /// Stops the running sampler, if any, and returns what it saw.
    fn stop_sampler(&self) -> Option<(VcpuTrack, VcpuTrack)> {
        let s = self
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        s.stop.store(true, Ordering::Relaxed);
        s.thread.join().ok()
    }

    /// The spans recorded since the last call, in migration order.
    pub fn take(&self) -> Vec<Span> {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let _ = self.stop_sampler();
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
                a: 2_500_000,
                b: 2_000_000,
            },
            // Half a second of A's time was the guest's vCPU.
            vcpu: Reading { a: 500_000, b: 0 },
        };
        let there = Cost::from_readings(span, true, 1 << 30).unwrap();
        assert_eq!((there.src, there.dst), (2.0, 1.0));
        let back = Cost::from_readings(span, false, 1 << 30).unwrap();
        assert_eq!((back.src, back.dst), (1.0, 2.0));
        assert_eq!(back.total(), 3.0);
        assert_eq!(Cost::from_readings(span, true, 0), None);
    }

    #[test]
    fn vcpu_time_counts_from_the_start_or_from_birth() {
        let mut t = VcpuTrack::default();
        // The source's vCPU has run 5 s before the migration.
        t.observe(&HashMap::from([(10, 5_000_000_000)]), true);
        t.observe(&HashMap::from([(10, 5_200_000_000)]), false);
        // The destination's vCPU appears during it; the source's exits.
        t.observe(&HashMap::from([(20, 30_000_000)]), false);
        t.observe(&HashMap::from([(20, 50_000_000)]), false);
        assert_eq!(t.usec(), 200_000 + 50_000);
        assert!(is_vcpu_thread("CPU 0/TCG"));
        assert!(is_vcpu_thread("CPU 3/KVM"));
        assert!(!is_vcpu_thread("live_migration"));
        assert_eq!(parse_schedstat("66474 104093 2\n"), Some(66474));
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
