//! NFS against a local shared directory (issue 20): the same guest, its
//! disk first in a directory both agents see, then on an NFS export
//! (nfs-ganesha in its own network namespace, the walk-through's netfs
//! pool, reached by QEMU over `nfs://` on a kernel without an NFS client),
//! live-migrated back and forth between two agents in two namespaces.
//!
//! Per storage: the median wall time of `tern migrate --live`, the
//! source job's own time and QEMU's downtime (`domjobinfo --completed`),
//! and the control overhead: what the command took beyond the source's
//! job (connections, Begin, Prepare, the shared-storage token proof,
//! which on NFS is written and read over the export).

use anyhow::{bail, Context, Result};
use clap::Args;
use std::time::{Duration, Instant};
use tern_testkit::netns::{Lab, Side};
use tern_testkit::nfs::{walk_through_pool, NfsServer};
use tern_testkit::pair::boot_guest_in;
use tern_testkit::{SerialLog, TernHost};

/// Options.
#[derive(Args, Debug)]
pub struct NfsArgs {
    /// Round trips per storage (two migrations each).
    #[arg(long, default_value_t = 5)]
    round_trips: u32,
    /// Guest RAM, MiB (the guest fills and checks a quarter of it).
    #[arg(long, default_value_t = 256)]
    mem_mib: u64,
}

/// One migration's figures.
struct Sample {
    wall_ms: u64,
    job_ms: u64,
    downtime_ms: u64,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs the comparison and prints a markdown table.
pub async fn run(a: NfsArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || compare(&a)).await?
}

fn compare(a: &NfsArgs) -> Result<()> {
    let lab = Lab::start();
    let nfs = NfsServer::start(&lab.ns(Side::C), lab.host_addr(Side::C));
    let root = crate::guest::scratch("tern-bench-nfs")?;
    let target = root.path().join("nfspool");
    let shared = root.path().join("shared");
    std::fs::create_dir_all(&shared)?;
    let ha = TernHost::start_with(lab.host_options(Side::A, "bench-nfs-a"));
    let hb = TernHost::start_with(lab.host_options(Side::B, "bench-nfs-b"));
    for h in [&ha, &hb] {
        walk_through_pool(h, "nfspool", &nfs, &target);
        h.add_pool("shared", &shared, true);
    }
    let mut rows = Vec::new();
    for (label, pool) in [
        ("local directory, shared", "shared"),
        ("NFS export (QEMU's nfs://)", "nfspool"),
    ] {
        eprintln!("tern-bench: {label}");
        let samples = trips(a, &ha, &hb, pool)?;
        rows.push((label, samples));
    }
    println!(
        "\nNFS against a local directory: {} migrations each of a {} MiB guest (tern.mem {} MiB, \
         dirtying 4 MiB/s, disk checks on its 4 MiB of data), agents in two network namespaces, \
         nfs-ganesha in a third, TCG, {} cores, load average {} at the end\n",
        2 * a.round_trips,
        a.mem_mib,
        a.mem_mib / 4,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::sys::loadavg().map_or("?".into(), |l| format!("{l:.1}")),
    );
    println!("| disk on | migrations | median wall ms | median source job ms | control overhead ms | median downtime ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, s) in rows {
        let overhead: Vec<u64> = s
            .iter()
            .map(|x| x.wall_ms.saturating_sub(x.job_ms))
            .collect();
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            s.len(),
            median(s.iter().map(|x| x.wall_ms).collect()),
            median(s.iter().map(|x| x.job_ms).collect()),
            median(overhead),
            median(s.iter().map(|x| x.downtime_ms).collect()),
        );
    }
    drop((ha, hb, nfs, lab));
    Ok(())
}

/// Boots the guest on A with its disk in `pool` and migrates it back and
/// forth; checks what the guest reports at the end.
fn trips(a: &NfsArgs, ha: &TernHost, hb: &TernHost, pool: &str) -> Result<Vec<Sample>> {
    let name = format!("bench-{pool}");
    let workload = format!("tern.mem={} tern.dirty=4", a.mem_mib / 4);
    boot_guest_in(ha, pool, &name, &workload, 4, Some(a.mem_mib));
    let (mut from, mut to) = (ha, hb);
    let mut out = Vec::new();
    for _ in 0..2 * a.round_trips {
        std::thread::sleep(Duration::from_secs(2));
        let t = Instant::now();
        let o = from.tern(&["migrate", "--live", &name, &to.uri()]);
        let wall_ms = t.elapsed().as_millis() as u64;
        if !o.status.success() {
            bail!(
                "tern migrate ({pool}) failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let j: serde_json::Value =
            serde_json::from_str(&from.ok(&["domjobinfo", &name, "--completed", "--json"]))
                .context("reading domjobinfo --completed")?;
        out.push(Sample {
            wall_ms,
            job_ms: j["time_elapsed_ms"].as_u64().unwrap_or(0),
            downtime_ms: j["downtime_ms"].as_u64().unwrap_or(0),
        });
        std::mem::swap(&mut from, &mut to);
    }
    let text = from.ok(&["console", &name]);
    let log = SerialLog::parse(&text);
    if !log.failures.is_empty() {
        bail!("the guest on {pool} reported failures: {:?}", log.failures);
    }
    from.ok(&["destroy", &name]);
    Ok(out)
}
