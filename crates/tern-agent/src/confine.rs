//! Confining QEMU: which host files a definition may name, and the
//! unprivileged user QEMU runs as.
//!
//! A definition comes from a client or, during a migration, from a peer.
//! Either way QEMU would open what it names (as root, before this existed):
//! a serial file appended to any file, a kernel path read any file into
//! the guest. So every path must lie in a storage pool or under a directory
//! the operator listed, and each guest's QEMU runs as a uid of its own
//! that owns only its own domain's files while it runs ([`guest_uids`],
//! [`ownership`]).

pub mod acl;
pub mod guest_uids;
pub mod ownership;
pub mod paths;
pub mod user;

use serde::Deserialize;
use std::path::PathBuf;

/// The user QEMU runs as unless the config file names another.
pub const DEFAULT_QEMU_USER: &str = "tern-qemu";

/// The `[qemu]` table of `ternd --config`:
///
/// ```toml
/// [qemu]
/// user = "tern-qemu"                 # "root" keeps QEMU privileged (not advised)
/// uid_range = "1900000000-1900009999" # one uid per guest; "" = all run as `user`
/// sandbox = true                     # -sandbox on (seccomp)
/// allowed_paths = ["/srv/iso", "/dev/vg0"]   # besides the storage pools
/// shared_filesystems = ["/srv/shared"]      # shared although local by type
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuSettings {
    /// User QEMU drops to (`-run-with user=`); "root" runs it unconfined.
    pub user: String,
    /// Where each guest's own uid comes from (`FIRST-LAST`); empty: every
    /// guest runs as `user` (see [`guest_uids`]).
    pub uid_range: String,
    /// Whether QEMU gets `-sandbox on` (seccomp filters).
    pub sandbox: bool,
    /// Directories (or files) besides the storage pools a definition may name.
    pub allowed_paths: Vec<PathBuf>,
    /// Directories other hosts see too although their filesystem type is a
    /// local one (libvirt's `shared_filesystems`); see `pools::sharedfs`.
    pub shared_filesystems: Vec<PathBuf>,
}

impl Default for QemuSettings {
    fn default() -> Self {
        QemuSettings {
            user: DEFAULT_QEMU_USER.into(),
            uid_range: guest_uids::DEFAULT_UID_RANGE.into(),
            sandbox: true,
            allowed_paths: Vec::new(),
            shared_filesystems: Vec::new(),
        }
    }
}

/// Refuses `d` unless every host path it names lies in a storage pool, an
/// `allowed_paths` entry, this agent's NVRAM directory or the domain's run
/// directory (firmware images may also come from [`paths::FIRMWARE_DIRS`]).
pub async fn check_domain_paths(
    agent: &crate::Agent,
    d: &tern_model::Domain,
) -> crate::error::Result<()> {
    let mut dirs = agent.pools.targets().await;
    // A logical volume's path (/dev/VG/LV) leads to its device node.
    dirs.extend(agent.pools.logical_device_nodes().await);
    dirs.extend(agent.cfg.server.qemu.allowed_paths.iter().cloned());
    // The agent's own NVRAM directory is made on first use; it must exist
    // for a store in it to be recognised.
    let nvram = crate::guest_setup::nvram_dir(agent);
    let _ = std::fs::create_dir_all(&nvram);
    dirs.push(nvram);
    dirs.push(agent.layout.run_dir(&d.name));
    let roots = paths::Roots::new(dirs);
    let refuse = |e: paths::PathRefusal| {
        crate::error::AgentError::Invalid(format!("domain '{}': {e}", d.name))
    };
    paths::check_domain(d, &roots).map_err(refuse)?;
    // QEMU opens a qcow2 disk's backing files too, as root, before it drops
    // privileges: they must lie inside the same roots.
    for disk in &d.devices.disks {
        let Some(src) = &disk.source else { continue };
        if disk.format != tern_model::DiskFormat::Qcow2 || !src.is_file() {
            continue;
        }
        let chain = tern_qemu::img::backing_chain(src, "qcow2").await?;
        for link in chain.iter().skip(1) {
            roots.check("backing file", &link.path).map_err(refuse)?;
        }
    }
    Ok(())
}

/// Hands a hot-plugged local disk to its guest's uid (QEMU opens it after
/// it dropped privileges) and lets that user through its directory, as
/// libvirt's DAC driver does for a disk attached live. Network and
/// cdrom-less disks need nothing; nothing happens when QEMU runs as root.
pub fn hand_over_disk(
    agent: &crate::Agent,
    d: &tern_model::Domain,
    target: &str,
) -> crate::error::Result<()> {
    let user = agent.guest_user(d.uuid)?;
    let user = user.as_ref();
    let Some(src) = d
        .devices
        .disks
        .iter()
        .find(|x| x.target_dev == target)
        .and_then(|x| x.source.as_ref())
    else {
        return Ok(());
    };
    let give = || -> std::io::Result<()> {
        if let Some(dir) = src.parent() {
            user::let_guests_through(dir, user, user.is_some_and(|u| u.own))?;
        }
        user::hand_over(src, user)
    };
    give().map_err(|e| crate::error::AgentError::state(src, e))
}
