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

/// A running etcd cluster of several members on loopback ports; dropping
/// it kills every member and removes their data.
#[derive(Debug)]
pub struct EtcdCluster {
    /// Client URLs, one per member.
    pub urls: Vec<String>,
    logs: Vec<PathBuf>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until each serves clients.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("tern-etcdc-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (crate::free_port(), crate::free_port()))
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut c = EtcdCluster {
            urls: Vec::new(),
            logs: Vec::new(),
            children: Vec::new(),
            _dir: dir,
        };
        for (i, (cp, pp)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{cp}");
            let peer = format!("http://127.0.0.1:{pp}");
            let log = c._dir.path().join(format!("m{i}.log"));
            let out = std::fs::File::create(&log).expect("etcd log");
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(c._dir.path().join(format!("m{i}")))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup"))
                .stderr(out)
                .spawn()
                .expect("spawn etcd (apt-get install etcd-server)");
            c.urls.push(url);
            c.logs.push(log);
            c.children.push(Some(child));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.leader().is_none() {
            assert!(Instant::now() < deadline, "etcd cluster elected no leader");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// The client URLs as `etcd:` store endpoints (`URL,URL,...`).
    pub fn endpoints(&self) -> String {
        self.urls.join(",")
    }

    /// The index of the member that leads now, if a live member says so.
    pub fn leader(&self) -> Option<usize> {
        for (i, url) in self.urls.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            let Some(st) = status(url) else { continue };
            let me = st["header"]["member_id"].as_str().map(str::to_string);
            let leader = st["leader"].as_str().map(str::to_string);
            if me.is_some() && me == leader {
                return Some(i);
            }
        }
        None
    }

    /// The process ids of the members still running (a benchmark reads
    /// their CPU from `/proc`).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Sends `sig` to member `i` if it runs: SIGSTOP freezes it with its
    /// connections open (a member that answers nothing, and whose watches
    /// go silent rather than break), SIGCONT thaws it.
    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(c) = &self.children[i] {
            // SAFETY: kill with the pid of a child this cluster spawned and
            // has not reaped.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of one Prometheus counter or gauge on an etcd's `/metrics`
/// (`name` with its labels exactly as etcd prints them), if listed.
pub fn metric(url: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `POST /v3/maintenance/status` through etcd's JSON gateway.
fn status(url: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!(
        "POST /v3/maintenance/status HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let body = buf.split_once("\r\n\r\n")?.1;
    // A chunked body carries its JSON between size lines.
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    serde_json::from_str(&body[start..=end]).ok()
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
