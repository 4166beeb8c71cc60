//! A real etcd for tests: one member on free loopback ports, its data in a
//! temporary directory; dropping it kills the process and removes the data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running single-member etcd.
#[derive(Debug)]
pub struct Etcd {
    /// Client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd (Debian's `etcd-server`) and waits until it answers.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("tern-etcd-")
            .tempdir()
            .expect("temp dir");
        let (cp, pp) = (crate::free_port(), crate::free_port());
        let url = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let log = dir.path().join("etcd.log");
        let out = std::fs::File::create(&log).expect("etcd log");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&url)
            .arg("--advertise-client-urls")
            .arg(&url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("t={peer}"))
            // Short elections so a test's etcd is ready in a blink.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn etcd (apt-get install etcd-server)");
        let mut e = Etcd {
            url,
            log,
            child,
            _dir: dir,
        };
        e.wait_ready();
        e
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.url.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "etcd exited ({st}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if std::net::TcpStream::connect(&addr).is_ok()
                && log.contains("ready to serve client requests")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not become ready within 30 s");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
