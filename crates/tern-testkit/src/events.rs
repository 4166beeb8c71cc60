//! `tern event --loop` run in the background: its lines as they come, for
//! tests that check what an operator sees while something happens.

use crate::bin;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A running `tern -c URI event --loop ARGS`, killed on drop.
pub struct EventStream {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl EventStream {
    /// Starts `tern -c uri event --loop` with `args` (e.g. `--domain X`)
    /// and returns once it is connected (the agent counts one more client),
    /// so every event from then on is printed.
    pub fn start(uri: &str, args: &[&str]) -> EventStream {
        let clients = || -> u64 {
            let out = crate::tern_at(uri, &["srv-info", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["clients"].as_u64().unwrap_or(0)
        };
        let before = clients();
        let mut child = Command::new(bin("tern"))
            .args(["-c", uri, "event", "--loop"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tern event");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while clients() <= before {
            assert!(
                Instant::now() < deadline,
                "tern event never connected to {uri}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        EventStream {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits until a line containing `text` was printed; returns every line
    /// so far. Panics with them after `timeout`.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.seen.iter().any(|l| l.contains(text)) {
                return self.seen.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "tern event never printed '{text}'; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
