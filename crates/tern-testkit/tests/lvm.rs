//! logical (LVM) pools on a real LVM: volume groups on loop devices of
//! this test's own, every LVM command limited to them (`--devices`).
//! Real `ternd`, `tern`, LVM and QEMU.
//!
//! Opening a logical volume needs the kernel's device-mapper. Where the
//! kernel has none, the pool is built and then refused at `pool-start` by
//! name, and the tests that need open volumes say they were skipped.

use serde_json::Value;
use std::time::Duration;
use tern_testkit::checks::{boot_and_verify, live_migrate, shut_off, wait_disk_ok};
use tern_testkit::lvm::{has_device_mapper, LoopVg};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost, TestDisk};

fn json(h: &TernHost, args: &[&str]) -> Value {
    serde_json::from_str(&h.ok(args)).unwrap()
}

/// `pool-define-as NAME logical --source-name VG --source-dev DEV`, built.
fn define_pool(h: &TernHost, name: &str, vg: &LoopVg) {
    let dev = vg.devices[0].display().to_string();
    h.ok(&[
        "pool-define-as",
        name,
        "logical",
        "--source-name",
        &vg.vg,
        "--source-dev",
        &dev,
    ]);
    h.ok(&["pool-build", name]);
}

#[test]
fn a_logical_pool_builds_its_group_on_its_own_devices_and_refuses_bad_input() {
    let vg = LoopVg::new("t1", 1, 64);
    let h = TernHost::start("lvm");
    let dev = vg.devices[0].display().to_string();

    // Bad input is refused by name and changes nothing.
    for (args, says) in [
        (
            vec![
                "pool-define-as",
                "lv",
                "logical",
                "--source-name",
                "bad/name",
                "--source-dev",
                &dev,
            ],
            "is not a name LVM takes",
        ),
        (
            vec![
                "pool-define-as",
                "lv",
                "logical",
                "--source-name",
                &vg.vg,
                "--target",
                "/dev/elsewhere",
            ],
            "a logical pool's target is where LVM puts its volumes",
        ),
        (
            vec![
                "pool-define-as",
                "lv",
                "dir",
                "--target",
                "/tmp/x",
                "--source-dev",
                &dev,
            ],
            "--source-dev applies to logical pools only",
        ),
    ] {
        let err = h.fails(&args);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(h.fails(&["pool-info", "lv"]).contains("lv"));
    assert_eq!(vg.space(), None, "a refused definition made a group");

    // pool-build makes the group on the given device, with real LVM.
    define_pool(&h, "lv", &vg);
    let info = json(&h, &["pool-info", "lv", "--json"]);
    assert_eq!(info["kind"], "logical", "{info}");
    assert_eq!(info["target"], format!("/dev/{}", vg.vg), "{info}");
    assert_eq!(info["logical"]["vg"], vg.vg.as_str(), "{info}");
    let (size, free) = vg.space().expect("pool-build made no volume group");
    assert!(size >= 56 << 20 && free == size, "{size} {free}");

    if has_device_mapper() {
        h.ok(&["pool-start", "lv"]);
        let info = json(&h, &["pool-info", "lv", "--json"]);
        assert_eq!(info["capacity"], size);
        assert_eq!(info["available"], free);
        h.ok(&["pool-destroy", "lv"]);
    } else {
        let err = h.fails(&["pool-start", "lv"]);
        assert!(err.contains("storage pool 'lv' is a logical pool"), "{err}");
        assert!(err.contains("no device-mapper"), "{err}");
        assert_eq!(json(&h, &["pool-info", "lv", "--json"])["active"], false);
        eprintln!("this kernel has no device-mapper: pool-start refused by name, as it must be");
    }
    h.ok(&["pool-undefine", "lv"]);
    // The group stays (pool-undefine never deletes data).
    assert!(vg.space().is_some());
}

/// The test guest with a raw disk on logical volume `lv` of pool `pool`,
/// as `<disk type='block'>` (or `type='volume'` when `as_volume`).
fn define_on_volume(h: &TernHost, pool: &str, name: &str, lv: &str, as_volume: bool) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    h.ok(&["vol-create-as", pool, lv, "16M"]);
    let path = h.ok(&["vol-path", lv, "--pool", pool]).trim().to_string();
    let mut spec = GuestSpec::new(name, &img)
        .workload("tern.mem=32 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=4 tern.verify_rate=32");
    spec.disks.push(TestDisk {
        path: path.clone().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    let file_source = format!("<source file='{path}'/>");
    let xml = spec.to_xml().replace(
        "<disk type='file'",
        if as_volume {
            "<disk type='volume'"
        } else {
            "<disk type='block'"
        },
    );
    let xml = if as_volume {
        xml.replace(
            &file_source,
            &format!("<source pool='{pool}' volume='{lv}'/>"),
        )
    } else {
        xml.replace(&file_source, &format!("<source dev='{path}'/>"))
    };
    let file = h.root.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    h.ok(&["define", file.to_str().unwrap()]);
}

#[test]
fn guests_on_logical_volumes_run_and_move_into_a_logical_pool() {
    if !has_device_mapper() {
        eprintln!(
            "skipped: this kernel has no device-mapper, so no logical volume can be opened here"
        );
        return;
    }
    let vga = LoopVg::new("ma", 1, 128);
    let vgb = LoopVg::new("mb", 1, 128);
    let a = TernHost::start("lvm-a");
    let b = TernHost::start("lvm-b");
    for (h, vg) in [(&a, &vga), (&b, &vgb)] {
        define_pool(h, "lvm", vg);
        h.ok(&["pool-start", "lvm"]);
    }

    // Volumes: raw logical volumes of the size asked (whole extents).
    a.ok(&["vol-create-as", "lvm", "scratch", "8M"]);
    let v = json(&a, &["vol-info", "scratch", "--pool", "lvm", "--json"]);
    assert_eq!(v["format"], "raw", "{v}");
    assert_eq!(vga.lv_size("scratch"), Some(8 << 20));
    let err = a.fails(&["vol-create-as", "lvm", "q", "8M", "--format", "qcow2"]);
    assert!(err.contains("is a logical pool"), "{err}");
    assert!(a.ok(&["vol-list", "lvm"]).contains("scratch"));
    a.ok(&["vol-delete", "scratch", "--pool", "lvm"]);
    assert_eq!(vga.lv_size("scratch"), None);

    // A <disk type='block'> guest: it writes and verifies its disk.
    define_on_volume(&a, "lvm", "lb1", "lb1-disk", false);
    a.ok(&["start", "lb1"]);
    wait_disk_ok(&a, "lb1", 1);
    // Live, copying the disk into B's logical pool: a volume of the same size.
    live_migrate(&a, &["--copy-storage-all"], "lb1", &b.uri());
    assert_eq!(vgb.lv_size("lb1-disk"), vga.lv_size("lb1-disk"));
    b.wait_console("lb1", Duration::from_secs(90), "heartbeats", |t| {
        SerialLog::parse(t).heartbeats.len() >= 2
    });
    wait_disk_ok(&b, "lb1", 1);
    let dest = b.ok(&["dumpxml", "lb1"]);
    assert!(dest.contains("<disk type='block'"), "{dest}");
    assert!(
        dest.contains(&format!("/dev/{}/lb1-disk", vgb.vg)),
        "{dest}"
    );
    // Cold, back into A's logical pool: every block the guest wrote is there.
    shut_off(&b, "lb1");
    // A may keep the definition the live migration left; the source's
    // old volume goes, so the copy lands in a fresh one.
    let _ = a.tern(&["undefine", "lb1"]);
    a.ok(&["vol-delete", "lb1-disk", "--pool", "lvm"]);
    let out = b.tern(&["migrate", "--cold", "--undefinesource", "lb1", &a.uri()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    boot_and_verify(&a, "lb1");
    a.ok(&["destroy", "lb1"]);

    // A <disk type='volume'> in a logical pool starts as a block device.
    define_on_volume(&a, "lvm", "lv2", "lv2-disk", true);
    a.ok(&["start", "lv2"]);
    wait_disk_ok(&a, "lv2", 1);
    a.ok(&["destroy", "lv2"]);
}

/// The test guest with a raw `<disk type='block'>` on `dev`, defined on `h`.
fn define_on_device(h: &TernHost, name: &str, dev: &std::path::Path) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img)
        .workload("tern.mem=32 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=4 tern.verify_rate=32");
    spec.disks.push(TestDisk {
        path: dev.into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    let xml = spec.to_xml_block_devices();
    let file = h.root.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    h.ok(&["define", file.to_str().unwrap()]);
}

#[test]
fn guests_on_block_devices_run_and_move_into_a_dir_pool_live_and_cold() {
    // Two block devices of this test's own (loop devices; no group on them).
    let devs = LoopVg::new("blk", 2, 16);
    let a = TernHost::start_with(tern_testkit::HostOptions {
        name: "blk-a".into(),
        qemu: Some(tern_testkit::host::qemu_table_allowing(&devs.devices)),
        ..Default::default()
    });
    let b = TernHost::start("blk-b");
    let pool = tempfile::tempdir().unwrap();
    b.add_pool("img", pool.path(), false);

    // Live with --copy-storage-all: the destination holds a file of the
    // device's size and opens it as a file disk.
    define_on_device(&a, "bd1", &devs.devices[0]);
    a.ok(&["start", "bd1"]);
    wait_disk_ok(&a, "bd1", 1);
    live_migrate(
        &a,
        &["--copy-storage-all", "--target-pool", "img"],
        "bd1",
        &b.uri(),
    );
    let dest = b.ok(&["dumpxml", "bd1"]);
    let file = pool.path().join(devs.devices[0].file_name().unwrap());
    assert!(dest.contains("<disk type='file'"), "{dest}");
    assert!(
        dest.contains(&format!("<source file='{}'/>", file.display())),
        "{dest}"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);
    b.wait_console("bd1", Duration::from_secs(90), "heartbeats", |t| {
        SerialLog::parse(t).heartbeats.len() >= 2
    });
    wait_disk_ok(&b, "bd1", 1);
    b.ok(&["destroy", "bd1"]);

    // Cold: the device is read whole (staged), sent, and every block the
    // guest wrote is there when it boots on the destination.
    define_on_device(&a, "bd2", &devs.devices[1]);
    a.ok(&["start", "bd2"]);
    wait_disk_ok(&a, "bd2", 1);
    shut_off(&a, "bd2");
    let out = a.tern(&["migrate", "--cold", "--target-pool", "img", "bd2", &b.uri()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = b.ok(&["dumpxml", "bd2"]);
    assert!(dest.contains("<disk type='file'"), "{dest}");
    boot_and_verify(&b, "bd2");
    b.ok(&["destroy", "bd2"]);
}
