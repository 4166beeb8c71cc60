//! Shared storage on NFS, as the walk-through sets it up: an NFS server
//! (nfs-ganesha + rpcbind) in namespace C, two agents in A and B, a netfs
//! pool defined on both with the walk-through's commands, a qcow2 volume on
//! the export, and a guest on it migrated live there and back without
//! copying storage. Real QEMU under TCG; needs root and the NFS packages.

use std::path::PathBuf;
use std::time::Duration;
use tern_testkit::checks::{live_migrate, wait_disk_ok};
use tern_testkit::netns::{skip_unless_root, Lab, Side};
use tern_testkit::nfs::{skip_without_nfs_server, walk_through_pool, NfsPair, NfsServer};
use tern_testkit::ping::Pinger;
use tern_testkit::{
    build_or_reuse, BuildOptions, ConsoleWatcher, GuestSpec, SerialLog, TernHost, TestController,
    TestDisk,
};

fn skip(test: &str) -> bool {
    skip_unless_root(test) || skip_without_nfs_server(test)
}

fn pool_access(h: &TernHost) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["pool-info", "nfspool", "--json"])).unwrap();
    assert_eq!(v["kind"], "netfs", "{v}");
    assert_eq!(v["shared"], true, "{v}");
    assert_eq!(v["active"], true, "{v}");
    v["access"].as_str().unwrap_or_default().to_string()
}

#[test]
fn walk_through_nfs_pool_and_live_migration_there_and_back() {
    let test = "walk_through_nfs_pool_and_live_migration_there_and_back";
    if skip(test) {
        return;
    }
    let p = NfsPair::start("wt");
    let access = pool_access(&p.a);
    assert_eq!(access, pool_access(&p.b));
    let info = p.a.ok(&["pool-info", "nfspool"]);
    for needle in ["netfs", &format!("{}:/nfs", p.nfs.host()), "running"] {
        assert!(info.contains(needle), "{needle} not in\n{info}");
    }
    p.a.ok(&[
        "vol-create-as",
        "nfspool",
        "test01",
        "64M",
        "--format",
        "qcow2",
    ]);
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
    let guest_ip = p.lab.addr(60);
    let mut spec = GuestSpec::new(name, &img).workload(&format!(
        "tern.mem=32 tern.dirty=5 tern.disk=/dev/vda tern.disk_mb=4 tern.ip={guest_ip}/24"
    ));
    spec.bridge = Some((
        "br0".into(),
        format!("52:54:00:78:{:02x}:3c", p.lab.subnet()),
    ));
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
    // The walk-through pings the guest throughout, from a third host.
    assert!(
        p.lab.wait_ping(Side::C, guest_ip, Duration::from_secs(30)),
        "the guest never answered ping from c"
    );
    let pinger = Pinger::start(&p.lab, Side::C, guest_ip);
    pinger.wait_received(10, Duration::from_secs(20), "before migrating");

    // There (managed), and back (peer to peer, driven by B's agent).
    let there = live_migrate(&p.a, &[], name, &p.b.uri());
    wait_disk_ok(&p.b, name, 2);
    assert_eq!(p.b.ok(&["domstate", name]).trim(), "running");
    let n = pinger.received();
    pinger.wait_received(n + 10, Duration::from_secs(20), "on B");
    let back = live_migrate(&p.b, &["--p2p"], name, &p.lab.tcp_uri(Side::A));
    wait_disk_ok(&p.a, name, 2);
    assert_eq!(p.a.ok(&["domstate", name]).trim(), "running");
    let n = pinger.received();
    pinger.wait_received(n + 10, Duration::from_secs(20), "back on A");
    let ping = pinger.stop();
    let downtime = |h: &TernHost| -> u64 {
        let j: serde_json::Value =
            serde_json::from_str(&h.ok(&["domjobinfo", name, "--completed", "--json"])).unwrap();
        j["downtime_ms"].as_u64().unwrap_or(0)
    };
    let (d_there, d_back) = (downtime(&p.a), downtime(&p.b));
    // One request every 50 ms: a pause of D ms swallows about D/50 of them;
    // two more per switch-over for the bridge to learn where the NIC went.
    let allowed = (d_there + d_back) / 50 + 4;
    assert!(
        ping.lost.len() as u64 <= allowed,
        "pings lost {:?} (downtime {d_there} + {d_back} ms allows {allowed})",
        ping.lost
    );

    // The definition still names the volume by its path under the target.
    let xml = p.a.ok(&["dumpxml", name]);
    assert!(
        xml.contains(&format!(
            "<source file='{}'/>",
            p.target.join("test01").display()
        )),
        "{xml}"
    );
    let report = w.finish();
    assert!(!report.went_backwards, "heartbeat went backwards");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    println!("pool access: {access}\nthere: {there}\nback: {back}");
    println!(
        "pings from c every 50 ms: {} sent, {} answered, lost {:?}; longest silence {} ms",
        ping.transmitted,
        ping.received,
        ping.lost,
        ping.longest_silence.as_millis()
    );
    println!(
        "heartbeats {}..{}, longest gap {} ms, missing {}",
        report.first_seq,
        report.last_seq,
        report.max_gap.as_millis(),
        report.missing
    );
}

