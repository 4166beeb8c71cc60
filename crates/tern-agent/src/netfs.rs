//! netfs pools: reaching an NFS export either through the kernel (`mount
//! -t nfs` on the pool's target, as libvirt does) or without it, where QEMU
//! opens volumes as `nfs://` URLs and the agent lists, sizes and deletes
//! files with its own NFSv3 client (the `nfs3_client` crate), the same
//! protocol QEMU's libnfs speaks.

use std::path::Path;
use tern_model::NetfsSource;
use thiserror::Error;
use tokio::process::Command;

mod export;

pub use export::{Export, Space};

/// Failures reaching or changing an export.
#[derive(Debug, Error)]
pub enum NetfsError {
    /// The server's name does not resolve.
    #[error("cannot resolve NFS server '{host}': {source}")]
    Resolve {
        /// The name.
        host: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Portmapper, MOUNT or NFS connection failed.
    #[error("cannot mount {host}:{path} over NFSv3: {message}; check that the server runs rpcbind and exports the path to this host")]
    Connect {
        /// Server.
        host: String,
        /// Export.
        path: String,
        /// What the client said.
        message: String,
    },
    /// An NFS call failed.
    #[error("NFS {op} on {host}:{path} failed: {message}")]
    Call {
        /// The operation.
        op: &'static str,
        /// Server.
        host: String,
        /// Export.
        path: String,
        /// Status or transport error.
        message: String,
    },
    /// The server did not answer in time.
    #[error("NFS server {host} did not answer within {secs} s; check the network path to it")]
    Timeout {
        /// Server.
        host: String,
        /// Seconds waited.
        secs: u64,
    },
    /// `mount` or `umount` failed.
    #[error("{cmd} failed: {message}")]
    Mount {
        /// The command line.
        cmd: String,
        /// Its last line of stderr.
        message: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, NetfsError>;

/// Whether this kernel can mount NFS: `nfs` is a registered filesystem, or
/// its module is installed and `mount` will load it.
pub fn kernel_has_nfs() -> bool {
    let registered = std::fs::read_to_string("/proc/filesystems")
        .map(|t| filesystems_list_nfs(&t))
        .unwrap_or(false);
    registered || nfs_module_installed()
}

fn filesystems_list_nfs(text: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some("nfs"))
}

fn nfs_module_installed() -> bool {
    let mut u: libc::utsname = unsafe {
        // SAFETY: utsname is plain data; zeroed is a valid value.
        std::mem::zeroed()
    };
    // SAFETY: uname fills the struct it is given.
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    // SAFETY: uname wrote a NUL-terminated string into release.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    let dir = Path::new("/lib/modules")
        .join(release.to_string_lossy().as_ref())
        .join("kernel/fs/nfs");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("nfs.ko"))
        })
        .unwrap_or(false)
}

/// The `mount` command line libvirt uses for a netfs pool of format nfs
/// (`virStorageBackendFileSystemMountCmd`): `mount -o nodev,nosuid,noexec
/// -t nfs HOST:PATH TARGET`, the target without a trailing slash (libvirt
/// keeps pool targets sanitised; /proc/mounts never shows one).
pub fn mount_args(src: &NetfsSource, target: &Path) -> Vec<String> {
    vec![
        "-o".into(),
        "nodev,nosuid,noexec".into(),
        "-t".into(),
        "nfs".into(),
        format!("{}:{}", src.host, src.path),
        plain(target),
    ]
}

/// `target` as the kernel lists mount points: components joined by single
/// slashes, no trailing slash (`/mykvm/nfspool/` is `/mykvm/nfspool`).
fn plain(target: &Path) -> String {
    target
        .components()
        .collect::<std::path::PathBuf>()
        .display()
        .to_string()
}

/// Whether `target` is a mount point (listed in /proc/self/mountinfo),
/// however its path is spelled (a trailing slash, as in the walk-through's
/// `--target /mykvm/nfspool/`, names the same mount point).
pub fn is_mounted(target: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| mountinfo_lists(&m, target))
        .unwrap_or(false)
}

fn mountinfo_lists(mountinfo: &str, target: &Path) -> bool {
    let t = plain(target);
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| unescape_mount(p) == t))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// How long `mount`/`umount` may take (mount.nfs retries an unreachable
/// server for minutes; the pool table is locked meanwhile).
const MOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

async fn run(prog: &str, args: &[String]) -> Result<()> {
    let cmd = || format!("{prog} {}", args.join(" "));
    let child = Command::new(prog).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(MOUNT_WAIT, child)
        .await
        .map_err(|_| NetfsError::Mount {
            cmd: cmd(),
            message: format!(
                "no answer within {} s; check that the NFS server is reachable",
                MOUNT_WAIT.as_secs()
            ),
        })?
        .map_err(|e| NetfsError::Mount {
            cmd: cmd(),
            message: format!("cannot run {prog}: {e} (install nfs-common)"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(NetfsError::Mount {
        cmd: cmd(),
        message: err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no error message")
            .trim()
            .to_string(),
    })
}

/// Mounts the export on `target` unless something is mounted there already.
pub async fn mount(src: &NetfsSource, target: &Path) -> Result<()> {
    if is_mounted(target) {
        return Ok(());
    }
    run("mount", &mount_args(src, target)).await
}

/// Unmounts `target` if it is mounted.
pub async fn unmount(target: &Path) -> Result<()> {
    if !is_mounted(target) {
        return Ok(());
    }
    run("umount", &[plain(target)]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_model::NetfsAccess;

    #[test]
    fn mount_uses_libvirts_netfs_options() {
        let src = NetfsSource {
            host: "192.168.1.101".into(),
            path: "/nfs".into(),
            access: NetfsAccess::Mount,
        };
        assert_eq!(
            mount_args(&src, Path::new("/mykvm/nfspool/")).join(" "),
            "-o nodev,nosuid,noexec -t nfs 192.168.1.101:/nfs /mykvm/nfspool"
        );
    }

    #[test]
    fn a_target_with_a_trailing_slash_is_found_mounted() {
        let info = "36 35 0:40 / /mykvm/nfspool rw,nosuid,nodev,noexec,relatime shared:1 - nfs4 10.0.2.2:/nfs rw\n";
        assert!(mountinfo_lists(info, Path::new("/mykvm/nfspool/")));
        assert!(mountinfo_lists(info, Path::new("/mykvm//nfspool")));
        assert!(!mountinfo_lists(info, Path::new("/mykvm")));
        assert!(!mountinfo_lists(info, Path::new("/mykvm/nfspool2")));
    }

    #[test]
    fn proc_filesystems_is_read_by_name() {
        assert!(filesystems_list_nfs(
            "nodev\tsysfs\n\text4\nnodev\tnfs\nnodev\tnfs4\n"
        ));
        assert!(!filesystems_list_nfs("nodev\tsysfs\n\text4\nnodev\tnfsd\n"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }
}
