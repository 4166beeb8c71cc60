//! `tern setvcpus` (virsh's verb) on a guest with `<vcpu current=>` below
//! its maximum: `--live` hot-plugs vCPUs through QMP and the guest reports
//! them online; the live definition carries them, so a live migration
//! afterwards succeeds and the destination can plug the next one;
//! unplugging and counts above the maximum are refused by name and change
//! nothing; `--config` changes what the next start boots with. Real `ternd`,
//! `tern` and QEMU.

use std::time::Duration;
use tern_testkit::pair::{HostPair, Which};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost};

/// Waits until the guest's latest `TERN-CPUS` line says `online`.
fn wait_online(h: &TernHost, name: &str, online: &str) -> String {
    let want = format!("TERN-CPUS online={online} possible=0-2");
    h.wait_console(name, Duration::from_secs(120), &want.clone(), |t| {
        t.lines()
            .rev()
            .find(|l| l.contains("TERN-CPUS"))
            .is_some_and(|l| l.trim().ends_with(&want))
    })
}

#[test]
fn setvcpus_live_plugs_vcpus_the_guest_sees_and_a_migration_keeps() {
    let p = HostPair::start("setvcpus", &[], &[]);
    let name = "sv1";
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img).workload("tern.mem=32");
    spec.vcpus = 3;
    let xml = spec.to_xml().replace(
        "<vcpu>3</vcpu>",
        "<vcpu placement='static' current='1'>3</vcpu>",
    );
    assert!(xml.contains("current='1'>3</vcpu>"));
    let path = p.a.root.join("sv1.xml");
    std::fs::write(&path, &xml).unwrap();
    p.a.ok(&["define", path.to_str().unwrap()]);
    p.a.ok(&["start", name]);
    wait_online(&p.a, name, "0");

    let out = p.a.ok(&["setvcpus", name, "2", "--live"]);
    assert!(out.contains("set to 2"), "{out}");
    wait_online(&p.a, name, "0-1");
    assert!(p.a.ok(&["dumpxml", name]).contains("current='2'>3</vcpu>"));

    // Refused, by name, and nothing changes.
    for (count, named) in [("1", "does not unplug"), ("4", "maximum of 3")] {
        let err = p.a.fails(&["setvcpus", name, count, "--live"]);
        assert!(err.contains(named), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(p.a.ok(&["dumpxml", name]).contains("current='2'>3</vcpu>"));

    // The destination starts with both vCPUs; the guest keeps them.
    let before = SerialLog::parse(&p.a.ok(&["console", name]))
        .last_seq()
        .unwrap_or(0);
    let m = p.migrate(Which::A, name, &["--live"]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let text =
        p.b.wait_console(name, Duration::from_secs(120), "heartbeats", |t| {
            SerialLog::parse(t).last_seq().unwrap_or(0) > before + 2
        });
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
    assert!(p.b.ok(&["dumpxml", name]).contains("current='2'>3</vcpu>"));
    // And the third slot is still free there.
    p.b.ok(&["setvcpus", name, "3", "--live"]);
    wait_online(&p.b, name, "0-2");
    p.b.ok(&["destroy", name]);
}

#[test]
fn setvcpus_config_changes_what_the_next_start_boots_with() {
    let h = TernHost::start("setvcpus-cfg");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new("sv2", &img).workload("tern.mem=32");
    spec.vcpus = 3;
    let xml = spec.to_xml().replace(
        "<vcpu>3</vcpu>",
        "<vcpu placement='static' current='1'>3</vcpu>",
    );
    let path = h.root.join("sv2.xml");
    std::fs::write(&path, &xml).unwrap();
    h.ok(&["define", path.to_str().unwrap()]);
    h.ok(&["setvcpus", "sv2", "2", "--config"]);
    assert!(h.ok(&["dumpxml", "sv2"]).contains("current='2'>3</vcpu>"));
    let err = h.fails(&["setvcpus", "sv2", "2", "--live"]);
    assert!(err.contains("not running"), "{err}");
    h.ok(&["start", "sv2"]);
    wait_online(&h, "sv2", "0-1");
    h.ok(&["destroy", "sv2"]);
}
