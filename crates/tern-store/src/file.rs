//! The embedded store: one controller, one directory, a JSON snapshot and
//! a write-ahead log.
//!
//! Every change is appended to `store.wal` and synced before the call
//! returns ([`wal`]): O(change) per write. Once the log outgrows the
//! snapshot, `store.json` is rewritten atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash leaves the old or the new
//! snapshot, never a mix, and the log starts again. One controller per
//! directory (a lock file); etcd is the store for several controllers.

mod wal;

use crate::{Entry, Guard, LeaseId, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAGIC: &str = "tern-store";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    value: String,
    revision: u64,
    lease: Option<LeaseId>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    magic: String,
    version: u32,
    revision: u64,
    next_lease: LeaseId,
    keys: BTreeMap<String, StoredKey>,
    /// Lease TTLs in ms; deadlines are not stored: a restart renews them.
    leases: BTreeMap<LeaseId, u64>,
}

#[derive(Debug)]
struct State {
    snap: Snapshot,
    /// Changes made by the call in progress, for the log.
    pending: Vec<wal::Record>,
    wal: wal::Wal,
    /// Size of the last snapshot written (or read).
    snapshot_bytes: u64,
    deadlines: BTreeMap<LeaseId, Instant>,
    /// No lease expires before this (it may be earlier than the true first
    /// deadline, since renewals only move deadlines later): every store
    /// call sweeps, and without it each would walk every lease.
    next_expiry: Option<Instant>,
}

