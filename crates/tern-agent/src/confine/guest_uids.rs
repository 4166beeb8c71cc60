//! One uid per guest: the DAC half of what libvirt's sVirt gives each
//! guest its own label for.
//!
//! With a single `tern-qemu` uid, every file handed to one guest's QEMU
//! (a hot-plugged disk, a received volume, the TPM state) can be opened by
//! every other guest's QEMU, and one QEMU may signal or trace another. So
//! each domain gets a uid of its own from `[qemu] uid_range`, kept in
//! `<state>/qemu-uids.json` from its first start until it is undefined (a
//! restarted agent keeps it; a transient domain gives it back when it
//! ends). Its gid is the same number (`-run-with user=UID:UID` sets that
//! one group), so no two guests share a group either: directories every
//! guest passes get others' search bit, and /dev/userfaultfd an ACL entry
//! per incoming QEMU (`super::acl`).
//!
//! Uids are host-local: they never travel in the migration protocol, and a
//! destination picks its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;
use uuid::Uuid;

/// The range a host's guest uids come from, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// First uid.
    pub first: u32,
    /// Last uid.
    pub last: u32,
}

/// The default range: above systemd's container range (524288-1879048191)
/// and below its foreign range (from 2147352576), where neither
/// `useradd`'s subordinate ids nor dynamic users land.
pub const DEFAULT_UID_RANGE: &str = "1900000000-1900009999";

