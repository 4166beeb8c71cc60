//! logical (LVM) pools for real (issue 16): this machine's kernel has no
//! device-mapper, so no logical volume can be opened here. The Debian
//! test guest has one, and two extra disks: inside it run two `ternd`
//! (A and B, units of their own), each with a logical pool defined as
//! virsh users spell it (`pool-define-as vgA logical --source-dev
//! /dev/vdb --target /dev/vgA`), its group built by `pool-build`. What
//! `lvs`, `vgs` and `pvs` in the guest say is what the test believes.
//!
//! - The pool's life: build, start, volumes created, listed, described
//!   and deleted, `pool-destroy` deactivating and `pool-start`
//!   reactivating them, `pool-undefine` leaving the group.
//! - Cold migration of a shut-off domain whose disk is a `type='block'`
//!   logical volume of A's group into B's: B gets a logical volume (a
//!   block device, not a file) with every byte, checksummed on both sides.
//! - Live migration with `--copy-storage-all` between the two groups of a
//!   running QEMU whose disk holds data written before it started. By
//!   default that QEMU runs only its firmware (SeaBIOS, which reads the
//!   disk and never writes it): a nested TCG guest takes 8 to 13 minutes
//!   to boot here, so the destination's volume is checked byte for byte
//!   against the source's. With `TERN_NESTED_TCG=1` the busybox test
//!   guest also boots on a logical volume, writes and verifies its disk,
//!   moves live and verifies it again on B, as it reports on its console.
//!
//! One boot of the Debian guest for the whole file.

use std::time::{Duration, Instant};
use tern_testkit::debian_vm::{DebianVm, GuestAgent, VmOptions};
use tern_testkit::netns::{skip_unless_root, Lab, Side};
use tern_testkit::vm_lvm::{
    block_domain_xml, lv, lvs, sha256, vg_pvs, vg_space, write_pattern, LvRow,
};
use tern_testkit::{build_or_reuse, BuildOptions, GuestImage, GuestSpec, SerialLog, TestDisk};

/// Size of every test volume: whole 4 MiB extents, room for the pattern.
const VOL: &str = "16M";
const VOL_BYTES: u64 = 16 << 20;
/// Where the nested guest's kernel and initrd are shared into the VM.
const GUEST_SHARE: &str = "/mnt/tern-guest";
/// Where they are copied for QEMU (the share is root's, read-only 9p).
const BOOT_DIR: &str = "/var/lib/tern-boot";

fn nested() -> bool {
    std::env::var_os("TERN_NESTED_TCG").is_some_and(|v| v == "1")
}

/// The agent's config: guest uids of its own (both agents share one
/// kernel), and the nested guest's boot files.
fn config(first_uid: u32) -> String {
    format!(
        "[qemu]\nuid_range = \"{first_uid}-{}\"\nallowed_paths = [\"{BOOT_DIR}\"]\n",
        first_uid + 999
    )
}

fn json(agent: &GuestAgent, args: &[&str]) -> serde_json::Value {
    let out = agent.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tern {args:?}: {e}: {out}"))
}

