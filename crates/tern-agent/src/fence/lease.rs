//! Lease files on shared pools: written by the fence process, read for the
//! controller by other hosts. A write is temp file, fsync, rename, fsync
//! of the directory: a reader sees the old record or the new one, and
//! after the writer's close, a reader's open sees it (close-to-open, which
//! NFS also keeps).

use crate::netfs::Export;
use std::io::Write;
use std::path::Path;
use tern_api::fence::{lease_path, nfs_lease_name, LeaseRecord, LEASE_MAGIC, LEASE_VERSION};
use tern_model::NetfsSource;

/// Writes `rec` as the lease of `rec.host` in the pool directory `pool`.
pub fn write(pool: &Path, rec: &LeaseRecord) -> std::io::Result<()> {
    let path = lease_path(pool, &rec.host);
    let dir = path.parent().unwrap_or(pool);
    // Only the lease directory, never the pool's own: a pool directory
    // that vanished (storage gone, or a test's pool removed) must make the
    // renewal fail, not come back as a local directory the lease then
    // pretends is shared.
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let tmp = path.with_extension("lease.tmp");
    let data = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads `host`'s lease in the pool directory `pool`: `None` if there is
/// none; an error if it cannot be read or is not a lease.
pub fn read(pool: &Path, host: &str) -> std::io::Result<Option<LeaseRecord>> {
    let path = lease_path(pool, host);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let r = parse(&path.display().to_string(), &b, host)?;
    Ok(Some(r))
}

/// Checks a lease's bytes are a lease of `host`.
fn parse(what: &str, b: &[u8], host: &str) -> std::io::Result<LeaseRecord> {
    let r: LeaseRecord = serde_json::from_slice(b)
        .map_err(|e| std::io::Error::other(format!("{what} is not a lease: {e}")))?;
    if r.magic != LEASE_MAGIC || r.version != LEASE_VERSION || r.host != host {
        return Err(std::io::Error::other(format!(
            "{what} is not a version {LEASE_VERSION} lease of {host}"
        )));
    }
    Ok(r)
}

/// Writes `rec` as the lease of `rec.host` on an export QEMU reaches over
/// `nfs://`, with the agent's NFSv3 client (FILE_SYNC). Runs its own small
/// runtime: the fence process is not async.
pub fn write_nfs(src: &NetfsSource, rec: &LeaseRecord) -> std::io::Result<()> {
    let data = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(Export::new(src).write_small(&nfs_lease_name(&rec.host), &data))
        .map_err(std::io::Error::other)
}

/// Reads `host`'s lease on an export QEMU reaches over `nfs://`. A write
/// caught half-way reads as an error, never as a lease.
pub async fn read_nfs(src: &NetfsSource, host: &str) -> crate::error::Result<Option<LeaseRecord>> {
    let fail = |e: String| crate::error::AgentError::Failed(format!("cannot read the lease: {e}"));
    let name = nfs_lease_name(host);
    let Some(b) = Export::new(src)
        .read_small(&name)
        .await
        .map_err(|e| fail(e.to_string()))?
    else {
        return Ok(None);
    };
    let what = format!("nfs://{}{}/{name}", src.host, src.path);
    parse(&what, &b, host)
        .map(Some)
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_lease_reads_back_and_a_foreign_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path(), "a").unwrap().is_none());
        let rec = LeaseRecord {
            magic: LEASE_MAGIC.into(),
            version: LEASE_VERSION,
            host: "a".into(),
            instance: "i".into(),
            counter: 7,
            armed: true,
            fence_after_ms: 5000,
            io_timeout_ms: 1000,
            written_ms: 1,
            watchdog_ms: 0,
        };
        write(d.path(), &rec).unwrap();
        assert_eq!(read(d.path(), "a").unwrap(), Some(rec.clone()));
        std::fs::copy(lease_path(d.path(), "a"), lease_path(d.path(), "b")).unwrap();
        assert!(read(d.path(), "b").is_err());
    }
}
