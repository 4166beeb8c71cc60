//! Cold copies to and from a netfs pool that only QEMU reaches (over
//! `nfs://`, on a host without a kernel NFS client), and to and from
//! logical volumes (block devices, written in place): the transfer engine
//! reads and writes local files, so such a file is staged in the agent's
//! state directory. The source copies the export's file there byte for
//! byte and sends the staged copy; the destination receives into a staged
//! file and, once it verified, writes it to the export. Each hop is
//! checked: the staged copy against the export's file (`qemu-img compare`),
//! the wire by the transfer engine's MACs. Holes stay holes on both hops.

use crate::error::{AgentError, Result};
use crate::Agent;
use std::path::{Path, PathBuf};
use tern_qemu::img;

/// A staged file, removed when dropped (success or failure alike: the
/// export or the destination holds the copy that counts).
#[derive(Debug)]
pub struct Staged(PathBuf);

impl Staged {
    /// The local file.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        remove_with_partials(&self.0);
    }
}

/// Removes a staged file and what the transfer engine keeps next to it
/// while receiving (a staged receive never resumes: its session is new
/// each time).
pub fn remove_with_partials(path: &Path) {
    let _ = std::fs::remove_file(path);
    for ext in ["tern-partial", "tern-journal", "tern-unsynced"] {
        let mut p = path.as_os_str().to_owned();
        p.push(".");
        p.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// `STATE/cold-staging`, created 0700.
fn dir(agent: &Agent) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let d = agent.cfg.state_dir.join("cold-staging");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .map_err(|e| AgentError::state(&d, e))?;
    Ok(d)
}

/// Where the destination receives a file bound for an export.
pub fn incoming_path(agent: &Agent, session: &str) -> Result<PathBuf> {
    Ok(dir(agent)?.join(format!("{session}.in")))
}

/// Source: when `path` is a file on an export only QEMU reaches, copies
/// it into the staging directory and checks the copy; `None` for a local
/// file, which is sent as it is.
pub async fn stage_out(agent: &Agent, path: &Path, session: &str) -> Result<Option<Staged>> {
    let url = agent.pools.img_path(path).await;
    if url == path && !crate::pools::is_block_device(path) {
        return Ok(None);
    }
    let staged = Staged(dir(agent)?.join(format!("{session}.out")));
    remove_with_partials(staged.path());
    img::copy_bytes(&url, staged.path()).await?;
    if !img::same_bytes(&url, staged.path()).await? {
        return Err(AgentError::Failed(format!(
            "the copy of {} read from the export differs from it; was the file changed while the guest is shut off?",
            path.display()
        )));
    }
    Ok(Some(staged))
}

/// Destination: writes a received, verified file to the export where
/// `final_path` (a path under a netfs pool's target) lives, checks it, and
/// drops the staged file.
pub async fn upload(agent: &Agent, staged: Staged, final_path: &Path) -> Result<()> {
    if agent.pools.is_logical_path(final_path).await {
        // Into a new logical volume of a logical pool.
        return agent.pools.write_to_volume(staged.path(), final_path).await;
    }
    let url = agent.pools.img_path(final_path).await;
    if url == final_path {
        return Err(AgentError::Failed(format!(
            "{} is not on an export QEMU reaches; its pool changed during the migration",
            final_path.display()
        )));
    }
    img::copy_bytes(staged.path(), &url).await?;
    if !img::same_bytes(staged.path(), &url).await? {
        let _ = agent.pools.remove_path(final_path).await;
        return Err(AgentError::Failed(format!(
            "the copy written to the export at {} differs from the verified one; removed it",
            final_path.display()
        )));
    }
    Ok(())
}

/// Destination: takes ownership of a received staged file.
pub fn adopt(path: PathBuf) -> Staged {
    Staged(path)
}