fn domstate(agent: &GuestAgent, name: &str) -> String {
    agent
        .ok(&["domstate", name])
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn logical_pools_on_real_lvm_inside_debian_copy_block_disks_cold_and_live() {
    let name = "logical_pools_on_real_lvm_inside_debian_copy_block_disks_cold_and_live";
    if skip_unless_root(name) {
        return;
    }
    // Declared in reverse order of dropping: the agents stop first, then
    // QEMU (the disks go with its directory), then the namespace.
    let lab = Lab::start();
    let image = nested().then(|| build_or_reuse(&BuildOptions::default()).expect("test guest"));
    let mut shares = Vec::new();
    if let Some(img) = &image {
        let dir = img.kernel.parent().expect("guest image dir").to_path_buf();
        shares.push(("terntg".to_string(), dir));
    }
    let started = Instant::now();
    let vm = DebianVm::boot_with(&VmOptions {
        netns: Some(lab.ns(Side::A)),
        disks_mib: vec![128, 128],
        shares,
    });
    eprintln!("the Debian guest booted in {:?}", started.elapsed());
    // Debian's kernel has what this machine's lacks, as a module that
    // nothing may have loaded yet: pool-start must not need it loaded.
    // Debian's boot loads it (lvm2's services): unloaded here, so that
    // pool-start meets the module not loaded, as on a host without them.
    let dm =
        vm.sh("modprobe -r dm_mod; grep -w device-mapper /proc/misc; ls -l /dev/mapper/control");
    eprintln!(
        "device-mapper before pool-start: {}{}",
        dm.stdout, dm.stderr
    );
    let a = GuestAgent::start_as(&vm, "ternd-a", Some(&config(1_900_100_000)));
    let b = GuestAgent::start_as(&vm, "ternd-b", Some(&config(1_900_200_000)));
    let (dev_a, dev_b) = (vm.extra_disk(0), vm.extra_disk(1));
    for (agent, pool, dev) in [(&a, "vgA", &dev_a), (&b, "vgB", &dev_b)] {
        build_and_start(&vm, agent, pool, dev);
    }

    vm.sh_ok("dmsetup version");
    volumes_live_and_die_with_lvm(&vm, &a);
    cold_copy_into_the_other_group(&vm, &a, &b);
    live_copy_of_a_running_qemu(&vm, &a, &b);
    if nested() {
        let t = Instant::now();
        nested_guest_moves_live_between_groups(&vm, &a, &b, image.as_ref().unwrap());
        eprintln!("the nested guest ran and moved in {:?}", t.elapsed());
    } else {
        eprintln!(
            "TERN_NESTED_TCG is not 1: the live copy moved a QEMU running its firmware only; no guest booted (nested TCG)"
        );
    }

    for (agent, pool) in [(&a, "vgA"), (&b, "vgB")] {
        agent.ok(&["pool-destroy", pool]);
        assert!(
            lvs(&vm, pool).iter().all(|l| !l.active),
            "pool-destroy left volumes of {pool} active: {:?}",
            lvs(&vm, pool)
        );
        agent.ok(&["pool-undefine", pool]);
        assert!(!agent.ok(&["pool-list", "--all"]).contains(pool));
        // The group and its data stay: pool-undefine never deletes data.
        assert!(vg_space(&vm, pool).is_some(), "{pool} is gone");
    }
    eprintln!("done {:?} after boot", started.elapsed());
    drop(a);
    drop(b);
    drop(vm);
    drop(lab);
}

/// `pool-define-as POOL logical --source-dev DEV --target /dev/POOL` (the
/// group named after the pool, as libvirt names it), built and started:
/// a group on exactly that device, its size what the pool reports.
fn build_and_start(vm: &DebianVm, agent: &GuestAgent, pool: &str, dev: &str) {
    let target = format!("/dev/{pool}");
    agent.ok(&[
        "pool-define-as",
        pool,
        "logical",
        "--source-dev",
        dev,
        "--target",
        &target,
    ]);
    assert_eq!(vg_space(vm, pool), None, "defining made a group");
    agent.ok(&["pool-build", pool]);
    assert_eq!(vg_pvs(vm, pool), [dev.to_string()]);
    agent.ok(&["pool-start", pool]);
    let (size, free) = vg_space(vm, pool).expect("pool-build made no group");
    let info = json(agent, &["pool-info", pool, "--json"]);
    assert_eq!(info["kind"], "logical", "{info}");
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["target"], target, "{info}");
    assert_eq!(info["logical"]["vg"], pool, "{info}");
    assert_eq!(info["capacity"], size, "{info}");
    assert_eq!(info["available"], free, "{info}");
}

