//! One uid per guest (issue 15, "only the files of its own domain are made
//! accessible to it"): each guest's QEMU and swtpm run as a uid of the
//! host's `uid_range`, the files handed to a guest are its uid's alone and
//! go back to root when it lets go of them, the received volumes of a live
//! migration with storage belong to the destination's uid for the guest,
//! and undefine frees the uid.
//!
//! "Cannot open" (and "cannot signal") is tried with the exact
//! credentials of the other guest's running QEMU (uid, gid and groups from
//! /proc), as a compromised QEMU would try.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tern_testkit::creds::{owned_by, owner_mode, pids_of, test_uid_range, Creds};
use tern_testkit::fixtures::LocalPools;
use tern_testkit::{
    build_or_reuse, BuildOptions, GuestSpec, HostPair, SerialLog, TernHost, TestDisk, Which,
};

/// A `dominfo` field.
fn info(h: &TernHost, name: &str, key: &str) -> Option<String> {
    h.ok(&["dominfo", name]).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn qemu_pid(h: &TernHost, name: &str) -> u32 {
    info(h, name, "QEMU pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{name} has no QEMU pid"))
}

/// The running guest's QEMU credentials, checked against its DAC label.
fn creds(h: &TernHost, name: &str) -> Creds {
    let c = Creds::of_pid(qemu_pid(h, name));
    assert_eq!(
        info(h, name, "Security label"),
        Some(format!("+{}:+{}", c.uid, c.gid)),
        "{name}'s label"
    );
    assert_eq!(c.groups, [c.gid], "{name}: the one group -run-with sets");
    assert_eq!(c.gid, c.uid, "{name}: its own group, numbered as its uid");
    let (first, last) = test_uid_range(&h.root);
    assert!((first..=last).contains(&c.uid), "{name}: uid {}", c.uid);
    c
}

/// Attaches a fresh raw volume of the `images` pool to `name` as `target`;
/// returns its path.
fn hot_disk(h: &TernHost, pool_dir: &Path, name: &str, vol: &str, target: &str) -> PathBuf {
    hot_disk_in(h, "images", pool_dir, name, vol, target)
}

/// [`hot_disk`] from pool `pool`.
fn hot_disk_in(
    h: &TernHost,
    pool: &str,
    pool_dir: &Path,
    name: &str,
    vol: &str,
    target: &str,
) -> PathBuf {
    h.ok(&["vol-create-as", pool, vol, "16M"]);
    let path = pool_dir.join(vol);
    let xml = format!(
        "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>\
         <source file='{}'/><target dev='{target}' bus='virtio'/></disk>",
        path.display()
    );
    let f = h.root.join(format!("{vol}.xml"));
    std::fs::write(&f, xml).unwrap();
    h.ok(&["attach-device", name, f.to_str().unwrap(), "--live"]);
    path
}

fn denied(c: &Creds, what: &str, path: &Path) {
    let e = c
        .open(path)
        .expect_err(&format!("uid {} opened {what} {}", c.uid, path.display()));
    assert!(e.contains("Permission denied"), "{what}: {e}");
}

fn disk_writes_ok(h: &TernHost, name: &str, what: &str) {
    let text = h.wait_console(name, Duration::from_secs(120), what, |t| {
        let l = SerialLog::parse(t);
        l.count("TERN-DISK ok") >= 2 || !l.failures.is_empty()
    });
    let l = SerialLog::parse(&text);
    assert!(l.failures.is_empty(), "{what}: {:?}", l.failures);
}

