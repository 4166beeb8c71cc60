//! Which uid a guest's QEMU (and swtpm) runs as, and handing its files
//! back when it stops.
//!
//! A guest's files are handed to its uid only while its QEMU runs on this
//! host (what QEMU opens after it dropped privileges: a hot-plugged disk,
//! a received volume, its TPM state, its run directory's `qemu/`); when
//! the QEMU ends (stop, crash, migration away) they go back to root. So a
//! uid that is released and later given to another guest finds nothing of
//! the first one's, and an image on shared storage does not carry one
//! host's uid to another host, where that number may be another guest's.
//! A start also takes back any of the guest's images that a uid of the
//! range still owns (left by a host or agent that died with it running).

use super::guest_uids::{UidRange, UidTable};
use super::user::{self, QemuUser};
use super::QemuSettings;
use crate::error::{AgentError, Result};
use crate::registry::DomainSlot;
use crate::Agent;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tern_model::Domain;
use uuid::Uuid;

/// Opens the guest uid table when QEMU runs unprivileged with a
/// `uid_range`, after refusing a range that holds an account or a
/// subordinate id range of this host.
pub fn open_table(
    settings: &QemuSettings,
    user: Option<&QemuUser>,
    state_dir: &Path,
) -> anyhow::Result<Option<UidTable>> {
    let Some(shared) = user else { return Ok(None) };
    let Some(range) = UidRange::parse(&settings.uid_range)? else {
        return Ok(None);
    };
    if range.overlaps(shared.uid, shared.uid) {
        anyhow::bail!(
            "uid_range {}-{} holds the QEMU user '{}' itself; pick a range apart from it",
            range.first,
            range.last,
            shared.name
        );
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    range.check_free(&read("/etc/passwd"), &read("/etc/subuid"), "user")?;
    range.check_free("", &read("/etc/subgid"), "subgid")?;
    // Each guest's gid is its uid: no group of this host may hold one.
    range.check_free(&read("/etc/group"), "", "group")?;
    Ok(Some(UidTable::open(
        &state_dir.join("qemu-uids.json"),
        range,
    )?))
}

impl Agent {
    /// Who the QEMU of domain `uuid` runs as: its own uid (allocated on
    /// first use) with the QEMU user's group, the shared QEMU user when no
    /// `uid_range` is set, or `None` when QEMU stays root.
    pub fn guest_user(&self, uuid: Uuid) -> Result<Option<QemuUser>> {
        let Some(shared) = &self.qemu_user else {
            return Ok(None);
        };
        let Some(table) = &self.guest_uids else {
            return Ok(Some(shared.clone()));
        };
        let uid = table
            .acquire(uuid)
            .map_err(|e| AgentError::Conflict(e.to_string()))?;
        Ok(Some(shared.guest(uid)))
    }

    /// [`Agent::guest_user`] without allocating: who the QEMU of `uuid`
    /// ran as, if it holds a uid.
    pub fn held_user(&self, uuid: Uuid) -> Option<QemuUser> {
        let shared = self.qemu_user.as_ref()?;
        match &self.guest_uids {
            Some(t) => t.get(uuid).map(|uid| shared.guest(uid)),
            None => Some(shared.clone()),
        }
    }

    /// [`Agent::guest_user`] of the domain named `name`.
    pub fn guest_user_of(&self, name: &str) -> Result<Option<QemuUser>> {
        let uuid = self.domains.find(name)?.uuid;
        self.guest_user(uuid)
    }

    /// [`Agent::guest_user`] of the domain whose run directory is
    /// `run_dir` (a run directory is named after its domain).
    pub fn guest_user_at(&self, run_dir: &Path) -> Result<Option<QemuUser>> {
        let name = run_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        self.guest_user_of(name)
    }

    /// libvirt's DAC label of a domain holding a uid: `+UID:+GID`.
    pub fn security_label(&self, uuid: Uuid) -> Option<String> {
        let shared = self.qemu_user.as_ref()?;
        let (uid, gid) = match &self.guest_uids {
            Some(t) => t.get(uuid).map(|u| (u, u))?,
            None => (shared.uid, shared.gid),
        };
        Some(format!("+{uid}:+{gid}"))
    }

    /// Removes a domain's slot and, when no slot of that uuid is left,
    /// frees its uid (undefine, a transient domain's end, a migration
    /// that came to nothing).
    pub fn forget_domain(&self, slot: &Arc<DomainSlot>) {
        self.domains.remove(slot);
        let Some(table) = &self.guest_uids else {
            return;
        };
        if self.domains.all().iter().any(|s| s.uuid == slot.uuid) {
            return;
        }
        if let Some(uid) = table.release(slot.uuid) {
            tracing::info!(domain = %slot.name, uid, "guest uid released");
        }
    }

    /// Agent start: frees the uids of domains that no longer exist here.
    pub fn sweep_guest_uids(&self) {
        let Some(table) = &self.guest_uids else {
            return;
        };
        let keep: Vec<Uuid> = self.domains.all().iter().map(|s| s.uuid).collect();
        for (uuid, uid) in table.retain(&keep) {
            tracing::info!(%uuid, uid, "guest uid of a domain gone while no agent ran released");
        }
        // /dev/userfaultfd entries of this range's uids no guest holds.
        let (range, held) = (table.range(), table.held());
        let dev = Path::new("/dev/userfaultfd");
        if dev.exists() {
            let stale = |uid: u32| uid >= range.first && uid <= range.last && !held.contains(&uid);
            match super::acl::drop_users(dev, stale) {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(
                        ?gone,
                        "stale /dev/userfaultfd entries of guest uids removed"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read /dev/userfaultfd's ACL"),
            }
        }
    }
}

/// The files of `d` on this host that may have been handed to its QEMU:
/// its run directory, TPM state, NVRAM store and local disks.
async fn domain_paths(agent: &Agent, d: &Domain) -> Vec<PathBuf> {
    let mut out = vec![
        agent.layout.run_dir(&d.name),
        crate::guest_setup::tpm_dir(agent, d),
    ];
    out.extend(d.os.nvram.as_ref().map(|n| n.path.clone()));
    let resolved = agent.pools.resolve_disks(d).await;
    let disks = resolved.as_ref().unwrap_or(d);
    out.extend(
        disks
            .devices
            .disks
            .iter()
            .filter_map(|k| k.source.clone())
            .filter(|p| p.is_absolute()),
    );
    out
}

/// Gives back to root what the QEMU of `d` (as `user`) holds of the
/// domain's files; called when that QEMU has ended.
pub async fn give_back_domain(agent: &Agent, d: &Domain, user: Option<&QemuUser>) {
    let Some(u) = user else { return };
    user::userfaultfd_for(Some(u), false);
    for p in domain_paths(agent, d).await {
        match user::give_back(&p, u.uid) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(path = %p.display(), uid = u.uid, entries = n, "given back to root")
            }
            Err(e) => {
                tracing::warn!(path = %p.display(), uid = u.uid, error = %e, "cannot give a guest's file back to root")
            }
        }
    }
}

/// Before a start: the domain's images and NVRAM store that a uid of the
/// range owns (a QEMU that ended without its agent) go back to root;
/// QEMU opens them as root before it drops privileges.
pub async fn reclaim(agent: &Agent, d: &Domain) {
    use std::os::unix::fs::MetadataExt;
    let Some(table) = &agent.guest_uids else {
        return;
    };
    let range = table.range();
    let mut files: Vec<PathBuf> = d.os.nvram.iter().map(|n| n.path.clone()).collect();
    files.extend(d.devices.disks.iter().filter_map(|k| k.source.clone()));
    for f in files {
        let Ok(m) = std::fs::symlink_metadata(&f) else {
            continue;
        };
        if m.uid() >= range.first && m.uid() <= range.last {
            match std::os::unix::fs::lchown(&f, Some(0), Some(0)) {
                Ok(()) => {
                    tracing::info!(path = %f.display(), uid = m.uid(), "image left owned by a guest uid taken back")
                }
                Err(e) => {
                    tracing::warn!(path = %f.display(), error = %e, "cannot take an image back from a guest uid")
                }
            }
        }
    }
}
