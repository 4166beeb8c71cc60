//! Host-down recovery that never runs a guest twice: real agents, real
//! guests (TCG), the fence process and its storage leases, and network
//! namespaces for partitions. Every test counts the guest's running QEMUs
//! on every host all along ([`CopyCounter`]) and believes the guest only
//! through its console. See `docs/FENCING.md`.

use std::time::Duration;
use tern_testkit::cluster::{
    boot_on_pool, define_on_pool, enable_host_down_policy, jobs, more_heartbeats,
    rescues_succeeded, shared_pool, wait_rescue_waiting, wait_server, LONG,
};
use tern_testkit::fencing::{
    armed_pair, birth, cut_lease, fenced_record, kill_host, mtime, pid_alive, wait_armed,
    wait_fence, wait_guest_gone, wait_pid_gone, wait_stop_point, ArmedPair, CopyCounter,
};
use tern_testkit::netns::{skip_unless_root, Lab, Side};
use tern_testkit::{SerialLog, TernHost, TestController};

fn log_tail(h: &TernHost) -> String {
    tern_testkit::tail(&std::fs::read_to_string(h.log()).unwrap_or_default(), 20)
}

#[test]
fn agent_killed_with_its_qemu_alive_never_gives_two_copies() {
    let c = TestController::file(&[]);
    let ArmedPair {
        mut a,
        b,
        pool: _pool,
    } = armed_pair(&c, &[], &[]);
    let copies = CopyCounter::start(&[&a, &b], "vm");

    // Only the agent dies: its fence process and QEMU live on.
    a.kill9();
    c.wait_json(&["host-show", "a"], LONG, "a down", |v| {
        v["status"]["down"].is_object()
    });
    // The controller queued the rescue but waits: the lease still renews.
    wait_rescue_waiting(&c, "vm");
    more_heartbeats(&a, "vm", 5);
    assert!(fenced_record(&a).is_none());
    assert!(!tern_testkit::fencing::runs_guest(&b.state_dir(), "vm"));

    // The agent comes back: the guest never left, the rescue is cancelled.
    a.restart();
    c.wait_json(&["job-list"], LONG, "rescue cancelled", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|j| j["kind"] == "rescue" && j["state"] == "cancelled")
        })
    });
    wait_server(&c, "vm", "a", "running");
    more_heartbeats(&a, "vm", 2);
    assert_eq!(copies.max(), 1, "two copies ran at once");
}

#[test]
fn a_host_that_loses_its_storage_is_fenced_before_the_rescue_starts() {
    let c = TestController::file(&[]);
    let ArmedPair { mut a, b, pool } = armed_pair(&c, &[], &[]);
    wait_fence(&a, LONG);
    let copies = CopyCounter::start(&[&a, &b], "vm");

    // The agent dies and the host's storage goes: the fence alone acts.
    a.kill9();
    let _cut = cut_lease(pool.path(), "a");
    wait_server(&c, "vm", "b", "running");
    let fenced = fenced_record(&a).expect("a's fence recorded the kill");
    assert!(fenced["killed"].to_string().contains("vm"), "{fenced}");
    // A's guest wrote its last console byte before B's QEMU was created.
    let a_last = mtime(&a.console_log("vm"));
    let b_first = birth(&b.console_log("vm"));
    assert!(
        a_last <= b_first,
        "a wrote at {a_last:?}, after b started at {b_first:?}"
    );
    let log = SerialLog::parse(&b.wait_console("vm", LONG, "heartbeats on b", |t| {
        SerialLog::parse(t).heartbeats.len() >= 3
    }));
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    assert_eq!(rescues_succeeded(&c), 1);
    assert_eq!(copies.max(), 1, "two copies ran at once");
}

#[test]
fn controller_killed_between_marking_the_host_down_and_the_rescue_rescues_once() {
    let mut c = TestController::file(&["--fault-exit-after-mark-down"]);
    let ArmedPair {
        mut a,
        b,
        pool: _pool,
    } = armed_pair(&c, &[], &[]);
    let copies = CopyCounter::start(&[&a, &b], "vm");

    kill_host(&mut a);
    // It marks a down, then dies before any rescue exists.
    let st = c.wait_exit(LONG);
    assert_eq!(st.code(), Some(3), "{st:?}");
    c.restart_with(&[]);
    assert!(c.json(&["host-show", "a"])["status"]["down"].is_object());
    wait_server(&c, "vm", "b", "running");
    more_heartbeats(&b, "vm", 3);
    assert_eq!(rescues_succeeded(&c), 1);
    assert_eq!(copies.max(), 1);
}

