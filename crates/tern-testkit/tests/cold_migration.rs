//! Cold migration: a shut-off guest's definition and disks (with backing
//! chains) move with the transfer engine; refusals happen before any copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost, TestDisk};

use tern_testkit::fixtures::{write_random, LocalPools as Hosts};

fn hosts(name: &str) -> Hosts {
    Hosts::start(name)
}

fn guest(name: &str, disk: &Path) -> GuestSpec {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut g = GuestSpec::new(name, &img).workload(
        "tern.mem=16 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_mb=8 tern.disk_rate=512",
    );
    g.disks.push(TestDisk {
        path: disk.to_path_buf(),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    g
}

fn migrate(h: &Hosts, name: &str, flags: &[&str]) -> std::process::Output {
    h.migrate(name, flags)
}

fn err_line(o: &std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

/// Boots the guest once so its disk holds checksummed blocks, then shuts it down.
fn write_blocks(h: &TernHost, name: &str) {
    h.ok(&["start", name]);
    // Ready too: before it, the guest may not hear the power button yet.
    h.wait_console(name, Duration::from_secs(90), "disk writes", |t| {
        let l = SerialLog::parse(t);
        l.count("TERN-DISK ok") >= 2 && l.ready()
    });
    h.ok(&["shutdown", name]);
}

#[test]
fn cold_migration_moves_a_backing_chain_that_boots_and_verifies_there() {
    let h = hosts("cold");
    h.a.ok(&[
        "vol-create-as",
        "images",
        "base.qcow2",
        "32M",
        "--format",
        "qcow2",
    ]);
    h.a.define_guest(&guest("c0", &h.ia.join("base.qcow2")));
    write_blocks(&h.a, "c0");
    h.a.ok(&["undefine", "c0"]);
    h.a.ok(&[
        "vol-create-as",
        "images",
        "top.qcow2",
        "--format",
        "qcow2",
        "--backing-vol",
        "base.qcow2",
    ]);
    h.a.define_guest(&guest("cold1", &h.ia.join("top.qcow2")));
    write_blocks(&h.a, "cold1");

    // Refused before any copy: a running guest, a name clash, a missing pool.
    h.a.ok(&["start", "cold1"]);
    assert!(err_line(&migrate(&h, "cold1", &["--cold"])).contains("shut off"));
    h.a.ok(&["destroy", "cold1"]);
    let clash = guest("cold1", &h.ib.join("other.qcow2")).to_xml();
    let f = h.b.root.join("clash.xml");
    std::fs::write(&f, clash).unwrap();
    h.b.ok(&["define", f.to_str().unwrap()]);
    assert!(err_line(&migrate(&h, "cold1", &["--cold"])).contains("--dname"));
    h.b.ok(&["undefine", "cold1"]);
    assert!(err_line(&migrate(&h, "cold1", &["--cold", "--target-pool", "nope"])).contains("nope"));
    assert_eq!(
        std::fs::read_dir(&h.ib).unwrap().count(),
        0,
        "something was copied"
    );

    let out = migrate(&h, "cold1", &["--cold", "--verbose", "--undefinesource"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("on the wire"), "{text}");
    // The chain arrived, re-pointed at the copied base, equal to the source.
    for f in ["top.qcow2", "base.qcow2"] {
        let st = Command::new("qemu-img")
            .args(["compare", "-q"])
            .arg(h.ia.join(f))
            .arg(h.ib.join(f))
            .status()
            .unwrap();
        assert!(st.success(), "{f} differs");
    }
    let top: serde_json::Value =
        serde_json::from_str(&h.b.ok(&["vol-info", "top.qcow2", "--pool", "images", "--json"]))
            .unwrap();
    assert_eq!(top["backing"], h.ib.join("base.qcow2").to_str().unwrap());
    // Defined on the destination, gone from the source, source disks kept.
    assert!(!h.a.ok(&["list", "--all", "--name"]).contains("cold1"));
    assert!(h.ia.join("top.qcow2").exists());
    assert_eq!(h.b.ok(&["domstate", "cold1"]).trim(), "shut off");
    // The source kept its disks, so the destination synced its copies after
    // answering: each carried a marker until it was on disk.
    for f in ["top.qcow2", "base.qcow2"] {
        let marker = tern_transfer::durable::marker_path(&h.ib.join(f));
        let t = std::time::Instant::now();
        while marker.exists() {
            assert!(t.elapsed() < Duration::from_secs(60), "{f} never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let vols = h.b.ok(&["vol-list", "images"]);
    assert!(!vols.contains(".tern-"), "{vols}");
    // As if the host had restarted before the sync: the guest is refused.
    let marker = tern_transfer::durable::marker_path(&h.ib.join("top.qcow2"));
    std::fs::write(&marker, "00000000-0000-0000-0000-000000000000").unwrap();
    let e = err_line(&h.b.tern(&["start", "cold1"]));
    assert!(
        e.contains("may be incomplete") && e.contains("migrate"),
        "{e}"
    );
    assert_eq!(h.b.ok(&["domstate", "cold1"]).trim(), "shut off");
    std::fs::remove_file(&marker).unwrap();
    // It boots there and every block verifies from the disk.
    h.b.ok(&["start", "cold1"]);
    let text =
        h.b.wait_console("cold1", Duration::from_secs(90), "disk verification", |t| {
            t.contains("TERN-DISK verified") || t.contains("TERN-FAIL")
        });
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
}

#[test]
fn cold_migration_with_auto_start_and_source_storage_deletion() {
    let h = hosts("cauto");
    h.a.ok(&[
        "vol-create-as",
        "images",
        "ca.qcow2",
        "32M",
        "--format",
        "qcow2",
    ]);
    h.a.define_guest(&guest("ca", &h.ia.join("ca.qcow2")));
    write_blocks(&h.a, "ca");
    // `--offline --copy-storage-all` is the same cold migration; with
    // `--compressed` the engine sends zstd chunks.
    let out = migrate(
        &h,
        "ca",
        &[
            "--offline",
            "--persistent",
            "--copy-storage-all",
            "--auto-start",
            "--delete-source-storage",
            "--compressed",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.b.ok(&["domstate", "ca"]).starts_with("running"));
    assert!(!h.ia.join("ca.qcow2").exists(), "source disk kept");
    let text =
        h.b.wait_console("ca", Duration::from_secs(90), "disk verification", |t| {
            t.contains("TERN-DISK verified") || t.contains("TERN-FAIL")
        });
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
}

/// A tmpfs mount removed on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn no_room_is_refused_and_filling_up_mid_copy_fails_clearly_leaving_nothing() {
    if !tern_testkit::netns::is_root() {
        println!("skipping: mounting a small tmpfs pool needs root");
        return;
    }
    let h = hosts("full");
    let small = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64M", "tmpfs"])
        .arg(small.path())
        .status()
        .unwrap();
    assert!(st.success());
    let _mount = Tmpfs(small.path().to_path_buf());
    h.b.add_pool("small", small.path(), false);
    // More data than the pool has room for: refused before any copy.
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let huge = h.ia.join("huge.raw");
    write_random(&huge, 80, 7, None);
    let mut g = GuestSpec::new("full0", &img);
    g.disks.push(TestDisk {
        path: huge.clone(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    h.a.define_guest(&g);
    let e = err_line(&migrate(&h, "full0", &["--cold", "--target-pool", "small"]));
    assert!(e.contains("MiB free") && e.contains("small"), "{e}");
    assert_eq!(
        std::fs::read_dir(small.path()).unwrap().count(),
        0,
        "something was copied"
    );
    assert!(!h.b.ok(&["list", "--all", "--name"]).contains("full0"));
    // 40 MiB of data: it fits when checked, but not once something else
    // takes the room during the copy.
    let disk = h.ia.join("big.raw");
    write_random(&disk, 40, 0x9e37_79b9_7f4a_7c15, None);
    let before = std::fs::read(&disk).unwrap();
    let mut g = GuestSpec::new("full1", &img);
    g.disks.push(TestDisk {
        path: disk.clone(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    h.a.define_guest(&g);
    let child = Command::new(tern_testkit::bin("tern"))
        .args([
            "-c",
            &h.a.uri(),
            "migrate",
            "--cold",
            "--target-pool",
            "small",
            "--bandwidth",
            "8",
        ])
        .args(["full1", &h.b.uri()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let j: serde_json::Value =
            serde_json::from_str(&h.a.ok(&["domjobinfo", "full1", "--json"])).unwrap();
        if j["disk_processed"].as_u64().unwrap_or(0) > 4 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copy never started: {j}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Something else fills the pool.
    let filler = small.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=40", "status=none"])
        .arg(format!("of={}", filler.display()))
        .status();
    let out = child.wait_with_output().unwrap();
    let e = err_line(&out);
    assert!(e.contains("space"), "{e}");
    std::fs::remove_file(&filler).unwrap();
    let left: Vec<_> = std::fs::read_dir(small.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(std::fs::read(&disk).unwrap(), before, "the source changed");
    assert!(h.a.ok(&["list", "--all", "--name"]).contains("full1"));
    assert!(!h.b.ok(&["list", "--all", "--name"]).contains("full1"));
}
