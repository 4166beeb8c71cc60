//! `tern-bench engine`: times the transfer engine (in process, no agents) against cp,
//! rsync and scp on an 8 GiB sparse image holding 2 GiB of random data, and prints a
//! markdown table.
//!
//! Usage: `tern-bench engine [--dir DIR] [--runs N] [--no-ssh] [--quick]`. A fresh
//! directory is made under DIR (default /tmp) and removed at the end. The engine and cp
//! rows are the median of N runs (default 3), because the machine may be shared; rsync
//! and scp run once. `--quick` runs only the engine without fsync and cp.

pub mod image;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use image::{GIB, MIB};
use tern_testkit::sshd;
use tern_transfer::{Checksum, Compression, ReceiveOptions, Receiver, SendOptions, SessionId};

/// What one run of a tool reports: wall seconds and bytes on the wire (as text).
type RunResult = Result<(f64, String), String>;

/// One measured tool (median run).
struct Row {
    tool: String,
    secs: Vec<f64>,
    cpu: Option<f64>,
    wire: String,
    disk: u64,
    equal: bool,
}

/// Removes the work directory however the program ends (short of a kill).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / GIB as f64)
}

/// User + system CPU seconds of this process (`RUSAGE_SELF`) or of its reaped children.
fn cpu_secs(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data; getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn run_engine(
    src: &Path,
    dest: &Path,
    compression: Compression,
    fsync: bool,
    streams: u16,
    checksum: Checksum,
) -> RunResult {
    let sid = SessionId::random();
    let mut ro = ReceiveOptions::new(sid);
    // Without fsync the receiver defers it (and marks the file as such).
    ro.durability = if fsync {
        tern_transfer::Durability::Synced
    } else {
        tern_transfer::Durability::Deferred
    };
    let mut so = SendOptions::new(sid);
    so.compression = compression;
    so.streams = streams;
    so.checksum = checksum;
    so.progress_interval = Duration::from_secs(1);
    let t = Instant::now();
    let r = Receiver::bind("127.0.0.1:0", dest, ro).map_err(|e| e.to_string())?;
    let s = tern_transfer::send(r.local_addr(), src, &so, |_| {}).map_err(|e| e.to_string())?;
    r.wait().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(tern_transfer::durable::marker_path(dest));
    Ok((
        t.elapsed().as_secs_f64(),
        format!("{} ({} B)", gib(s.bytes_sent_wire), s.bytes_sent_wire),
    ))
}

fn timed(cmd: &mut Command) -> Result<(f64, String), String> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// "Total bytes sent: 1,234" from rsync --stats.
fn rsync_sent(stats: &str) -> Option<u64> {
    let line = stats.lines().find(|l| l.starts_with("Total bytes sent:"))?;
    line.split(':').nth(1)?.trim().replace(',', "").parse().ok()
}

/// Runs `f` `runs` times on a clean destination; keeps the median time and checks every result.
fn measure(
    rows: &mut Vec<Row>,
    src: &Path,
    dest: &Path,
    tool: &str,
    runs: usize,
    in_process: bool,
    f: &mut dyn FnMut() -> RunResult,
) {
    let mut row = Row {
        tool: tool.to_string(),
        secs: Vec::new(),
        cpu: None,
        wire: String::new(),
        disk: 0,
        equal: true,
    };
    let mut cpu = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_file(dest);
        sync();
        let who = if in_process {
            libc::RUSAGE_SELF
        } else {
            libc::RUSAGE_CHILDREN
        };
        let c0 = cpu_secs(who);
        match f() {
            Ok((secs, wire)) => {
                cpu.push(cpu_secs(who) - c0);
                row.disk = image::on_disk(dest).unwrap_or(0);
                row.equal &= image::files_equal(src, dest).unwrap_or(false);
                eprintln!("{tool}: {secs:.2} s");
                row.secs.push(secs);
                row.wire = wire;
            }
            Err(e) => {
                eprintln!("{tool}: FAILED: {e}");
                row.equal = false;
            }
        }
        let _ = std::fs::remove_file(dest);
    }
    if !row.secs.is_empty() {
        row.secs.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        row.cpu = Some(cpu[cpu.len() / 2]);
        rows.push(row);
    }
}