/// A guest whose disks are `<disk type='network'>` (protocol nfs, on the
/// export) and `<disk type='volume'>` (a volume of the netfs pool): it
/// starts from them, `dumpxml` prints them back as written, and it
/// migrates live without copying storage.
#[test]
fn network_and_volume_disks_start_round_trip_and_migrate() {
    let test = "network_and_volume_disks_start_round_trip_and_migrate";
    if skip(test) {
        return;
    }
    let p = NfsPair::start("nd");
    p.a.ok(&[
        "vol-create-as",
        "nfspool",
        "net01",
        "64M",
        "--format",
        "qcow2",
    ]);
    p.a.ok(&["vol-create-as", "nfspool", "vol02", "8M", "--format", "raw"]);
    let name = "nfsg2";
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let spec = GuestSpec::new(name, &img)
        .workload("tern.mem=32 tern.dirty=5 tern.disk=/dev/vda tern.disk_mb=4");
    let network = format!(
        "    <disk type='network' device='disk'>\n      <driver name='qemu' type='qcow2' cache='none'/>\n      <source protocol='nfs' name='nfs/net01'>\n        <host name='{}'/>\n      </source>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n",
        p.nfs.host()
    );
    let volume = "    <disk type='volume' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source pool='nfspool' volume='vol02'/>\n      <target dev='vdb' bus='virtio'/>\n    </disk>\n";
    let xml = spec.to_xml().replace(
        "    <serial type='pty'>",
        &format!("{network}{volume}    <serial type='pty'>"),
    );
    let file = p.root.path().join(format!("{name}.xml"));
    std::fs::write(&file, &xml).unwrap();
    p.a.ok(&["define", file.to_str().unwrap()]);
    p.a.ok(&["start", name]);
    let w = ConsoleWatcher::start();
    w.add(p.a.console_log(name), true);
    w.add(p.b.console_log(name), true);
    wait_disk_ok(&p.a, name, 2);

    {
        let dump = p.a.ok(&["dumpxml", name]);
        assert!(
            dump.contains("<disk type='network' device='disk'>"),
            "{dump}"
        );
        assert!(
            dump.contains(&format!(
                "<source protocol='nfs' name='nfs/net01'>\n        <host name='{}'/>",
                p.nfs.host()
            )),
            "{dump}"
        );
        assert!(
            dump.contains("<source pool='nfspool' volume='vol02'/>"),
            "{dump}"
        );
    }
    let blk = p.a.ok(&["domblklist", name]);
    assert!(
        blk.contains(&format!("nfs://{}/nfs/net01", p.nfs.host())),
        "{blk}"
    );
    assert!(
        blk.contains(&p.target.join("vol02").display().to_string()),
        "{blk}"
    );
    live_migrate(&p.a, &[], name, &p.b.uri());
    wait_disk_ok(&p.b, name, 2);
    let dump = p.b.ok(&["dumpxml", name]);
    assert!(
        dump.contains("<source pool='nfspool' volume='vol02'/>"),
        "{dump}"
    );
    assert!(dump.contains("protocol='nfs'"), "{dump}");
    let report = w.finish();
    assert!(!report.went_backwards, "heartbeat went backwards");
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // Removing the guest with its storage (A kept the persistent
    // definition) deletes its pool volume on the export; the network disk
    // is no pool's, so it stays.
    p.b.ok(&["destroy", name]);
    let out = p.a.ok(&["undefine", name, "--remove-all-storage"]);
    assert!(!p.nfs.export_dir().join("vol02").exists(), "{out}");
    assert!(p.nfs.export_dir().join("net01").exists(), "{out}");
    let list = p.a.ok(&["vol-list", "nfspool"]);
    assert!(list.contains("net01") && !list.contains("vol02"), "{list}");
}

