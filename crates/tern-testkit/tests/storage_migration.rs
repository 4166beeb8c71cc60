//! Live migration with local disks mirrored along (`--copy-storage-all`,
//! `--copy-storage-inc`, `--migrate-disks`). The guest keeps checksummed
//! blocks on its disk and re-reads them with O_DIRECT against the
//! generations it remembers, so a write lost in the mirror shows up as a
//! `TERN-FAIL disk` line on the destination.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost, TestDisk};

use tern_testkit::checks::allocated;
use tern_testkit::fixtures::LocalPools as Hosts;

fn hosts(name: &str) -> Hosts {
    Hosts::start(name)
}

fn disk(path: &Path, format: &str, target: &str) -> TestDisk {
    TestDisk {
        path: path.to_path_buf(),
        format: format.into(),
        target: target.into(),
        cache: "none".into(),
    }
}

fn guest(name: &str, disks: Vec<TestDisk>) -> GuestSpec {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut g = GuestSpec::new(name, &img).workload(
        "tern.mem=32 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_mb=8 tern.disk_rate=256",
    );
    g.disks = disks;
    g
}

fn wait_disk_ok(h: &TernHost, name: &str, what: &str) -> String {
    let text = h.wait_console(name, Duration::from_secs(90), what, |t| {
        let l = SerialLog::parse(t);
        l.count("TERN-DISK ok") >= 2 || !l.failures.is_empty()
    });
    let l = SerialLog::parse(&text);
    assert!(l.failures.is_empty(), "{:?}", l.failures);
    text
}

fn migrate(h: &Hosts, name: &str, flags: &[&str]) -> std::process::Output {
    h.migrate(name, flags)
}

/// Migrates and expects success; on failure, both hosts' job events say why.
fn migrate_ok(h: &Hosts, name: &str, flags: &[&str]) {
    let o = h.migrate(name, flags);
    if !o.status.success() {
        let events = |t: &TernHost| {
            String::from_utf8_lossy(&t.tern(&["domjobevents", name]).stdout).into_owned()
        };
        panic!(
            "{}\nsource events:\n{}\ndestination events:\n{}",
            String::from_utf8_lossy(&o.stderr),
            events(&h.a),
            events(&h.b)
        );
    }
}

#[test]
fn copy_storage_all_keeps_every_write_and_boots_again_there() {
    let h = hosts("csa");
    h.a.ok(&[
        "vol-create-as",
        "images",
        "csa.qcow2",
        "32M",
        "--format",
        "qcow2",
    ]);
    h.a.define_guest(&guest(
        "csa",
        vec![disk(&h.ia.join("csa.qcow2"), "qcow2", "vda")],
    ));
    h.a.ok(&["start", "csa"]);
    wait_disk_ok(&h.a, "csa", "disk writes on the source");
    migrate_ok(
        &h,
        "csa",
        &["--live", "--verbose", "--copy-storage-all", "--persistent"],
    );
    assert!(h.b.ok(&["domstate", "csa"]).starts_with("running"));
    let vols = h.b.ok(&["vol-list", "images"]);
    assert!(vols.contains("csa.qcow2"), "{vols}");
    assert!(h
        .b
        .ok(&["domblklist", "csa"])
        .contains(h.ib.join("csa.qcow2").to_str().unwrap()));
    // The guest keeps re-reading its blocks against what it wrote.
    wait_disk_ok(&h.b, "csa", "disk verification on the destination");
    let ev = h.a.ok(&["domjobevents", "csa"]);
    assert!(ev.contains("disk mirrors completed while paused"), "{ev}");
    // The source image is untouched and still there.
    assert!(h.ia.join("csa.qcow2").exists());
    // A cold boot on the destination verifies every block from the disk.
    h.b.ok(&["destroy", "csa"]);
    h.b.ok(&["start", "csa"]);
    let text = h.b.wait_console(
        "csa",
        Duration::from_secs(90),
        "disk verification at boot",
        |t| t.contains("TERN-DISK verified") || t.contains("TERN-FAIL"),
    );
    assert!(
        text.contains("TERN-DISK verified") && text.contains(" ok"),
        "{text}"
    );
    assert!(SerialLog::parse(&text).failures.is_empty());
}

