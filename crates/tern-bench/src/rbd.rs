//! Shared RBD storage against a mirrored local disk (issue 21): the same
//! test guest, its disk written by the guest, live-migrated A → B once with
//! the disk a volume of an rbd pool on the test kit's single-node Ceph (no
//! storage copied) and once with the disk a volume of a local dir pool and
//! `--copy-storage-all` (the disk mirrored). Prints one table row per
//! round and mode: the wall time of `tern migrate`, what the completed job
//! says it moved, and QEMU's downtime.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::time::{Duration, Instant};
use tern_testkit::ceph::{skip_without_ceph, CephCluster};
use tern_testkit::pair::{boot_guest_in, HostPair, Which};
use tern_testkit::rbd::{
    add_rbd_pool, define_guest_with_disk, volume_disk_xml, wait_disk_ok, RBD_POOL,
};
use tern_testkit::TernHost;

/// Options.
#[derive(Args, Debug)]
pub struct RbdArgs {
    /// Rounds per mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// MiB of the disk the guest writes and verifies (its volume is twice
    /// that).
    #[arg(long, default_value_t = 64)]
    disk_mb: u64,
}

/// Where the guest's disk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A volume of an rbd pool: shared, nothing copied.
    Rbd,
    /// A volume of a local dir pool, mirrored with `--copy-storage-all`.
    DirCopy,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Rbd => "rbd pool (shared)",
            Mode::DirCopy => "dir pool, --copy-storage-all",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Rbd => &["--live"],
            Mode::DirCopy => &["--live", "--copy-storage-all"],
        }
    }
}

/// One migration's figures.
struct Row {
    wall: Duration,
    disk_mib: u64,
    memory_mib: u64,
    downtime_ms: u64,
}

fn job(h: &TernHost, name: &str) -> Result<serde_json::Value> {
    serde_json::from_str(&h.ok(&["domjobinfo", name, "--completed", "--json"]))
        .context("reading domjobinfo --completed")
}

const WORKLOAD: &str = "tern.mem=32 tern.dirty=5";

fn round(ceph: &CephCluster, mode: Mode, i: usize, disk_mb: u64) -> Result<Row> {
    let mut p = HostPair::start(&format!("brbd{i}"), &[], &[]);
    let name = format!("rb{i}");
    match mode {
        Mode::Rbd => {
            for h in [&p.a, &p.b] {
                add_rbd_pool(h, ceph);
            }
            let vol = format!("{name}-disk");
            let size = format!("{}M", (disk_mb * 2).max(16));
            p.a.ok(&["vol-create-as", RBD_POOL, &vol, &size]);
            define_guest_with_disk(
                &p.a,
                &name,
                WORKLOAD,
                disk_mb,
                &volume_disk_xml(&vol, "vda"),
            );
            p.a.ok(&["start", &name]);
        }
        Mode::DirCopy => {
            p.add_local_pools();
            boot_guest_in(&p.a, "images", &name, WORKLOAD, disk_mb, None);
        }
    }
    // The guest has written its disk once it verifies it.
    wait_disk_ok(&p.a, &name, 1);
    let t = Instant::now();
    let o = p.migrate(Which::A, &name, mode.flags());
    let wall = t.elapsed();
    if !o.status.success() {
        bail!(
            "{}: tern migrate failed: {}",
            mode.label(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let j = job(&p.a, &name)?;
    wait_disk_ok(&p.b, &name, 1);
    p.b.ok(&["destroy", &name]);
    if mode == Mode::Rbd {
        p.a.ok(&["vol-delete", &format!("{name}-disk"), "--pool", RBD_POOL]);
    }
    Ok(Row {
        wall,
        disk_mib: j["disk_total"].as_u64().unwrap_or(0) >> 20,
        memory_mib: j["memory_processed"].as_u64().unwrap_or(0) >> 20,
        downtime_ms: j["downtime_ms"].as_u64().unwrap_or(0),
    })
}

/// Runs the benchmark.
pub async fn run(a: RbdArgs) -> Result<()> {
    tokio::task::yield_now().await;
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if skip_without_ceph("tern-bench rbd") {
        bail!("Ceph is not installed");
    }
    tokio::task::spawn_blocking(move || {
        let ceph = CephCluster::start();
        println!(
            "| mode | round | guest disk written | tern migrate s | disk mirrored MiB | memory MiB | QEMU downtime ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for i in 0..a.rounds {
            for mode in [Mode::Rbd, Mode::DirCopy] {
                let r = round(&ceph, mode, i, a.disk_mb)?;
                println!(
                    "| {} | {i} | {} MiB | {:.2} | {} | {} | {} |",
                    mode.label(),
                    a.disk_mb,
                    r.wall.as_secs_f64(),
                    r.disk_mib,
                    r.memory_mib,
                    r.downtime_ms
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await?
}
