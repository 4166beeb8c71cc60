//! A pinger in a lab namespace: `busybox ping -i 0.05` to a guest, its
//! replies stamped as they arrive, stopped with SIGINT for busybox's own
//! statistics. Killed on drop.

use crate::netns::{Lab, Side};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds between echo requests.
pub const INTERVAL: &str = "0.05";

/// A running `busybox ping`.
#[derive(Debug)]
pub struct Pinger {
    child: Option<Child>,
    replies: Arc<Mutex<Vec<(u64, Instant)>>>,
    output: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What a pinger saw.
#[derive(Debug, Clone)]
pub struct PingReport {
    /// Requests sent.
    pub transmitted: u64,
    /// Replies received.
    pub received: u64,
    /// Sequence numbers never answered (the last one excepted: it may have
    /// been in flight at the stop).
    pub lost: Vec<u64>,
    /// Longest wait between two consecutive replies.
    pub longest_silence: Duration,
}

impl Pinger {
    /// Starts pinging `to` from namespace `from`.
    pub fn start(lab: &Lab, from: Side, to: Ipv4Addr) -> Pinger {
        let mut child = lab
            .cmd(from, "busybox")
            .args(["ping", "-i", INTERVAL, &to.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start busybox ping: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let replies: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let output: Arc<Mutex<String>> = Arc::default();
        let (r, o) = (replies.clone(), output.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                if line.contains("bytes from") {
                    if let Some(s) = crate::field(&line, "seq") {
                        r.lock().unwrap().push((s, now));
                    }
                }
                let mut o = o.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        Pinger {
            child: Some(child),
            replies,
            output,
            reader: Some(reader),
        }
    }

    /// Replies so far.
    pub fn received(&self) -> usize {
        self.replies.lock().unwrap().len()
    }

    /// Waits until `n` replies arrived in all, or panics after `timeout`.
    pub fn wait_received(&self, n: usize, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.received() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: {} ping replies of {n} after {timeout:?}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops with SIGINT and reads busybox's statistics.
    pub fn stop(mut self) -> PingReport {
        if let Some(mut c) = self.child.take() {
            // SAFETY: our own child (ip netns exec replaced itself with busybox).
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            let _ = c.wait();
        }
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        let text = self.output.lock().unwrap().clone();
        let stat = |key: &str| -> Option<u64> {
            let l = text.lines().find(|l| l.contains(key))?;
            let at = l.find(key)?;
            l[..at].split_whitespace().last()?.parse().ok()
        };
        let replies = self.replies.lock().unwrap().clone();
        let got: std::collections::BTreeSet<u64> = replies.iter().map(|r| r.0).collect();
        let transmitted = stat("packets transmitted").unwrap_or(0);
        let lost = (0..transmitted.saturating_sub(1))
            .filter(|s| !got.contains(s))
            .collect();
        let longest_silence = replies
            .windows(2)
            .map(|w| w[1].1.saturating_duration_since(w[0].1))
            .max()
            .unwrap_or_default();
        PingReport {
            transmitted,
            received: stat("packets received").unwrap_or(got.len() as u64),
            lost,
            longest_silence,
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
