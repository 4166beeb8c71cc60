//! `tern-transfer-bench`: times the transfer engine against cp, rsync and scp on an 8 GiB
//! sparse image holding 2 GiB of random data, and prints a markdown table.
//!
//! Usage: `tern-transfer-bench [--dir DIR] [--no-ssh] [--only-engine] [--quick]` (DIR defaults to
//! /tmp; a fresh subdirectory is made there and removed at the end).

mod image;
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::{GIB, MIB};
use tern_transfer::{Compression, ReceiveOptions, Receiver, SendOptions, SessionId};

/// One measured tool.
struct Row {
    tool: String,
    secs: f64,
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

fn run_engine(src: &Path, dest: &Path, compression: Compression, fsync: bool) -> Result<(f64, u64), String> {
    let sid = SessionId::random();
    let mut ro = ReceiveOptions::new(sid);
    ro.fsync = fsync;
    let mut so = SendOptions::new(sid);
    so.compression = compression;
    so.progress_interval = Duration::from_secs(1);
    let t = Instant::now();
    let c0 = cpu_secs();
    let r = Receiver::bind("127.0.0.1:0", dest, ro).map_err(|e| e.to_string())?;
    let s = tern_transfer::send(r.local_addr(), src, &so, |_| {}).map_err(|e| e.to_string())?;
    r.wait().map_err(|e| e.to_string())?;
    eprintln!("engine cpu {:.2} s (user+sys) in {:.2} s wall", cpu_secs() - c0, t.elapsed().as_secs_f64());
    Ok((t.elapsed().as_secs_f64(), s.bytes_sent_wire))
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn timed(cmd: &mut Command) -> Result<(f64, String), String> {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// "Total bytes sent: 1,234" from rsync --stats.
fn rsync_sent(stats: &str) -> Option<u64> {
    let line = stats.lines().find(|l| l.starts_with("Total bytes sent:"))?;
    line.split(':').nth(1)?.trim().replace(',', "").parse().ok()
}

fn main() {
    let mut base = PathBuf::from("/tmp");
    let (mut ssh, mut only_engine, mut quick) = (true, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => base = args.next().map(PathBuf::from).unwrap_or(base),
            "--no-ssh" => ssh = false,
            "--only-engine" => only_engine = true,
            "--quick" => quick = true,
            _ => {
                eprintln!("usage: tern-transfer-bench [--dir DIR] [--no-ssh] [--only-engine] [--quick]");
                std::process::exit(2);
            }
        }
    }
    let work = WorkDir(base.join(format!("tern-transfer-bench-{}", std::process::id())));
    if let Err(e) = std::fs::create_dir_all(&work.0).and_then(|_| std::fs::create_dir_all(work.0.join("out"))) {
        eprintln!("cannot create {}: {e}", work.0.display());
        std::process::exit(1);
    }
    let total = Instant::now();
    let src = work.0.join("src.img");
    let layout = image::default_layout();
    let t = Instant::now();
    if let Err(e) = image::create(&src, &layout) {
        eprintln!("creating the image failed: {e}");
        std::process::exit(1);
    }
    let src_data = image::data_bytes(&src).unwrap_or(0);
    println!(
        "source: {} logical, {} allocated ({} random + {} written zeros), made in {:.1} s\n",
        gib(layout.size),
        gib(src_data),
        gib(layout.random.iter().map(|e| e.len).sum()),
        gib(layout.zeroed.len),
        t.elapsed().as_secs_f64()
    );

    let dest = work.0.join("out").join("dest.img");
    let mut rows = Vec::new();
    let mut measure = |tool: &str, f: &mut dyn FnMut() -> Result<(f64, String), String>| {
        let _ = std::fs::remove_file(&dest);
        sync();
        match f() {
            Ok((secs, wire)) => {
                let disk = image::on_disk(&dest).unwrap_or(0);
                let equal = image::files_equal(&src, &dest).unwrap_or(false);
                eprintln!("{tool}: {secs:.2} s");
                rows.push(Row { tool: tool.to_string(), secs, wire, disk, equal });
            }
            Err(e) => eprintln!("{tool}: FAILED: {e}"),
        }
        let _ = std::fs::remove_file(&dest);
    };
    let engine = |c: Compression, fsync: bool| {
        let (src, dest) = (src.clone(), dest.clone());
        move || run_engine(&src, &dest, c, fsync).map(|(s, w)| (s, gib(w)))
    };
    if quick {
        measure("tern-transfer, 2 streams, BLAKE3, no fsync", &mut engine(Compression::None, false));
        measure("cp --sparse=always", &mut || {
            let t = Instant::now();
            timed(Command::new("cp").arg("--sparse=always").arg(&src).arg(&dest))?;
            Ok((t.elapsed().as_secs_f64(), "0 (local)".to_string()))
        });
        only_engine = true;
    } else {
        measure("tern-transfer, 2 streams, BLAKE3, fsync", &mut engine(Compression::None, true));
        measure("tern-transfer, 2 streams, BLAKE3, zstd-1, fsync", &mut engine(Compression::Zstd(1), true));
        measure("tern-transfer, 2 streams, BLAKE3, no fsync", &mut engine(Compression::None, false));
    }
    if !only_engine {
        let cp = |then_sync: bool| {
            let (src, dest) = (src.clone(), dest.clone());
            move || {
                let t = Instant::now();
                timed(Command::new("cp").arg("--sparse=always").arg(&src).arg(&dest))?;
                if then_sync {
                    timed(Command::new("sync").arg(&dest))?;
                }
                Ok((t.elapsed().as_secs_f64(), "0 (local)".to_string()))
            }
        };
        measure("cp --sparse=always", &mut cp(false));
        measure("cp --sparse=always && sync FILE", &mut cp(true));
        let sshd = if ssh {
            match sshd::Sshd::start(&work.0.join("ssh")) {
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
        let logical = layout.size;
        match &sshd {
            Some(s) => {
                measure("rsync -aS over ssh (aes128-gcm)", &mut || {
                    let (secs, out) = timed(
                        Command::new("rsync").args(["-aS", "--stats", "-e", &s.rsync_shell()]).arg(&src).arg(s.target(&dest_s)),
                    )?;
                    Ok((secs, rsync_sent(&out).map(gib).unwrap_or_else(|| "?".into())))
                });
                measure("scp over ssh (aes128-gcm)", &mut || {
                    let (secs, _) = timed(Command::new("scp").args(s.ssh_args("-P")).arg(&src).arg(s.target(&dest_s)))?;
                    Ok((secs, format!("≈{} (holes sent as zeros)", gib(logical))))
                });
            }
            None => measure("rsync -aS (local, no ssh)", &mut || {
                let (secs, out) = timed(Command::new("rsync").args(["-aS", "--stats"]).arg(&src).arg(&dest))?;
                Ok((secs, rsync_sent(&out).map(gib).unwrap_or_else(|| "?".into())))
            }),
        }
        drop(sshd);
    }

    println!("| tool | seconds | bytes on the wire | bytes on disk (result) | equals source |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!("| {} | {:.2} | {} | {} ({} B) | {} |", r.tool, r.secs, r.wire, gib(r.disk), r.disk, if r.equal { "yes" } else { "NO" });
    }
    let cp = rows.iter().find(|r| r.tool == "cp --sparse=always").map(|r| r.secs);
    if let (Some(cp), Some(e)) = (cp, rows.first()) {
        println!("\nengine (fsync) / cp = {:.2}x; target <= 1.5x", e.secs / cp);
    }
    println!("total benchmark time {:.0} s (image: {} MiB allocated)", total.elapsed().as_secs_f64(), src_data / MIB);
    drop(work);
    sync();
    if rows.iter().any(|r| !r.equal) {
        std::process::exit(1);
    }
}
