//! Completing a definition the way libvirt does at define and start:
//! device addresses, UEFI firmware, and (at boot) the pinned machine type
//! and CPU model; plus the swtpm process behind a `<tpm>`.

use crate::error::{AgentError, Result};
use crate::Agent;
use std::path::{Path, PathBuf};
use tern_model::{layout, CpuFeature, CpuMode, Domain};
use tern_qemu::cmdline::{swtpm_dir, swtpm_socket, Accel};
use tern_qemu::firmware;
use tern_qemu::identity::{self, HostCpu};

/// Where per-guest UEFI variable stores live.
pub fn nvram_dir(agent: &Agent) -> PathBuf {
    agent.cfg.state_dir.join("nvram")
}

/// A migrating guest's UEFI variable store on this host: a store the
/// source agent kept in its own NVRAM directory (where [`complete`] puts
/// it) moves to this agent's, as each libvirt host keeps its stores under
/// its own nvram directory. A path the operator chose stays as given.
pub fn rehome_nvram(agent: &Agent, d: &mut Domain, source_dir: Option<&Path>) {
    let mine = nvram_dir(agent);
    if let Some(n) = d.os.nvram.as_mut() {
        if let Some(to) = rehomed(&n.path, source_dir, &mine) {
            n.path = to;
        }
    }
}

/// Refuses a migrating guest whose UEFI variable store on this host is
/// another domain's (a peer could otherwise name a store here that the
/// incoming QEMU or the cold copy would overwrite).
pub async fn check_nvram_owner(agent: &Agent, d: &Domain) -> Result<()> {
    let Some(path) = d.os.nvram.as_ref().map(|n| n.path.clone()) else {
        return Ok(());
    };
    for s in agent.domains.all() {
        if s.uuid == d.uuid {
            continue;
        }
        let theirs = s
            .inner
            .lock()
            .await
            .def
            .os
            .nvram
            .as_ref()
            .map(|n| n.path.clone());
        if theirs.as_deref() == Some(path.as_path()) {
            return Err(AgentError::Conflict(format!(
                "the UEFI variable store {} on the destination belongs to domain '{}'; rename the guest with --dname or give it another <nvram>",
                path.display(),
                s.name
            )));
        }
    }
    Ok(())
}

/// Where a store at `path` goes: into `mine` when it sits directly in the
/// source agent's `source_dir` (and that is not `mine`).
fn rehomed(path: &Path, source_dir: Option<&Path>, mine: &Path) -> Option<PathBuf> {
    let src = source_dir?;
    let file = path.file_name()?;
    (path.parent()? == src && src != mine).then(|| mine.join(file))
}

/// Where a guest's TPM state lives on this host.
pub fn tpm_dir(agent: &Agent, d: &Domain) -> PathBuf {
    agent.cfg.state_dir.join("tpm").join(d.uuid.to_string())
}

/// Addresses and firmware paths, recorded in the definition (idempotent).
pub fn complete(agent: &Agent, d: &mut Domain) {
    layout::assign_addresses(d);
    firmware::complete_firmware(d, &nvram_dir(agent));
}

/// Pins the machine alias and `host-model` to what this host's QEMU runs,
/// so the live definition (what migration sends) names them exactly.
pub async fn pin_identity(agent: &Agent, d: &mut Domain, accel: Accel) -> Result<()> {
    d.os.machine = identity::expand_machine(&agent.machines, d.os.machine.as_deref());
    let Some(cpu) = d.cpu.as_mut().filter(|c| c.mode == CpuMode::HostModel) else {
        return Ok(());
    };
    let host: HostCpu = agent.host_cpu(accel).await?;
    cpu.mode = CpuMode::Custom;
    cpu.model = Some(host.model);
    cpu.match_mode = Some("exact".into());
    cpu.check = Some("full".into());
    let mut features: Vec<CpuFeature> = host
        .features
        .into_iter()
        .map(|name| CpuFeature {
            policy: "require".into(),
            name,
        })
        .collect();
    // Flags the XML asked for explicitly keep their policy.
    features.retain(|f| !cpu.features.iter().any(|g| g.name == f.name));
    cpu.features.extend(features);
    Ok(())
}

/// Starts swtpm for a guest with a `<tpm>`; it ends by itself when QEMU
/// closes its socket (`--terminate`). A fresh (empty) state directory is
/// what a migration destination needs: QEMU brings the TPM state along.
///
/// swtpm runs as the guest's uid and QEMU's group from its first
/// instruction (started so, not with `--runas`, which would take the
/// group from the uid): it is given its state directory and
/// `<run>/swtpm/`, and nothing else of the agent's; both go back to root
/// when the guest's QEMU ends.
pub async fn start_swtpm(agent: &Agent, d: &Domain, run_dir: &Path) -> Result<()> {
    if d.devices.tpms.is_empty() {
        return Ok(());
    }
    let state = tpm_dir(agent, d);
    std::fs::create_dir_all(&state).map_err(|e| AgentError::state(&state, e))?;
    let dir = swtpm_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::state(&dir, e))?;
    let user = agent.guest_user(d.uuid)?;
    // `<state>/tpm` holds every guest's state: all may pass, none list.
    let tpm_root = agent.cfg.state_dir.join("tpm");
    let per_guest = user.as_ref().is_some_and(|u| u.own);
    crate::confine::user::let_guests_through(&tpm_root, user.as_ref(), per_guest)
        .and_then(|()| crate::confine::user::hand_over_tree(&state, user.as_ref()))
        .map_err(|e| AgentError::state(&state, e))?;
    crate::confine::user::hand_over_dir(&dir, user.as_ref())
        .map_err(|e| AgentError::state(&dir, e))?;
    let sock = swtpm_socket(run_dir);
    let _ = std::fs::remove_file(&sock);
    let mut cmd = tokio::process::Command::new("swtpm");
    cmd.arg("socket");
    if let Some(u) = &user {
        // setgid, no supplementary groups, setuid: before exec.
        cmd.uid(u.uid).gid(u.gid);
    }
    let out = cmd
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        .arg("--log")
        .arg(format!("file={}", dir.join("swtpm.log").display()))
        .args(["--terminate", "--daemon"])
        .output()
        .await
        .map_err(|e| {
            AgentError::Unsupported(format!(
                "domain '{}' has a <tpm> but swtpm cannot run ({e}); install swtpm (scripts/install-deps.sh) or remove <tpm>",
                d.name
            ))
        })?;
    if !out.status.success() {
        return Err(AgentError::Failed(format!(
            "swtpm for domain '{}' failed: {}",
            d.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Removes a guest's TPM state (undefine).
pub fn remove_tpm_state(agent: &Agent, d: &Domain) {
    let _ = std::fs::remove_dir_all(tpm_dir(agent, d));
}

#[cfg(test)]
mod tests {
    use super::rehomed;
    use std::path::Path;

    #[test]
    fn only_a_store_in_the_source_agents_directory_moves() {
        let (src, mine) = (Path::new("/a/nvram"), Path::new("/b/nvram"));
        let store = Path::new("/a/nvram/g_VARS.fd");
        assert_eq!(
            rehomed(store, Some(src), mine).as_deref(),
            Some(Path::new("/b/nvram/g_VARS.fd"))
        );
        // The operator's path, an unknown source, or the same directory.
        assert_eq!(rehomed(Path::new("/srv/g_VARS.fd"), Some(src), mine), None);
        assert_eq!(rehomed(store, None, mine), None);
        assert_eq!(rehomed(store, Some(src), src), None);
    }
}
