//! Domain life cycle through the real `tern` and `ternd`, with real QEMU
//! guests under TCG. The guest is believed only through its console.

use std::time::Duration;
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost};

fn image() -> tern_testkit::GuestImage {
    build_or_reuse(&BuildOptions::default()).expect("build the test guest")
}

fn define(host: &TernHost, spec: &GuestSpec) {
    let path = host.root.join(format!("{}.xml", spec.name));
    std::fs::write(&path, spec.to_xml()).unwrap();
    let out = host.ok(&["define", path.to_str().unwrap()]);
    assert!(
        out.contains(&format!("Domain '{}' defined", spec.name)),
        "{out}"
    );
}

fn last_seq(host: &TernHost, name: &str) -> u64 {
    let text = host.ok(&["console", name]);
    SerialLog::parse(&text).last_seq().unwrap_or(0)
}

fn wait_seq_above(host: &TernHost, name: &str, above: u64) -> String {
    host.wait_console(
        name,
        Duration::from_secs(60),
        "TERN-READY and heartbeats",
        |t| {
            let log = SerialLog::parse(t);
            log.ready() && log.last_seq().is_some_and(|s| s > above)
        },
    )
}

#[test]
fn define_start_heartbeat_suspend_resume_shutdown_undefine() {
    let host = TernHost::start("life");
    let spec = GuestSpec::new("life1", &image());
    define(&host, &spec);
    assert!(host.ok(&["list", "--all"]).contains("shut off"));
    assert_eq!(host.ok(&["domstate", "life1"]).trim(), "shut off");

    host.ok(&["start", "life1"]);
    let text = wait_seq_above(&host, "life1", 5);
    let log = SerialLog::parse(&text);
    assert!(log.ready(), "guest never printed TERN-READY");
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    assert!(host.ok(&["list"]).contains("running"));
    assert_eq!(
        host.ok(&["domstate", "life1", "--reason"]).trim(),
        "running (booted)"
    );

    host.ok(&["suspend", "life1"]);
    assert_eq!(host.ok(&["domstate", "life1"]).trim(), "paused");
    let paused_at = last_seq(&host, "life1");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        last_seq(&host, "life1"),
        paused_at,
        "heartbeat went on while paused"
    );

    host.ok(&["resume", "life1"]);
    assert_eq!(host.ok(&["domstate", "life1"]).trim(), "running");
    let text = wait_seq_above(&host, "life1", paused_at + 5);
    assert!(!SerialLog::parse(&text).seq_went_backwards());

    let out = host.ok(&["shutdown", "life1", "--timeout", "60"]);
    assert!(out.contains("shut down"), "{out}");
    assert_eq!(
        host.ok(&["domstate", "life1", "--reason"]).trim(),
        "shut off (shutdown)"
    );
    assert!(host.ok(&["console", "life1"]).contains("TERN-POWEROFF"));
    assert!(host.qemu_pids().is_empty(), "pid file left behind");

    host.ok(&["undefine", "life1"]);
    assert!(!host.ok(&["list", "--all"]).contains("life1"));
}

