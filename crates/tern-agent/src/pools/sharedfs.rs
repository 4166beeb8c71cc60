//! A dir pool declared `--shared` is verified, not only believed: before a
//! live migration that leaves its disks in place, the filesystem holding
//! its directory must be one that several hosts can mount at once (NFS,
//! CephFS, GlusterFS or another FUSE filesystem, OCFS2, GFS2, SMB...), as
//! libvirt's `virFileIsSharedFS` checks. A local filesystem (ext4, xfs,
//! tmpfs...) is refused by name: the destination would open a different
//! file of the same name, or none.
//!
//! As libvirt's `shared_filesystems` in qemu.conf, the `[qemu]` table's
//! `shared_filesystems` lists directories an operator knows to be shared
//! although their filesystem type says otherwise (several agents on one
//! machine, a block device shared by other means).

use crate::error::{AgentError, Result};
use std::path::{Path, PathBuf};

/// What a filesystem type says about sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// Several hosts can mount it at once.
    Shared(&'static str),
    /// Only this host sees it.
    Local(&'static str),
    /// A type this table does not know (`f_type` as statfs gives it).
    Unknown(u64),
}

/// `statfs(2)`'s `f_type` magic numbers (linux/magic.h and the
/// filesystems' own headers), as libvirt's virfile.c lists them.
const TYPES: &[(u64, FsKind)] = &[
    (0x6969, FsKind::Shared("nfs")),
    (0x6573_5546, FsKind::Shared("fuse")),
    (0x00c3_6400, FsKind::Shared("ceph")),
    (0x0116_1970, FsKind::Shared("gfs2")),
    (0x7461_636f, FsKind::Shared("ocfs2")),
    (0xff53_4d42, FsKind::Shared("cifs")),
    (0xfe53_4d42, FsKind::Shared("smb2")),
    (0x4750_4653, FsKind::Shared("gpfs")),
    (0x5346_414f, FsKind::Shared("afs")),
    (0x1983_0326, FsKind::Shared("beegfs")),
    (0x0bd0_0bd0, FsKind::Shared("lustre")),
    (0xef53, FsKind::Local("ext4")),
    (0x5846_5342, FsKind::Local("xfs")),
    (0x0102_1994, FsKind::Local("tmpfs")),
    (0x9123_683e, FsKind::Local("btrfs")),
    (0x794c_7630, FsKind::Local("overlayfs")),
    (0x2fc1_2fc1, FsKind::Local("zfs")),
    (0x4d44, FsKind::Local("vfat")),
    (0x5346_544e, FsKind::Local("ntfs")),
    (0xf2f5_2010, FsKind::Local("f2fs")),
];

/// What `f_type` says about sharing.
pub fn classify(f_type: u64) -> FsKind {
    TYPES
        .iter()
        .find(|(m, _)| *m == f_type)
        .map(|(_, k)| *k)
        .unwrap_or(FsKind::Unknown(f_type))
}

/// The policy: `None` when pool `pool` (directory `dir`) may be trusted as
/// shared storage, else the one-line refusal. `declared` is whether the
/// directory lies under one of `shared_filesystems`.
pub fn refusal(pool: &str, dir: &Path, kind: FsKind, declared: bool) -> Option<String> {
    let what = match kind {
        FsKind::Shared(_) => return None,
        _ if declared => return None,
        FsKind::Local(name) => format!("on {name}, a local filesystem"),
        FsKind::Unknown(t) => format!("on a filesystem of type {t:#x}, not known to be shared"),
    };
    Some(format!(
        "pool '{pool}' is declared --shared, but its directory {} is {what}, so the destination would not see the guest's disks; mount NFS, CephFS, GlusterFS, OCFS2 or GFS2 there, use --copy-storage-all, or, if other hosts do see it, list it in shared_filesystems in the [qemu] table of ternd's --config",
        dir.display()
    ))
}

/// `f_type` of the filesystem holding `path`.
pub fn fs_type(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs fills a plain struct; all-zero is a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(s.f_type as u64)
}

/// Whether `dir` lies under one of `declared` (both resolved).
fn is_declared(dir: &Path, declared: &[PathBuf]) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    declared
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .any(|d| dir.starts_with(d))
}

/// Refuses dir pool `pool` as shared storage unless its filesystem is one
/// other hosts can mount, or the operator declared it (see [`refusal`]).
pub fn check_shared_dir(pool: &str, dir: &Path, declared: &[PathBuf]) -> Result<()> {
    let t = fs_type(dir).map_err(|e| {
        AgentError::Conflict(format!(
            "cannot tell which filesystem holds directory {} of pool '{pool}': {e}",
            dir.display()
        ))
    })?;
    match refusal(pool, dir, classify(t), is_declared(dir, declared)) {
        Some(why) => Err(AgentError::Conflict(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_cluster_filesystems_are_shared() {
        for (t, name) in [
            (0x6969, "nfs"),
            (0x6573_5546, "fuse"),
            (0x00c3_6400, "ceph"),
            (0x0116_1970, "gfs2"),
            (0x7461_636f, "ocfs2"),
        ] {
            assert_eq!(classify(t), FsKind::Shared(name));
            assert_eq!(refusal("p", Path::new("/v"), classify(t), false), None);
        }
    }

    #[test]
    fn local_filesystems_are_refused_by_name_with_what_to_do() {
        for (t, name) in [
            (0xef53, "ext4"),
            (0x5846_5342, "xfs"),
            (0x0102_1994, "tmpfs"),
        ] {
            let why = refusal("vms", Path::new("/srv/vms"), classify(t), false).unwrap();
            assert!(why.contains("pool 'vms'"), "{why}");
            assert!(
                why.contains(&format!("on {name}, a local filesystem")),
                "{why}"
            );
            assert!(why.contains("/srv/vms"), "{why}");
            assert!(why.contains("--copy-storage-all"), "{why}");
            assert!(why.contains("shared_filesystems"), "{why}");
            assert!(!why.contains('\n'));
        }
    }

    #[test]
    fn unknown_types_are_refused_showing_the_magic() {
        let why = refusal("p", Path::new("/x"), classify(0x1234_5678), false).unwrap();
        assert!(why.contains("0x12345678"), "{why}");
    }

    #[test]
    fn a_declared_directory_is_trusted_whatever_its_type() {
        assert_eq!(refusal("p", Path::new("/x"), classify(0xef53), true), None);
        assert_eq!(refusal("p", Path::new("/x"), classify(0x42), true), None);
    }

    #[test]
    fn declared_means_under_a_listed_directory() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("pool");
        std::fs::create_dir(&sub).unwrap();
        assert!(is_declared(&sub, &[d.path().to_path_buf()]));
        assert!(!is_declared(d.path(), std::slice::from_ref(&sub)));
        assert!(!is_declared(&sub, &[]));
    }

    #[test]
    fn this_hosts_filesystems_are_read() {
        // Whatever holds the temp directory has a type statfs reports.
        assert!(fs_type(&std::env::temp_dir()).is_ok());
        assert!(fs_type(Path::new("/nonexistent/x")).is_err());
    }
}
