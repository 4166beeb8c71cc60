//! Killing every guest of the host at once: SIGKILL through pidfds (no pid
//! reuse can redirect the signal), all sent before any is waited for, then
//! one `poll` over all of them.

use std::os::fd::AsRawFd;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// A guest QEMU found in the agent's run directory.
#[derive(Debug)]
struct Target {
    name: String,
    pid: u32,
    start_time: u64,
}

/// Every QEMU the agent's run records name (`run/*/runtime.json`).
fn targets(runs: &Path) -> Vec<Target> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(runs) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(b) = std::fs::read(e.path().join("runtime.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
            continue;
        };
        if let (Some(pid), Some(st)) = (v["pid"].as_u64(), v["start_time"].as_u64()) {
            out.push(Target {
                name: e.file_name().to_string_lossy().into_owned(),
                pid: pid as u32,
                start_time: st,
            });
        }
    }
    out
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_kill(fd: &OwnedFd) -> bool {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Kills every guest QEMU of the host and waits up to `budget` for all of
/// them to end. Returns each domain with whether its end was seen.
pub fn kill_all(runs: &Path, budget: Duration) -> Vec<(String, bool)> {
    let mut fds: Vec<(String, OwnedFd)> = Vec::new();
    let mut out = Vec::new();
    for t in targets(runs) {
        let Some(fd) = pidfd_open(t.pid) else {
            // Already gone.
            out.push((t.name, true));
            continue;
        };
        // The pidfd pins the process: checked after opening it, the start
        // time cannot belong to a successor that reused the pid.
        if crate::procs::start_time(t.pid) != Some(t.start_time) {
            out.push((t.name, true));
            continue;
        }
        pidfd_kill(&fd);
        fds.push((t.name, fd));
    }
    let deadline = Instant::now() + budget;
    let mut pending = fds;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut polls: Vec<libc::pollfd> = pending
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: polls is a valid array of pollfd for its length.
        let n = unsafe {
            libc::poll(
                polls.as_mut_ptr(),
                polls.len() as libc::nfds_t,
                left.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n < 0 {
            continue;
        }
        let mut still = Vec::new();
        for ((name, fd), p) in pending.into_iter().zip(polls) {
            if p.revents != 0 {
                out.push((name, true));
            } else {
                still.push((name, fd));
            }
        }
        pending = still;
    }
    out.extend(pending.into_iter().map(|(n, _)| (n, false)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_every_recorded_process_and_sees_them_end() {
        let d = tempfile::tempdir().unwrap();
        let mut children = Vec::new();
        for name in ["g1", "g2"] {
            let c = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap();
            let pid = c.id();
            let st = crate::procs::start_time(pid).unwrap();
            let dir = d.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("runtime.json"),
                format!(r#"{{"pid":{pid},"start_time":{st}}}"#),
            )
            .unwrap();
            children.push(c);
        }
        // A stale record whose pid now belongs to someone else is spared.
        let me = std::process::id();
        std::fs::create_dir_all(d.path().join("stale")).unwrap();
        std::fs::write(
            d.path().join("stale/runtime.json"),
            format!(r#"{{"pid":{me},"start_time":1}}"#),
        )
        .unwrap();
        let mut r = kill_all(d.path(), Duration::from_secs(10));
        r.sort();
        assert_eq!(
            r,
            vec![
                ("g1".to_string(), true),
                ("g2".to_string(), true),
                ("stale".to_string(), true)
            ]
        );
        for mut c in children {
            let st = c.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(st.signal(), Some(libc::SIGKILL));
        }
    }
}