#[test]
fn copy_storage_inc_moves_only_the_top_image() {
    let h = hosts("inc");
    // Boot once on the base image so it holds formatted blocks.
    h.a.ok(&[
        "vol-create-as",
        "images",
        "base.qcow2",
        "32M",
        "--format",
        "qcow2",
    ]);
    h.a.define_guest(&guest(
        "inc0",
        vec![disk(&h.ia.join("base.qcow2"), "qcow2", "vda")],
    ));
    h.a.ok(&["start", "inc0"]);
    wait_disk_ok(&h.a, "inc0", "formatting the base");
    // Ready too: before it, the guest may not hear the power button yet.
    h.a.wait_console("inc0", Duration::from_secs(90), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    h.a.ok(&["shutdown", "inc0"]);
    h.a.ok(&["undefine", "inc0"]);
    // The guest now runs on an overlay; the base is visible to both hosts
    // at the same path, as a golden image would be.
    h.a.ok(&[
        "vol-create-as",
        "images",
        "top.qcow2",
        "--format",
        "qcow2",
        "--backing-vol",
        "base.qcow2",
    ]);
    h.a.define_guest(&guest(
        "inc",
        vec![disk(&h.ia.join("top.qcow2"), "qcow2", "vda")],
    ));
    h.a.ok(&["start", "inc"]);
    let text = wait_disk_ok(&h.a, "inc", "disk writes on the overlay");
    assert!(
        text.contains("TERN-DISK verified"),
        "the base's blocks did not verify: {text}"
    );
    // The destination reads the base only from one of its pools.
    h.b.add_pool("golden", &h.ia, false);
    migrate_ok(&h, "inc", &["--live", "--copy-storage-inc"]);
    let top: serde_json::Value =
        serde_json::from_str(&h.b.ok(&["vol-info", "top.qcow2", "--pool", "images", "--json"]))
            .unwrap();
    assert_eq!(top["backing"], h.ia.join("base.qcow2").to_str().unwrap());
    assert!(!h.ib.join("base.qcow2").exists(), "the base was copied");
    wait_disk_ok(&h.b, "inc", "disk verification on the destination");
}

#[test]
fn migrate_disks_copies_only_the_named_local_disk() {
    let h = hosts("md");
    let shared = tempfile::Builder::new()
        .prefix("tern-shared-")
        .tempdir()
        .unwrap();
    h.a.add_pool("shared", shared.path(), true);
    h.b.add_pool("shared", shared.path(), true);
    h.a.ok(&["vol-create-as", "images", "local.raw", "16M"]);
    h.a.ok(&["vol-create-as", "shared", "data.raw", "16M"]);
    h.a.define_guest(&guest(
        "md",
        vec![
            disk(&h.ia.join("local.raw"), "raw", "vda"),
            disk(&shared.path().join("data.raw"), "raw", "vdb"),
        ],
    ));
    h.a.ok(&["start", "md"]);
    wait_disk_ok(&h.a, "md", "disk writes");
    // Copying only the shared disk leaves the local one behind: refused.
    let o = migrate(
        &h,
        "md",
        &["--live", "--copy-storage-all", "--migrate-disks", "vdb"],
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("'vda'") && e.contains("not shared"), "{e}");
    assert!(h.b.qemu_pids().is_empty());
    migrate_ok(
        &h,
        "md",
        &["--live", "--copy-storage-all", "--migrate-disks", "vda"],
    );
    assert!(h.ib.join("local.raw").exists());
    assert!(!h.ib.join("data.raw").exists());
    let blk = h.b.ok(&["domblklist", "md"]);
    assert!(
        blk.contains(shared.path().join("data.raw").to_str().unwrap()),
        "{blk}"
    );
    wait_disk_ok(&h.b, "md", "disk verification on the destination");
}

#[test]
fn failed_storage_migration_removes_what_the_destination_created() {
    let h = hosts("sfail");
    h.a.ok(&[
        "vol-create-as",
        "images",
        "sf.qcow2",
        "64M",
        "--format",
        "qcow2",
    ]);
    h.a.define_guest(&guest(
        "sf",
        vec![disk(&h.ia.join("sf.qcow2"), "qcow2", "vda")],
    ));
    h.a.ok(&["start", "sf"]);
    wait_disk_ok(&h.a, "sf", "disk writes");
    // A slow mirror, aborted half-way.
    let child = Command::new(tern_testkit::bin("tern"))
        .args([
            "-c",
            &h.a.uri(),
            "migrate",
            "--live",
            "--copy-storage-all",
            "--bandwidth",
            "1",
        ])
        .args(["--copy-storage-synchronous-writes", "sf", &h.b.uri()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j: serde_json::Value =
            serde_json::from_str(&h.a.ok(&["domjobinfo", "sf", "--json"])).unwrap();
        if j["disk_processed"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "mirror never started: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        h.ib.join("sf.qcow2").exists(),
        "destination volume not created"
    );
    h.a.ok(&["domjobabort", "sf"]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        !h.ib.join("sf.qcow2").exists(),
        "destination volume left behind"
    );
    assert_eq!(h.b.ok(&["list", "--all", "--name"]).trim(), "");
    assert!(h.b.qemu_pids().is_empty());
    assert!(h.a.ok(&["domstate", "sf"]).starts_with("running"));
    let before = SerialLog::parse(&h.a.ok(&["console", "sf"])).count("TERN-DISK ok");
    let text = h.a.wait_console(
        "sf",
        Duration::from_secs(60),
        "disk writes after the abort",
        |t| SerialLog::parse(t).count("TERN-DISK ok") > before + 1,
    );
    assert!(SerialLog::parse(&text).failures.is_empty());
}

/// A raw disk mostly made of holes arrives with its holes: the mirror's
/// zero writes unmap on the destination while the disk arrives (the nodes
/// are reopened with `discard=unmap`), and the guest then runs with the
/// definition's own discard setting. The destination may allocate at most
/// 5 % more than the source.
#[test]
fn a_mirrored_raw_disk_keeps_its_holes() {
    let h = hosts("holes");
    h.a.ok(&[
        "vol-create-as",
        "images",
        "holes.raw",
        "256M",
        "--format",
        "raw",
    ]);
    h.a.define_guest(&guest(
        "holes",
        vec![disk(&h.ia.join("holes.raw"), "raw", "vda")],
    ));
    h.a.ok(&["start", "holes"]);
    wait_disk_ok(&h.a, "holes", "disk writes on the source");
    migrate_ok(&h, "holes", &["--live", "--copy-storage-all"]);
    wait_disk_ok(&h.b, "holes", "disk verification on the destination");
    let (src, dst) = (
        allocated(&h.ia.join("holes.raw")),
        allocated(&h.ib.join("holes.raw")),
    );
    assert!(src > 0 && src < 64 << 20, "the source holds {src} bytes");
    let ev = h.b.ok(&["domjobevents", "holes"]);
    assert!(
        dst * 100 <= src * 105,
        "the destination allocated {dst} bytes for the source's {src}; its events:\n{ev}"
    );
    assert!(!ev.contains("keep discard=unmap"), "{ev}");
}

/// With `discard='unmap' detect_zeroes='unmap'` in the definition the
/// destination keeps the holes as well (no reopen needed there).
#[test]
fn copy_storage_all_keeps_the_holes_of_a_sparse_disk() {
    let h = hosts("holes-unmap");
    // 256 MiB, of which the guest writes its 8 MiB block region.
    h.a.ok(&["vol-create-as", "images", "holes.raw", "256M"]);
    let spec = guest("holes", vec![disk(&h.ia.join("holes.raw"), "raw", "vda")]);
    let xml = spec.to_xml().replace(
        "cache='none'/>",
        "cache='none' discard='unmap' detect_zeroes='unmap'/>",
    );
    let path = h.a.root.join("holes.xml");
    std::fs::write(&path, xml).unwrap();
    h.a.ok(&["define", path.to_str().unwrap()]);
    h.a.ok(&["start", "holes"]);
    wait_disk_ok(&h.a, "holes", "disk writes on the source");
    let src = allocated(&h.ia.join("holes.raw"));
    migrate_ok(
        &h,
        "holes",
        &["--live", "--copy-storage-all", "--persistent"],
    );
    wait_disk_ok(&h.b, "holes", "disk verification on the destination");
    let dst = allocated(&h.ib.join("holes.raw"));
    eprintln!(
        "allocated: source {} KiB, destination {} KiB (of 262144 KiB)",
        src >> 10,
        dst >> 10
    );
    // The copy holds what the guest wrote, not 256 MiB of zeroes.
    assert!(
        dst <= src + (4 << 20),
        "source {src} B, destination {dst} B allocated"
    );
    h.b.ok(&["destroy", "holes"]);
}