fn median(v: &[f64]) -> f64 {
    v[v.len() / 2]
}

/// Options.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Where the work directory is made (removed at the end).
    #[arg(long, default_value = "/tmp")]
    pub dir: PathBuf,
    /// Runs of the engine and cp rows (the median is shown).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip rsync and scp over ssh.
    #[arg(long)]
    pub no_ssh: bool,
    /// Only the engine without fsync and cp.
    #[arg(long)]
    pub quick: bool,
}

/// Runs the engine benchmark and prints the table.
pub fn run(a: EngineArgs) -> Result<()> {
    let (base, ssh, quick, runs) = (a.dir, !a.no_ssh, a.quick, a.runs.max(1));
    let work = WorkDir(base.join(format!("tern-bench-engine-{}", std::process::id())));
    std::fs::create_dir_all(work.0.join("out"))
        .with_context(|| format!("creating {}", work.0.display()))?;
    let total = Instant::now();
    let src = work.0.join("src.img");
    let layout = image::default_layout();
    let t = Instant::now();
    image::create(&src, &layout).context("creating the image")?;
    let src_data = image::data_bytes(&src).unwrap_or(0);
    println!(
        "source: {} logical, {} allocated ({} random in {} extents + {} of written zeros), made in {:.1} s",
        gib(layout.size),
        gib(src_data),
        gib(layout.random.iter().map(|e| e.len).sum()),
        layout.random.len(),
        gib(layout.zeroed.len),
        t.elapsed().as_secs_f64()
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let dest = work.0.join("out").join("dest.img");
    let mut rows = Vec::new();
    let engine = |c: Compression, fsync: bool| {
        let (src, dest) = (src.clone(), dest.clone());
        move || run_engine(&src, &dest, c, fsync, 2, Checksum::Xxh3)
    };
    let cp = |then_sync: bool| {
        let (src, dest) = (src.clone(), dest.clone());
        move || {
            let t = Instant::now();
            timed(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&src)
                    .arg(&dest),
            )?;
            if then_sync {
                timed(Command::new("sync").arg(&dest))?;
            }
            Ok((t.elapsed().as_secs_f64(), "0 (local copy)".to_string()))
        }
    };
    let m = &mut rows;
    if !quick {
        measure(
            m,
            &src,
            &dest,
            "tern-transfer, 2 streams, XXH3, fsync",
            runs,
            true,
            &mut engine(Compression::None, true),
        );
        measure(
            m,
            &src,
            &dest,
            "cp --sparse=always && sync FILE",
            runs,
            false,
            &mut cp(true),
        );
    }
    measure(
        m,
        &src,
        &dest,
        "tern-transfer, 2 streams, XXH3, no fsync",
        runs,
        true,
        &mut engine(Compression::None, false),
    );
    measure(
        m,
        &src,
        &dest,
        "cp --sparse=always",
        runs,
        false,
        &mut cp(false),
    );
    if !quick {
        let (s4, d4) = (src.clone(), dest.clone());
        let mut four = move || run_engine(&s4, &d4, Compression::None, false, 4, Checksum::Xxh3);
        measure(
            m,
            &src,
            &dest,
            "tern-transfer, 4 streams, XXH3, no fsync",
            runs,
            true,
            &mut four,
        );
        let (sb, db) = (src.clone(), dest.clone());
        let mut blake = move || run_engine(&sb, &db, Compression::None, false, 2, Checksum::Blake3);
        measure(
            m,
            &src,
            &dest,
            "tern-transfer, 2 streams, BLAKE3, no fsync",
            runs,
            true,
            &mut blake,
        );
        measure(
            m,
            &src,
            &dest,
            "tern-transfer, 2 streams, XXH3, zstd-1, fsync",
            1,
            true,
            &mut engine(Compression::Zstd(1), true),
        );
        let sshd = if ssh {
            match sshd::Sshd::try_start() {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("no sshd ({e}); running rsync locally and skipping scp");
                    None
                }
            }
        } else {
            None
        };
        let dest_s = dest.to_string_lossy().into_owned();
        let rsync_wire =
            |out: &str| rsync_sent(out).map(|b| format!("{} ({b} B, rsync --stats)", gib(b)));
        match &sshd {
            Some(s) => {
                measure(
                    m,
                    &src,
                    &dest,
                    "rsync -aS over ssh to localhost (aes128-gcm)",
                    1,
                    false,
                    &mut || {
                        let mut c = Command::new("rsync");
                        c.args(["-aS", "--stats", "-e", &s.rsync_shell()])
                            .arg(&src)
                            .arg(s.target(&dest_s));
                        let (secs, out) = timed(&mut c)?;
                        Ok((secs, rsync_wire(&out).unwrap_or_else(|| "?".into())))
                    },
                );
                measure(
                    m,
                    &src,
                    &dest,
                    "scp to localhost (aes128-gcm)",
                    1,
                    false,
                    &mut || {
                        let (secs, _) = timed(
                            Command::new("scp")
                                .args(s.ssh_args("-P"))
                                .arg(&src)
                                .arg(s.target(&dest_s)),
                        )?;
                        Ok((
                            secs,
                            format!("≈{} (estimate: scp sends holes as zeros)", gib(layout.size)),
                        ))
                    },
                );
            }
            None => measure(
                m,
                &src,
                &dest,
                "rsync -aS (local, no ssh)",
                1,
                false,
                &mut || {
                    let (secs, out) = timed(
                        Command::new("rsync")
                            .args(["-aS", "--stats"])
                            .arg(&src)
                            .arg(&dest),
                    )?;
                    Ok((secs, rsync_wire(&out).unwrap_or_else(|| "?".into())))
                },
            ),
        }
        drop(sshd);
    }

    println!("\n| tool | seconds (median of runs) | runs | CPU s | bytes on the wire | bytes on disk (result) | equals source |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let runs = r
            .secs
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" / ");
        // CPU of ssh rows would miss the sshd side, so it is not shown.
        let cpu = match (r.cpu, r.tool.contains("ssh") || r.tool.contains("scp")) {
            (Some(c), false) => format!("{c:.2}"),
            _ => "n/a".into(),
        };
        let eq = if r.equal { "yes" } else { "NO" };
        println!(
            "| {} | {:.2} | {runs} | {cpu} | {} | {} ({} B) | {eq} |",
            r.tool,
            median(&r.secs),
            r.wire,
            gib(r.disk),
            r.disk
        );
    }
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.tool == name)
            .map(|r| median(&r.secs))
    };
    let ratio = |e: &str, c: &str| find(e).zip(find(c)).map(|(e, c)| e / c);
    let cpu = |n: &str| rows.iter().find(|r| r.tool == n).and_then(|r| r.cpu);
    let cpus = (
        cpu("tern-transfer, 2 streams, XXH3, no fsync"),
        cpu("cp --sparse=always"),
    );
    if let (Some(e), Some(c)) = cpus {
        println!(
            "CPU: engine (both ends, two XXH3 passes) {e:.2} s vs cp {c:.2} s = {:.2}x",
            e / c
        );
    }
    if let Some(x) = ratio(
        "tern-transfer, 2 streams, XXH3, no fsync",
        "cp --sparse=always",
    ) {
        println!("\nengine without fsync / cp: {x:.2}x (target <= 1.5x)");
    }
    if let Some(x) = ratio(
        "tern-transfer, 2 streams, XXH3, fsync",
        "cp --sparse=always && sync FILE",
    ) {
        println!("engine with fsync / cp + sync: {x:.2}x");
    }
    if let Some(x) = ratio(
        "tern-transfer, 2 streams, XXH3, fsync",
        "cp --sparse=always",
    ) {
        println!("engine with fsync / cp: {x:.2}x");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "total benchmark time {:.0} s (image: {} MiB allocated)",
        total.elapsed().as_secs_f64(),
        src_data / MIB
    );
    drop(work);
    sync();
    if rows.iter().any(|r| !r.equal) {
        bail!("a copy differs from the source");
    }
    Ok(())
}
