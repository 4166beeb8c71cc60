//! Devices plugged into a running guest, as `virsh attach-device` does it,
//! that then migrate: the guest writes and verifies a disk that arrived
//! while it ran, and keeps doing so on the destination, where QEMU started
//! with the disk at the same PCI address. A removal is done when the guest
//! released the device; while it has not, the guest does not migrate.

use std::path::Path;
use std::time::Duration;
use tern_testkit::pair::{wait_ready, HostPair, Which};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost};

/// Boots a guest with no disk whose workload waits for `/dev/vda`.
fn boot_diskless(p: &HostPair, name: &str) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let spec = GuestSpec::new(name, &img).workload(
        "tern.mem=32 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_hotplug=1 tern.disk_mb=4",
    );
    p.a.define_guest(&spec);
    p.a.ok(&["start", name]);
    wait_ready(&p.a, name, 3);
}

/// A raw volume of the shared pool, and an XML file for it as `target`.
fn disk_file(h: &TernHost, dir: &Path, vol: &str, target: &str) -> String {
    disk_file_in(h, "shared", dir, vol, target)
}

/// A raw volume of `pool`, and an XML file for it as `target`.
fn disk_file_in(h: &TernHost, pool: &str, dir: &Path, vol: &str, target: &str) -> String {
    h.ok(&["vol-create-as", pool, vol, "16M"]);
    let path = h.ok(&["vol-path", vol, "--pool", pool]);
    let xml = format!(
        "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>\
         <source file='{}'/><target dev='{target}' bus='virtio'/></disk>",
        path.trim()
    );
    let f = dir.join(format!("{target}.xml"));
    std::fs::write(&f, xml).unwrap();
    f.display().to_string()
}

/// The `<address .../>` line of disk `target` in `dumpxml`.
fn address_of(h: &TernHost, name: &str, target: &str) -> String {
    let xml = h.ok(&["dumpxml", name]);
    let at = xml
        .find(&format!("<target dev='{target}'"))
        .unwrap_or_else(|| panic!("no disk {target} in\n{xml}"));
    let rest = &xml[at..];
    let end = rest.find("</disk>").unwrap();
    rest[..end]
        .lines()
        .find(|l| l.contains("<address"))
        .unwrap_or_else(|| panic!("disk {target} has no address in\n{xml}"))
        .trim()
        .to_string()
}

fn disk_oks(h: &TernHost, name: &str) -> usize {
    SerialLog::parse(&h.ok(&["console", name])).count("TERN-DISK ok")
}

#[test]
fn an_attached_disk_is_written_migrated_and_verified_there() {
    let p = HostPair::start("hpdisk", &[], &[]);
    let name = "hpdisk";
    let dir = tempfile::tempdir().unwrap();
    boot_diskless(&p, name);
    let vda = disk_file(&p.a, dir.path(), "hp-a.raw", "vda");
    let out = p.a.ok(&["attach-device", name, &vda, "--live"]);
    assert!(out.contains("attached successfully"), "{out}");
    // The guest found its new disk and keeps writing and verifying it.
    p.a.wait_console(name, Duration::from_secs(90), "disk checks", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") >= 2
    });
    let addr = address_of(&p.a, name, "vda");
    // A second attach of the same target is refused by name.
    let again = p.a.fails(&["attach-device", name, &vda, "--live"]);
    assert!(
        again.contains("already has a disk with target vda"),
        "{again}"
    );

    let m = p.migrate(Which::A, name, &["--live"]);
    assert!(
        m.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&m.stderr),
        p.events(name)
    );
    p.wait_settled_on(Which::B, name, Duration::from_secs(60));
    assert_eq!(address_of(&p.b, name, "vda"), addr);
    let before = disk_oks(&p.b, name);
    p.b.wait_console(name, Duration::from_secs(90), "disk checks there", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") > before
    });
    p.assert_guest_whole_on(Which::B, name);
}