/// Volumes are logical volumes: created at whole extents, listed and
/// described as LVM says, deactivated by `pool-destroy`, activated again
/// by `pool-start`, removed by `vol-delete`.
fn volumes_live_and_die_with_lvm(vm: &DebianVm, a: &GuestAgent) {
    a.ok(&["vol-create-as", "vgA", "scratch", "10M"]);
    // LVM rounds up to whole 4 MiB extents.
    let row = lv(vm, "vgA", "scratch").expect("vol-create-as made no volume");
    assert_eq!(
        row,
        LvRow {
            name: "scratch".into(),
            size: 12 << 20,
            active: true
        }
    );
    vm.sh_ok("test -b /dev/vgA/scratch");
    // The pool's room is the group's, as vgs counts it.
    let (_, free) = vg_space(vm, "vgA").unwrap();
    let info = json(a, &["pool-info", "vgA", "--json"]);
    assert_eq!(info["available"], free, "{info}");
    let v = json(a, &["vol-info", "scratch", "--pool", "vgA", "--json"]);
    assert_eq!(v["format"], "raw", "{v}");
    assert_eq!(v["capacity"], 12 << 20, "{v}");
    assert_eq!(v["path"], "/dev/vgA/scratch", "{v}");
    let list = a.ok(&["vol-list", "vgA"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some("scratch")
                && l.contains("/dev/vgA/scratch")),
        "{list}"
    );
    let err = a.tern(&["vol-create-as", "vgA", "q", "8M", "--format", "qcow2"]);
    assert!(
        err.code != 0 && err.stderr.contains("is a logical pool"),
        "{err:?}"
    );
    assert_eq!(lv(vm, "vgA", "q"), None);

    // pool-destroy deactivates (the node goes), pool-start activates.
    a.ok(&["pool-destroy", "vgA"]);
    assert!(!lv(vm, "vgA", "scratch").unwrap().active);
    vm.sh_ok("test ! -e /dev/vgA/scratch");
    a.ok(&["pool-start", "vgA"]);
    assert!(lv(vm, "vgA", "scratch").unwrap().active);
    vm.sh_ok("test -b /dev/vgA/scratch");

    a.ok(&["vol-delete", "scratch", "--pool", "vgA"]);
    assert_eq!(lv(vm, "vgA", "scratch"), None);
    assert!(!a.ok(&["vol-list", "vgA"]).contains("scratch"));
}

/// A volume of `VOL` in `pool` holding the pattern; its checksum.
fn volume_with_data(vm: &DebianVm, agent: &GuestAgent, pool: &str, vol: &str) -> String {
    agent.ok(&["vol-create-as", pool, vol, VOL]);
    let dev = format!("/dev/{pool}/{vol}");
    write_pattern(vm, &dev, &format!("TERN-LVM {vol}"));
    sha256(vm, &dev)
}

/// Defines, on `agent`, the firmware-only domain `name` on `dev`.
fn define_block_domain(vm: &DebianVm, agent: &GuestAgent, name: &str, dev: &str) {
    let file = format!("/root/{name}.xml");
    vm.write_file(&file, &block_domain_xml(name, dev));
    agent.ok(&["define", &file]);
}

/// B's definition of `name` names its logical volume as a block disk.
fn assert_block_disk_on_b(b: &GuestAgent, name: &str, vol: &str) {
    let xml = b.ok(&["dumpxml", name]);
    assert!(xml.contains("<disk type='block'"), "{xml}");
    assert!(xml.contains(&format!("/dev/vgB/{vol}'")), "{xml}");
}

/// The arrived volume: a logical volume of B's group of the source's
/// size, a block device (not a file in /dev/vgB), every byte the same.
fn assert_arrived(vm: &DebianVm, vol: &str, sum: &str) {
    let row = lv(vm, "vgB", vol).unwrap_or_else(|| panic!("no volume {vol} in vgB"));
    assert_eq!((row.size, row.active), (VOL_BYTES, true), "{row:?}");
    vm.sh_ok(&format!("test -b /dev/vgB/{vol} && test -L /dev/vgB/{vol}"));
    assert_eq!(sha256(vm, &format!("/dev/vgB/{vol}")), sum, "{vol} differs");
}

fn cold_copy_into_the_other_group(vm: &DebianVm, a: &GuestAgent, b: &GuestAgent) {
    let sum = volume_with_data(vm, a, "vgA", "cold-disk");
    define_block_domain(vm, a, "cold1", "/dev/vgA/cold-disk");
    let t = Instant::now();
    a.ok(&[
        "migrate",
        "--cold",
        "--target-pool",
        "vgB",
        "cold1",
        &b.uri(),
    ]);
    eprintln!("cold copy of a {VOL} logical volume: {:?}", t.elapsed());
    assert_arrived(vm, "cold-disk", &sum);
    assert_eq!(sha256(vm, "/dev/vgA/cold-disk"), sum, "the source changed");
    assert_block_disk_on_b(b, "cold1", "cold-disk");
    // It starts there, on the block device.
    b.ok(&["start", "cold1"]);
    assert_eq!(domstate(b, "cold1"), "running");
    b.ok(&["destroy", "cold1"]);
    b.ok(&["undefine", "cold1"]);
    let _ = a.tern(&["undefine", "cold1"]);
    a.ok(&["vol-delete", "cold-disk", "--pool", "vgA"]);
    b.ok(&["vol-delete", "cold-disk", "--pool", "vgB"]);
}