#[test]
fn each_guest_has_its_own_uid_which_follows_a_storage_migration_and_is_released_on_undefine() {
    let mut h = LocalPools::start("guid");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    // g1: writes and verifies its qcow2 disk; it will migrate with storage.
    h.a.ok(&[
        "vol-create-as",
        "images",
        "g1.qcow2",
        "32M",
        "--format",
        "qcow2",
    ]);
    let mut g1 = GuestSpec::new("g1", &img).workload(
        "tern.mem=32 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_mb=8 tern.disk_rate=256",
    );
    g1.disks.push(TestDisk {
        path: h.ia.join("g1.qcow2"),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    h.a.define_guest(&g1);
    // g2: UEFI (a variable store) with a TPM and a disk, on the i440fx
    // machine (whose PCI bus takes hot-plugged disks); only its files
    // matter here, not its boot.
    h.a.ok(&["vol-create-as", "images", "g2.raw", "16M"]);
    let mut g2 = GuestSpec::new("g2", &img);
    g2.disks.push(TestDisk {
        path: h.ia.join("g2.raw"),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    let xml = g2
        .to_xml()
        .replace("<os>", "<os firmware='efi'>")
        .replace(
            "  </devices>",
            "    <tpm model='tpm-tis'>\n      <backend type='emulator' version='2.0'/>\n    </tpm>\n  </devices>",
        );
    let f = h.a.root.join("g2.xml");
    std::fs::write(&f, xml).unwrap();
    h.a.ok(&["define", f.to_str().unwrap()]);
    h.a.ok(&["start", "g1"]);
    h.a.ok(&["start", "g2"]);

    // Two QEMUs, two uids of the host's range, two groups.
    let (c1, c2) = (creds(&h.a, "g1"), creds(&h.a, "g2"));
    assert_ne!(c1.uid, c2.uid);
    assert_ne!(c1.gid, c2.gid);
    // What g1's group may read, g1 alone reads.
    let runs = h.a.state_dir().join("run");
    let probe = runs.join("g1-group-probe");
    std::fs::write(&probe, b"g1's group only\n").unwrap();
    std::os::unix::fs::chown(&probe, Some(0), Some(c1.gid)).unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    c1.open(&probe).expect("g1 reads a file of its group");
    denied(&c2, "a file of g1's group", &probe);
    let uuid2 = info(&h.a, "g2", "UUID").unwrap();
    let tpm2 = h.a.state_dir().join("tpm").join(&uuid2);
    let swtpm = pids_of("swtpm", &tpm2.display().to_string());
    assert_eq!(swtpm.len(), 1, "one swtpm for g2");
    assert_eq!(
        Creds::of_pid(swtpm[0]).uid,
        c2.uid,
        "swtpm runs as g2's uid"
    );
    assert_eq!(owner_mode(&tpm2), (c2.uid, c2.gid, 0o700));
    let nvram2 = h.a.state_dir().join("nvram/g2_VARS.fd");
    assert!(nvram2.exists(), "g2's variable store");

    // Hot-plugged disks go to their guest's uid alone.
    disk_writes_ok(&h.a, "g1", "g1's disk writes");
    let hot1 = hot_disk(&h.a, &h.ia, "g1", "g1-hot.raw", "vdb");
    let hot2 = hot_disk(&h.a, &h.ia, "g2", "g2-hot.raw", "vdb");
    assert_eq!(owner_mode(&hot1), (c1.uid, c1.gid, 0o600));
    assert_eq!(owner_mode(&hot2), (c2.uid, c2.gid, 0o600));
    c1.open(&hot1).expect("g1 opens its own hot-plugged disk");
    c2.open(&hot2).expect("g2 opens its own hot-plugged disk");
    c2.open(&tpm2).expect("g2 opens its own TPM state");

    // Neither opens the other's disk, variable store, TPM state or
    // hot-plugged disk.
    denied(&c1, "g2's disk", &h.ia.join("g2.raw"));
    denied(&c1, "g2's NVRAM", &nvram2);
    denied(&c1, "g2's TPM state", &tpm2);
    denied(&c1, "g2's hot-plugged disk", &hot2);
    denied(&c2, "g1's disk", &h.ia.join("g1.qcow2"));
    denied(&c2, "g1's hot-plugged disk", &hot1);
    // Nor signals (kills, stops) the other's QEMU; its own, it may.
    let e = c1
        .signal(qemu_pid(&h.a, "g2"))
        .expect_err("g1 signalled g2");
    assert!(e.contains("not permitted"), "{e}");
    c1.signal(qemu_pid(&h.a, "g1")).expect("g1 signals itself");

    // A restarted agent keeps every guest's uid.
    h.a.restart();
    assert_eq!(creds(&h.a, "g1"), c1);
    assert_eq!(creds(&h.a, "g2"), c2);

    // A detached disk and a stopped guest's files go back to root; the
    // stopped guest keeps its uid while it stays defined.
    h.a.ok(&[
        "detach-device",
        "g1",
        &h.a.root.join("g1-hot.raw.xml").display().to_string(),
        "--live",
    ]);
    assert_eq!(owner_mode(&hot1).0, 0, "detached disk given back");
    h.a.ok(&["destroy", "g2"]);
    assert_eq!(owner_mode(&hot2).0, 0, "g2's hot-plugged disk given back");
    assert_eq!(owner_mode(&tpm2).0, 0, "g2's TPM state given back");
    assert_eq!(
        info(&h.a, "g2", "Security label"),
        Some(format!("+{}:+{}", c2.uid, c2.gid))
    );

    // Live migration with storage: the received volume belongs to the
    // destination's uid for g1; nothing on the source keeps g1's uid.
    let o = h.migrate("g1", &["--live", "--copy-storage-all", "--persistent"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b1 = creds(&h.b, "g1");
    assert_eq!(owner_mode(&h.ib.join("g1.qcow2")), (b1.uid, b1.gid, 0o600));
    disk_writes_ok(&h.b, "g1", "g1's disk verified on the destination");
    for dir in [&h.ia, &h.a.root] {
        let left = owned_by(dir, c1.uid);
        assert!(left.is_empty(), "still g1's uid on the source: {left:?}");
    }

    // Undefine frees g1's uid on the source: the next guest gets it.
    assert_eq!(
        info(&h.a, "g1", "Security label"),
        Some(format!("+{}:+{}", c1.uid, c1.gid)),
        "a defined guest keeps its uid"
    );
    h.a.ok(&["undefine", "g1"]);
    h.a.define_guest(&GuestSpec::new("g3", &img));
    h.a.ok(&["start", "g3"]);
    assert_eq!(creds(&h.a, "g3").uid, c1.uid, "g1's uid was released");
    h.a.ok(&["destroy", "g3"]);
    h.b.ok(&["destroy", "g1"]);
    assert_eq!(owner_mode(&h.ib.join("g1.qcow2")).0, 0, "given back on b");
}

/// A pool both hosts see (a `--shared` dir pool, as an NFS mount would
/// be): a disk hot-plugged there is the guest's uid on the source while it
/// runs there; once the guest moved (live, storage not copied), the
/// destination's QEMU opened it as root at its start, the source gave it
/// back, and no host's uid stays on the shared file.
#[test]
fn a_disk_hot_plugged_on_shared_storage_carries_no_uid_once_its_guest_moved() {
    let p = HostPair::start("uidshared", &[], &[]);
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let spec = GuestSpec::new("s1", &img).workload(
        "tern.mem=32 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_hotplug=1 tern.disk_mb=4",
    );
    p.a.define_guest(&spec);
    p.a.ok(&["start", "s1"]);
    p.a.wait_console("s1", Duration::from_secs(120), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    let disk = hot_disk_in(&p.a, "shared", p.pool_dir(), "s1", "s1-hot.raw", "vda");
    let ca = creds(&p.a, "s1");
    assert_eq!(owner_mode(&disk), (ca.uid, ca.gid, 0o600));
    disk_writes_ok(&p.a, "s1", "writes to the hot-plugged disk");
    let m = p.migrate(Which::A, "s1", &["--live"]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    p.wait_settled_on(Which::B, "s1", Duration::from_secs(60));
    let cb = creds(&p.b, "s1");
    assert_ne!(cb.uid, ca.uid, "each host its own range");
    assert_eq!(
        owner_mode(&disk).0,
        0,
        "the source gave the shared disk back"
    );
    // The guest goes on verifying the disk there.
    let before = SerialLog::parse(&p.b.ok(&["console", "s1"])).count("TERN-DISK ok");
    p.b.wait_console("s1", Duration::from_secs(120), "disk checks there", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") > before
    });
    p.assert_guest_whole_on(Which::B, "s1");
    p.b.ok(&["destroy", "s1"]);
}