#[test]
fn a_detach_waits_for_the_guest_and_a_pending_one_refuses_migration() {
    let p = HostPair::start("hpdet", &[], &[]);
    let name = "hpdet";
    let dir = tempfile::tempdir().unwrap();
    boot_diskless(&p, name);
    let vda = disk_file(&p.a, dir.path(), "hd-a.raw", "vda");
    p.a.ok(&["attach-device", name, &vda, "--live"]);
    let vdb = disk_file(&p.a, dir.path(), "hd-b.raw", "vdb");
    p.a.ok(&["attach-device", name, &vdb, "--live"]);
    p.a.wait_console(name, Duration::from_secs(90), "disk checks", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") >= 1
    });

    // The guest (running) releases vdb at once.
    let out = p.a.ok(&["detach-device", name, &vdb, "--live"]);
    assert!(out.contains("detached successfully"), "{out}");
    assert!(!p.a.ok(&["dumpxml", name]).contains("<target dev='vdb'"));

    // A paused guest cannot answer: the removal stays pending, and the
    // guest may not migrate meanwhile.
    p.a.ok(&["attach-device", name, &vdb, "--live"]);
    p.a.ok(&["suspend", name]);
    let out = p.a.ok(&["detach-device", name, &vdb, "--live"]);
    assert!(out.contains("has not released it yet"), "{out}");
    let refused = p.migrate(Which::A, name, &["--live"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "migrated with a removal pending");
    assert!(
        err.contains("has not yet released") && err.contains("vdb"),
        "{err}"
    );
    p.a.ok(&["resume", name]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while p.a.ok(&["dumpxml", name]).contains("<target dev='vdb'") {
        assert!(std::time::Instant::now() < deadline, "vdb never went");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = p.migrate(Which::A, name, &["--live"]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    p.wait_settled_on(Which::B, name, Duration::from_secs(60));
    p.assert_guest_whole_on(Which::B, name);
}

/// The walk-through's `attach-interface --type bridge`, then a live
/// migration: the guest configures the NIC when it appears, answers ping
/// through it from a third namespace, and still does on the destination,
/// where the NIC sits at the same PCI address. Needs root.
#[test]
fn an_attached_interface_answers_ping_before_and_after_migration() {
    use tern_testkit::netns::skip_unless_root;
    use tern_testkit::pair::LabPair;
    use tern_testkit::Side;
    if skip_unless_root("an_attached_interface_answers_ping_before_and_after_migration") {
        return;
    }
    let p = LabPair::start("hpnic", &[]);
    let name = "hpnic";
    let ip = p.lab.addr(51);
    let mac = format!("52:54:00:78:{:02x}:33", p.lab.subnet());
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let spec = GuestSpec::new(name, &img)
        .workload(&format!("tern.mem=32 tern.ip={ip}/24 tern.net_hotplug=1"));
    p.a.define_guest(&spec);
    p.a.ok(&["start", name]);
    wait_ready(&p.a, name, 3);
    assert!(
        !p.lab.ping_once(Side::C, ip),
        "the guest answered before it had a NIC"
    );
    let out = p.a.ok(&[
        "attach-interface",
        name,
        "--type",
        "bridge",
        "--source",
        "br0",
        "--model",
        "virtio",
        "--mac",
        &mac,
        "--live",
    ]);
    assert!(out.contains("attached successfully"), "{out}");
    assert!(
        p.lab.wait_ping(Side::C, ip, Duration::from_secs(30)),
        "the guest never answered ping through its attached NIC"
    );
    let nic = |h: &TernHost| {
        let xml = h.ok(&["dumpxml", name]);
        let at = xml.find("<interface").expect("an interface in dumpxml");
        let rest = &xml[at..];
        rest[..rest.find("</interface>").unwrap()].to_string()
    };
    let before = nic(&p.a);
    assert!(
        before.contains(&mac) && before.contains("<address"),
        "{before}"
    );

    let m = p.a.tern(&["migrate", "--live", name, &p.b.uri()]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    assert_eq!(nic(&p.b), before);
    assert!(
        p.lab.wait_ping(Side::C, ip, Duration::from_secs(20)),
        "no ping through the NIC after the migration"
    );
    let text = p.b.ok(&["console", name]);
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");

    // And it goes away when asked, acknowledged by the guest.
    let out = p.b.ok(&[
        "detach-interface",
        name,
        "--type",
        "bridge",
        "--mac",
        &mac,
        "--live",
    ]);
    assert!(out.contains("detached successfully"), "{out}");
    assert!(!p.b.ok(&["dumpxml", name]).contains("<interface"));
    assert!(
        !p.lab.ping_once(Side::C, ip),
        "ping answered after the NIC was removed"
    );
}

/// The same with the disk in A's local pool, copied along by
/// `--copy-storage-all`: the mirror covers a disk that arrived live.
#[test]
fn an_attached_local_disk_is_copied_along_and_verified_there() {
    let mut p = HostPair::start("hpcopy", &[], &[]);
    let name = "hpcopy";
    let dir = tempfile::tempdir().unwrap();
    p.add_local_pools();
    boot_diskless(&p, name);
    let xml = disk_file_in(&p.a, "images", dir.path(), "hc.raw", "vda");
    p.a.ok(&["attach-device", name, &xml, "--live"]);
    p.a.wait_console(name, Duration::from_secs(90), "disk checks", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") >= 2
    });
    let addr = address_of(&p.a, name, "vda");
    let m = p.migrate(Which::A, name, &["--live", "--copy-storage-all"]);
    assert!(
        m.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&m.stderr),
        p.events(name)
    );
    p.wait_settled_on(Which::B, name, Duration::from_secs(60));
    assert_eq!(address_of(&p.b, name, "vda"), addr);
    assert!(p.b.ok(&["vol-list", "images"]).contains("hc.raw"));
    let before = disk_oks(&p.b, name);
    p.b.wait_console(name, Duration::from_secs(90), "disk checks there", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") > before
    });
    p.assert_guest_whole_on(Which::B, name);
}
