//! The receiver's resume journal: `<dest>.tern-journal`, next to `<dest>.tern-partial`.
//!
//! Layout: an 88-byte header (magic `TERNJNL1`, version, chunk size, file size, chunk count,
//! session id, source fingerprint, 8-byte BLAKE3 check) followed by 48-byte records (chunk
//! index, chunk checksum, 8-byte check). A record is appended only after the chunk's data was
//! written, verified and (with `fsync`) made durable, so every record names good data.
//! A torn or corrupt tail is ignored and cut off on the next append.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"TERNJNL1";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 88;
const RECORD_LEN: usize = 48;

/// The path with `suffix` appended to its file name.
fn with_suffix(dest: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = dest.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Where the receiver writes data until the transfer is complete.
pub fn partial_path(dest: &Path) -> PathBuf {
    with_suffix(dest, ".tern-partial")
}

/// Where the receiver keeps its resume journal.
pub fn journal_path(dest: &Path) -> PathBuf {
    with_suffix(dest, ".tern-journal")
}

/// A set of chunk indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    /// An empty set over `len` indexes.
    pub fn new(len: u64) -> Self {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }
    /// Membership.
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Inserts `i`; returns false if it was already there.
    pub fn set(&mut self, i: u64) -> bool {
        let w = &mut self.words[(i / 64) as usize];
        let was = *w & (1 << (i % 64)) != 0;
        *w |= 1 << (i % 64);
        !was
    }
    /// Number of members.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    /// Wire form: bit i is bit (i % 8) of byte i / 8.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.len.div_ceil(8) as usize;
        self.words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(n)
            .collect()
    }
    /// Parses the wire form; `None` if the length is wrong or bits past `len` are set.
    pub fn from_bytes(b: &[u8], len: u64) -> Option<Self> {
        if b.len() as u64 != len.div_ceil(8) {
            return None;
        }
        let mut m = Bitmap::new(len);
        for (i, byte) in b.iter().enumerate() {
            m.words[i / 8] |= u64::from(*byte) << (8 * (i % 8));
        }
        (m.count() == (0..len).filter(|&i| m.get(i)).count() as u64).then_some(m)
    }
}

/// What a journal is about; a journal whose header differs is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Session id.
    pub session: [u8; 16],
    /// Source fingerprint.
    pub fingerprint: [u8; 32],
    /// Source (and destination) size.
    pub file_size: u64,
    /// Chunk size of the plan.
    pub chunk_size: u32,
    /// Chunks in the plan.
    pub chunk_count: u64,
}

fn check8(b: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(b).as_bytes()[..8]);
    c
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&self.file_size.to_le_bytes());
        b.extend_from_slice(&self.chunk_count.to_le_bytes());
        b.extend_from_slice(&self.session);
        b.extend_from_slice(&self.fingerprint);
        let c = check8(&b);
        b.extend_from_slice(&c);
        b
    }
}

fn encode_record(index: u64, hash: &[u8; 32]) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..8].copy_from_slice(&index.to_le_bytes());
    r[8..40].copy_from_slice(hash);
    let c = check8(&r[..40]);
    r[40..].copy_from_slice(&c);
    r
}

/// Reads the journal at `path` if it matches `hdr`: the verified chunks and the length of
/// its valid prefix. `Ok(None)` if it is missing, stale or corrupt.
pub fn load(path: &Path, hdr: &Header) -> io::Result<Option<(Bitmap, u64)>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if data.len() < HEADER_LEN || data[..HEADER_LEN] != hdr.encode()[..] {
        return Ok(None);
    }
    let mut done = Bitmap::new(hdr.chunk_count);
    let mut valid = HEADER_LEN;
    for rec in data[HEADER_LEN..].chunks_exact(RECORD_LEN) {
        let mut idx = [0u8; 8];
        idx.copy_from_slice(&rec[..8]);
        let index = u64::from_le_bytes(idx);
        if rec[40..] != check8(&rec[..40]) || index >= hdr.chunk_count {
            break;
        }
        done.set(index);
        valid += RECORD_LEN;
    }
    Ok(Some((done, valid as u64)))
}

/// An open journal that records are appended to.
pub struct Journal {
    file: File,
}

impl Journal {
    /// Starts a new journal (replacing any old one).
    pub fn create(path: &Path, hdr: &Header) -> io::Result<Journal> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(&hdr.encode())?;
        Ok(Journal { file })
    }

    /// Reopens a journal that [`load`] accepted, cutting it to its valid prefix.
    pub fn reopen(path: &Path, valid_len: u64) -> io::Result<Journal> {
        let file = OpenOptions::new().append(true).open(path)?;
        file.set_len(valid_len)?;
        Ok(Journal { file })
    }

    /// Appends records in one write.
    pub fn append(&mut self, records: &[(u64, [u8; 32])]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(records.len() * RECORD_LEN);
        for (i, h) in records {
            buf.extend_from_slice(&encode_record(*i, h));
        }
        self.file.write_all(&buf)
    }
}

