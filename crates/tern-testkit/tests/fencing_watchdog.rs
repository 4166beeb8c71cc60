//! The double fault of issue 14: the agent (`ternd`) and its fence process
//! (`tern-fence`) fail at the same moment, the fence killed (`SIGKILL`) or
//! frozen (`SIGSTOP`), while the host's QEMU runs on and the host-down
//! policy is on. The fence feeds a watchdog (`ternd --fence-watchdog
//! guests`: the `tern-watchdog` stand-in for `/dev/watchdog`, whose action
//! is to kill the host's guests instead of resetting it). Real controller,
//! real agents, real guests on a shared pool. The test believes the guest
//! only through its console (heartbeats, disk checks) and learns of the
//! old QEMU's end through a pidfd. See `docs/FENCING.md`, "The watchdog".

use std::time::{Duration, Instant, SystemTime};
use tern_testkit::checks::wait_disk_ok;
use tern_testkit::cluster::{more_heartbeats, rescues_succeeded, wait_server, LONG};
use tern_testkit::fencing::{
    armed_pair, birth, fail_agent_and_fence, fenced_record, kill_host, mtime, pid_alive,
    pid_stopped, runs_guest, wait_lease_file, wait_watchdog_armed, wait_watchdog_fed, watchdog_ms,
    watchdog_pid, ArmedPair, CopyCounter, ExitWatch,
};
use tern_testkit::fencing_nfs::NfsArmedPair;
use tern_testkit::netns::skip_unless_root;
use tern_testkit::nfs::skip_without_nfs_server;
use tern_testkit::{SerialLog, TernHost, TestController};

/// The agent is killed and its fence gets `sig` at once; the watchdog
/// alone stops the guest before the rescue starts it on `b`.
fn agent_and_fence_fail_together(sig: i32) {
    // The controller insists on the watchdog that a's lease names.
    let c = TestController::file(&["--fence-require-watchdog"]);
    let ArmedPair { mut a, b, pool } = armed_pair(&c, &["--fence-watchdog", "guests"], &[]);
    let timeout_ms = wait_watchdog_fed(pool.path(), "a", LONG);
    double_fault(&c, &mut a, &b, sig, timeout_ms);
    drop(pool);
}

/// The double fault on `a` (`vm` running there, armed, its watchdog fed
/// with `timeout_ms`), and everything the test believes afterwards.
fn double_fault(c: &TestController, a: &mut TernHost, b: &TernHost, sig: i32, timeout_ms: u64) {
    let dog = watchdog_pid(a).expect("a's fence started tern-watchdog");
    let qemu = *a.qemu_pids().first().expect("vm's QEMU runs on a");
    let qemu_end = ExitWatch::start(qemu);
    let copies = CopyCounter::start(&[a, b], "vm");
    more_heartbeats(a, "vm", 2);

    let at = (Instant::now(), SystemTime::now());
    let fence = fail_agent_and_fence(a, sig);
    wait_server(c, "vm", "b", "running");

    // The old copy ended (seen through its pidfd) and wrote its last
    // console byte before the rescued copy's QEMU was created.
    let a_end = qemu_end.wait(LONG);
    let a_last = mtime(&a.console_log("vm"));
    let b_first = birth(&b.console_log("vm"));
    assert!(
        a_end <= b_first,
        "a's QEMU ended at {a_end:?}, after b's started at {b_first:?}"
    );
    assert!(
        a_last <= b_first,
        "a's guest wrote at {a_last:?}, after b's started at {b_first:?}"
    );
    // The watchdog did it: the fence is still frozen, or dead.
    let fenced = fenced_record(a).expect("a's watchdog recorded the kill");
    assert!(
        fenced["reason"].as_str().unwrap_or("").contains("watchdog"),
        "{fenced}"
    );
    assert!(fenced["killed"].to_string().contains("vm"), "{fenced}");
    if sig == libc::SIGSTOP {
        assert!(pid_stopped(fence), "a's fence was thawed");
    } else {
        assert!(!pid_alive(fence), "a's fence lives");
    }
    assert!(pid_alive(dog), "a's tern-watchdog ended");
    eprintln!(
        "watchdog {timeout_ms} ms: the fault at {:?}; a's QEMU ended {:?} later, b's QEMU was created {:?} later, b running {:?} after the fault",
        at.1,
        a_end.duration_since(at.1).unwrap_or_default(),
        b_first.duration_since(at.1).unwrap_or_default(),
        at.0.elapsed()
    );

    // Exactly one copy, on b, and its disk reads back what it wrote.
    let log = SerialLog::parse(&b.wait_console("vm", LONG, "heartbeats on b", |t| {
        SerialLog::parse(t).heartbeats.len() >= 3
    }));
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    wait_disk_ok(b, "vm", 2);
    more_heartbeats(b, "vm", 2);
    assert!(!runs_guest(&a.state_dir(), "vm"));
    assert!(runs_guest(&b.state_dir(), "vm"));
    assert_eq!(rescues_succeeded(c), 1);
    assert_eq!(copies.max(), 1, "two copies ran at once");
    // Still one: a's watchdog stays fired and a's agent is gone.
    assert!(!runs_guest(&a.state_dir(), "vm"));
}