/// Why the range or the table cannot be used.
#[derive(Debug, Error)]
pub enum UidError {
    /// Not `FIRST-LAST` with `0 < FIRST <= LAST < 2^31`.
    #[error("uid_range '{0}' in the [qemu] table is not FIRST-LAST with 0 < FIRST <= LAST < 2147483648; write e.g. uid_range = \"{DEFAULT_UID_RANGE}\", or \"\" for one shared QEMU user")]
    Syntax(String),
    /// A user or subordinate id range of this host lies in it.
    #[error("uid_range {first}-{last} in the [qemu] table overlaps {what}; pick a range no account or container uses")]
    Overlap {
        /// First uid.
        first: u32,
        /// Last uid.
        last: u32,
        /// What it overlaps.
        what: String,
    },
    /// Every uid is taken.
    #[error("all {0} uids of uid_range are held by guests of this host; undefine guests or widen uid_range in the [qemu] table")]
    Exhausted(u32),
    /// The table could not be read or written.
    #[error("guest uid table {path}: {source}")]
    Table {
        /// Its path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl UidRange {
    /// Parses `FIRST-LAST`; `None` for an empty string (one shared user).
    pub fn parse(s: &str) -> Result<Option<UidRange>, UidError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let bad = || UidError::Syntax(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last || last >= 1 << 31 {
            return Err(bad());
        }
        Ok(Some(UidRange { first, last }))
    }

    /// How many uids it holds.
    pub fn len(&self) -> u32 {
        self.last - self.first + 1
    }

    /// Never empty (`parse` refuses that); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether it meets `first..=last`.
    pub fn overlaps(&self, first: u32, last: u32) -> bool {
        first <= self.last && last >= self.first
    }

    /// Refuses a range that holds an account of `passwd` (text of
    /// /etc/passwd or /etc/group) or meets a range of `subids` (text of
    /// /etc/subuid or /etc/subgid): such a uid would open a guest's files.
    pub fn check_free(&self, passwd: &str, subids: &str, what: &str) -> Result<(), UidError> {
        let refuse = |w: String| UidError::Overlap {
            first: self.first,
            last: self.last,
            what: w,
        };
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let Some(id) = f.get(2).and_then(|x| x.parse::<u32>().ok()) {
                if self.overlaps(id, id) {
                    return Err(refuse(format!("{what} '{}' (id {id})", f[0])));
                }
            }
        }
        for line in subids.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let (Some(start), Some(count)) = (
                f.get(1).and_then(|x| x.parse::<u64>().ok()),
                f.get(2).and_then(|x| x.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let end = (start + count.max(1) - 1).min(u32::MAX as u64) as u32;
            if start <= u32::MAX as u64 && self.overlaps(start as u32, end) {
                return Err(refuse(format!(
                    "the subordinate ids of '{}' ({start}-{end})",
                    f[0]
                )));
            }
        }
        Ok(())
    }
}

/// The lowest uid of `range` that `used` does not hold.
pub fn pick_free(range: UidRange, used: &[u32]) -> Option<u32> {
    (range.first..=range.last).find(|u| !used.contains(u))
}

/// The domains' uids, kept on disk.
#[derive(Debug)]
pub struct UidTable {
    path: PathBuf,
    range: UidRange,
    map: Mutex<BTreeMap<Uuid, u32>>,
}

impl UidTable {
    /// Loads the table at `path` (none yet: empty). Entries outside
    /// `range` (the range was changed) are dropped: their guests get a
    /// new uid at their next start.
    pub fn open(path: &Path, range: UidRange) -> Result<UidTable, UidError> {
        let map: BTreeMap<Uuid, u32> = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| UidError::Table {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(UidError::Table {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        };
        let map = map
            .into_iter()
            .filter(|(_, u)| range.overlaps(*u, *u))
            .collect();
        Ok(UidTable {
            path: path.to_path_buf(),
            range,
            map: Mutex::new(map),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, u32>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, map: &BTreeMap<Uuid, u32>) -> Result<(), UidError> {
        let text = serde_json::to_vec_pretty(map).unwrap_or_default();
        crate::config::write_atomic(&self.path, &text).map_err(|e| UidError::Table {
            path: self.path.clone(),
            source: e,
        })
    }

    /// The range uids come from.
    pub fn range(&self) -> UidRange {
        self.range
    }

    /// The uid of `uuid`, allocated (and stored) if it has none yet.
    pub fn acquire(&self, uuid: Uuid) -> Result<u32, UidError> {
        let mut map = self.lock();
        if let Some(u) = map.get(&uuid) {
            return Ok(*u);
        }
        let used: Vec<u32> = map.values().copied().collect();
        let uid = pick_free(self.range, &used).ok_or(UidError::Exhausted(self.range.len()))?;
        map.insert(uuid, uid);
        if let Err(e) = self.save(&map) {
            map.remove(&uuid);
            return Err(e);
        }
        Ok(uid)
    }

    /// The uid of `uuid`, if it holds one.
    pub fn get(&self, uuid: Uuid) -> Option<u32> {
        self.lock().get(&uuid).copied()
    }

    /// Frees the uid of `uuid`; returns it.
    pub fn release(&self, uuid: Uuid) -> Option<u32> {
        let mut map = self.lock();
        let uid = map.remove(&uuid)?;
        if let Err(e) = self.save(&map) {
            tracing::warn!(error = %e, "cannot record a released guest uid");
        }
        Some(uid)
    }

    /// Every uid held now.
    pub fn held(&self) -> Vec<u32> {
        self.lock().values().copied().collect()
    }

    /// Frees the uids of domains `keep` does not name (agent start: the
    /// table may hold domains that ended while no agent ran).
    pub fn retain(&self, keep: &[Uuid]) -> Vec<(Uuid, u32)> {
        let mut map = self.lock();
        let gone: Vec<(Uuid, u32)> = map
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, _) in &gone {
            map.remove(k);
        }
        if !gone.is_empty() {
            if let Err(e) = self.save(&map) {
                tracing::warn!(error = %e, "cannot record released guest uids");
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense_and_overlaps() {
        assert_eq!(UidRange::parse("").unwrap(), None);
        let r = UidRange::parse(" 100-102 ").unwrap().unwrap();
        assert_eq!((r.first, r.last, r.len()), (100, 102, 3));
        for bad in ["0-5", "5-4", "a-b", "7", "1-2147483648"] {
            let e = UidRange::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("uid_range"), "{e}");
        }
        let passwd = "root:x:0:0::/root:/bin/sh\nbob:x:101:101::/home/bob:/bin/sh\n";
        let e = r.check_free(passwd, "", "user").unwrap_err().to_string();
        assert!(e.contains("user 'bob' (id 101)"), "{e}");
        let e = r
            .check_free("", "alice:50:51\n", "subuid")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'alice' (50-100)"), "{e}");
        r.check_free("root:x:0:0::/:/bin/sh\n", "alice:103:10\n", "x")
            .unwrap();
        UidRange::parse(DEFAULT_UID_RANGE).unwrap().unwrap();
    }

    #[test]
    fn a_domain_keeps_its_uid_across_reopen_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uids.json");
        let range = UidRange {
            first: 10,
            last: 11,
        };
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t = UidTable::open(&path, range).unwrap();
        assert_eq!(t.acquire(a).unwrap(), 10);
        assert_eq!(t.acquire(b).unwrap(), 11);
        assert_eq!(t.acquire(a).unwrap(), 10);
        assert!(matches!(t.acquire(c), Err(UidError::Exhausted(2))));
        // A restarted agent finds the same owners.
        let t = UidTable::open(&path, range).unwrap();
        assert_eq!((t.get(a), t.get(b)), (Some(10), Some(11)));
        assert_eq!(t.release(a), Some(10));
        assert_eq!(t.acquire(c).unwrap(), 10);
        assert_eq!(t.retain(&[c]), vec![(b, 11)]);
        let t = UidTable::open(
            &path,
            UidRange {
                first: 11,
                last: 20,
            },
        )
        .unwrap();
        assert_eq!(t.get(c), None, "outside the new range");
    }
}
