//! Killing every guest of the host at once: SIGKILL through pidfds (no pid
//! reuse can redirect the signal), all sent before any is waited for, then
//! one `poll` over all of them.

use std::os::fd::AsRawFd;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a found process is proven to be the guest QEMU it is taken for,
/// once a pidfd pins it (so a reused pid is never hit).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Proof {
    /// The start time the agent recorded with the pid (`runtime.json`).
    StartTime(u64),
    /// Its command line names this pid file (`-pidfile PATH`): the file
    /// QEMU writes itself early in its start, before it opens a disk or
    /// runs the guest, so a QEMU whose launch the agent never recorded
    /// (it died, or was fenced, in between) is found all the same.
    PidFileArg(PathBuf),
}

/// A guest QEMU found in the agent's run directory.
#[derive(Debug)]
struct Target {
    name: String,
    pid: u32,
    proof: Proof,
}

/// The pid file QEMU writes in a domain's run directory (`tern-qemu`'s
/// `cmdline::pid_file`).
const PID_FILE: &str = "qemu.pid";

/// Every QEMU the agent's run directories name: by its record
/// (`run/*/runtime.json`) and by QEMU's own pid file (`run/*/qemu.pid`).
fn targets(runs: &Path) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let Ok(rd) = std::fs::read_dir(runs) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        let recorded = std::fs::read(dir.join("runtime.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| Some((v["pid"].as_u64()? as u32, v["start_time"].as_u64()?)));
        if let Some((pid, st)) = recorded {
            out.push(Target {
                name: name.clone(),
                pid,
                proof: Proof::StartTime(st),
            });
        }
        let pid_file = dir.join(PID_FILE);
        let own = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = own {
            if !out.iter().any(|t| t.pid == pid) {
                out.push(Target {
                    name,
                    pid,
                    proof: Proof::PidFileArg(pid_file),
                });
            }
        }
    }
    out
}

/// Whether the process `pid` (pinned by a pidfd) is the one `proof` names.
fn proven(pid: u32, proof: &Proof) -> bool {
    match proof {
        Proof::StartTime(st) => crate::procs::start_time(pid) == Some(*st),
        Proof::PidFileArg(path) => {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let want = path.as_os_str().as_encoded_bytes();
            cmd.split(|b| *b == 0).any(|arg| arg == want)
        }
    }
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

/// SIGKILLs every proven guest QEMU of the host: the pidfds of those
/// signalled, and the names of those already gone.
fn signal_all(runs: &Path) -> (Vec<(String, OwnedFd)>, Vec<String>) {
    let mut fds: Vec<(String, OwnedFd)> = Vec::new();
    let mut gone = Vec::new();
    for t in targets(runs) {
        let Some(fd) = pidfd_open(t.pid) else {
            gone.push(t.name);
            continue;
        };
        // The pidfd pins the process: checked after opening it, the proof
        // cannot belong to a successor that reused the pid.
        if !proven(t.pid, &t.proof) || crate::procs::is_dead(t.pid) {
            gone.push(t.name);
            continue;
        }
        pidfd_kill(&fd);
        fds.push((t.name, fd));
    }
    (fds, gone)
}

/// Kills every guest QEMU of the host and waits up to `budget` for all of
/// them to end. Returns each domain with whether its end was seen.
pub fn kill_all(runs: &Path, budget: Duration) -> Vec<(String, bool)> {
    let (fds, gone) = signal_all(runs);
    let mut out: Vec<(String, bool)> = gone.into_iter().map(|n| (n, true)).collect();
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
    // One entry per domain: its end seen only if every process of it ended.
    let mut by_name = std::collections::BTreeMap::new();
    for (n, ended) in out {
        let e = by_name.entry(n).or_insert(true);
        *e = *e && ended;
    }
    by_name.into_iter().collect()
}

/// After fencing: SIGKILLs any guest QEMU that lives on (one whose launch
/// raced the kill, say); the names of those it found alive.
pub fn sweep(runs: &Path) -> Vec<String> {
    signal_all(runs).0.into_iter().map(|(n, _)| n).collect()
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

    /// A process whose command line names `dir/qemu.pid`, as QEMU's does,
    /// with its pid written there and no runtime record: a launch the
    /// agent had not recorded yet.
    fn unrecorded(dir: &Path) -> std::process::Child {
        std::fs::create_dir_all(dir).unwrap();
        let pid_file = dir.join(PID_FILE);
        std::fs::write(&pid_file, "").unwrap();
        let c = std::process::Command::new("tail")
            .arg("-f")
            .arg(&pid_file)
            .spawn()
            .unwrap();
        // QEMU writes its pid file itself, after its exec: so here, once
        // the new command line shows (a vforked child is reported spawned
        // before its exec has set it up).
        let cmdline = format!("/proc/{}/cmdline", c.id());
        let want = pid_file.as_os_str().as_encoded_bytes().to_vec();
        while !std::fs::read(&cmdline)
            .unwrap_or_default()
            .split(|b| *b == 0)
            .any(|a| a == want)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::write(&pid_file, format!("{}\n", c.id())).unwrap();
        c
    }

    #[test]
    fn a_launch_not_yet_recorded_is_killed_by_its_own_pid_file() {
        use std::os::unix::process::ExitStatusExt;
        let d = tempfile::tempdir().unwrap();
        let mut c = unrecorded(&d.path().join("g1"));
        // A pid file left by a QEMU long gone, its pid now someone else's.
        std::fs::create_dir_all(d.path().join("old")).unwrap();
        std::fs::write(
            d.path().join("old").join(PID_FILE),
            std::process::id().to_string(),
        )
        .unwrap();
        let found = targets(d.path());
        let g1 = found.iter().find(|t| t.name == "g1").expect("g1 found");
        assert_eq!(g1.pid, c.id(), "{found:?}");
        assert!(proven(g1.pid, &g1.proof), "{found:?}");
        let old = found.iter().find(|t| t.name == "old").expect("old found");
        assert!(!proven(old.pid, &old.proof), "{found:?}");
        let r = kill_all(d.path(), Duration::from_secs(10));
        assert_eq!(r, vec![("g1".to_string(), true), ("old".to_string(), true)]);
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn the_sweep_after_fencing_kills_what_appeared_since() {
        use std::os::unix::process::ExitStatusExt;
        let d = tempfile::tempdir().unwrap();
        assert!(sweep(d.path()).is_empty());
        let mut c = unrecorded(&d.path().join("late"));
        assert_eq!(sweep(d.path()), vec!["late".to_string()]);
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}
