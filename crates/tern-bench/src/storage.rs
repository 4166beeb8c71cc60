//! Storage benchmarks (issue 4), between two real agents:
//!
//! - **cold**: `tern migrate --cold` of a shut-off guest whose disk is an
//!   8 GiB sparse raw image holding 2 GiB of data, against
//!   `cp --sparse=always` (with and without `sync`), `rsync -aS` over ssh
//!   and `scp` of the same file in the same run;
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
    /// Runs of tern and cp in the cold table (the median is shown; rsync
    /// and scp run once).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Only the cold table.
    #[arg(long)]
    pub cold_only: bool,
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
    if !a.cold_only {
        live(&a)?;
    }
    Ok(())
}

/// One row of the cold table: the median of its runs.
struct ColdRow {
    tool: &'static str,
    secs: Vec<f64>,
    wire: String,
    disk: u64,
    equal: bool,
}

impl ColdRow {
    fn median(&self) -> f64 {
        let mut v = self.secs.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

fn files_equal(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command, returning its wall time and stdout.
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = cmd.stdin(std::process::Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// "Total bytes sent: 1,234" from rsync --stats.
fn rsync_sent(stats: &str) -> Option<u64> {
    let line = stats.lines().find(|l| l.starts_with("Total bytes sent:"))?;
    line.split(':').nth(1)?.trim().replace(',', "").parse().ok()
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
    let dst = h.ib.join("cold.raw");
    let runs = a.runs.max(1);
    let mut rows = Vec::new();

    // Tern: agent to agent, the definition and the disk, a keyed BLAKE3
    // MAC per chunk (see `tern-agent`'s `cold_mac`), rename at the
    // destination, the fdatasync deferred (the source keeps its disk).
    // Each run starts from a clean destination (the copy and its
    // definition removed), after the last run's copy reached the disk.
    let mut durable_at = Vec::new();
    let mut tern = ColdRow {
        tool: "tern migrate --cold (2 agents, keyed BLAKE3 MAC per chunk, sync deferred)",
        secs: Vec::new(),
        wire: String::new(),
        disk: 0,
        equal: true,
    };
    for _ in 0..runs {
        let _ = Command::new("sync").status();
        let t0_ms = crate::live::tern::epoch_ms();
        let t = Instant::now();
        let o = h.migrate("cold", &["--cold"]);
        let secs = t.elapsed().as_secs_f64();
        if !o.status.success() {
            bail!(
                "tern migrate --cold failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        // The destination syncs the copy in the background, then removes
        // its marker: when the copy is on disk.
        let marker = tern_transfer::durable::marker_path(&dst);
        while marker.exists() && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let on_disk = t.elapsed().as_secs_f64();
        durable_at.push(on_disk);
        eprintln!("tern migrate --cold: {secs:.2} s (the copy on disk after {on_disk:.2} s)");
        let j = job(&h.a, "cold")?;
        tern.secs.push(secs);
        tern.wire = j["wire_bytes"].as_u64().unwrap_or(0).to_string();
        tern.disk = disk_bytes(&dst);
        tern.equal &= files_equal(&src, &dst);
        // Where the time went: both agents' job events, ms from the start.
        let mut ev: Vec<(u64, &str, String)> = Vec::new();
        for (side, host) in [("src", &h.a), ("dst", &h.b)] {
            for e in crate::live::tern::events(host, "cold") {
                ev.push((e.at_ms.saturating_sub(t0_ms), side, e.message));
            }
        }
        ev.sort();
        for (ms, side, m) in ev {
            eprintln!("  {ms:>5} ms {side}: {m}");
        }
        h.b.ok(&["undefine", "cold"]);
        std::fs::remove_file(&dst)?;
    }
    rows.push(tern);

    // Baselines, into the same destination directory.
    let mut local = |tool: &'static str, n: usize, f: &mut dyn FnMut() -> Result<(f64, String)>| {
        let mut row = ColdRow {
            tool,
            secs: Vec::new(),
            wire: String::new(),
            disk: 0,
            equal: true,
        };
        for _ in 0..n {
            let _ = std::fs::remove_file(&dst);
            let _ = Command::new("sync").status();
            match f() {
                Ok((secs, wire)) => {
                    eprintln!("{tool}: {secs:.2} s");
                    row.secs.push(secs);
                    row.wire = wire;
                    row.disk = disk_bytes(&dst);
                    row.equal &= files_equal(&src, &dst);
                }
                Err(e) => {
                    eprintln!("{tool}: FAILED: {e:#}");
                    row.equal = false;
                }
            }
            let _ = std::fs::remove_file(&dst);
        }
        rows.push(row);
    };
    let cp = |then_sync: bool| {
        let (src, dst) = (src.clone(), dst.clone());
        move || -> Result<(f64, String)> {
            let t = Instant::now();
            timed(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&src)
                    .arg(&dst),
            )?;
            if then_sync {
                timed(Command::new("sync").arg(&dst))?;
            }
            Ok((t.elapsed().as_secs_f64(), "0 (local)".into()))
        }
    };
    local("cp --sparse=always", runs, &mut cp(false));
    local("cp --sparse=always && sync", runs, &mut cp(true));
    match tern_testkit::sshd::Sshd::try_start() {
        Ok(ssh) => {
            let dst_s = dst.to_string_lossy().into_owned();
            local("rsync -aS over ssh (localhost)", 1, &mut || {
                let (secs, out) = timed(
                    Command::new("rsync")
                        .args(["-aS", "--stats", "-e", &ssh.rsync_shell()])
                        .arg(&src)
                        .arg(ssh.target(&dst_s)),
                )?;
                Ok((secs, rsync_sent(&out).map_or("?".into(), |b| b.to_string())))
            });
            local("scp (localhost)", 1, &mut || {
                let (secs, _) = timed(
                    Command::new("scp")
                        .args(ssh.ssh_args("-P"))
                        .arg(&src)
                        .arg(ssh.target(&dst_s)),
                )?;
                // scp sends the whole file, holes as zeros.
                Ok((secs, format!("≈{} (whole file)", 4 * data)))
            });
        }
        Err(e) => eprintln!("tern-bench: no sshd ({e}); rsync and scp rows skipped"),
    }

    println!("\n### Cold copy between two agents\n");
    println!("| tool | seconds (median) | runs | bytes on the wire | bytes on disk | equal |");
    println!("|---|---:|---|---:|---:|---|");
    for r in &rows {
        let each = r
            .secs
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {} | {:.2} | {each} | {} | {} | {} |",
            r.tool,
            r.median(),
            r.wire,
            r.disk,
            if r.equal { "yes" } else { "NO" }
        );
    }
    let t = rows[0].median();
    println!();
    for r in &rows[1..] {
        println!("tern / {}: {:.2}x", r.tool, t / r.median());
    }
    // Neither tern nor cp waits for the disk before returning; tern's
    // destination syncs right after, cp's data waits for the kernel.
    if let Some(cps) = rows.get(2) {
        durable_at.sort_by(f64::total_cmp);
        let each = durable_at
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "tern's copy was on disk (synced, marker gone) after {each} s; cp && sync took {:.2} s",
            cps.median()
        );
    }
    if rows.iter().any(|r| !r.equal) {
        bail!("a copy differs from the source");
    }
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
