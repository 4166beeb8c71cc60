//! What a cold migration sends (source, Begin): every file of every disk,
//! top image first and its backing chain after; a disk on an export only
//! QEMU reaches only when `--target-pool` names where it goes; and the
//! guest's UEFI variable store when this agent placed it.

use crate::error::{AgentError, Result};
use crate::Agent;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tern_migrate::protocol::ColdFile;
use tern_model::{DiskDevice, Domain};
use tern_qemu::img;

/// A transfer session id that stays the same while the file does, so a
/// retried copy resumes.
fn session_of(uuid: &uuid::Uuid, path: &std::path::Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(uuid.as_bytes());
    h.update(path.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(meta.mtime().to_le_bytes());
    h.update(meta.mtime_nsec().to_le_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Source, Begin: every file of every disk, top image first, backing after.
pub async fn describe(agent: &Agent, d: &Domain, copy_exports: bool) -> Result<Vec<ColdFile>> {
    let mut out: Vec<ColdFile> = Vec::new();
    for disk in &d.devices.disks {
        if disk.device == DiskDevice::Cdrom {
            continue;
        }
        let Some(top) = disk_file(agent, disk, copy_exports).await? else {
            continue;
        };
        let top = &top;
        // The disk's own format, never a guess: a raw disk may hold a
        // qcow2 header the guest wrote, naming any host file as backing.
        let format = match disk.format {
            tern_model::DiskFormat::Raw => "raw",
            tern_model::DiskFormat::Qcow2 => "qcow2",
        };
        let url = agent.pools.img_path(top).await;
        if crate::pools::is_block_device(top) {
            // A logical volume (or another block device): read whole into
            // a staged file and sent from there; it always travels.
            let f = exported_file(agent, disk, top, top, format, out.len()).await?;
            out.push(f);
            continue;
        }
        if url != *top {
            // On an export only QEMU reaches: shared, so it stays in place
            // unless the operator named a pool to copy it into.
            if copy_exports {
                let f = exported_file(agent, disk, top, &url, format, out.len()).await?;
                out.push(f);
            }
            continue;
        }
        push_chain(agent, d, disk, top, format, &mut out).await?;
    }
    if let Some(f) = nvram_file(agent, d, out.len() as u32)? {
        out.push(f);
    }
    Ok(out)
}

/// The file a disk names on this host (its path, or its volume's path
/// under the pool's target); `None` for a network disk, which stays.
async fn disk_file(
    agent: &Agent,
    disk: &tern_model::Disk,
    copy_exports: bool,
) -> Result<Option<PathBuf>> {
    match (&disk.source, &disk.remote) {
        (Some(p), None) => Ok(Some(p.clone())),
        (_, Some(tern_model::DiskRemote::Volume(v))) => {
            if agent.pools.is_rbd(&v.pool).await && !copy_exports {
                // An RBD image: shared, it stays unless `--target-pool`
                // names where to copy it (then it is read as an export is).
                return Ok(None);
            }
            let (path, _) = agent.pools.volume_slot(&v.pool, &v.volume).await?;
            Ok(Some(path))
        }
        _ => Ok(None),
    }
}

/// A local disk file and its backing chain, top first.
async fn push_chain(
    agent: &Agent,
    d: &Domain,
    disk: &tern_model::Disk,
    top: &std::path::Path,
    format: &str,
    out: &mut Vec<ColdFile>,
) -> Result<()> {
    for (depth, link) in img::backing_chain(top, format)
        .await?
        .into_iter()
        .enumerate()
    {
        let (path, info) = (link.path, link.info);
        let meta = std::fs::metadata(&path).map_err(|e| AgentError::state(&path, e))?;
        use std::os::unix::fs::MetadataExt;
        let volume = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| AgentError::Invalid(format!("{} has no file name", path.display())))?
            .to_string();
        if out
            .iter()
            .any(|f| f.volume == volume && f.source_path != path)
        {
            return Err(AgentError::Conflict(format!(
                "two disk files are both named '{volume}'; they would collide in the destination pool"
            )));
        }
        let backing_volume = info
            .backing
            .as_ref()
            .and_then(|b| b.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string);
        if !out.iter().any(|f| f.source_path == path) {
            out.push(ColdFile {
                id: out.len() as u32,
                target: disk.target_dev.clone(),
                depth: depth as u32,
                pool: agent.pools.pool_of(&path).await.map(|p| p.name),
                volume,
                format: link.format.clone(),
                size: meta.len(),
                allocated: meta.blocks() * 512,
                backing_volume,
                mac_key: Some(super::cold_mac::key_for(
                    agent,
                    &session_of(&d.uuid, &path, &meta),
                )?),
                session: session_of(&d.uuid, &path, &meta),
                source_path: path.clone(),
                nvram: false,
            });
        }
    }
    Ok(())
}

/// A disk file on an export only QEMU reaches, copied out with
/// `--target-pool`, or a block device (a logical volume): staged byte for
/// byte into the state directory at Perform and sent from there. Single
/// files only: a chain's backing names would have to be rewritten on the
/// export.
async fn exported_file(
    agent: &Agent,
    disk: &tern_model::Disk,
    path: &std::path::Path,
    url: &std::path::Path,
    format: &str,
    id: usize,
) -> Result<ColdFile> {
    let info = img::info(url, format).await?;
    if info.backing.is_some() {
        return Err(AgentError::Unsupported(format!(
            "disk '{}' ({}) has a backing file on an export QEMU reaches over nfs://; a cold copy takes single-file disks from there: flatten it with 'qemu-img convert', or leave it in place (no --target-pool)",
            disk.target_dev,
            path.display()
        )));
    }
    let bytes = img::info(url, "raw").await?;
    let volume = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AgentError::Invalid(format!("{} has no file name", path.display())))?
        .to_string();
    // Never resumed: the export's file may change between attempts, and
    // the staged copy is made again each time.
    let session: String = uuid::Uuid::new_v4().simple().to_string();
    Ok(ColdFile {
        id: id as u32,
        target: disk.target_dev.clone(),
        depth: 0,
        pool: agent.pools.pool_of(path).await.map(|p| p.name),
        volume,
        format: format.to_string(),
        size: bytes.virtual_size,
        allocated: if bytes.actual_size > 0 {
            bytes.actual_size
        } else {
            bytes.virtual_size
        },
        backing_volume: None,
        mac_key: Some(super::cold_mac::key_for(agent, &session)?),
        session,
        source_path: path.to_path_buf(),
        nvram: false,
    })
}

/// The guest's UEFI variable store, when this agent placed it in its own
/// NVRAM directory: it belongs to this host and must travel with the
/// guest. A store at a path the operator chose stays where it is, as the
/// disks of a shared pool do.
fn nvram_file(agent: &Agent, d: &Domain, id: u32) -> Result<Option<ColdFile>> {
    let Some(path) = d.os.nvram.as_ref().map(|n| n.path.clone()) else {
        return Ok(None);
    };
    if path.parent() != Some(crate::guest_setup::nvram_dir(agent).as_path()) || !path.is_file() {
        return Ok(None);
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&path).map_err(|e| AgentError::state(&path, e))?;
    let session = session_of(&d.uuid, &path, &meta);
    Ok(Some(ColdFile {
        id,
        target: "nvram".into(),
        depth: 0,
        pool: None,
        volume: path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string(),
        format: "raw".into(),
        size: meta.len(),
        allocated: meta.blocks() * 512,
        backing_volume: None,
        mac_key: Some(super::cold_mac::key_for(agent, &session)?),
        session,
        source_path: path,
        nvram: true,
    }))
}
