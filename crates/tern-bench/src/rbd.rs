//! Shared RBD storage against NFS and a mirrored local disk (issue 21): the
//! same test guest, its disk written by the guest, live-migrated A → B with
//! the disk a volume of an rbd pool on the test kit's single-node Ceph (no
//! storage copied), a volume of the walk-through's NFS pool (nfs-ganesha in
//! its own network namespace, reached by QEMU over `nfs://`; no storage
//! copied, the share proven by a token written over the export), a volume
//! of a directory both hosts see (no storage copied), and a volume of a
//! local dir pool with `--copy-storage-all` (the disk mirrored). Prints one table row per round and mode: the wall time of
//! `tern migrate`, what the completed job says it moved, and QEMU's
//! downtime. `--modes` picks some of them.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::time::{Duration, Instant};
use tern_testkit::ceph::{skip_without_ceph, CephCluster};
use tern_testkit::nfs::{skip_without_nfs_server, NfsPair};
use tern_testkit::pair::{boot_guest_in, HostPair};
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
    /// Which storage to measure, comma-separated: rbd, nfs, shared (a
    /// directory both hosts see), dir (mirrored).
    #[arg(long, value_delimiter = ',', default_value = "rbd,nfs,shared,dir")]
    modes: Vec<String>,
}

/// Where the guest's disk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A volume of an rbd pool: shared, nothing copied.
    Rbd,
    /// A volume of a local dir pool, mirrored with `--copy-storage-all`.
    DirCopy,
    /// A volume of an NFS pool QEMU reaches over `nfs://`: shared.
    Nfs,
    /// A volume of a directory both hosts see (the pair's `shared` pool).
    SharedDir,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Rbd => "rbd pool (shared)",
            Mode::DirCopy => "dir pool, --copy-storage-all",
            Mode::Nfs => "netfs pool over nfs:// (shared)",
            Mode::SharedDir => "local shared dir pool",
        }
    }

    fn parse(s: &str) -> Result<Mode> {
        match s.trim() {
            "rbd" => Ok(Mode::Rbd),
            "nfs" => Ok(Mode::Nfs),
            "dir" => Ok(Mode::DirCopy),
            "shared" => Ok(Mode::SharedDir),
            other => bail!("unknown mode '{other}'; give --modes with rbd, nfs, shared or dir"),
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Rbd | Mode::Nfs | Mode::SharedDir => &["--live"],
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

/// The two hosts of one round: on loopback (RBD, dir) or in network
/// namespaces with the NFS server (NFS).
enum Hosts {
    Pair(Box<HostPair>),
    Nfs(Box<NfsPair>),
}

impl Hosts {
    fn a(&self) -> &TernHost {
        match self {
            Hosts::Pair(p) => &p.a,
            Hosts::Nfs(p) => &p.a,
        }
    }

    fn b(&self) -> &TernHost {
        match self {
            Hosts::Pair(p) => &p.b,
            Hosts::Nfs(p) => &p.b,
        }
    }
}

/// Starts the hosts of a round and the guest on A with its disk in `mode`'s storage.
fn setup(
    ceph: Option<&CephCluster>,
    mode: Mode,
    i: usize,
    name: &str,
    disk_mb: u64,
) -> Result<Hosts> {
    Ok(match mode {
        Mode::Rbd => {
            let ceph = ceph.context("no Ceph cluster")?;
            let p = HostPair::start(&format!("brbd{i}"), &[], &[]);
            for h in [&p.a, &p.b] {
                add_rbd_pool(h, ceph);
            }
            let vol = format!("{name}-disk");
            let size = format!("{}M", (disk_mb * 2).max(16));
            p.a.ok(&["vol-create-as", RBD_POOL, &vol, &size]);
            define_guest_with_disk(&p.a, name, WORKLOAD, disk_mb, &volume_disk_xml(&vol, "vda"));
            p.a.ok(&["start", name]);
            Hosts::Pair(Box::new(p))
        }
        Mode::DirCopy => {
            let mut p = HostPair::start(&format!("bdir{i}"), &[], &[]);
            p.add_local_pools();
            boot_guest_in(&p.a, "images", name, WORKLOAD, disk_mb, None);
            Hosts::Pair(Box::new(p))
        }
        Mode::SharedDir => {
            let p = HostPair::start(&format!("bsh{i}"), &[], &[]);
            boot_guest_in(&p.a, "shared", name, WORKLOAD, disk_mb, None);
            Hosts::Pair(Box::new(p))
        }
        Mode::Nfs => {
            let p = NfsPair::start(&format!("bnfs{i}"));
            boot_guest_in(&p.a, "nfspool", name, WORKLOAD, disk_mb, None);
            Hosts::Nfs(Box::new(p))
        }
    })
}

fn round(ceph: Option<&CephCluster>, mode: Mode, i: usize, disk_mb: u64) -> Result<Row> {
    let name = format!("rb{i}");
    let hosts = setup(ceph, mode, i, &name, disk_mb)?;
    let (a, b) = (hosts.a(), hosts.b());
    // The guest has written its disk once it verifies it.
    wait_disk_ok(a, &name, 1);
    let mut args = vec!["migrate"];
    args.extend_from_slice(mode.flags());
    let uri = b.uri();
    args.extend([name.as_str(), uri.as_str()]);
    let t = Instant::now();
    let o = a.tern(&args);
    let wall = t.elapsed();
    if !o.status.success() {
        bail!(
            "{}: tern migrate failed: {}",
            mode.label(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let j = job(a, &name)?;
    wait_disk_ok(b, &name, 1);
    b.ok(&["destroy", &name]);
    if mode == Mode::Rbd {
        a.ok(&["vol-delete", &format!("{name}-disk"), "--pool", RBD_POOL]);
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
    let modes = a
        .modes
        .iter()
        .map(|m| Mode::parse(m))
        .collect::<Result<Vec<_>>>()?;
    let with_ceph = modes.contains(&Mode::Rbd);
    if with_ceph && skip_without_ceph("tern-bench rbd") {
        bail!("Ceph is not installed; leave rbd out of --modes");
    }
    if modes.contains(&Mode::Nfs) && skip_without_nfs_server("tern-bench rbd") {
        bail!("nfs-ganesha is not installed; leave nfs out of --modes");
    }
    tokio::task::spawn_blocking(move || {
        let ceph = with_ceph.then(CephCluster::start);
        println!(
            "| mode | round | guest disk written | tern migrate s | disk mirrored MiB | memory MiB | QEMU downtime ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for i in 0..a.rounds {
            for &mode in &modes {
                let r = round(ceph.as_ref(), mode, i, a.disk_mb)?;
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
