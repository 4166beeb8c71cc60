//! Watching heartbeats as they arrive, across hosts.
//!
//! Under TCG the guest's clocks stop while QEMU is paused, so the guest
//! cannot measure its own downtime. What an observer sees is the stream of
//! heartbeat lines on the console: the longest wait between one heartbeat
//! and the next — the last on the source, the first on the destination
//! during a migration — is the guest-observed gap. [`ConsoleWatcher`] tails
//! console log files every few milliseconds and stamps each heartbeat with
//! the host's monotonic clock.

use crate::serial::parse_heartbeat;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A heartbeat seen at a host instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Heartbeat counter.
    pub seq: u64,
    /// The guest's own uptime in the line, ms.
    pub up_ms: u64,
    /// When the line appeared in a log.
    pub at: Instant,
}

/// Tails console logs in a background thread.
#[derive(Debug)]
pub struct ConsoleWatcher {
    files: Arc<Mutex<Vec<(PathBuf, u64, String)>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the heartbeats showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Heartbeats seen.
    pub count: usize,
    /// First and last counter values.
    pub first_seq: u64,
    /// Last counter value.
    pub last_seq: u64,
    /// Longest host-time wait between consecutive heartbeats.
    pub max_gap: Duration,
    /// The guest's own clock across the same two heartbeats. Under TCG
    /// the guest's clocks stop while QEMU is paused, so `max_gap` minus
    /// this is the time the guest was frozen (stopped, or not yet
    /// resumed), and this minus the heartbeat period is how late the
    /// guest itself was (throttled, starved, or translating code afresh
    /// on a new host).
    pub max_gap_guest: Duration,
    /// Whether the counter ever went backwards (a reboot or a second copy).
    pub went_backwards: bool,
    /// Heartbeat numbers never seen.
    pub missing: u64,
    /// `TERN-FAIL` lines.
    pub failures: Vec<String>,
}

impl ConsoleWatcher {
    /// Starts watching nothing; add files with [`ConsoleWatcher::add`].
    pub fn start() -> ConsoleWatcher {
        let files: Arc<Mutex<Vec<(PathBuf, u64, String)>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, fl, st) = (files.clone(), seen.clone(), failures.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                poll(&f, &s, &fl);
                std::thread::sleep(Duration::from_millis(2));
            }
            poll(&f, &s, &fl);
        });
        ConsoleWatcher {
            files,
            seen,
            failures,
            stop,
            thread: Some(thread),
        }
    }

    /// Watches another log from its current end (or from 0 if it does not
    /// exist yet, as for a destination that has not started).
    pub fn add(&self, path: PathBuf, from_start: bool) {
        let off = if from_start {
            0
        } else {
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        };
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path, off, String::new()));
    }

    /// The heartbeats so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops and summarises.
    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let seen = self.seen();
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        report(&seen, failures)
    }
}

impl Drop for ConsoleWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poll(
    files: &Mutex<Vec<(PathBuf, u64, String)>>,
    seen: &Mutex<Vec<Seen>>,
    failures: &Mutex<Vec<String>>,
) {
    let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
    for (path, off, partial) in files.iter_mut() {
        let Ok(mut f) = std::fs::File::open(&*path) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < *off {
            // Truncated (a restart of the domain on that host): start over.
            *off = 0;
            partial.clear();
        }
        if len == *off || f.seek(SeekFrom::Start(*off)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            continue;
        }
        *off += buf.len() as u64;
        let now = Instant::now();
        partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(nl) = partial.find('\n') {
            let line: String = partial.drain(..=nl).collect();
            let Some(at) = line.find("TERN-") else {
                continue;
            };
            let l = line[at..].trim_end();
            if let Some(hb) = parse_heartbeat(l) {
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                    seq: hb.seq,
                    up_ms: hb.up_ms,
                    at: now,
                });
            } else if l.starts_with("TERN-FAIL") {
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(l.to_string());
            }
        }
    }
}

/// Summarises heartbeats in arrival order.
pub fn report(seen: &[Seen], failures: Vec<String>) -> WatchReport {
    let mut max_gap = Duration::ZERO;
    let mut max_gap_guest = Duration::ZERO;
    let mut went_backwards = false;
    let mut missing = 0;
    for w in seen.windows(2) {
        let gap = w[1].at.saturating_duration_since(w[0].at);
        if gap > max_gap {
            max_gap = gap;
            max_gap_guest = Duration::from_millis(w[1].up_ms.saturating_sub(w[0].up_ms));
        }
        if w[1].seq <= w[0].seq {
            went_backwards = true;
        } else {
            missing += w[1].seq - w[0].seq - 1;
        }
    }
    WatchReport {
        count: seen.len(),
        first_seq: seen.first().map(|s| s.seq).unwrap_or(0),
        last_seq: seen.last().map(|s| s.seq).unwrap_or(0),
        max_gap,
        max_gap_guest,
        went_backwards,
        missing,
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_and_order_from_arrivals() {
        let t = Instant::now();
        let s = |seq, ms, up_ms| Seen {
            seq,
            up_ms,
            at: t + Duration::from_millis(ms),
        };
        let r = report(
            &[s(1, 0, 10), s(2, 50, 60), s(3, 400, 125), s(5, 450, 175)],
            vec![],
        );
        assert_eq!(r.max_gap, Duration::from_millis(350));
        // The guest's clock moved 65 ms of those 350: frozen for 285.
        assert_eq!(r.max_gap_guest, Duration::from_millis(65));
        assert!(!r.went_backwards);
        assert_eq!(r.missing, 1);
        let r = report(&[s(7, 0, 0), s(1, 10, 0)], vec![]);
        assert!(r.went_backwards);
    }

    #[test]
    fn tails_files_that_appear_later() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.log");
        let b = d.path().join("b.log");
        std::fs::write(&a, "old TERN-HB seq=1 up_ms=1\n").unwrap();
        let w = ConsoleWatcher::start();
        w.add(a.clone(), false);
        w.add(b.clone(), true);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
        f.write_all(b"TERN-HB seq=2 up_ms=2\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&b, "boot junk\nTERN-HB seq=3 up_ms=3\nTERN-FAIL mem x\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let r = w.finish();
        assert_eq!((r.first_seq, r.last_seq, r.count), (2, 3, 2));
        assert_eq!(r.failures.len(), 1);
    }
}
