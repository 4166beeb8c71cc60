//! Process helpers: spawning QEMU detached from the agent, recognising it
//! again after a restart, and waiting for it to end without polling.

use std::path::Path;
use std::process::Stdio;

/// The kernel's start time of a process (field 22 of /proc/PID/stat), used
/// to tell our QEMU from an unrelated process that reused its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process is a zombie or gone.
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_none_or(|st| st == "Z" || st == "X"),
    }
}

/// Sends a signal.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Builds a command whose process survives the agent: its own session (so
/// a terminal's ^C or the agent's process group dying does not reach it),
/// no stdin, output appended to `log`.
pub fn detached_command(binary: &Path, log: &Path) -> std::io::Result<tokio::process::Command> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Marks this process a child subreaper, so QEMU processes of ours that
/// lose their parent are reaped by us promptly rather than lingering as
/// zombies under a slow init.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Last non-empty line of a log file, trimmed of QEMU's timestamp prefix.
pub fn last_log_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    // "2026-11-21T22:00:00.000000Z qemu-system-x86_64: -blockdev ...: msg"
    let line = match line.split_once(' ') {
        Some((ts, rest)) if ts.contains('T') && ts.ends_with('Z') => rest,
        _ => line,
    };
    Some(line.trim_start_matches("qemu-system-x86_64: ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
        assert!(!is_dead(std::process::id()));
    }

    #[test]
    fn log_line_strips_timestamp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.log");
        std::fs::write(
            &p,
            "2026-11-21T22:00:00.000000Z qemu-system-x86_64: -blockdev x: Could not open 'x'\n\n",
        )
        .unwrap();
        assert_eq!(
            last_log_line(&p).unwrap(),
            "-blockdev x: Could not open 'x'"
        );
    }
}
