//! Reading what the test guest printed on its serial console.
//!
//! Pure functions over the console text (e.g. QEMU's `-serial file:PATH`).
//! Only complete lines are considered, so a file that is still being written
//! can be parsed at any time. A `TERN-` word is found anywhere in a line, so
//! kernel output glued in front of it does not hide it; `\r` is ignored.

use std::path::Path;

/// One `TERN-HB seq=<n> up_ms=<ms> mem_passes=<n> dirtied_mib=<n>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Heartbeat counter (starts at 1, never resets while the guest runs).
    pub seq: u64,
    /// Guest uptime (CLOCK_BOOTTIME) in milliseconds.
    pub up_ms: u64,
    /// Full memory verification passes so far.
    pub mem_passes: u64,
    /// MiB rewritten by the memory dirtier so far.
    pub dirtied_mib: u64,
}

/// The value of `key=<u64>` in a line of `key=value` words.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Parse a `TERN-HB` line (the line must start with `TERN-HB `).
pub fn parse_heartbeat(line: &str) -> Option<Heartbeat> {
    let rest = line.strip_prefix("TERN-HB ")?;
    Some(Heartbeat {
        seq: field(rest, "seq")?,
        up_ms: field(rest, "up_ms")?,
        mem_passes: field(rest, "mem_passes").unwrap_or(0),
        dirtied_mib: field(rest, "dirtied_mib").unwrap_or(0),
    })
}

/// The parsed console of one boot of the test guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerialLog {
    /// Every `TERN-...` line, from the `TERN-` word on, trimmed.
    pub lines: Vec<String>,
    /// The heartbeats, in console order.
    pub heartbeats: Vec<Heartbeat>,
    /// The `TERN-FAIL ...` lines.
    pub failures: Vec<String>,
}

impl SerialLog {
    /// Parse console text. A last line without a newline is ignored (it may
    /// still be being written).
    pub fn parse(text: &str) -> SerialLog {
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        let mut log = SerialLog::default();
        for raw in complete.split('\n') {
            let Some(at) = raw.find("TERN-") else {
                continue;
            };
            let line = raw[at..]
                .trim_end_matches(['\r', ' ', '\t'])
                .replace('\r', "");
            if let Some(hb) = parse_heartbeat(&line) {
                log.heartbeats.push(hb);
            }
            if line.starts_with("TERN-FAIL") {
                log.failures.push(line.clone());
            }
            log.lines.push(line);
        }
        log
    }

    /// Read and parse a console file (invalid UTF-8 is replaced).
    pub fn read(path: &Path) -> std::io::Result<SerialLog> {
        let bytes = std::fs::read(path)?;
        Ok(SerialLog::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The first line starting with `prefix`.
    pub fn find(&self, prefix: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .map(String::as_str)
    }

    /// Whether some line starts with `prefix`.
    pub fn has(&self, prefix: &str) -> bool {
        self.find(prefix).is_some()
    }

    /// How many lines start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.lines.iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Whether the guest printed `TERN-READY`.
    pub fn ready(&self) -> bool {
        self.has("TERN-READY")
    }

    /// The `seq` of the last heartbeat.
    pub fn last_seq(&self) -> Option<u64> {
        self.heartbeats.last().map(|h| h.seq)
    }

    /// Longest time between two consecutive heartbeats, by guest uptime
    /// (`up_ms`); `None` with fewer than two heartbeats.
    pub fn max_gap_ms(&self) -> Option<u64> {
        self.heartbeats
            .windows(2)
            .map(|w| w[1].up_ms.saturating_sub(w[0].up_ms))
            .max()
    }

    /// Whether a heartbeat's `seq` was not greater than the one before it
    /// (a guest that restarted, or went back in time).
    pub fn seq_went_backwards(&self) -> bool {
        self.heartbeats.windows(2).any(|w| w[1].seq <= w[0].seq)
    }

    /// Heartbeat numbers missing between the first and last heartbeat
    /// (lines lost or garbled on the console).
    pub fn missing_seqs(&self) -> u64 {
        self.heartbeats
            .windows(2)
            .map(|w| w[1].seq.saturating_sub(w[0].seq).saturating_sub(1))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0\r
TERN-START hb_ms=50 mem=64\r
TERN-HB seq=1 up_ms=1000 mem_passes=0 dirtied_mib=0\r
TERN-HB seq=2 up_ms=1050 mem_passes=0 dirtied_mib=1\r
[    2.1] random: crng init doneTERN-HB seq=3 up_ms=1400 mem_passes=1 dirtied_mib=7\r
TERN-MEM ok passes=1 pages=16384\r
TERN-FAIL disk block=3 expected_gen=4 found_gen=3 reason=stale\r
TERN-READY up_ms=1500\r
TERN-HB seq=5 up_ms=1450 mem_pa";

    #[test]
    fn parses_lines_heartbeats_and_failures() {
        let log = SerialLog::parse(CONSOLE);
        assert_eq!(log.lines.len(), 7);
        assert_eq!(
            log.heartbeats.len(),
            3,
            "the incomplete last line is ignored"
        );
        assert_eq!(
            log.heartbeats[2],
            Heartbeat {
                seq: 3,
                up_ms: 1400,
                mem_passes: 1,
                dirtied_mib: 7
            }
        );
        assert_eq!(
            log.failures,
            ["TERN-FAIL disk block=3 expected_gen=4 found_gen=3 reason=stale"]
        );
        assert!(log.ready());
        assert_eq!(
            log.find("TERN-MEM ok"),
            Some("TERN-MEM ok passes=1 pages=16384")
        );
        assert_eq!(log.count("TERN-HB"), 3);
        assert_eq!(log.last_seq(), Some(3));
    }

    #[test]
    fn gaps_and_order() {
        let log = SerialLog::parse(CONSOLE);
        assert_eq!(log.max_gap_ms(), Some(350));
        assert!(!log.seq_went_backwards());
        assert_eq!(log.missing_seqs(), 0);

        let rebooted = SerialLog::parse(
            "TERN-HB seq=7 up_ms=10 mem_passes=0 dirtied_mib=0\n\
             TERN-HB seq=9 up_ms=20 mem_passes=0 dirtied_mib=0\n\
             TERN-HB seq=1 up_ms=5 mem_passes=0 dirtied_mib=0\n",
        );
        assert!(rebooted.seq_went_backwards());
        assert_eq!(rebooted.missing_seqs(), 1);
        assert_eq!(SerialLog::parse("").max_gap_ms(), None);
    }

    #[test]
    fn fields() {
        assert_eq!(
            field("TERN-DISK ok writes=5 verified=77", "verified"),
            Some(77)
        );
        assert_eq!(field("TERN-DISK ok writes=5", "verified"), None);
        assert_eq!(field("a=x", "a"), None);
        assert_eq!(parse_heartbeat("TERN-HB seq=1"), None);
    }
}
