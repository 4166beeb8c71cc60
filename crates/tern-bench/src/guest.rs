//! The benchmark guest: the project's test guest with a memory workload,
//! and waiting for it on its console.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_testkit::watch::ConsoleWatcher;
use tern_testkit::{GuestImage, GuestSpec, TestDisk};

/// How long a guest may take to print `TERN-READY` (boot plus filling its
/// memory area, under TCG).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long to wait for the first heartbeat on the destination after the
/// migration ended, to close the guest-observed gap.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(10);

/// One point of the matrix: guest RAM and dirty rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// `tern.dirty`, MiB/s.
    pub dirty_mib_s: u64,
}

/// Everything about the guest that is the same for every case.
#[derive(Debug, Clone)]
pub struct GuestSetup {
    /// Kernel and initramfs.
    pub image: GuestImage,
    /// The raw disk in the shared directory.
    pub disk: PathBuf,
    /// `tern.verify_rate`, MiB/s.
    pub verify_rate: u64,
}

impl Case {
    /// MiB of self-checking memory the guest fills (`tern.mem`): half its
    /// RAM, so there is real data to copy and room for the kernel.
    pub fn fill_mib(&self) -> u64 {
        self.memory_mib / 2
    }

    /// A domain name unique to this case and driver.
    pub fn name(&self, driver: &str) -> String {
        format!("bench-{driver}-{}m-d{}", self.memory_mib, self.dirty_mib_s)
    }

    /// The guest definition: one vCPU, the workload on the kernel command
    /// line, the shared raw disk with `cache='none'` (which migration with
    /// shared storage requires). The workload does not touch the disk.
    pub fn spec(&self, name: &str, g: &GuestSetup) -> GuestSpec {
        let mut s = GuestSpec::new(name, &g.image).workload(&format!(
            "tern.mem={} tern.dirty={} tern.verify_rate={}",
            self.fill_mib(),
            self.dirty_mib_s,
            g.verify_rate
        ));
        s.memory_mib = self.memory_mib;
        s.disks.push(TestDisk {
            path: g.disk.clone(),
            format: "raw".into(),
            target: "vda".into(),
            cache: "none".into(),
        });
        s
    }
}

/// Waits until a console log shows `TERN-READY`, failing early on a
/// `TERN-FAIL` line.
pub async fn wait_ready(console: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("TERN-FAIL")) {
            bail!("the guest failed while booting: {}", l.trim());
        }
        if text.contains("TERN-READY") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no TERN-READY on {} within {} s; last lines:\n{}",
                console.display(),
                READY_TIMEOUT.as_secs(),
                tern_testkit::tail(&text, 5)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the guest is watched for a crash after its first heartbeat on
/// the destination.
pub const CRASH_WATCH: Duration = Duration::from_secs(1);

/// Console text that means the guest is broken: kernel oopses and the
/// workload's own failure lines.
pub const CRASH_MARKERS: &[&str] = &[
    "BUG:",
    "kernel BUG",
    "Oops",
    "Kernel panic",
    "general protection fault",
    "corruption",
    "TERN-FAIL",
];

/// The first line of a console log that shows the guest broke, if any.
pub fn crash_line(console: &Path) -> Option<String> {
    let text = std::fs::read_to_string(console).ok()?;
    text.lines()
        .find(|l| CRASH_MARKERS.iter().any(|m| l.contains(m)))
        .map(|l| l.trim().to_string())
}

/// What the guest did after a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterMigration {
    /// Heartbeats on the destination, and no crash for [`CRASH_WATCH`].
    Running,
    /// The destination console shows this line.
    Crashed(String),
    /// No heartbeat on the destination within [`RESUME_TIMEOUT`].
    Silent,
}

/// Watches the destination after a migration that ended at `end`: waits
/// for a heartbeat newer than `end`, then keeps looking for a crash a
/// little longer.
pub async fn after_migration(w: &ConsoleWatcher, dest_log: &Path, end: Instant) -> AfterMigration {
    let deadline = end + RESUME_TIMEOUT;
    let mut running_since: Option<Instant> = None;
    loop {
        if let Some(l) = crash_line(dest_log) {
            return AfterMigration::Crashed(l);
        }
        if running_since.is_none() && w.seen().iter().any(|s| s.at > end) {
            running_since = Some(Instant::now());
        }
        match running_since {
            Some(t) if t.elapsed() >= CRASH_WATCH => return AfterMigration::Running,
            None if Instant::now() > deadline => return AfterMigration::Silent,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes in a console log now (where the heartbeats of what follows start).
pub fn log_len(console: &Path) -> u64 {
    std::fs::metadata(console).map_or(0, |m| m.len())
}

/// MiB/s the guest's dirtier reported in the heartbeats written to a
/// console log after byte `from` (guest clock), if there are two.
pub fn workload_rate(console: &Path, from: u64) -> Option<f64> {
    let bytes = std::fs::read(console).ok()?;
    let text = String::from_utf8_lossy(bytes.get(from as usize..)?);
    let log = tern_testkit::SerialLog::parse(&text);
    let (first, last) = (log.heartbeats.first()?, log.heartbeats.last()?);
    let ms = last.up_ms.checked_sub(first.up_ms).filter(|&ms| ms > 0)?;
    Some(last.dirtied_mib.saturating_sub(first.dirtied_mib) as f64 * 1000.0 / ms as f64)
}

/// A scratch directory for one case's files, removed on drop.
pub fn scratch(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create a temporary directory")
}
