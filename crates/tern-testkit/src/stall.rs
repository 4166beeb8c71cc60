//! What a guest whose console went silent is doing, so that a test that
//! gives up on it says more than "timed out".
//!
//! A TCG guest can go quiet for minutes on a loaded machine (systemd waits
//! for units without printing), so silence alone proves nothing. What
//! tells a frozen QEMU from a guest that is busy, waiting or stopped is the
//! QEMU process itself: each thread's scheduler state and the CPU time it
//! burns over a second (QEMU runs with `debug-threads=on`, so vCPU threads
//! are named `CPU n/TCG`), plus the room left where the console is logged.

use std::path::Path;
use std::time::Duration;

/// One thread of a QEMU process, as `/proc/PID/task/TID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadSample {
    tid: u32,
    name: String,
    state: char,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

/// Parses one `stat` line: the name is in parentheses and may hold spaces.
fn parse_stat(tid: u32, line: &str) -> Option<ThreadSample> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line[open + 1..close].to_string();
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    // Fields after the name: state (3rd field of stat), ..., utime (14th),
    // stime (15th); `rest[0]` is the 3rd.
    let state = rest.first()?.chars().next()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(ThreadSample {
        tid,
        name,
        state,
        ticks: utime + stime,
    })
}

fn sample(pid: u32) -> Vec<ThreadSample> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(line) = std::fs::read_to_string(e.path().join("stat")) {
            out.extend(parse_stat(tid, &line));
        }
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// One line per QEMU thread that ran or is not sleeping: its name, state
/// and the CPU milliseconds it used over `window`.
fn threads_report(pid: u32, window: Duration) -> String {
    let before = sample(pid);
    if before.is_empty() {
        return format!("QEMU pid {pid}: no such process");
    }
    std::thread::sleep(window);
    let after = sample(pid);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut lines = vec![format!(
        "QEMU pid {pid}, CPU ms per thread over {window:?}:"
    )];
    for t in &after {
        let used = before
            .iter()
            .find(|b| b.tid == t.tid)
            .map(|b| t.ticks.saturating_sub(b.ticks) * 1000 / hz)
            .unwrap_or(0);
        if used > 0 || t.state != 'S' || t.name.starts_with("CPU ") {
            lines.push(format!("  {} [{}] {} ms", t.name, t.state, used));
        }
    }
    lines.join("\n")
}

/// Bytes free on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct we own; `c` is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// A report on the guest QEMU whose run directory is `run_dir` (its
/// `qemu.pid`, `console.log` and `qemu.log`).
pub fn diagnose(run_dir: &Path) -> String {
    let mut out = Vec::new();
    match std::fs::read_to_string(run_dir.join("qemu.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        Some(pid) => out.push(threads_report(pid, Duration::from_secs(1))),
        None => out.push(format!("no qemu.pid in {}", run_dir.display())),
    }
    let console = run_dir.join("console.log");
    let size = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
    let free = free_bytes(run_dir).map_or("unknown".to_string(), |b| format!("{} KiB", b >> 10));
    out.push(format!(
        "console.log holds {size} bytes; {free} free where it is written"
    ));
    if let Ok(log) = std::fs::read_to_string(run_dir.join("qemu.log")) {
        out.push(format!("qemu.log:\n{}", crate::host::tail(&log, 10)));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_the_name_parses() {
        let line = "4242 (CPU 0/TCG) R 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 5 0 100";
        let t = parse_stat(4242, line).unwrap();
        assert_eq!(t.name, "CPU 0/TCG");
        assert_eq!(t.state, 'R');
        assert_eq!(t.ticks, 175);
    }

    #[test]
    fn this_process_reports_its_threads() {
        let r = threads_report(std::process::id(), Duration::from_millis(10));
        assert!(r.starts_with("QEMU pid"), "{r}");
        assert!(free_bytes(Path::new("/")).is_some());
    }
}