#[test]
fn a_rescue_refused_once_is_retried_and_succeeds() {
    let c = TestController::file(&[]);
    let ArmedPair {
        mut a,
        b,
        pool: _pool,
    } = armed_pair(&c, &[], &["--fault-refuse-start-once"]);

    kill_host(&mut a);
    wait_server(&c, "vm", "b", "running");
    more_heartbeats(&b, "vm", 3);
    let r: Vec<_> = jobs(&c)
        .into_iter()
        .filter(|j| j["kind"] == "rescue")
        .collect();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0]["state"], "succeeded");
    // The first attempt was refused (the fault), the second succeeded.
    assert_eq!(r[0]["attempts"], 1, "{r:#?}");
}

/// A lab with host a in namespace A, host b in B, and the controller in
/// `controller` (B: cutting the a–b link cuts a off from the controller
/// and from b; C: on a's bridge, so a pair of routes can cut a from the
/// controller alone). Storage is a directory both hosts see.
struct Partition {
    c: TestController,
    a: TernHost,
    b: TernHost,
    pool: tern_testkit::cluster::SharedDir,
    lab: Lab,
}

fn partition_lab(controller: Side) -> Partition {
    let lab = Lab::start();
    let c = TestController::file_in_netns(&lab.ns(controller), lab.host_addr(controller), &[]);
    let a = TestController::join_lab(&[&c], &lab, Side::A, "a", &[]);
    let b = TestController::join_lab(&[&c], &lab, Side::B, "b", &[]);
    let pool = shared_pool(&[&a, &b], "shared");
    boot_on_pool(&a, "vm", "shared");
    wait_server(&c, "vm", "a", "running");
    enable_host_down_policy(&c, "a");
    wait_armed(pool.path(), "a", LONG);
    Partition { c, a, b, pool, lab }
}

#[test]
fn a_host_cut_off_from_controller_and_peer_but_not_storage_keeps_its_guest() {
    if skip_unless_root("a_host_cut_off_from_controller_and_peer_but_not_storage_keeps_its_guest") {
        return;
    }
    let p = partition_lab(Side::B);
    let copies = CopyCounter::start(&[&p.a, &p.b], "vm");
    p.lab.cut_link();
    p.c.wait_json(&["host-show", "a"], LONG, "a down", |v| {
        v["status"]["down"].is_object()
    });
    wait_rescue_waiting(&p.c, "vm");
    more_heartbeats(&p.a, "vm", 5);
    assert!(fenced_record(&p.a).is_none(), "{}", log_tail(&p.a));
    p.lab.restore_link();
    wait_server(&p.c, "vm", "a", "running");
    assert_eq!(copies.max(), 1);
    drop(copies);
    drop(p.pool);
}

#[test]
fn a_fully_partitioned_host_stops_its_guest_before_it_starts_elsewhere() {
    if skip_unless_root("a_fully_partitioned_host_stops_its_guest_before_it_starts_elsewhere") {
        return;
    }
    let p = partition_lab(Side::B);
    let copies = CopyCounter::start(&[&p.a, &p.b], "vm");
    // Network and storage gone at once.
    p.lab.cut_link();
    let _cut = cut_lease(p.pool.path(), "a");
    wait_server(&p.c, "vm", "b", "running");
    let fenced = fenced_record(&p.a).expect("a's fence recorded the kill");
    let a_last = mtime(&p.a.console_log("vm"));
    let b_first = birth(&p.b.console_log("vm"));
    assert!(
        a_last <= b_first,
        "a wrote at {a_last:?}, after b started at {b_first:?}"
    );
    let fenced_at =
        std::time::UNIX_EPOCH + Duration::from_millis(fenced["at_ms"].as_u64().unwrap());
    assert!(
        fenced_at <= b_first,
        "fenced at {fenced_at:?}, b started at {b_first:?}"
    );
    more_heartbeats(&p.b, "vm", 3);
    assert_eq!(rescues_succeeded(&p.c), 1);
    assert_eq!(copies.max(), 1);
}

