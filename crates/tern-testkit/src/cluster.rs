//! Cluster test helpers: a shared pool on several hosts, a small guest
//! with its disk there, and waits on what the controller reports.

use crate::controller::TestController;
use crate::host::TernHost;
use crate::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TestDisk};
use std::time::Duration;

/// Patience for cluster waits (TCG guests on a shared two-core machine).
pub const LONG: Duration = Duration::from_secs(120);

/// A shared pool's directory, removed when dropped even while a host's
/// fence process still renews its lease there. Tests declare the pool
/// after their hosts, so it is dropped first: a lease written during the
/// removal made `remove_dir_all` fail on a directory no longer empty, and
/// the pool stayed behind in /tmp. The fence never recreates a pool's
/// own directory, so a removal retried a moment later holds.
#[derive(Debug)]
pub struct SharedDir(std::path::PathBuf);

impl SharedDir {
    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("could not remove the shared pool {}", self.0.display());
    }
}

/// A directory every host sees as the shared pool `name`.
pub fn shared_pool(hosts: &[&TernHost], name: &str) -> SharedDir {
    let d = tempfile::Builder::new()
        .prefix("tern-fshared-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let d = SharedDir(d);
    for h in hosts {
        h.add_pool(name, d.path(), true);
    }
    d
}

/// Defines and starts a small idle guest on `h` with its disk in `pool`,
/// and waits until it is ready.
pub fn boot_on_pool(h: &TernHost, name: &str, pool: &str) {
    define_on_pool(h, name, pool);
    h.ok(&["start", name]);
    h.wait_console(name, LONG, "TERN-READY", |t| SerialLog::parse(t).ready());
}

/// Defines (does not start) a small idle guest on `h` with its disk in
/// `pool`.
pub fn define_on_pool(h: &TernHost, name: &str, pool: &str) {
    let img = build_or_reuse(&BuildOptions::default()).expect("test guest");
    let mut spec = GuestSpec::new(name, &img);
    spec.memory_mib = 128;
    let vol = format!("{name}.raw");
    h.ok(&["vol-create-as", pool, &vol, "8M"]);
    let path = h.ok(&["vol-path", &vol, "--pool", pool]);
    spec.workload =
        "tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=2 tern.verify_rate=8".into();
    spec.disks.push(TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    h.define_guest(&spec);
}

/// Waits until the controller lists server `name` on `host` in `state`.
pub fn wait_server(c: &TestController, name: &str, host: &str, state: &str) -> serde_json::Value {
    c.wait_json(
        &["server-show", name],
        LONG,
        &format!("{name} {state} on {host}"),
        |v| v["host"] == host && v["state"] == state,
    )
}

/// The controller's jobs.
pub fn jobs(c: &TestController) -> Vec<serde_json::Value> {
    c.json(&["job-list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Enables auto-migrate-on-host-down for `host`.
pub fn enable_host_down_policy(c: &TestController, host: &str) {
    c.ok(&[
        "host-auto-migrate-on-host-down",
        host,
        "--auto-migrate-on-host-down",
        "enable",
    ]);
}

/// Waits for `n` more heartbeats of guest `name` on `h` than it has now:
/// proof that it still runs there. Reads the console log QEMU writes
/// directly, so it works while the host's agent is dead.
pub fn more_heartbeats(h: &TernHost, name: &str, n: usize) {
    let path = h.console_log(name);
    let count = || {
        SerialLog::read(&path)
            .map(|l| l.heartbeats.len())
            .unwrap_or(0)
    };
    let have = count();
    let deadline = std::time::Instant::now() + LONG;
    while count() < have + n {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} on {} printed no {n} new heartbeats in {LONG:?}",
            h.opts.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the server's rescue job exists and waits for the host's
/// fencing (its note says why).
pub fn wait_rescue_waiting(c: &TestController, server: &str) -> serde_json::Value {
    c.wait_json(&["job-list"], LONG, "a rescue waiting for fencing", |v| {
        v.as_array().is_some_and(|a| {
            a.iter().any(|j| {
                j["kind"] == "rescue"
                    && j["server"] == server
                    && j["state"] == "queued"
                    && j["note"]
                        .as_str()
                        .is_some_and(|n| n.contains("storage lease"))
            })
        })
    })
}

/// Waits until every rescue job has ended, checks each succeeded; how many.
pub fn rescues_succeeded(c: &TestController) -> usize {
    let all = c.wait_json(&["job-list"], LONG, "rescues to end", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .filter(|j| j["kind"] == "rescue")
                .all(|j| j["state"] != "queued" && j["state"] != "running")
        })
    });
    let r: Vec<_> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["kind"] == "rescue")
        .collect();
    assert!(r.iter().all(|j| j["state"] == "succeeded"), "{r:#?}");
    r.len()
}

/// Waits until `path` (a log) contains `needle`, from byte `from` on.
pub fn wait_log(path: &std::path::Path, from: usize, needle: &str) -> String {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.get(from..).is_some_and(|t| t.contains(needle)) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never said {needle:?}; its end:\n{}",
            path.display(),
            crate::tail(&text, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