/// A netfs pool whose server does not answer is refused at pool-start with
/// the reason, and stays inactive.
#[test]
fn netfs_pool_start_names_an_unreachable_server() {
    let test = "netfs_pool_start_names_an_unreachable_server";
    if skip_unless_root(test) {
        return;
    }
    let lab = Lab::start();
    let root = tempfile::tempdir().unwrap();
    let a = TernHost::start_with(lab.host_options(Side::A, "unreach-a"));
    let t = root.path().join("p");
    let target = t.to_str().unwrap();
    let c = lab.host_addr(Side::C).to_string();
    a.ok(&[
        "pool-define-as",
        "far",
        "netfs",
        "--source-host",
        &c,
        "--source-path",
        "/nfs",
        "--source-format",
        "nfs",
        "--target",
        target,
        "--access",
        "qemu",
    ]);
    a.ok(&["pool-build", "far"]);
    let err = a.fails(&["pool-start", "far"]);
    assert!(err.contains("cannot start pool 'far'"), "{err}");
    assert!(err.contains(&c), "{err}");
    let info = a.ok(&["pool-info", "far"]);
    assert!(info.contains("netfs"), "{info}");
    assert!(info.contains("inactive"), "{info}");
    a.ok(&["pool-undefine", "far"]);

    // Forced kernel access: `mount ... -t nfs` runs, and its failure (this
    // kernel may have no NFS client; the server is not there anyway) is
    // reported with the command, leaving the pool inactive.
    a.ok(&[
        "pool-define-as",
        "mnt",
        "--type",
        "netfs",
        "--source-host",
        &c,
        "--source-path",
        "/nfs",
        "--target",
        target,
        "--access",
        "mount",
    ]);
    let err = a.fails(&["pool-start", "mnt"]);
    assert!(err.contains("cannot start pool 'mnt'"), "{err}");
    assert!(
        err.contains(&format!(
            "mount -o nodev,nosuid,noexec -t nfs {c}:/nfs {target}"
        )),
        "{err}"
    );
    let info = a.ok(&["pool-info", "mnt"]);
    assert!(info.contains("inactive"), "{info}");
    assert!(info.contains("mount (when started)"), "{info}");
    drop(a);
    drop(lab);
}

/// Two hosts whose pools share a name and a target path but not the
/// export: the shared-storage proof (a token the destination writes and
/// the source must read) refuses the migration, and the guest runs on.
#[test]
fn migration_between_different_exports_is_refused_by_the_token_check() {
    let test = "migration_between_different_exports_is_refused_by_the_token_check";
    if skip(test) {
        return;
    }
    let lab = Lab::start();
    let nfs = NfsServer::start(&lab.ns(Side::C), lab.host_addr(Side::C));
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("nfspool");
    let t = target.to_str().unwrap();
    let a = TernHost::start_with(lab.host_options(Side::A, "split-a"));
    let b = TernHost::start_with(lab.host_options(Side::B, "split-b"));
    walk_through_pool(&a, "nfspool", &nfs, &target);
    let host = nfs.host();
    b.ok(&[
        "pool-define-as",
        "nfspool",
        "--type",
        "netfs",
        "--source-host",
        &host,
        "--source-path",
        nfs.second_export_path(),
        "--target",
        t,
    ]);
    b.ok(&["pool-start", "nfspool"]);
    for h in [&a, &b] {
        h.ok(&[
            "vol-create-as",
            "nfspool",
            "split01",
            "64M",
            "--format",
            "qcow2",
        ]);
    }
    let name = "split1";
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img)
        .workload("tern.mem=32 tern.dirty=5 tern.disk=/dev/vda tern.disk_mb=4");
    spec.disks.push(TestDisk {
        path: target.join("split01"),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    a.define_guest(&spec);
    a.ok(&["start", name]);
    wait_disk_ok(&a, name, 1);
    let err = String::from_utf8_lossy(&a.tern(&["migrate", "--live", name, &b.uri()]).stderr)
        .into_owned();
    assert!(
        err.contains("pool 'nfspool' is not the same storage"),
        "{err}"
    );
    assert_eq!(a.ok(&["domstate", name]).trim(), "running");
    wait_disk_ok(&a, name, 1);
    assert!(b.qemu_pids().is_empty(), "B kept an incoming QEMU");

    // A cold migration would leave the disk in place (only QEMU reaches the
    // export here): the same proof refuses it before anything moves.
    a.ok(&["destroy", name]);
    let err = String::from_utf8_lossy(&a.tern(&["migrate", "--cold", name, &b.uri()]).stderr)
        .into_owned();
    assert!(
        err.contains("pool 'nfspool' is not the same storage"),
        "{err}"
    );
    assert!(a.ok(&["list", "--all", "--name"]).contains(name));
    assert!(!b.ok(&["list", "--all", "--name"]).contains(name));
    // The destination removed its tokens when the migrations failed.
    for dir in [nfs.export_dir(), nfs.export_dir().with_file_name("export2")] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tern-share"))
            .collect();
        assert!(left.is_empty(), "{left:?} in {}", dir.display());
    }

    drop(a);
    drop(b);
    drop(nfs);
    drop(lab);
}