#[test]
fn asymmetric_partition_controller_loses_a_but_a_reaches_its_peer_and_storage() {
    if skip_unless_root(
        "asymmetric_partition_controller_loses_a_but_a_reaches_its_peer_and_storage",
    ) {
        return;
    }
    let p = partition_lab(Side::C);
    let copies = CopyCounter::start(&[&p.a, &p.b], "vm");
    // The controller and a no longer reach each other; a still reaches b
    // (and b the controller), and its storage.
    p.lab.cut_between(Side::A, Side::C);
    assert!(p.lab.ping_once(Side::A, p.lab.host_addr(Side::B)));
    p.c.wait_json(&["host-show", "a"], LONG, "a down", |v| {
        v["status"]["down"].is_object()
    });
    wait_rescue_waiting(&p.c, "vm");
    more_heartbeats(&p.a, "vm", 5);
    assert!(fenced_record(&p.a).is_none(), "{}", log_tail(&p.a));
    assert!(!tern_testkit::fencing::runs_guest(&p.b.state_dir(), "vm"));
    p.lab.restore_between(Side::A, Side::C);
    p.c.wait_json(&["job-list"], LONG, "rescue cancelled", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|j| j["kind"] == "rescue" && j["state"] == "cancelled")
        })
    });
    wait_server(&p.c, "vm", "a", "running");
    assert_eq!(copies.max(), 1);
}

