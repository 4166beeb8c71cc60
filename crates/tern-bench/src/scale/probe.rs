//! Reading the controller and its store from outside: CPU and memory from
//! `/proc/PID`, bytes written to disk from `/proc/PID/io`, and store
//! writes counted by the store itself (the file store's revision: at the
//! head of its snapshot, or in the last write of its log; etcd's `etcd_mvcc_put_total` and
//! `etcd_mvcc_delete_total` on a member's `/metrics`).

use super::report::{cpu_seconds, metric_sum, status_kib};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A process seen through `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Proc(pub u32);

impl Proc {
    fn read(&self, what: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{}/{what}", self.0)).ok()
    }

    /// User plus system CPU seconds so far.
    pub fn cpu(&self) -> f64 {
        // SAFETY: sysconf has no memory effects.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        self.read("stat")
            .and_then(|s| cpu_seconds(&s, ticks.max(1.0)))
            .unwrap_or(0.0)
    }

    /// Peak resident set size, bytes.
    pub fn peak_rss(&self) -> u64 {
        self.read("status")
            .and_then(|s| status_kib(&s, "VmHWM"))
            .unwrap_or(0)
    }

    /// Bytes it caused to be written to storage.
    pub fn write_bytes(&self) -> Option<f64> {
        let io = self.read("io")?;
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Where store writes are counted.
#[derive(Debug, Clone)]
pub enum Writes {
    /// The file store's directory: its revision grows by one per key
    /// written.
    File(PathBuf),
    /// An etcd member's metrics endpoint.
    Etcd(SocketAddr),
}

impl Writes {
    /// For a controller's `--store` argument.
    pub fn for_store(store: &str) -> Option<Writes> {
        if let Some(dir) = store.strip_prefix("file:") {
            return Some(Writes::File(PathBuf::from(dir)));
        }
        let first = store.strip_prefix("etcd:")?.split(',').next()?;
        let addr = first.trim_start_matches("http://").parse().ok()?;
        Some(Writes::Etcd(addr))
    }

    /// Writes so far, if they can be read.
    pub fn count(&self) -> Option<f64> {
        match self {
            Writes::File(dir) => {
                // The snapshot starts {"magic":..,"version":..,"revision":N: read
                // its head only, however big the file is. Writes since are
                // lines of the log; the last one carrying a revision has
                // the store's.
                let mut head = [0u8; 256];
                let snap = std::fs::File::open(dir.join("store.json"))
                    .and_then(|mut f| f.read(&mut head))
                    .ok()
                    .and_then(|n| snapshot_revision(&String::from_utf8_lossy(&head[..n])));
                let logged = log_revision(&dir.join("store.wal"));
                snap.max(logged).map(|r| r as f64)
            }
            Writes::Etcd(addr) => {
                let (status, text) = tern_testkit::scrape::http_get(*addr, "/metrics");
                if status != 200 {
                    return None;
                }
                let puts = metric_sum(&text, "etcd_mvcc_put_total")?;
                Some(puts + metric_sum(&text, "etcd_mvcc_delete_total").unwrap_or(0.0))
            }
        }
    }
}

/// The revision of the last write in a file store's log: the last
/// `"revision":N` in its final 64 KiB.
fn log_revision(path: &std::path::Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let at = text.rfind("\"revision\":")?;
    snapshot_revision(&text[at..])
}

/// The `"revision":N` near the head of a file-store snapshot.
pub fn snapshot_revision(head: &str) -> Option<u64> {
    let rest = &head[head.find("\"revision\":")? + "\"revision\":".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_from_the_head() {
        let h = r#"{"magic":"tern-store","version":1,"revision":4711,"next_lease":3,"keys":{"#;
        assert_eq!(snapshot_revision(h), Some(4711));
        assert_eq!(snapshot_revision(r#"{"magic":"tern-store""#), None);
    }

    #[test]
    fn stores_name_their_counter() {
        assert!(matches!(
            Writes::for_store("file:/tmp/x"),
            Some(Writes::File(p)) if p == std::path::Path::new("/tmp/x")
        ));
        assert!(matches!(
            Writes::for_store("etcd:http://127.0.0.1:2379,http://127.0.0.1:2380"),
            Some(Writes::Etcd(a)) if a.port() == 2379
        ));
        assert!(Writes::for_store("nonsense").is_none());
    }
}