#[test]
fn agent_and_fence_killed_together_the_watchdog_stops_the_guest_before_the_rescue() {
    agent_and_fence_fail_together(libc::SIGKILL);
}

#[test]
fn agent_killed_and_fence_frozen_together_the_watchdog_stops_the_guest_before_the_rescue() {
    agent_and_fence_fail_together(libc::SIGSTOP);
}

/// The same on NFS, where QEMU opens the disk over `nfs://` and no image
/// lock reaches across hosts: nothing but the watchdog keeps B's copy from
/// running next to A's. Frozen fence, the harder case.
#[test]
fn on_nfs_agent_killed_and_fence_frozen_the_watchdog_stops_the_guest_before_the_rescue() {
    let test =
        "on_nfs_agent_killed_and_fence_frozen_the_watchdog_stops_the_guest_before_the_rescue";
    if skip_unless_root(test) || skip_without_nfs_server(test) {
        return;
    }
    let mut p = NfsArmedPair::start(&["--fence-watchdog", "guests"]);
    let fed = wait_lease_file(&p.lease_path("a"), "a's watchdog fed", LONG, |l| {
        watchdog_ms(l) > 0
    });
    double_fault(&p.c, &mut p.a, &p.b, libc::SIGSTOP, watchdog_ms(&fed));
}

/// A controller that requires a watchdog proves nothing of a host whose
/// fence feeds none: the whole host dies, and its rescue waits, saying why.
#[test]
fn a_controller_requiring_a_watchdog_rescues_no_host_without_one() {
    let c = TestController::file(&["--fence-require-watchdog"]);
    let ArmedPair {
        mut a,
        b,
        pool: _pool,
    } = armed_pair(&c, &[], &[]);
    kill_host(&mut a);
    c.wait_json(
        &["job-list"],
        LONG,
        "the rescue waiting for a watchdog",
        |v| {
            v.as_array().is_some_and(|a| {
                a.iter().any(|j| {
                    j["kind"] == "rescue"
                        && j["state"] == "queued"
                        && j["note"]
                            .as_str()
                            .is_some_and(|n| n.contains("--fence-require-watchdog"))
                })
            })
        },
    );
    assert!(!runs_guest(&b.state_dir(), "vm"));
    let proofs = c.json(&["host-show", "a"]);
    assert!(proofs["status"]["down"].is_object(), "{proofs}");
}

/// The stand-in itself killed while the fence lives: the fence's next
/// feed fails, it starts a new one and feeds that; the guest runs on.
#[test]
fn a_killed_watchdog_is_started_again_by_the_fence_and_the_guest_runs_on() {
    let c = TestController::file(&[]);
    let ArmedPair { a, b: _b, pool } = armed_pair(&c, &["--fence-watchdog", "guests"], &[]);
    assert_eq!(wait_watchdog_fed(pool.path(), "a", LONG), 3000);
    let old = watchdog_pid(&a).expect("a's fence started tern-watchdog");
    tern_testkit::fencing::signal_watchdog(&a, libc::SIGKILL);
    let deadline = Instant::now() + LONG;
    let new = loop {
        match watchdog_pid(&a) {
            Some(p) if p != old => break p,
            _ => assert!(Instant::now() < deadline, "no new tern-watchdog on a"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The old one was armed once; the new one is armed by the next feed.
    wait_watchdog_armed(&a, 2, LONG);
    more_heartbeats(&a, "vm", 3);
    assert!(pid_alive(new));
    assert!(fenced_record(&a).is_none());
    wait_server(&c, "vm", "a", "running");
}

/// A watchdog `ternd` cannot use is refused at start, in one line naming
/// the fix, before anything is created.
#[test]
fn ternd_refuses_a_watchdog_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (args, says) in [
        (
            &["--fence-watchdog", "/nonexistent/watchdog"][..],
            "modprobe softdog",
        ),
        (
            &["--fence-watchdog", "/etc/hostname"][..],
            "not a character device",
        ),
        (&["--fence-watchdog", "softdog"][..], "/dev/watchdog"),
        (
            &["--fence-watchdog", "guests", "--fence-after-ms", "3500"][..],
            "raise --fence-after-ms",
        ),
    ] {
        let out = std::process::Command::new(tern_testkit::bin("ternd"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(dir.path().join("ternd.sock"))
            .args(args)
            .output()
            .expect("run ternd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        assert!(!state.exists(), "{args:?} created {}", state.display());
    }
}
