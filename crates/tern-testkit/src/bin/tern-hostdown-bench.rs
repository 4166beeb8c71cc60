//! `tern-hostdown-bench`: how long from a host's death to its
//! shared-storage server running elsewhere, with the controller's default
//! timings. Each round starts a controller (embedded store), two agents and
//! one small guest, enables auto-migrate-on-host-down, kills the agent and
//! its QEMU, and times three moments: the controller declares the host
//! down, the server runs on the other host (QEMU started by the rescue),
//! and the guest there prints TERN-READY. Prints a table.
//!
//! Build first: `cargo build -p tern-agent -p tern-cli -p tern-controller -p tern-testkit`.
//! With fencing (issue 14), `tern-bench hostdown` is the measurement of
//! record; this one stays for comparison with the older figures.

use std::time::{Duration, Instant};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TestController, TestDisk};

fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server(c: &TestController, name: &str) -> serde_json::Value {
    let o = c.tern(&["server-show", name, "--json"]);
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn round(i: usize) -> (Duration, Duration, Duration) {
    let c = TestController::file(&[]);
    let mut a = TestController::host(&[&c], &format!("a{i}"), &[]);
    let b = TestController::host(&[&c], &format!("b{i}"), &[]);
    let pool = tempfile::tempdir().expect("temp dir");
    for h in [&a, &b] {
        h.add_pool("shared", pool.path(), true);
    }
    let img = build_or_reuse(&BuildOptions::default()).expect("test guest");
    let mut spec = GuestSpec::new("vm", &img);
    spec.memory_mib = 128;
    a.ok(&["vol-create-as", "shared", "vm.raw", "8M"]);
    let path = a.ok(&["vol-path", "vm.raw", "--pool", "shared"]);
    spec.disks.push(TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    spec.workload = "tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=2".into();
    a.define_guest(&spec);
    a.ok(&["start", "vm"]);
    a.wait_console("vm", Duration::from_secs(120), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    let host_a = format!("a{i}");
    let host_b = format!("b{i}");
    wait("the server on a", Duration::from_secs(60), || {
        (server(&c, "vm")["state"] == "running").then_some(())
    });
    c.ok(&[
        "host-auto-migrate-on-host-down",
        &host_a,
        "--auto-migrate-on-host-down",
        "enable",
    ]);
    // Let a heartbeat carry the policy to the agent (it arms fencing).
    std::thread::sleep(Duration::from_secs(2));

    let t0 = Instant::now();
    // The whole host dies, its fence process too.
    tern_testkit::fencing::kill_host(&mut a);
    let down = wait("host down", Duration::from_secs(60), || {
        let o = c.tern(&["host-show", &host_a, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["status"]["down"].is_object().then(|| t0.elapsed())
    });
    let running = wait("server running elsewhere", Duration::from_secs(60), || {
        let v = server(&c, "vm");
        (v["host"] == host_b.as_str() && v["state"] == "running").then(|| t0.elapsed())
    });
    let ready = wait("guest ready elsewhere", Duration::from_secs(120), || {
        let t = b.ok(&["console", "vm"]);
        SerialLog::parse(&t).ready().then(|| t0.elapsed())
    });
    drop(b);
    drop(a);
    (down, running, ready)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("| round | host declared down | server running elsewhere | guest ready elsewhere |");
    println!("|------:|-------------------:|------------------------:|----------------------:|");
    for i in 0..rounds {
        let (d, r, g) = round(i);
        println!(
            "| {i:>5} | {:>16.1} s | {:>21.1} s | {:>19.1} s |",
            d.as_secs_f64(),
            r.as_secs_f64(),
            g.as_secs_f64()
        );
    }
}
