//! Shared storage on NFS, as the walk-through sets it up: an NFS server
//! (nfs-ganesha + rpcbind) in namespace C, two agents in A and B, a netfs
//! pool defined on both with the walk-through's commands, a qcow2 volume on
//! the export, and a guest on it migrated live there and back without
//! copying storage. Real QEMU under TCG; needs root and the NFS packages.

use std::path::PathBuf;
use std::time::Duration;
use tern_testkit::netns::{skip_unless_root, Lab, Side};
use tern_testkit::nfs::{skip_without_nfs_server, walk_through_pool, NfsServer};
use tern_testkit::{build_or_reuse, BuildOptions, ConsoleWatcher, GuestSpec, SerialLog, TernHost, TestDisk};

/// Agents first, then the server, then the namespaces.
struct NfsPair {
    a: TernHost,
    b: TernHost,
    nfs: NfsServer,
    target: PathBuf,
    _root: tempfile::TempDir,
    lab: Lab,
}

fn skip(test: &str) -> bool {
    skip_unless_root(test) || skip_without_nfs_server(test)
}

fn nfs_pair(name: &str) -> NfsPair {
    let lab = Lab::start();
    let nfs = NfsServer::start(&lab.ns(Side::C), lab.host_addr(Side::C));
    let root = tempfile::Builder::new().prefix("tern-mykvm-").tempdir().unwrap();
    let target = root.path().join("nfspool");
    let a = TernHost::start_with(lab.host_options(Side::A, &format!("{name}-a")));
    let b = TernHost::start_with(lab.host_options(Side::B, &format!("{name}-b")));
    for h in [&a, &b] {
        walk_through_pool(h, "nfspool", &nfs, &target);
    }
    NfsPair {
        a,
        b,
        nfs,
        target,
        _root: root,
        lab,
    }
}

fn pool_access(h: &TernHost) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["pool-info", "nfspool", "--json"])).unwrap();
    assert_eq!(v["kind"], "netfs", "{v}");
    assert_eq!(v["shared"], true, "{v}");
    assert_eq!(v["active"], true, "{v}");
    v["access"].as_str().unwrap_or_default().to_string()
}

fn disk_oks(text: &str) -> usize {
    SerialLog::parse(text).count("TERN-DISK ok")
}

/// Waits until the guest on `h` has reported `more` new disk checks.
fn wait_disk_ok(h: &TernHost, name: &str, more: usize) {
    let before = disk_oks(&h.ok(&["console", name]));
    h.wait_console(name, Duration::from_secs(90), "more TERN-DISK ok lines", |t| {
        disk_oks(t) >= before + more || t.contains("TERN-FAIL")
    });
    let text = h.ok(&["console", name]);
    assert!(
        SerialLog::parse(&text).failures.is_empty(),
        "guest reported a failure:\n{}",
        tern_testkit::tail(&text, 20)
    );
}

fn migrate(from: &TernHost, flags: &[&str], name: &str, dest: &str) -> String {
    let mut args = vec!["migrate", "--live", "--verbose"];
    args.extend_from_slice(flags);
    args.extend([name, dest]);
    let out = from.tern(&args);
    assert!(
        out.status.success(),
        "tern {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn walk_through_nfs_pool_and_live_migration_there_and_back() {
    let test = "walk_through_nfs_pool_and_live_migration_there_and_back";
    if skip(test) {
        return;
    }
    let p = nfs_pair("wt");
    let access = pool_access(&p.a);
    assert_eq!(access, pool_access(&p.b));
    p.a.ok(&["vol-create-as", "nfspool", "test01", "64M", "--format", "qcow2"]);
    // The other host sees the volume, and the server holds it.
    let list = p.b.ok(&["vol-list", "nfspool"]);
    assert!(list.contains("test01"), "{list}");
    let info = p.b.ok(&["vol-info", "test01", "--pool", "nfspool"]);
    assert!(info.contains("qcow2"), "{info}");
    assert!(p.nfs.export_dir().join("test01").is_file());
    let path = p.a.ok(&["vol-path", "test01", "--pool", "nfspool"]);
    assert_eq!(PathBuf::from(path.trim()), p.target.join("test01"));
    if access == "qemu" {
        // Nothing is mounted: the path is only the name disks use.
        assert!(!p.target.join("test01").exists());
    }

    let name = "nfsg1";
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img)
        .workload("tern.mem=32 tern.dirty=5 tern.disk=/dev/vda tern.disk_mb=4");
    spec.disks.push(TestDisk {
        path: p.target.join("test01"),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    p.a.define_guest(&spec);
    p.a.ok(&["start", name]);
    let w = ConsoleWatcher::start();
    w.add(p.a.console_log(name), true);
    w.add(p.b.console_log(name), true);
    wait_disk_ok(&p.a, name, 2);

    // There (managed), and back (peer to peer, driven by B's agent).
    let there = migrate(&p.a, &[], name, &p.b.uri());
    wait_disk_ok(&p.b, name, 2);
    assert_eq!(p.b.ok(&["domstate", name]).trim(), "running");
    let back = migrate(&p.b, &["--p2p"], name, &p.lab.tcp_uri(Side::A));
    wait_disk_ok(&p.a, name, 2);
    assert_eq!(p.a.ok(&["domstate", name]).trim(), "running");

    // The definition still names the volume by its path under the target.
    let xml = p.a.ok(&["dumpxml", name]);
    assert!(
        xml.contains(&format!("<source file='{}'/>", p.target.join("test01").display())),
        "{xml}"
    );
    let report = w.finish();
    assert!(!report.went_backwards, "heartbeat went backwards");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    println!("pool access: {access}\nthere: {there}\nback: {back}");
    println!(
        "heartbeats {}..{}, longest gap {} ms, missing {}",
        report.first_seq,
        report.last_seq,
        report.max_gap.as_millis(),
        report.missing
    );
}
