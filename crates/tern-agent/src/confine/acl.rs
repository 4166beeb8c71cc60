//! One uid's entry in a file's POSIX access ACL.
//!
//! With a group per guest, nothing but an ACL entry can open one file to
//! several guests' QEMUs: /dev/userfaultfd, which a post-copy
//! destination's QEMU opens after it dropped to its own uid. The entry is
//! added when the incoming QEMU of a post-copy migration starts and
//! removed when it ends.
//!
//! The ACL is the kernel's `system.posix_acl_access` xattr (version 2,
//! then entries of tag, permissions and id, little-endian, sorted by tag
//! and id); several agents on one host share the file, so each change
//! holds an exclusive lock on `<file>`'s lock file in /run.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const XATTR: &str = "system.posix_acl_access";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// ACL_USER_OBJ, ACL_USER, ...
    pub tag: u16,
    /// The id of a named user or group, else `u32::MAX`.
    pub id: u32,
    /// rwx bits (4, 2, 1).
    pub perm: u16,
}

/// The entries a file without an ACL has: its mode.
pub fn from_mode(mode: u32) -> Vec<Entry> {
    let e = |tag, shift: u32| Entry {
        tag,
        id: NO_ID,
        perm: ((mode >> shift) & 7) as u16,
    };
    vec![e(USER_OBJ, 6), e(GROUP_OBJ, 3), e(OTHER, 0)]
}

/// Decodes the xattr; `None` if it is not a version-2 ACL.
pub fn decode(b: &[u8]) -> Option<Vec<Entry>> {
    if b.len() < 4 || !(b.len() - 4).is_multiple_of(8) {
        return None;
    }
    if u32::from_le_bytes(b[..4].try_into().ok()?) != VERSION {
        return None;
    }
    b[4..]
        .chunks(8)
        .map(|c| {
            Some(Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes(c[4..8].try_into().ok()?),
            })
        })
        .collect()
}

/// Encodes entries (sorted, as the kernel wants them).
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut v = entries.to_vec();
    v.sort_by_key(|e| (e.tag, e.id));
    let mut b = VERSION.to_le_bytes().to_vec();
    for e in v {
        b.extend_from_slice(&e.tag.to_le_bytes());
        b.extend_from_slice(&e.perm.to_le_bytes());
        b.extend_from_slice(&e.id.to_le_bytes());
    }
    b
}

/// `entries` with user `uid` given `perm` (`None`: its entry removed),
/// and the mask recomputed as the union of the group class.
pub fn with_user(entries: &[Entry], uid: u32, perm: Option<u16>) -> Vec<Entry> {
    let mut v: Vec<Entry> = entries
        .iter()
        .copied()
        .filter(|e| !(e.tag == USER && e.id == uid) && e.tag != MASK)
        .collect();
    if let Some(perm) = perm {
        v.push(Entry {
            tag: USER,
            id: uid,
            perm,
        });
    }
    let named = v.iter().any(|e| e.tag == USER || e.tag == GROUP);
    if named {
        let mask = v
            .iter()
            .filter(|e| matches!(e.tag, USER | GROUP | GROUP_OBJ))
            .fold(0, |m, e| m | e.perm);
        v.push(Entry {
            tag: MASK,
            id: NO_ID,
            perm: mask,
        });
    }
    v.sort_by_key(|e| (e.tag, e.id));
    v
}

/// Gives `uid` read-write on `path` (`grant`), or takes its entry away.
pub fn set_user(path: &Path, uid: u32, grant: bool) -> io::Result<()> {
    let _lock = lock(path)?;
    let now = match get(path)? {
        Some(b) => decode(&b).ok_or_else(|| io::Error::other("an ACL this agent cannot read"))?,
        None => {
            use std::os::unix::fs::MetadataExt;
            from_mode(std::fs::metadata(path)?.mode())
        }
    };
    if !grant && !now.iter().any(|e| e.tag == USER && e.id == uid) {
        return Ok(());
    }
    let next = with_user(&now, uid, grant.then_some(6));
    set(path, &encode(&next))
}

/// Takes away the entries of the named users `stale` picks (entries an
/// agent that was killed with its QEMU left). Returns them.
pub fn drop_users(path: &Path, stale: impl Fn(u32) -> bool) -> io::Result<Vec<u32>> {
    let _lock = lock(path)?;
    let Some(now) = get(path)?.and_then(|b| decode(&b)) else {
        return Ok(Vec::new());
    };
    let gone: Vec<u32> = now
        .iter()
        .filter(|e| e.tag == USER && stale(e.id))
        .map(|e| e.id)
        .collect();
    if !gone.is_empty() {
        let next = gone
            .iter()
            .fold(now, |acc, uid| with_user(&acc, *uid, None));
        set(path, &encode(&next))?;
    }
    Ok(gone)
}

/// Named users that hold an entry on `path`.
pub fn users(path: &Path) -> io::Result<Vec<u32>> {
    Ok(get(path)?
        .and_then(|b| decode(&b))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.tag == USER)
        .map(|e| e.id)
        .collect())
}

fn cpath(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn get(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let p = cpath(path)?;
    let name = cpath(Path::new(XATTR))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated; `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn set(path: &Path, value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let name = cpath(Path::new(XATTR))?;
    // SAFETY: both strings are NUL-terminated; `value` is readable for its length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An exclusive lock shared by every agent of this host for `path`.
fn lock(path: &Path) -> io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))?;
    // SAFETY: flock on a descriptor we own; released when `f` is dropped.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// The lock file of `path` (for /dev/userfaultfd:
/// `/run/tern-acl_dev_userfaultfd.lock`).
fn lock_path(path: &Path) -> String {
    let name = path.to_string_lossy().replace('/', "_");
    format!("/run/tern-acl{name}.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_entry_comes_and_goes_with_its_mask() {
        let base = from_mode(0o660);
        let one = with_user(&base, 1900000001, Some(6));
        assert_eq!(decode(&encode(&one)).unwrap(), one);
        assert!(one.contains(&Entry {
            tag: USER,
            id: 1900000001,
            perm: 6
        }));
        assert!(one.iter().any(|e| e.tag == MASK && e.perm == 6));
        let two = with_user(&one, 1900000002, Some(6));
        assert_eq!(two.iter().filter(|e| e.tag == USER).count(), 2);
        let back = with_user(&with_user(&two, 1900000001, None), 1900000002, None);
        assert_eq!(back, {
            let mut b = base.clone();
            b.sort_by_key(|e| (e.tag, e.id));
            b
        });
        assert_eq!(decode(&[1, 0, 0, 0]), None);
    }

    #[test]
    fn an_acl_on_a_real_file_opens_it_to_one_uid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("dev");
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o660)).unwrap();
        if set_user(&f, 1900009999, true).is_err() {
            eprintln!("no ACLs on this file system; skipped");
            return;
        }
        assert_eq!(users(&f).unwrap(), [1900009999]);
        set_user(&f, 1900009999, false).unwrap();
        assert!(users(&f).unwrap().is_empty());
        let _ = std::fs::remove_file(lock_path(&f));
    }
}
