//! Storage benchmarks (issue 4), between two real agents:
//!
//! - **cold**: `tern migrate --cold` of a shut-off guest whose disk is an
//!   8 GiB sparse raw image holding 2 GiB of data, against
//!   `cp --sparse=always` + `sync` of the same file in the same run;
//! - **live**: `tern migrate --live --copy-storage-all` of a running guest
//!   whose 4 GiB disk holds 1 GiB: total time and downtime.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tern_testkit::fixtures::{write_random, LocalPools};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TestDisk};

/// Options.
#[derive(Args, Debug)]
pub struct StorageArgs {
    /// Data in the cold image, GiB (the image is four times larger).
    #[arg(long, default_value_t = 2)]
    pub cold_data_gib: u64,
    /// Data in the live disk, GiB (the disk is four times larger).
    #[arg(long, default_value_t = 1)]
    pub live_data_gib: u64,
}

fn disk_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn job(h: &tern_testkit::TernHost, name: &str) -> Result<serde_json::Value> {
    serde_json::from_str(&h.ok(&["domjobinfo", name, "--completed", "--json"]))
        .context("reading domjobinfo --completed")
}

fn guest(name: &str, disk: &Path) -> Result<GuestSpec> {
    let img = build_or_reuse(&BuildOptions::default())?;
    let mut g = GuestSpec::new(name, &img).workload("tern.mem=32 tern.verify_rate=8");
    g.disks.push(TestDisk {
        path: disk.to_path_buf(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    Ok(g)
}

/// Runs both measurements and prints markdown tables.
pub async fn run(a: StorageArgs) -> Result<()> {
    cold(&a)?;
    live(&a)?;
    Ok(())
}

fn cold(a: &StorageArgs) -> Result<()> {
    let h = LocalPools::start("bench-cold");
    let src = h.ia.join("cold.raw");
    let data = a.cold_data_gib << 30;
    eprintln!(
        "tern-bench: writing {} GiB of data into a {} GiB sparse image",
        a.cold_data_gib,
        4 * a.cold_data_gib
    );
    write_random(&src, (data >> 20) as usize, 0x5eed, Some(4 * data));
    let _ = Command::new("sync").status();
    h.a.define_guest(&guest("cold", &src)?);

    // Baseline: cp --sparse=always, then sync, into B's pool directory.
    let cp_dst = h.ib.join("cp-copy.raw");
    let t = Instant::now();
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&cp_dst)
        .status()?;
    let cp_plain = t.elapsed();
    let _ = Command::new("sync").arg(&cp_dst).status();
    let cp_sync = t.elapsed();
    if !st.success() {
        bail!("cp failed");
    }
    let cp_disk = disk_bytes(&cp_dst);
    std::fs::remove_file(&cp_dst)?;

    let t = Instant::now();
    let o = h.migrate("cold", &["--cold"]);
    let tern_time = t.elapsed();
    if !o.status.success() {
        bail!(
            "tern migrate --cold failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let j = job(&h.a, "cold")?;
    let dst = h.ib.join("cold.raw");
    let equal = Command::new("cmp").arg(&src).arg(&dst).status()?.success();
    println!("\n### Cold copy between two agents\n");
    println!("| tool | seconds | bytes on the wire | bytes on disk | equal |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| tern migrate --cold (engine, BLAKE3, fsync) | {:.2} | {} | {} | {} |",
        tern_time.as_secs_f64(),
        j["wire_bytes"].as_u64().unwrap_or(0),
        disk_bytes(&dst),
        if equal { "yes" } else { "NO" }
    );
    println!(
        "| cp --sparse=always && sync | {:.2} | 0 (local) | {cp_disk} | yes |",
        cp_sync.as_secs_f64()
    );
    println!(
        "| cp --sparse=always | {:.2} | 0 (local) | {cp_disk} | yes |",
        cp_plain.as_secs_f64()
    );
    println!(
        "\nratio: {:.2}x of cp, {:.2}x of cp+sync",
        tern_time.as_secs_f64() / cp_plain.as_secs_f64().max(1e-3),
        tern_time.as_secs_f64() / cp_sync.as_secs_f64().max(1e-3)
    );
    Ok(())
}

fn live(a: &StorageArgs) -> Result<()> {
    let h = LocalPools::start("bench-live");
    let disk: PathBuf = h.ia.join("live.raw");
    let data = a.live_data_gib << 30;
    eprintln!(
        "tern-bench: writing {} GiB into a {} GiB disk",
        a.live_data_gib,
        4 * a.live_data_gib
    );
    write_random(&disk, (data >> 20) as usize, 0xd15c, Some(4 * data));
    h.a.define_guest(&guest("live", &disk)?);
    h.a.ok(&["start", "live"]);
    h.a.wait_console("live", Duration::from_secs(120), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    let t = Instant::now();
    let o = h.migrate("live", &["--live", "--copy-storage-all"]);
    let wall = t.elapsed();
    if !o.status.success() {
        bail!(
            "tern migrate --copy-storage-all failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let j = job(&h.a, "live")?;
    let ev = h.a.ok(&["domjobevents", "live"]);
    println!("\n### Live migration with the disk mirrored\n");
    println!("| disk | data | total s | disk mirrored MiB | memory MiB | QEMU downtime ms | bytes on disk (dest) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} GiB | {} GiB | {:.2} | {} | {} | {} | {} |",
        4 * a.live_data_gib,
        a.live_data_gib,
        wall.as_secs_f64(),
        j["disk_total"].as_u64().unwrap_or(0) >> 20,
        j["memory_processed"].as_u64().unwrap_or(0) >> 20,
        j["downtime_ms"].as_u64().unwrap_or(0),
        disk_bytes(&h.ib.join("live.raw"))
    );
    for l in ev
        .lines()
        .filter(|l| l.contains("mirroring") || l.contains("in sync") || l.contains("completed"))
    {
        println!("    {l}");
    }
    h.b.ok(&["destroy", "live"]);
    Ok(())
}
