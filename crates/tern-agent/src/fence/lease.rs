//! Lease files on shared pools: written by the fence process, read for the
//! controller by other hosts. A write is temp file, fsync, rename, fsync
//! of the directory: a reader sees the old record or the new one, and
//! after the writer's close, a reader's open sees it (close-to-open, which
//! NFS also keeps).

use std::io::Write;
use std::path::Path;
use tern_api::fence::{lease_path, LeaseRecord, LEASE_MAGIC, LEASE_VERSION};

/// Writes `rec` as the lease of `rec.host` in the pool directory `pool`.
pub fn write(pool: &Path, rec: &LeaseRecord) -> std::io::Result<()> {
    let path = lease_path(pool, &rec.host);
    let dir = path.parent().unwrap_or(pool);
    std::fs::create_dir_all(dir)?;
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
    let r: LeaseRecord = serde_json::from_slice(&b)
        .map_err(|e| std::io::Error::other(format!("{} is not a lease: {e}", path.display())))?;
    if r.magic != LEASE_MAGIC || r.version != LEASE_VERSION || r.host != host {
        return Err(std::io::Error::other(format!(
            "{} is not a version {LEASE_VERSION} lease of {host}",
            path.display()
        )));
    }
    Ok(Some(r))
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
        };
        write(d.path(), &rec).unwrap();
        assert_eq!(read(d.path(), "a").unwrap(), Some(rec.clone()));
        std::fs::copy(lease_path(d.path(), "a"), lease_path(d.path(), "b")).unwrap();
        assert!(read(d.path(), "b").is_err());
    }
}
