//! Small facts about the machine the benchmark runs on: load, other QEMUs,
//! a free TCP port.

use anyhow::{Context, Result};

/// The 1-minute load average, if `/proc/loadavg` can be read.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many `qemu-system-*` processes are running. Called between cases,
/// when none of ours are, this counts other people's guests competing for
/// the CPU.
pub fn qemu_processes() -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|c| c.starts_with("qemu-system"))
        .count()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks
/// it; the destination QEMU binds it right after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free TCP port")?;
    Ok(l.local_addr().context("read the bound address")?.port())
}
