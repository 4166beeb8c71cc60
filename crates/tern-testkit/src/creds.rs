//! What one process's credentials may open (test-only): a guest's QEMU
//! runs as its own uid, and a test asks whether those exact credentials
//! (uid, gid, supplementary groups, read from /proc) could open another
//! guest's files, as a compromised QEMU would try.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// A process's effective identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Creds {
    /// The effective credentials of process `pid`, from
    /// `/proc/PID/status`.
    pub fn of_pid(pid: u32) -> Creds {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let field = |name: &str| -> Vec<u32> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        };
        Creds {
            uid: field("Uid:")[1],
            gid: field("Gid:")[1],
            groups: field("Groups:"),
        }
    }

    /// Opens `path` for reading as these credentials (a child process
    /// drops to them, then its shell opens the file or directory).
    /// `Err` carries the shell's message, e.g. "Permission denied".
    pub fn open(&self, path: &Path) -> Result<(), String> {
        self.sh(": < \"$1\"", path.as_os_str())
    }

    /// Sends signal 0 to `pid` as these credentials: whether they may
    /// signal (kill, stop) that process. `Err` carries `kill`'s message.
    pub fn signal(&self, pid: u32) -> Result<(), String> {
        self.sh("kill -0 \"$1\"", std::ffi::OsStr::new(&pid.to_string()))
    }

    /// Runs `script` with `$1` = `arg` in `sh` dropped to these
    /// credentials.
    fn sh(&self, script: &str, arg: &std::ffi::OsStr) -> Result<(), String> {
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script, "sh"]).arg(arg);
        // SAFETY: the closure runs in the forked child before exec and
        // makes only async-signal-safe system calls (setgroups, setgid,
        // setuid) on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().map_err(|e| format!("cannot run sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

/// `(uid, gid, mode)` of `path` (not following a symlink).
pub fn owner_mode(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// The uid range a test host's guests get: distinct per host (from its
/// root directory), so guests of two test hosts on one machine never share
/// a uid, and apart from the agent's default range.
pub fn test_uid_range(root: &Path) -> (u32, u32) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    root.hash(&mut h);
    let first = 1_950_000_000 + (h.finish() % 150_000) as u32 * 1000;
    (first, first + 999)
}

/// The processes whose command line starts with `prog` and mentions
/// `needle` (e.g. the swtpm of one guest, by its state directory).
pub fn pids_of(prog: &str, needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.split('\0').next() == Some(prog) && cmd.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Entries under `dir` (itself included, symlinks not followed) that
/// `uid` owns.
pub fn owned_by(dir: &Path, uid: u32) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return out;
    };
    if m.uid() == uid {
        out.push(dir.to_path_buf());
    }
    if m.is_dir() {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.extend(owned_by(&e.path(), uid));
        }
    }
    out
}

/// Removes the /dev/userfaultfd ACL entries of uids `first..=last` (what a
/// post-copy destination's agent grants its guest and, killed by a test
/// before the guest ended, cannot take back).
pub fn forget_userfaultfd_entries(first: u32, last: u32) {
    use std::ffi::CString;
    let dev = CString::new("/dev/userfaultfd").unwrap();
    let name = CString::new("system.posix_acl_access").unwrap();
    // The lock the agents take for the same file (tern_agent::confine::acl).
    let Ok(lock) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/tern-acl_dev_userfaultfd.lock")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let mut buf = vec![0u8; 8192];
    // SAFETY: NUL-terminated strings; `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            dev.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 12 {
        return;
    }
    let (head, body) = buf[..n as usize].split_at(4);
    let mut entries: Vec<[u8; 8]> = body
        .chunks_exact(8)
        .map(|c| c.try_into().unwrap())
        .collect();
    let user = |e: &[u8; 8]| u16::from_le_bytes([e[0], e[1]]) == 0x02;
    let id = |e: &[u8; 8]| u32::from_le_bytes(e[4..8].try_into().unwrap());
    let before = entries.len();
    entries.retain(|e| !(user(e) && (first..=last).contains(&id(e))));
    if entries.len() == before {
        return;
    }
    if !entries
        .iter()
        .any(|e| user(e) || u16::from_le_bytes([e[0], e[1]]) == 0x08)
    {
        // No named entry left: no mask either (a plain mode again).
        entries.retain(|e| u16::from_le_bytes([e[0], e[1]]) != 0x10);
    }
    let mut out = head.to_vec();
    for e in &entries {
        out.extend_from_slice(e);
    }
    // SAFETY: NUL-terminated strings; `out` is readable for its length.
    unsafe {
        libc::setxattr(
            dev.as_ptr(),
            name.as_ptr(),
            out.as_ptr().cast(),
            out.len(),
            0,
        );
    }
}
