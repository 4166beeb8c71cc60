//! The file store's write-ahead log: each change as one JSON line,
//! appended and synced before the call that made it returns.
//!
//! Rewriting the whole snapshot for every change costs O(store) per
//! write: at 1 000 hosts the snapshot is megabytes, and heartbeats time
//! out behind the rewrites (docs/BENCHMARKS.md, "Cluster scale"). An
//! append costs O(change). The snapshot is rewritten only when the log
//! has grown past [`compact_after`], and the log then starts again.
//!
//! Replay is idempotent: every record says the state it leaves (a key's
//! value and revision, a lease granted or gone), not a difference. So a
//! crash between writing a new snapshot and emptying the log, which
//! replays records the snapshot already holds, ends in the same state.
//! A last line cut short by a crash is the one write that never returned:
//! it is dropped, and cut off the file so that later appends follow a
//! whole line. A bad line anywhere else is corruption, and the store
//! refuses to open rather than guess.

use crate::{LeaseId, Result, StoreError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum Record {
    /// A key now holds `value`, written at `revision`.
    Put {
        /// The key.
        key: String,
        /// Its value (JSON text from the controller).
        value: String,
        /// The store's revision of this write.
        revision: u64,
        /// The lease it lives under.
        lease: Option<LeaseId>,
    },
    /// A key is gone.
    Delete {
        /// The key.
        key: String,
    },
    /// A lease was granted.
    Grant {
        /// Its id.
        id: LeaseId,
        /// Its time to live, ms.
        ttl_ms: u64,
    },
    /// A lease is gone (revoked or expired), with every key under it.
    Revoke {
        /// Its id.
        id: LeaseId,
    },
}

/// The open log.
#[derive(Debug)]
pub(super) struct Wal {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes in the file.
    len: u64,
}

/// When the log is rewritten into the snapshot: once it is larger than
/// both 8 MiB and twice the last snapshot, so that compaction's O(store)
/// cost is paid at most once per store's worth of changes.
pub(super) fn compact_after(log_bytes: u64, snapshot_bytes: u64) -> bool {
    log_bytes > (8 << 20) && log_bytes > snapshot_bytes.saturating_mul(2)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Wal {
    /// Opens (creating) the log at `path` and reads its records.
    pub(super) fn open(path: &Path) -> Result<(Wal, Vec<Record>)> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io(path))?;
        let (records, whole) = parse(&text).map_err(|message| StoreError::Corrupt {
            path: path.display().to_string(),
            message,
        })?;
        if whole < text.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = text.len() - whole,
                "dropping the store log's last line, cut short by a crash"
            );
            file.set_len(whole as u64).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io(path))?;
        Ok((
            Wal {
                path: path.to_path_buf(),
                file,
                len: whole as u64,
            },
            records,
        ))
    }

    /// Appends `records` in one write and syncs them.
    pub(super) fn append(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|e| StoreError::Corrupt {
                path: self.path.display().to_string(),
                message: e.to_string(),
            })?;
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial line for the next append to follow.
            let _ = self.file.set_len(self.len);
            return Err(io(&self.path)(e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Bytes in the log.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Empties the log once a snapshot holds everything in it.
    pub(super) fn reset(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(io(&self.path))?;
        self.file.sync_all().map_err(io(&self.path))?;
        self.len = 0;
        Ok(())
    }
}

/// The records of a log's text, and how many bytes of it are whole lines.
/// Only the last line may be bad (a crash cut it short).
fn parse(text: &[u8]) -> std::result::Result<(Vec<Record>, usize), String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let Some(nl) = text[at..].iter().position(|b| *b == b'\n') else {
            // No newline: the last write never finished.
            return Ok((records, at));
        };
        let line = &text[at..at + nl];
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) if at + nl + 1 == text.len() => return Ok((records, at)),
            Err(e) => return Err(format!("line at byte {at}: {e}")),
        }
        at += nl + 1;
    }
    Ok((records, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, rev: u64) -> Record {
        Record::Put {
            key: k.into(),
            value: "1".into(),
            revision: rev,
            lease: None,
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("store.wal");
        {
            let (mut w, r) = Wal::open(&p).unwrap();
            assert!(r.is_empty());
            w.append(&[put("a", 1), Record::Grant { id: 3, ttl_ms: 50 }])
                .unwrap();
            w.append(&[Record::Delete { key: "a".into() }]).unwrap();
        }
        // A crash in the middle of the next append.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"op\":\"put\",\"key\":\"b")
            .unwrap();
        let (mut w, r) = Wal::open(&p).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2], Record::Delete { key: "a".into() });
        // The torn line is gone: the next append is read back whole.
        w.append(&[Record::Revoke { id: 3 }]).unwrap();
        drop(w);
        let (_, r) = Wal::open(&p).unwrap();
        assert_eq!(r.last(), Some(&Record::Revoke { id: 3 }));
    }

    #[test]
    fn a_bad_line_before_the_last_is_corruption() {
        let text = b"{\"op\":\"delete\",\"key\":\"a\"}\nnot json\n{\"op\":\"revoke\",\"id\":1}\n";
        assert!(parse(text).unwrap_err().contains("byte 26"));
        // The same bad line last, without or with its newline: torn.
        assert_eq!(
            parse(b"{\"op\":\"revoke\",\"id\":1}\nnot js").unwrap().1,
            23
        );
        assert_eq!(
            parse(b"{\"op\":\"revoke\",\"id\":1}\nnot json\n")
                .unwrap()
                .1,
            23
        );
    }

    #[test]
    fn compaction_waits_for_a_log_larger_than_8_mib_and_twice_the_snapshot() {
        assert!(!compact_after(1 << 20, 0));
        assert!(compact_after(9 << 20, 1 << 20));
        assert!(!compact_after(9 << 20, 5 << 20));
        assert!(compact_after(11 << 20, 5 << 20));
    }
}
