//! Deferred durability: a received file renamed into place before its data
//! reached the disk, and how that is tracked until it has.
//!
//! With [`Durability::Deferred`] the receiver does not `fdatasync` while
//! copying nor at the end; it writes a marker, `<dest>.tern-unsynced`,
//! holding the boot id of the kernel whose page cache holds the data (the
//! marker itself is synced, with its directory, before the rename), then
//! renames the partial file into place. [`make_durable`] later syncs the
//! file and its directory and removes the marker.
//!
//! Why this is safe for a migration: the caller keeps the source's copy
//! until the destination's copy is durable (Tern syncs first when it is
//! asked to delete the source or to start the guest on the copy), so a host
//! that loses power in between loses nothing that exists only there. A
//! marker found after a reboot ([`Pending::EarlierBoot`]) says the file may
//! never have reached the disk, and the agent refuses to boot a guest on it.
//! The resume journal of a deferred transfer carries the boot id as well
//! (see the receiver), so a journal written before a reboot is not trusted.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// When a receiver makes the file's data durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` before journaling each batch and before the rename: the
    /// file is on disk when the receiver returns.
    #[default]
    Synced,
    /// No sync while copying or at the end; a marker records that the file
    /// is not yet on disk, for [`make_durable`] to clear.
    Deferred,
}

/// Whether a file still waits for its data to reach the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// No marker: the file is durable (or was never received deferred).
    No,
    /// A marker from this boot: the data is in the page cache or on disk;
    /// [`make_durable`] finishes the job.
    ThisBoot,
    /// A marker from an earlier boot: the host restarted before the data
    /// was synced, so the file may be incomplete.
    EarlierBoot,
}

/// The marker of a file received with deferred durability.
pub fn marker_path(dest: &Path) -> PathBuf {
    let mut s: OsString = dest.as_os_str().to_owned();
    s.push(".tern-unsynced");
    PathBuf::from(s)
}

/// This kernel's boot id (a fresh random id every boot).
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// Whether `dest` still waits for its data to reach the disk.
pub fn pending(dest: &Path) -> io::Result<Pending> {
    match std::fs::read_to_string(marker_path(dest)) {
        Ok(id) if id.trim() == boot_id()? => Ok(Pending::ThisBoot),
        Ok(_) => Ok(Pending::EarlierBoot),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Pending::No),
        Err(e) => Err(e),
    }
}

/// Syncs `dest` and its directory, then removes its marker. Returns whether
/// there was a marker. A marker from an earlier boot is left alone and
/// reported as an error: syncing now cannot bring back what was lost.
pub fn make_durable(dest: &Path) -> io::Result<bool> {
    match pending(dest)? {
        Pending::No => Ok(false),
        Pending::EarlierBoot => Err(io::Error::other(format!(
            "{} may be incomplete: the host restarted before it reached the disk",
            dest.display()
        ))),
        Pending::ThisBoot => {
            File::open(dest)?.sync_all()?;
            sync_dir(dest)?;
            std::fs::remove_file(marker_path(dest))?;
            // A lost removal would only raise a false alarm after a crash.
            sync_dir(dest)?;
            Ok(true)
        }
    }
}

/// Writes `dest`'s marker and makes it (and its directory entry) durable,
/// so that it exists on disk before the file it describes does.
pub(crate) fn mark(dest: &Path) -> io::Result<()> {
    let m = marker_path(dest);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&m)?;
    f.write_all(boot_id()?.as_bytes())?;
    f.sync_all()?;
    sync_dir(dest)
}

/// Syncs the directory holding `path` (a rename or a new name in it).
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_from_this_boot_is_cleared_one_from_another_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk.raw");
        std::fs::write(&f, b"data").unwrap();
        assert_eq!(pending(&f).unwrap(), Pending::No);
        assert!(!make_durable(&f).unwrap());
        mark(&f).unwrap();
        assert_eq!(pending(&f).unwrap(), Pending::ThisBoot);
        assert!(make_durable(&f).unwrap());
        assert_eq!(pending(&f).unwrap(), Pending::No);
        assert!(!marker_path(&f).exists());
        std::fs::write(marker_path(&f), "00000000-0000-0000-0000-000000000000").unwrap();
        assert_eq!(pending(&f).unwrap(), Pending::EarlierBoot);
        let e = make_durable(&f).unwrap_err().to_string();
        assert!(e.contains("may be incomplete"), "{e}");
        assert!(marker_path(&f).exists());
    }
}
