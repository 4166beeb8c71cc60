//! The unprivileged user QEMU runs as.
//!
//! QEMU starts as root, opens what its command line names (disks, kernel,
//! firmware, sockets, the console pty, /dev/kvm), then drops under seccomp
//! (`-sandbox on`) to the guest's own uid and group
//! (`-run-with user=UID:UID`, see [`super::guest_uids`]), or to this user
//! itself (`-run-with user=NAME`) when no uid range is configured. After
//! that it can open nothing its uid may not: not another guest's disks,
//! not the agent's state. The few files it must open later are handed to
//! it one by one ([`hand_over`], owner only) and given back to root
//! ([`give_back`]) when it no longer needs them: a disk attached live, a
//! received volume, the TPM state, the migration TLS credentials while
//! they are loaded, the directory `pmemsave` writes into; /dev/userfaultfd
//! (post-copy) is open to the shared user's group, or to each incoming
//! QEMU's own uid by an ACL entry ([`userfaultfd_for`]).
//!
//! `-sandbox` leaves `elevateprivileges` allowed: QEMU installs its filter
//! before dropping privileges, and `elevateprivileges=deny` would kill it at
//! its own `setgid` (tried with QEMU 10.0). Once the user is not root it
//! holds no capabilities, so the set*id calls gain it nothing.

use super::QemuSettings;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The user QEMU drops to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuUser {
    /// What `-run-with user=` takes: the shared user's name, or
    /// `UID:GID` for a guest's own uid.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// A guest's own uid and group (not the shared user): directories
    /// several guests pass through cannot use its group.
    pub own: bool,
}

impl QemuUser {
    /// A guest's own identity: its `uid`, and a group of the same number
    /// that no other guest has.
    pub fn guest(&self, uid: u32) -> QemuUser {
        QemuUser {
            name: format!("{uid}:{uid}"),
            uid,
            gid: uid,
            own: true,
        }
    }
}

/// Why the configured user cannot be used.
#[derive(Debug, Error)]
pub enum UserError {
    /// No such user on this host.
    #[error("the QEMU user '{0}' does not exist on this host; create it with scripts/install-deps.sh (useradd --system --user-group {0}), or set user in the [qemu] table of ternd's --config file")]
    Missing(String),
    /// A name with a NUL or comma.
    #[error("the QEMU user name '{0}' is not a plain user name; fix user in the [qemu] table")]
    BadName(String),
}

/// Looks up the configured user; `None` when QEMU is to stay root.
pub fn lookup(settings: &QemuSettings) -> Result<Option<QemuUser>, UserError> {
    let name = settings.user.as_str();
    if name == "root" {
        return Ok(None);
    }
    if name.is_empty() || name.contains(',') {
        return Err(UserError::BadName(name.into()));
    }
    let c = CString::new(name).map_err(|_| UserError::BadName(name.into()))?;
    // SAFETY: getpwnam takes a NUL-terminated string and returns either
    // NULL or a pointer to static storage that stays valid until the next
    // getpw* call; the fields are copied out before this function returns,
    // and it runs once at agent start, before any other thread calls getpw*.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(UserError::Missing(name.into()));
    }
    // SAFETY: `pw` is non-null and points to a valid passwd record (above).
    let (uid, gid, pw_name) =
        unsafe { ((*pw).pw_uid, (*pw).pw_gid, CStr::from_ptr((*pw).pw_name)) };
    Ok(Some(QemuUser {
        name: pw_name.to_string_lossy().into_owned(),
        uid,
        gid,
        own: false,
    }))
}

/// The host-local QEMU arguments that confine it (not guest-visible, so
/// they may differ between the two ends of a migration).
pub fn qemu_args(settings: &QemuSettings, user: Option<&QemuUser>) -> Vec<String> {
    let mut a = Vec::new();
    if settings.sandbox {
        a.push("-sandbox".into());
        a.push("on,obsolete=deny,spawn=deny,resourcecontrol=deny".into());
    }
    if let Some(u) = user {
        a.push("-run-with".into());
        a.push(format!("user={}", u.name));
    }
    a
}