/// The embedded file store.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    state: Mutex<State>,
    _lock: std::fs::File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileStore {
    /// Opens (creating) the store in `dir`, taking its lock.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Locked(dir.display().to_string()));
        }
        let path = dir.join("store.json");
        let mut snapshot_bytes = 0;
        let mut snap = match std::fs::read(&path) {
            Ok(b) => {
                snapshot_bytes = b.len() as u64;
                let s: Snapshot = serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                if s.magic != MAGIC || s.version != VERSION {
                    return Err(StoreError::Corrupt {
                        path: path.display().to_string(),
                        message: format!("magic {:?} version {}", s.magic, s.version),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot {
                magic: MAGIC.into(),
                version: VERSION,
                next_lease: 1,
                ..Default::default()
            },
            Err(e) => return Err(io(&path)(e)),
        };
        let (wal, records) = wal::Wal::open(&dir.join("store.wal"))?;
        for r in records {
            replay(&mut snap, r);
        }
        let now = Instant::now();
        let deadlines: BTreeMap<LeaseId, Instant> = snap
            .leases
            .iter()
            .map(|(id, ttl)| (*id, now + Duration::from_millis(*ttl)))
            .collect();
        let next_expiry = deadlines.values().min().copied();
        Ok(FileStore {
            path,
            state: Mutex::new(State {
                snap,
                pending: Vec::new(),
                wal,
                snapshot_bytes,
                deadlines,
                next_expiry,
            }),
            _lock: lock,
        })
    }

    /// Runs `f` on the state under the lock, then logs what it changed
    /// before returning (compacting the log into the snapshot when it has
    /// grown enough). Expired leases go first.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sweep(&mut st, Instant::now());
        let out = f(&mut st);
        let pending = std::mem::take(&mut st.pending);
        st.wal.append(&pending)?;
        if wal::compact_after(st.wal.len(), st.snapshot_bytes) {
            st.snapshot_bytes = self.save(&st.snap)?;
            st.wal.reset()?;
        }
        out
    }

    /// Writes the snapshot atomically; its size.
    fn save(&self, snap: &Snapshot) -> Result<u64> {
        let tmp = self.path.with_extension("tmp");
        let size = {
            let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            // Streamed: at thousands of hosts the snapshot is hundreds of
            // MB, and a buffer of it was the controller's peak memory.
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            serde_json::to_writer(&mut w, snap).map_err(|e| StoreError::Corrupt {
                path: self.path.display().to_string(),
                message: e.to_string(),
            })?;
            let f = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
            f.sync_all().map_err(io(&tmp))?;
            f.metadata().map_err(io(&tmp))?.len()
        };
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(size)
    }
}

/// Drops expired leases and their keys. Walks the leases only once the
/// earliest deadline may have passed.
fn sweep(st: &mut State, now: Instant) {
    if st.next_expiry.is_none_or(|t| t > now) {
        return;
    }
    let dead: Vec<LeaseId> = st
        .deadlines
        .iter()
        .filter(|(_, d)| **d <= now)
        .map(|(id, _)| *id)
        .collect();
    for id in &dead {
        drop_lease(st, *id);
    }
    st.next_expiry = st.deadlines.values().min().copied();
}

fn drop_lease(st: &mut State, id: LeaseId) {
    st.deadlines.remove(&id);
    st.pending.push(wal::Record::Revoke { id });
    replay(&mut st.snap, wal::Record::Revoke { id });
}

/// Applies one logged change to a snapshot (at open, and as each change
/// is made, so that both go one way).
fn replay(snap: &mut Snapshot, r: wal::Record) {
    use wal::Record;
    match r {
        Record::Put {
            key,
            value,
            revision,
            lease,
        } => {
            snap.revision = snap.revision.max(revision);
            snap.keys.insert(
                key,
                StoredKey {
                    value,
                    revision,
                    lease,
                },
            );
        }
        Record::Delete { key } => {
            snap.keys.remove(&key);
        }
        Record::Grant { id, ttl_ms } => {
            snap.leases.insert(id, ttl_ms);
            snap.next_lease = snap.next_lease.max(id + 1);
        }
        Record::Revoke { id } => {
            snap.leases.remove(&id);
            snap.keys.retain(|_, k| k.lease != Some(id));
        }
    }
}

fn entry(key: &str, k: &StoredKey) -> Entry {
    Entry {
        key: key.to_string(),
        value: k.value.clone().into_bytes(),
        revision: k.revision,
        lease: k.lease,
    }
}

fn write(st: &mut State, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64> {
    if let Some(l) = lease {
        if !st.deadlines.contains_key(&l) {
            return Err(StoreError::LeaseExpired(l));
        }
    }
    // Values are JSON documents from the controller; keep them readable
    // in the snapshot rather than as byte arrays.
    let value = String::from_utf8(value).map_err(|e| StoreError::Corrupt {
        path: key.to_string(),
        message: format!("value is not UTF-8: {e}"),
    })?;
    let r = wal::Record::Put {
        key: key.to_string(),
        value,
        revision: st.snap.revision + 1,
        lease,
    };
    st.pending.push(r.clone());
    replay(&mut st.snap, r);
    Ok(st.snap.revision)
}

#[async_trait::async_trait]
impl Store for FileStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.with(|st| Ok(st.snap.keys.get(key).map(|k| entry(key, k))))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64> {
        self.with(|st| write(st, key, value, lease))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.with(|st| {
            let had = st.snap.keys.contains_key(key);
            if had {
                let r = wal::Record::Delete {
                    key: key.to_string(),
                };
                st.pending.push(r.clone());
                replay(&mut st.snap, r);
            }
            Ok(had)
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<u64>> {
        self.with(|st| {
            let cur = st.snap.keys.get(key).map(|k| k.revision);
            if cur != expected {
                return Ok(None);
            }
            Ok(Some(write(st, key, value, lease)?))
        })
    }

    async fn create_all(&self, entries: &[(String, Vec<u8>)]) -> Result<bool> {
        self.with(|st| {
            if entries.iter().any(|(k, _)| st.snap.keys.contains_key(k)) {
                return Ok(false);
            }
            for (k, v) in entries {
                write(st, k, v.clone(), None)?;
            }
            Ok(true)
        })
    }

    async fn compare_and_swap_guarded(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        guard: &Guard,
    ) -> Result<Option<u64>> {
        self.with(|st| {
            if st.snap.keys.get(&guard.key).map(|k| k.revision) != Some(guard.revision) {
                return Err(StoreError::Deposed(guard.key.clone()));
            }
            let cur = st.snap.keys.get(key).map(|k| k.revision);
            if cur != expected {
                return Ok(None);
            }
            Ok(Some(write(st, key, value, None)?))
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        self.with(|st| {
            let v = st
                .snap
                .keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| entry(k, v))
                .collect();
            Ok(v)
        })
    }

    async fn revisions(&self, keys: &[String]) -> Result<Vec<Option<u64>>> {
        self.with(|st| {
            Ok(keys
                .iter()
                .map(|k| st.snap.keys.get(k).map(|v| v.revision))
                .collect())
        })
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.with(|st| {
            Ok(keys
                .iter()
                .map(|k| st.snap.keys.get(k).map(|v| entry(k, v)))
                .collect())
        })
    }

    async fn list_revisions(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.with(|st| {
            Ok(st
                .snap
                .keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.revision))
                .collect())
        })
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.with(|st| {
            let id = st.snap.next_lease;
            let r = wal::Record::Grant {
                id,
                ttl_ms: ttl.as_millis() as u64,
            };
            st.pending.push(r.clone());
            replay(&mut st.snap, r);
            let deadline = Instant::now() + ttl;
            st.deadlines.insert(id, deadline);
            st.next_expiry = Some(st.next_expiry.map_or(deadline, |t| t.min(deadline)));
            Ok(id)
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.with(|st| {
            let ttl = *st
                .snap
                .leases
                .get(&lease)
                .ok_or(StoreError::LeaseExpired(lease))?;
            st.deadlines
                .insert(lease, Instant::now() + Duration::from_millis(ttl));
            Ok(())
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.with(|st| {
            drop_lease(st, lease);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_revisions_and_cas() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(s.get("a").await.unwrap(), None);
        let r1 = s.put("a", b"1".to_vec(), None).await.unwrap();
        assert_eq!(
            s.compare_and_swap("a", None, b"x".to_vec(), None)
                .await
                .unwrap(),
            None
        );
        let r2 = s
            .compare_and_swap("a", Some(r1), b"2".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        assert!(r2 > r1);
        assert_eq!(
            s.compare_and_swap("a", Some(r1), b"3".to_vec(), None)
                .await
                .unwrap(),
            None
        );
        s.put("b/1", b"x".to_vec(), None).await.unwrap();
        s.put("b/2", b"y".to_vec(), None).await.unwrap();
        s.put("c", b"z".to_vec(), None).await.unwrap();
        let l: Vec<String> = s
            .list("b/")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(l, vec!["b/1", "b/2"]);
        assert!(s.delete("c").await.unwrap());
        assert!(!s.delete("c").await.unwrap());
    }

    #[tokio::test]
    async fn revisions_without_values() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let r1 = s.put("h/a", b"1".to_vec(), None).await.unwrap();
        let r2 = s.put("h/b", b"2".to_vec(), None).await.unwrap();
        s.put("i", b"3".to_vec(), None).await.unwrap();
        let keys = ["h/b".to_string(), "h/x".to_string(), "h/a".to_string()];
        assert_eq!(
            s.revisions(&keys).await.unwrap(),
            vec![Some(r2), None, Some(r1)]
        );
        assert_eq!(
            s.list_revisions("h/").await.unwrap(),
            vec![("h/a".to_string(), r1), ("h/b".to_string(), r2)]
        );
        let many: Vec<Option<(String, Vec<u8>)>> = s
            .get_many(&keys)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.map(|e| (e.key, e.value)))
            .collect();
        assert_eq!(
            many,
            vec![
                Some(("h/b".to_string(), b"2".to_vec())),
                None,
                Some(("h/a".to_string(), b"1".to_vec()))
            ]
        );
    }

    #[tokio::test]
    async fn create_all_writes_all_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let e = |k: &str| (k.to_string(), b"v".to_vec());
        assert!(s.create_all(&[e("s/a"), e("s/b")]).await.unwrap());
        assert!(!s.create_all(&[e("s/c"), e("s/b")]).await.unwrap());
        assert!(s.get("s/c").await.unwrap().is_none());
        assert_eq!(s.list("s/").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn guarded_writes_need_the_guard_key_at_its_revision() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let term = s
            .compare_and_swap("election/x", None, b"me".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        let g = Guard {
            key: "election/x".into(),
            revision: term,
        };
        let r = s
            .compare_and_swap_guarded("jobs/1", None, b"a".to_vec(), &g)
            .await
            .unwrap();
        assert!(r.is_some());
        // Key condition fails: no write, no error.
        let r = s
            .compare_and_swap_guarded("jobs/1", None, b"b".to_vec(), &g)
            .await
            .unwrap();
        assert_eq!(r, None);
        // Another leader's term: refused, nothing written.
        s.delete("election/x").await.unwrap();
        s.compare_and_swap("election/x", None, b"other".to_vec(), None)
            .await
            .unwrap();
        let e = s
            .compare_and_swap_guarded("jobs/2", None, b"c".to_vec(), &g)
            .await;
        assert!(matches!(e, Err(StoreError::Deposed(_))), "{e:?}");
        assert!(s.get("jobs/2").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn survives_reopen_and_locks_out_a_second_opener() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = FileStore::open(d.path()).unwrap();
            s.put("k", b"v".to_vec(), None).await.unwrap();
            assert!(matches!(
                FileStore::open(d.path()),
                Err(StoreError::Locked(_))
            ));
        }
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v");
    }

    #[tokio::test]
    async fn a_renewed_lease_outlives_its_first_deadline() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let a = s.grant(Duration::from_millis(300)).await.unwrap();
        let b = s.grant(Duration::from_millis(300)).await.unwrap();
        s.put("alive/a", b"1".to_vec(), Some(a)).await.unwrap();
        s.put("alive/b", b"1".to_vec(), Some(b)).await.unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.keep_alive(a).await.unwrap();
        }
        assert!(s.get("alive/a").await.unwrap().is_some());
        assert!(s.get("alive/b").await.unwrap().is_none());
        assert!(matches!(
            s.keep_alive(b).await,
            Err(StoreError::LeaseExpired(_))
        ));
    }

    #[tokio::test]
    async fn leases_expire_with_their_keys_and_renew_on_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let l = s.grant(Duration::from_millis(200)).await.unwrap();
        s.put("alive/h", b"1".to_vec(), Some(l)).await.unwrap();
        s.keep_alive(l).await.unwrap();
        drop(s);
        // Reopened: the lease gets a fresh TTL rather than expiring at once.
        let s = FileStore::open(d.path()).unwrap();
        assert!(s.get("alive/h").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(s.get("alive/h").await.unwrap().is_none());
        assert!(matches!(
            s.keep_alive(l).await,
            Err(StoreError::LeaseExpired(_))
        ));
        assert!(matches!(
            s.put("x", b"1".to_vec(), Some(l)).await,
            Err(StoreError::LeaseExpired(_))
        ));
    }

    #[tokio::test]
    async fn changes_live_in_the_log_until_it_outgrows_the_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        let l = s.grant(Duration::from_secs(60)).await.unwrap();
        s.put("hosts/a", b"{}".to_vec(), Some(l)).await.unwrap();
        s.put("jobs/1", b"x".to_vec(), None).await.unwrap();
        s.delete("jobs/1").await.unwrap();
        let last = s.put("jobs/2", b"y".to_vec(), None).await.unwrap();
        // Nothing rewrote the snapshot: every change is in the log.
        assert!(!d.path().join("store.json").exists());
        drop(s);
        let s = FileStore::open(d.path()).unwrap();
        assert!(s.get("hosts/a").await.unwrap().is_some());
        assert!(s.get("jobs/1").await.unwrap().is_none());
        assert_eq!(s.get("jobs/2").await.unwrap().unwrap().revision, last);
        // Revisions and lease ids go on from where they were.
        assert!(s.put("jobs/3", b"z".to_vec(), None).await.unwrap() > last);
        assert!(s.grant(Duration::from_secs(1)).await.unwrap() > l);
        s.revoke(l).await.unwrap();
        // 9 MiB of changes: the log is folded into the snapshot.
        let big = vec![b'v'; 64 << 10];
        for i in 0..150 {
            s.put(&format!("big/{}", i % 3), big.clone(), None)
                .await
                .unwrap();
        }
        let wal = std::fs::metadata(d.path().join("store.wal")).unwrap().len();
        assert!(wal < 8 << 20, "log of {wal} bytes was not compacted");
        assert!(d.path().join("store.json").exists());
        drop(s);
        let s = FileStore::open(d.path()).unwrap();
        assert!(s.get("hosts/a").await.unwrap().is_none());
        assert_eq!(s.list("big/").await.unwrap().len(), 3);
        assert!(s.get("jobs/3").await.unwrap().is_some());
    }
}