#[test]
fn a_host_dying_mid_migration_leaves_its_server_on_exactly_one_host() {
    let c = TestController::file(&[]);
    // The destination's own orphan timer is kept out of the way: the
    // partial copy must be settled without it.
    let ArmedPair {
        mut a,
        b,
        pool: _pool,
    } = armed_pair(&c, &[], &["--orphan-timeout", "600"]);
    c.ok(&["server-live-migrate", "vm", "--max-bandwidth-mb", "1"]);
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let j: serde_json::Value =
            serde_json::from_str(&a.ok(&["domjobinfo", "vm", "--json"])).unwrap();
        if j["memory_processed"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never migrating: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_host(&mut a);
    // b's incoming copy (paused, not running the guest) lives on; once a's
    // SIGKILLed QEMU has ended, at most one QEMU of the guest (that copy,
    // or the rescued guest) may live from here on.
    wait_guest_gone(&a, "vm", LONG);
    let copies = CopyCounter::start(&[&a, &b], "vm");
    wait_server(&c, "vm", "b", "running");
    more_heartbeats(&b, "vm", 3);
    let all = jobs(&c);
    let migration = all.iter().find(|j| j["kind"] == "live-migrate").unwrap();
    assert_eq!(migration["state"], "failed", "{all:#?}");
    assert_eq!(rescues_succeeded(&c), 1);
    assert_eq!(copies.max(), 1);
}

/// The heartbeats guest `name` printed on `h`'s console so far.
fn console(h: &TernHost, name: &str) -> SerialLog {
    SerialLog::read(&h.console_log(name)).unwrap_or_default()
}

#[test]
fn a_source_dying_after_sending_everything_resumes_the_guest_on_the_destination() {
    let c = TestController::file(&[]);
    // a holds once QEMU sent the whole guest, before it says so; b keeps
    // its orphan timer out of the way.
    let ArmedPair {
        mut a,
        b,
        pool: _pool,
    } = armed_pair(
        &c,
        &["--fault-stop-at", "source-completed"],
        &["--orphan-timeout", "600"],
    );
    c.ok(&["server-live-migrate", "vm"]);
    wait_stop_point(&a, "source-completed", LONG);
    let last_on_a = console(&a, "vm").last_seq().expect("heartbeats on a");
    kill_host(&mut a);
    wait_guest_gone(&a, "vm", LONG);
    let copies = CopyCounter::start(&[&a, &b], "vm");
    // Once a is proven fenced, b's complete copy resumes: the guest goes
    // on where it was (its heartbeat counter continues), never rebooted.
    wait_server(&c, "vm", "b", "running");
    more_heartbeats(&b, "vm", 3);
    let on_b = console(&b, "vm");
    assert!(
        !on_b.ready(),
        "the guest booted again on b: {:?}",
        on_b.lines
    );
    let first_on_b = on_b.heartbeats.first().expect("heartbeats on b").seq;
    assert!(
        first_on_b > last_on_a,
        "b's first heartbeat {first_on_b} does not follow a's last {last_on_a}"
    );
    assert!(on_b.failures.is_empty(), "{:?}", on_b.failures);
    let all = jobs(&c);
    assert!(all.iter().all(|j| j["kind"] != "rescue"), "{all:#?}");
    let migration = all.iter().find(|j| j["kind"] == "live-migrate").unwrap();
    assert_eq!(migration["state"], "failed", "{all:#?}");
    assert!(
        migration["note"]
            .as_str()
            .is_some_and(|n| n.contains("complete copy resumes")),
        "{migration:#}"
    );
    assert_eq!(copies.max(), 1);
}

#[test]
fn a_source_dying_before_sending_everything_is_rescued_from_its_disk() {
    let c = TestController::file(&[]);
    // a holds with the disks in sync and QEMU not yet told to migrate:
    // b holds an incoming copy with nothing in it.
    let ArmedPair {
        mut a,
        b,
        pool: _pool,
    } = armed_pair(
        &c,
        &["--fault-stop-at", "source-before-migrate"],
        &["--orphan-timeout", "600"],
    );
    c.ok(&["server-live-migrate", "vm"]);
    wait_stop_point(&a, "source-before-migrate", LONG);
    kill_host(&mut a);
    wait_guest_gone(&a, "vm", LONG);
    let copies = CopyCounter::start(&[&a, &b], "vm");
    wait_server(&c, "vm", "b", "running");
    more_heartbeats(&b, "vm", 3);
    // Rescued: booted afresh (its heartbeat counter starts again) from
    // the shared disk, whose data the guest verified before READY.
    let log = SerialLog::parse(
        &b.wait_console("vm", LONG, "TERN-READY", |t| SerialLog::parse(t).ready()),
    );
    assert_eq!(
        log.heartbeats.first().map(|h| h.seq),
        Some(1),
        "{:?}",
        log.lines
    );
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    assert_eq!(rescues_succeeded(&c), 1);
    assert_eq!(copies.max(), 1);
}

#[test]
fn a_guest_launched_but_not_yet_recorded_is_killed_by_the_fence_too() {
    let c = TestController::file(&[]);
    let ArmedPair { mut a, b: _b, pool } = armed_pair(&c, &[], &[]);
    define_on_pool(&a, "vm2", "shared");
    // From now on a's agent holds a boot once QEMU started, before it
    // records that QEMU in runtime.json.
    a.opts.extra_args.extend([
        "--fault-stop-at".to_string(),
        "boot-before-record".to_string(),
    ]);
    a.restart();
    let uri = a.uri();
    let start = std::thread::spawn(move || tern_testkit::host::tern_at(&uri, &["start", "vm2"]));
    wait_stop_point(&a, "boot-before-record", LONG);
    let run = a.state_dir().join("run").join("vm2");
    assert!(!run.join("runtime.json").exists(), "vm2 was recorded");
    let pid: u32 = std::fs::read_to_string(run.join("qemu.pid"))
        .expect("QEMU wrote its pid file")
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));

    // The agent dies there, and the host loses its storage: the fence
    // alone acts, and kills the unrecorded QEMU with the recorded one.
    a.kill9();
    let _cut = cut_lease(pool.path(), "a");
    wait_pid_gone(pid, LONG);
    let deadline = std::time::Instant::now() + LONG;
    let fenced = loop {
        if let Some(f) = fenced_record(&a) {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "{}", log_tail(&a));
        std::thread::sleep(Duration::from_millis(50));
    };
    let killed = fenced["killed"].to_string();
    assert!(
        killed.contains("vm2") && killed.contains("\"vm\""),
        "{fenced}"
    );
    let _ = start.join();
}