/// Host-down recovery with the guest's disk on NFS: the controller (in C,
/// with the NFS server) sees A die and restarts the guest on B from the
/// same export; the guest verifies at boot every disk block it wrote on A.
/// QEMU's image locks do not reach across hosts over nfs://: A's QEMU is
/// dead (killed with its agent, the fencing the cluster rules require)
/// before B's opens the image.
#[test]
fn host_down_restarts_the_guest_from_its_nfs_disk_elsewhere() {
    let test = "host_down_restarts_the_guest_from_its_nfs_disk_elsewhere";
    if skip(test) {
        return;
    }
    let lab = Lab::start();
    let nfs = NfsServer::start(&lab.ns(Side::C), lab.host_addr(Side::C));
    let c = TestController::file_in_netns(&lab.ns(Side::C), lab.host_addr(Side::C), &[]);
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("nfspool");
    let join = |side: Side, name: &str| TestController::join(&[&c], lab.host_options(side, name));
    let mut a = join(Side::A, "a");
    let b = join(Side::B, "b");
    for h in [&a, &b] {
        walk_through_pool(h, "nfspool", &nfs, &target);
    }
    a.ok(&[
        "vol-create-as",
        "nfspool",
        "web01",
        "64M",
        "--format",
        "qcow2",
    ]);
    let name = "web";
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img)
        .workload("tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=4");
    spec.memory_mib = 128;
    spec.disks.push(TestDisk {
        path: target.join("web01"),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    a.define_guest(&spec);
    a.ok(&["start", name]);
    wait_disk_ok(&a, name, 2);
    let long = Duration::from_secs(120);
    c.wait_json(&["server-show", name], long, "web running on a", |v| {
        v["host"] == "a" && v["state"] == "running"
    });
    let disks = c.json(&["server-show", name]);
    assert!(disks.to_string().contains("\"shared\":true"), "{disks}");
    c.ok(&[
        "host-auto-migrate-on-host-down",
        "a",
        "--auto-migrate-on-host-down",
        "enable",
    ]);
    // The agent learns the policy (and arms fencing) on its next heartbeat.
    std::thread::sleep(Duration::from_secs(2));

    // The host dies, its fence process too: its lease on the export (written
    // with the agent's NFS client) stops, and the controller waits that out.
    tern_testkit::fencing::kill_host(&mut a);
    c.wait_json(&["server-show", name], long, "web running on b", |v| {
        v["host"] == "b" && v["state"] == "running"
    });
    let text = b.wait_console(name, long, "the disk verified at boot", |t| {
        t.contains("TERN-DISK verified") || t.contains("TERN-FAIL")
    });
    let log = SerialLog::parse(&text);
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    assert!(text.contains("TERN-DISK verified"), "{text}");
    let blk = b.ok(&["domblklist", name]);
    assert!(
        blk.contains(&target.join("web01").display().to_string()),
        "{blk}"
    );
    drop(b);
    drop(a);
    drop(c);
    drop(nfs);
    drop(lab);
}

/// A volume of the NFS pool attached to a running guest with
/// `attach-device`, written by the guest, live-migrated over the shared
/// export and verified on the destination.
#[test]
fn a_disk_attached_from_the_nfs_pool_migrates() {
    let test = "a_disk_attached_from_the_nfs_pool_migrates";
    if skip(test) {
        return;
    }
    let p = NfsPair::start("hn");
    p.a.ok(&[
        "vol-create-as",
        "nfspool",
        "hot01",
        "16M",
        "--format",
        "raw",
    ]);
    let name = "nfshot";
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let spec = GuestSpec::new(name, &img)
        .workload("tern.mem=32 tern.disk=/dev/vda tern.disk_hotplug=1 tern.disk_mb=4");
    p.a.define_guest(&spec);
    p.a.ok(&["start", name]);
    tern_testkit::pair::wait_ready(&p.a, name, 3);
    let file = p.root.path().join("hot01.xml");
    std::fs::write(
        &file,
        "<disk type='volume' device='disk'><driver name='qemu' type='raw' cache='none'/>\
         <source pool='nfspool' volume='hot01'/><target dev='vda' bus='virtio'/></disk>",
    )
    .unwrap();
    let out =
        p.a.ok(&["attach-device", name, file.to_str().unwrap(), "--live"]);
    assert!(out.contains("attached successfully"), "{out}");
    wait_disk_ok(&p.a, name, 2);
    live_migrate(&p.a, &[], name, &p.b.uri());
    wait_disk_ok(&p.b, name, 2);
    assert!(p.b.ok(&["dumpxml", name]).contains("volume='hot01'"));
}