fn live_copy_of_a_running_qemu(vm: &DebianVm, a: &GuestAgent, b: &GuestAgent) {
    let sum = volume_with_data(vm, a, "vgA", "live-disk");
    define_block_domain(vm, a, "live1", "/dev/vgA/live-disk");
    a.ok(&["start", "live1"]);
    assert_eq!(domstate(a, "live1"), "running");
    let t = Instant::now();
    live_copy_into_vg_b(a, b, "live1");
    eprintln!(
        "live migration with a {VOL} logical volume: {:?}",
        t.elapsed()
    );
    assert_eq!(domstate(b, "live1"), "running");
    assert_block_disk_on_b(b, "live1", "live-disk");
    assert_arrived(vm, "live-disk", &sum);
    assert_eq!(sha256(vm, "/dev/vgA/live-disk"), sum, "the source changed");
    assert!(!a.ok(&["list", "--all"]).contains("live1"));
    b.ok(&["destroy", "live1"]);
    b.ok(&["undefine", "live1"]);
    a.ok(&["vol-delete", "live-disk", "--pool", "vgA"]);
    b.ok(&["vol-delete", "live-disk", "--pool", "vgB"]);
}

/// The busybox guest (nested TCG) on a `type='block'` logical volume of
/// A: it formats and verifies a checksummed region of its disk, moves live
/// with its disk into B's group, and verifies it again there.
fn nested_guest_moves_live_between_groups(
    vm: &DebianVm,
    a: &GuestAgent,
    b: &GuestAgent,
    image: &GuestImage,
) {
    vm.mount_share("terntg", GUEST_SHARE);
    let file = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let (kernel, initrd) = (file(&image.kernel), file(&image.initrd));
    vm.sh_ok(&format!(
        "mkdir -p {BOOT_DIR} && cp {GUEST_SHARE}/{kernel} {GUEST_SHARE}/{initrd} {BOOT_DIR}/ && chmod 644 {BOOT_DIR}/*"
    ));
    a.ok(&["vol-create-as", "vgA", "nested-disk", VOL]);
    let boot = std::path::Path::new(BOOT_DIR);
    let mut spec = GuestSpec::new(
        "nested",
        &GuestImage {
            kernel: boot.join(&kernel),
            initrd: boot.join(&initrd),
        },
    )
    .workload("tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=4");
    spec.memory_mib = 160;
    spec.disks.push(TestDisk {
        path: "/dev/vgA/nested-disk".into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    let xml = spec.to_xml_block_devices();
    vm.write_file("/root/nested.xml", &xml);
    a.ok(&["define", "/root/nested.xml"]);
    a.ok(&["start", "nested"]);
    let disk_checks = |t: &str| {
        let log = SerialLog::parse(t);
        t.contains("TERN-FAIL")
            || (log.has("TERN-DISK formatted") && log.count("TERN-DISK ok") >= 2)
    };
    let text = a.wait_console(
        "nested",
        Duration::from_secs(1200),
        "disk checks",
        disk_checks,
    );
    assert!(!text.contains("TERN-FAIL"), "{text}");
    live_copy_into_vg_b(a, b, "nested");
    assert_block_disk_on_b(b, "nested", "nested-disk");
    let before = SerialLog::parse(&b.ok(&["console", "nested"])).count("TERN-DISK ok");
    let text = b.wait_console(
        "nested",
        Duration::from_secs(600),
        "disk checks on B",
        |t| t.contains("TERN-FAIL") || SerialLog::parse(t).count("TERN-DISK ok") >= before + 2,
    );
    assert!(!text.contains("TERN-FAIL"), "{text}");
    b.ok(&["destroy", "nested"]);
    b.ok(&["undefine", "nested"]);
    a.ok(&["vol-delete", "nested-disk", "--pool", "vgA"]);
    b.ok(&["vol-delete", "nested-disk", "--pool", "vgB"]);
}

/// `tern migrate --live --copy-storage-all` of `name` from `a` into `b`'s
/// logical pool vgB, keeping it defined only there.
fn live_copy_into_vg_b(a: &GuestAgent, b: &GuestAgent, name: &str) {
    a.ok(&[
        "migrate",
        "--live",
        "--persistent",
        "--undefinesource",
        "--copy-storage-all",
        "--target-pool",
        "vgB",
        name,
        &b.uri(),
    ]);
}