/// The oldest QEMU that knows `-run-with user=` (9.1; older ones only had
/// `-runas`, since removed).
pub const RUN_WITH_SINCE: (u32, u32) = (9, 1);

/// Refuses, when the agent starts, a QEMU too old to drop to `user`: such
/// a QEMU would otherwise only fail at each guest's start, with QEMU's
/// own "invalid option". An unparsable version is let through (QEMU then
/// says what it lacks). Nothing to check when QEMU runs as root.
pub fn check_qemu_version(version: &str, user: Option<&QemuUser>) -> Result<(), String> {
    let Some(u) = user else { return Ok(()) };
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    if (major, minor) >= RUN_WITH_SINCE {
        return Ok(());
    }
    Err(format!(
        "QEMU {version} cannot run guests as '{}' (-run-with needs QEMU {}.{} or newer): \
         install QEMU 10 from bookworm-backports (scripts/install-deps.sh does), \
         or set user = \"root\" in ternd's [qemu] table to run QEMU unconfined",
        u.name, RUN_WITH_SINCE.0, RUN_WITH_SINCE.1
    ))
}

/// Gives `path` to QEMU's user, for a file QEMU opens after it dropped
/// privileges; nothing to do when QEMU runs as root. Owner only: a file
/// becomes 0600, a directory 0700 (the group is shared by every guest).
pub fn hand_over(path: &Path, user: Option<&QemuUser>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(u) = user else { return Ok(()) };
    let meta = std::fs::symlink_metadata(path)?;
    std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))?;
    let mode = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        // A socket or device keeps its mode; only its owner may use it
        // once its group gets nothing.
        meta.permissions().mode() & 0o700
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Gives back to root what `uid` holds at `path` and, for a directory,
/// below it (symlinks are not followed). Files another user owns are left
/// alone. Returns how many entries changed owner.
pub fn give_back(path: &Path, uid: u32) -> std::io::Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            n += give_back(&e?.path(), uid)?;
        }
    }
    if meta.uid() == uid {
        std::os::unix::fs::lchown(path, Some(0), Some(0))?;
        n += 1;
    }
    Ok(n)
}

/// Lets QEMU's group pass through `dir` (group-owned, mode 0710: search
/// but not list), so it reaches the one directory handed to it below.
/// Only for a directory of one guest (its run directory), or of all when
/// they share the QEMU user's group; see [`let_guests_through`].
pub fn let_through(dir: &Path, user: Option<&QemuUser>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(u) = user else { return Ok(()) };
    std::os::unix::fs::chown(dir, None, Some(u.gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
}

/// Lets every guest's QEMU pass through `dir`, a directory several guests
/// use (the state and run directories, `<state>/tpm`, a pool directory
/// holding hot-plugged disks). `per_guest`: each guest has its own group,
/// so only the others' search bit can serve them all (added to the mode,
/// nothing else changes: search, not list); else the shared QEMU user's
/// group, as [`let_through`].
pub fn let_guests_through(
    dir: &Path,
    user: Option<&QemuUser>,
    per_guest: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if user.is_none() {
        return Ok(());
    }
    if !per_guest {
        return let_through(dir, user);
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o001 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))?;
    }
    Ok(())
}

/// [`hand_over`] of a directory in a run directory and of the files
/// directly in it; the run directory (the guest's own) lets QEMU's group
/// through.
pub fn hand_over_dir(dir: &Path, user: Option<&QemuUser>) -> std::io::Result<()> {
    if user.is_none() {
        return Ok(());
    }
    if let Some(run_dir) = dir.parent() {
        let_through(run_dir, user)?;
    }
    hand_over_tree(dir, user)
}

/// [`hand_over`] of a directory and of the files directly in it.
pub fn hand_over_tree(dir: &Path, user: Option<&QemuUser>) -> std::io::Result<()> {
    hand_over(dir, user)?;
    for e in std::fs::read_dir(dir)? {
        hand_over(&e?.path(), user)?;
    }
    Ok(())
}