#[test]
fn reboot_console_follow_and_remove_all_storage() {
    let host = TernHost::start("reboot");
    let pool = host.root.join("pool");
    host.add_pool("p", &pool, false);
    host.ok(&["vol-create-as", "p", "rb.raw", "8M"]);
    let mut spec =
        GuestSpec::new("rb1", &image()).workload("tern.mem=16 tern.disk=/dev/vda tern.disk_mb=2");
    spec.disks.push(tern_testkit::TestDisk {
        path: pool.join("rb.raw"),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    define(&host, &spec);
    host.ok(&["start", "rb1"]);
    wait_seq_above(&host, "rb1", 3);
    assert!(host.ok(&["console", "rb1"]).contains("TERN-DISK formatted"));
    host.ok(&["reboot", "rb1"]);
    // A reset boots the guest again: a second TERN-READY, the disk verifies.
    let text = host.wait_console("rb1", Duration::from_secs(60), "a second boot", |t| {
        SerialLog::parse(t).count("TERN-READY") >= 2
    });
    assert!(
        text.contains("TERN-DISK verified"),
        "{}",
        tern_testkit::tail(&text, 10)
    );
    assert!(SerialLog::parse(&text).seq_went_backwards());
    // console --follow prints new output and ends when the guest stops.
    let follow = std::process::Command::new(tern_testkit::bin("tern"))
        .args([
            "-c",
            &host.uri(),
            "console",
            "rb1",
            "--follow",
            "--tail",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    host.ok(&["destroy", "rb1"]);
    let out = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&out.stdout);
    assert!(followed.matches("TERN-HB").count() >= 3, "{followed}");
    let e = host.fails(&["undefine", "rb1", "--remove-all-storage", "--bogus"]);
    assert!(e.contains("--bogus"), "{e}");
    let out = host.ok(&["undefine", "rb1", "--remove-all-storage"]);
    assert!(out.contains("rb.raw"), "{out}");
    assert!(!pool.join("rb.raw").exists());
}

#[test]
fn shutdown_ignored_by_guest_times_out_clearly_then_destroy_works() {
    let host = TernHost::start("deaf");
    let spec = GuestSpec::new("deaf1", &image()).workload("tern.mem=16 tern.ignore_acpi=1");
    define(&host, &spec);
    host.ok(&["start", "deaf1"]);
    wait_seq_above(&host, "deaf1", 2);
    let err = host.fails(&["shutdown", "deaf1", "--timeout", "3"]);
    assert!(err.contains("did not shut down within 3 s"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(host.ok(&["domstate", "deaf1"]).trim(), "running");
    host.ok(&["destroy", "deaf1"]);
    assert_eq!(
        host.ok(&["domstate", "deaf1", "--reason"]).trim(),
        "shut off (destroyed)"
    );
}

#[test]
fn agent_killed_with_sigkill_reattaches_and_sees_crashes() {
    let mut host = TernHost::start("restart");
    let img = image();
    define(&host, &GuestSpec::new("keep", &img));
    define(&host, &GuestSpec::new("dies", &img));
    host.ok(&["start", "keep"]);
    host.ok(&["start", "dies"]);
    // A transient guest must survive too.
    let tpath = host.root.join("trans.xml");
    std::fs::write(&tpath, GuestSpec::new("trans", &img).to_xml()).unwrap();
    host.ok(&["create", tpath.to_str().unwrap()]);
    let before = {
        wait_seq_above(&host, "keep", 5);
        wait_seq_above(&host, "dies", 0);
        last_seq(&host, "keep")
    };
    let dies_pid: u32 = host
        .ok(&["dominfo", "dies", "--json"])
        .parse::<serde_json::Value>()
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;

    host.kill9();
    // While the agent is away: one QEMU dies, the others keep running.
    tern_testkit::pair::kill9(dies_pid);
    std::thread::sleep(Duration::from_millis(500));
    host.restart();

    assert_eq!(host.ok(&["domstate", "keep"]).trim(), "running");
    assert_eq!(host.ok(&["domstate", "trans"]).trim(), "running");
    assert_eq!(
        host.ok(&["domstate", "dies", "--reason"]).trim(),
        "shut off (crashed)"
    );
    let text = wait_seq_above(&host, "keep", before + 10);
    let log = SerialLog::parse(&text);
    assert!(!log.seq_went_backwards(), "heartbeat counter was reset");
    assert_eq!(
        log.heartbeats.first().map(|h| h.seq),
        Some(1),
        "guest rebooted"
    );

    // The re-attached monitor works: operations and end-of-life detection.
    host.ok(&["suspend", "keep"]);
    assert_eq!(host.ok(&["domstate", "keep"]).trim(), "paused");
    host.ok(&["resume", "keep"]);
    host.ok(&["shutdown", "keep"]);
    assert_eq!(
        host.ok(&["domstate", "keep", "--reason"]).trim(),
        "shut off (shutdown)"
    );
    host.ok(&["destroy", "trans"]);
    assert!(!host.ok(&["list", "--all"]).contains("trans"));
}

#[test]
fn accel_auto_does_not_hang_and_remembers() {
    let cache = tempfile::tempdir().unwrap();
    let cache_file = cache.path().join("accel.json");
    let mut opts = tern_testkit::HostOptions {
        name: "auto".into(),
        accel: Some("auto".into()),
        extra_args: vec!["--accel-cache".into(), cache_file.display().to_string()],
        ..Default::default()
    };
    let host = TernHost::start_with(opts.clone());
    let facts: serde_json::Value = host.ok(&["nodeinfo", "--json"]).parse().unwrap();
    let accel = facts["accelerator"].as_str().unwrap().to_string();
    assert!(accel == "kvm" || accel == "tcg", "{accel}");
    let remembered: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache_file).unwrap()).unwrap();
    assert_eq!(remembered["accel"], accel.as_str());
    // Whatever was chosen must actually boot the guest.
    define(&host, &GuestSpec::new("auto1", &image()));
    host.ok(&["start", "auto1"]);
    wait_seq_above(&host, "auto1", 3);
    drop(host);
    // A second agent reuses the answer without probing.
    opts.name = "auto2".into();
    let host2 = TernHost::start_with(opts);
    let facts: serde_json::Value = host2.ok(&["nodeinfo", "--json"]).parse().unwrap();
    assert_eq!(facts["accelerator"], accel.as_str());
    let log = std::fs::read_to_string(host2.log()).unwrap();
    assert!(
        !log.contains("probing KVM"),
        "probe was not remembered: {log}"
    );
}