enum Msg {
    Record(u64, [u8; 32], u64),
    Stop { flush: bool },
}

/// Background thread that batches verified chunks: fdatasync the data file, then append.
pub struct JournalWriter {
    tx: mpsc::Sender<Msg>,
    handle: JoinHandle<io::Result<()>>,
}

impl JournalWriter {
    /// Starts the thread for `journal` about `data`.
    pub fn spawn(
        mut journal: Journal,
        data: Arc<File>,
        fsync: bool,
        interval_bytes: u64,
    ) -> io::Result<JournalWriter> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("tern-journal".into())
            .spawn(move || -> io::Result<()> {
                let mut pending: Vec<(u64, [u8; 32])> = Vec::new();
                let mut pending_bytes = 0u64;
                let mut last = Instant::now();
                let mut flush = |pending: &mut Vec<(u64, [u8; 32])>| -> io::Result<()> {
                    if pending.is_empty() {
                        return Ok(());
                    }
                    if fsync {
                        data.sync_data()?;
                    }
                    journal.append(pending)?;
                    pending.clear();
                    Ok(())
                };
                loop {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(Msg::Record(i, h, len)) => {
                            pending.push((i, h));
                            pending_bytes += len;
                        }
                        Ok(Msg::Stop { flush: f }) => {
                            return if f { flush(&mut pending) } else { Ok(()) }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                    if pending_bytes >= interval_bytes || last.elapsed() >= Duration::from_secs(2) {
                        flush(&mut pending)?;
                        pending_bytes = 0;
                        last = Instant::now();
                    }
                }
            })?;
        Ok(JournalWriter { tx, handle })
    }

    /// Queues a verified chunk of `len` bytes.
    pub fn record(&self, index: u64, hash: [u8; 32], len: u64) {
        // If the thread died, its error surfaces in `finish`.
        let _ = self.tx.send(Msg::Record(index, hash, len));
    }

    /// Stops the thread, first journaling what is pending if `flush`; returns its first error.
    pub fn finish(self, flush: bool) -> io::Result<()> {
        let _ = self.tx.send(Msg::Stop { flush });
        self.handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("journal thread panicked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header {
        Header {
            session: [1; 16],
            fingerprint: [2; 32],
            file_size: 1 << 30,
            chunk_size: 1 << 20,
            chunk_count: 100,
        }
    }

    #[test]
    fn bitmap_roundtrip() {
        let mut m = Bitmap::new(70);
        assert!(m.set(0));
        assert!(m.set(69));
        assert!(!m.set(69));
        assert_eq!(m.count(), 2);
        let b = m.to_bytes();
        assert_eq!(b.len(), 9);
        assert_eq!(Bitmap::from_bytes(&b, 70).unwrap(), m);
        assert!(Bitmap::from_bytes(&b, 73).is_none());
        let mut bad = b.clone();
        bad[8] |= 0x80; // bit 71: past the end
        assert!(Bitmap::from_bytes(&bad, 70).is_none());
    }

    #[test]
    fn journal_survives_torn_tail_and_rejects_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let mut j = Journal::create(&p, &hdr()).unwrap();
        j.append(&[(3, [9; 32]), (7, [8; 32])]).unwrap();
        drop(j);
        // Torn record at the end.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let (done, valid) = load(&p, &hdr()).unwrap().unwrap();
        assert!(done.get(3) && done.get(7) && !done.get(4));
        assert_eq!(valid, (HEADER_LEN + 2 * RECORD_LEN) as u64);
        let mut j = Journal::reopen(&p, valid).unwrap();
        j.append(&[(4, [1; 32])]).unwrap();
        let (done, _) = load(&p, &hdr()).unwrap().unwrap();
        assert_eq!(done.count(), 3);
        let mut other = hdr();
        other.fingerprint = [0; 32];
        assert!(load(&p, &other).unwrap().is_none());
        assert!(load(&dir.path().join("missing"), &hdr()).unwrap().is_none());
    }

    #[test]
    fn writer_flushes_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let data = Arc::new(File::create(dir.path().join("d")).unwrap());
        let w = JournalWriter::spawn(Journal::create(&p, &hdr()).unwrap(), data, true, u64::MAX)
            .unwrap();
        w.record(5, [5; 32], 10);
        w.finish(true).unwrap();
        assert!(load(&p, &hdr()).unwrap().unwrap().0.get(5));
    }

    #[test]
    fn suffixes() {
        assert_eq!(
            partial_path(Path::new("/a/b.img")),
            Path::new("/a/b.img.tern-partial")
        );
        assert_eq!(
            journal_path(Path::new("/a/b.img")),
            Path::new("/a/b.img.tern-journal")
        );
    }
}