/// The directory inside a run directory that QEMU itself may write
/// (`pmemsave` samples, staged TLS credentials); created on demand.
pub fn qemu_dir(run_dir: &Path, user: Option<&QemuUser>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = run_dir.join("qemu");
    if !dir.is_dir() {
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    }
    hand_over_dir(&dir, user)?;
    Ok(dir)
}

/// Lets the guest's own uid open /dev/userfaultfd (an ACL entry), for an
/// incoming QEMU of a post-copy migration; `grant: false`
/// takes the entry away when that QEMU ends. Nothing to do for the shared
/// user (its group may, [`grant_userfaultfd`]). Logged, never fatal: only
/// post-copy depends on it.
pub fn userfaultfd_for(user: Option<&QemuUser>, grant: bool) {
    let Some(u) = user.filter(|u| u.own) else {
        return;
    };
    let dev = Path::new("/dev/userfaultfd");
    if !dev.exists() {
        return;
    }
    if let Err(e) = super::acl::set_user(dev, u.uid, grant) {
        tracing::warn!(error = %e, uid = u.uid, grant, "cannot change /dev/userfaultfd's ACL; post-copy into this guest may fail");
    }
}

/// Lets QEMU's group open /dev/userfaultfd, which a post-copy destination
/// needs once QEMU is unprivileged (vm.unprivileged_userfaultfd is 0 on
/// most distributions). Logged, never fatal: only post-copy depends on it.
pub fn grant_userfaultfd(user: Option<&QemuUser>) {
    let Some(u) = user else { return };
    let dev = Path::new("/dev/userfaultfd");
    if !dev.exists() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let r = std::os::unix::fs::chown(dev, None, Some(u.gid))
        .and_then(|_| std::fs::set_permissions(dev, std::fs::Permissions::from_mode(0o660)));
    match r {
        Ok(()) => tracing::info!(
            group = u.gid,
            "/dev/userfaultfd opened to QEMU's group for post-copy"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open /dev/userfaultfd to QEMU's group; post-copy will fail")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_qemu_unconfined_by_user_and_others_are_looked_up() {
        let mut s = QemuSettings {
            user: "root".into(),
            ..QemuSettings::default()
        };
        assert_eq!(lookup(&s).unwrap(), None);
        assert_eq!(
            qemu_args(&s, None),
            [
                "-sandbox",
                "on,obsolete=deny,spawn=deny,resourcecontrol=deny"
            ]
        );
        s.user = "nobody".into();
        let u = lookup(&s).unwrap().unwrap();
        assert_eq!(u.name, "nobody");
        assert_eq!(qemu_args(&s, Some(&u))[2..], ["-run-with", "user=nobody"]);
        s.user = "no-such-user-here".into();
        let e = lookup(&s).unwrap_err().to_string();
        assert!(
            e.contains("'no-such-user-here' does not exist") && e.contains("install-deps"),
            "{e}"
        );
        s.user = "a,b".into();
        assert!(matches!(lookup(&s), Err(UserError::BadName(_))));
    }

    #[test]
    fn a_qemu_without_run_with_is_refused_only_when_it_must_drop_privileges() {
        let u = QemuUser {
            name: "tern-qemu".into(),
            uid: 1,
            gid: 1,
            own: false,
        };
        assert!(check_qemu_version("10.0.2", Some(&u)).is_ok());
        assert!(check_qemu_version("9.1.0", Some(&u)).is_ok());
        assert!(check_qemu_version("unknown", Some(&u)).is_ok());
        assert!(check_qemu_version("7.2.22", None).is_ok());
        let e = check_qemu_version("7.2.22", Some(&u)).unwrap_err();
        assert!(
            e.contains("QEMU 7.2.22") && e.contains("9.1") && e.contains("bookworm-backports"),
            "{e}"
        );
    }
}
