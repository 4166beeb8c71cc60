//! The kernel-mount mode of netfs pools (issue 20), run for real: this
//! machine's kernel has no NFS client, so `ternd` runs inside the Debian
//! test guest (Debian's kernel, nfs-common), booted under TCG in a network
//! namespace of the test's own. A real nfs-ganesha serves the export on
//! that namespace's loopback, which the guest reaches as 10.0.2.2 through
//! QEMU's user network. The guest's `tern` runs the walk-through's pool
//! commands; the host checks the volume in ganesha's exported directory.
//! One boot for the whole file (TCG boots take minutes).
//!
//! With `TERN_NESTED_TCG=1` a busybox guest also boots from the pool
//! under nested TCG (7 to 11 minutes here, so CI leaves it out).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};
use tern_testkit::debian_vm::{DebianVm, GuestAgent, HOST_LOOPBACK};
use tern_testkit::netns::{skip_unless_root, Lab, Side};
use tern_testkit::nfs::{skip_without_nfs_server, NfsServer};
use tern_testkit::{build_or_reuse, BuildOptions, GuestImage, GuestSpec, SerialLog, TestDisk};

/// The walk-through's target, trailing slash and all.
const TARGET: &str = "/mykvm/nfspool/";
/// Names of the test guest's boot files on the export.
const KERNEL: &str = "tg-vmlinux";
const INITRD: &str = "tg-initrd";

/// Lines of the guest's /proc/mounts whose mount point is the pool's target.
fn target_mounts(vm: &DebianVm) -> Vec<String> {
    vm.sh_ok("cat /proc/mounts")
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(TARGET.trim_end_matches('/')))
        .map(str::to_string)
        .collect()
}

#[test]
fn walk_through_netfs_pool_mounts_with_the_kernel_client_inside_debian() {
    let name = "walk_through_netfs_pool_mounts_with_the_kernel_client_inside_debian";
    if skip_unless_root(name) || skip_without_nfs_server(name) {
        return;
    }
    // Declared in reverse order of dropping: the agent stops first, then
    // QEMU, then the server, then the namespaces.
    let lab = Lab::start();
    let ns = lab.ns(Side::A);
    let nfs = NfsServer::start(&ns, Ipv4Addr::LOCALHOST);
    // The nested guest's boot files, put on the export by the host.
    let image = build_or_reuse(&BuildOptions::default()).expect("test guest");
    std::fs::copy(&image.kernel, nfs.export_dir().join(KERNEL)).unwrap();
    std::fs::copy(&image.initrd, nfs.export_dir().join(INITRD)).unwrap();
    let started = Instant::now();
    let vm = DebianVm::boot(Some(&ns));
    eprintln!("the Debian guest booted in {:?}", started.elapsed());
    let agent = GuestAgent::start(&vm);

    agent.ok(&[
        "pool-define-as",
        "nfspool",
        "--type",
        "netfs",
        "--source-host",
        HOST_LOOPBACK,
        "--source-path",
        nfs.export_path(),
        "--target",
        TARGET,
    ]);
    agent.ok(&["pool-build", "nfspool"]);
    assert!(target_mounts(&vm).is_empty(), "mounted before pool-start");
    agent.ok(&["pool-start", "nfspool"]);

    // The automatic choice took the kernel client, with libvirt's options.
    let info = agent.ok(&["pool-info", "nfspool"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Access") && l.contains("mount (kernel NFS client)")),
        "{info}"
    );
    assert!(
        info.lines()
            .any(|l| l.starts_with("State") && l.contains("running")),
        "{info}"
    );
    // The target as libvirt keeps it, without the trailing slash.
    assert!(
        info.lines()
            .any(|l| l.starts_with("Target") && l.trim_end().ends_with(" /mykvm/nfspool")),
        "{info}"
    );
    let mounts = target_mounts(&vm);
    eprintln!("the guest's mount of the pool: {mounts:?}");
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let fields: Vec<&str> = mounts[0].split(' ').collect();
    assert_eq!(fields[0], format!("{HOST_LOOPBACK}:/nfs"), "{mounts:?}");
    assert!(fields[2].starts_with("nfs"), "{mounts:?}");
    let opts: Vec<&str> = fields[3].split(',').collect();
    for o in ["nodev", "nosuid", "noexec"] {
        assert!(opts.contains(&o), "{o} missing: {mounts:?}");
    }

    agent.ok(&[
        "vol-create-as",
        "nfspool",
        "test01",
        "64M",
        "--format",
        "qcow2",
    ]);
    // The server has it: a qcow2 header in ganesha's exported directory.
    let on_server = nfs.export_dir().join("test01");
    let head = std::fs::read(&on_server)
        .unwrap_or_else(|e| panic!("{} on the server: {e}", on_server.display()));
    assert_eq!(&head[..4], b"QFI\xfb", "not a qcow2 header");
    let size = u64::from_be_bytes(head[24..32].try_into().unwrap());
    assert_eq!(size, 64 << 20, "qcow2 virtual size");
    // And the guest sees it as a file under the target.
    vm.sh_ok(&format!("test -f {TARGET}test01"));

    if std::env::var_os("TERN_NESTED_TCG").is_some_and(|v| v == "1") {
        let t = Instant::now();
        nested_guest_runs_from_the_pool(&vm, &agent);
        eprintln!("the nested guest ran in {:?}", t.elapsed());
    } else {
        eprintln!("TERN_NESTED_TCG is not 1: no guest boots from the pool (nested TCG)");
    }
    // The image is sound on the server (and holds the nested guest's writes).
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2"])
        .arg(&on_server)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check on the server's copy: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    let list = agent.ok(&["vol-list", "nfspool"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some("test01")
                && l.contains(&format!("{TARGET}test01").replace("//", "/"))),
        "{list}"
    );
    agent.ok(&["vol-delete", "test01", "--pool", "nfspool"]);
    assert!(!on_server.exists(), "test01 is still on the server");

    agent.ok(&["pool-destroy", "nfspool"]);
    let left = target_mounts(&vm);
    assert!(
        left.is_empty(),
        "pool-destroy left the export mounted: {left:?}"
    );
    let info = agent.ok(&["pool-info", "nfspool"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("State") && l.contains("inactive")),
        "{info}"
    );
    agent.ok(&["pool-undefine", "nfspool"]);
    let all = agent.ok(&["pool-list", "--all"]);
    assert!(!all.contains("nfspool"), "{all}");

    // An export the server does not have: pool-start fails with mount's
    // reason, the pool stays inactive and nothing is mounted.
    agent.ok(&[
        "pool-define-as",
        "badpool",
        "--type",
        "netfs",
        "--source-host",
        HOST_LOOPBACK,
        "--source-path",
        "/nope",
        "--target",
        "/mykvm/badpool",
    ]);
    agent.ok(&["pool-build", "badpool"]);
    let bad = agent.tern(&["pool-start", "badpool"]);
    eprintln!("pool-start of a missing export: {}", bad.stderr.trim());
    assert!(bad.code != 0 && bad.stderr.contains("mount"), "{bad:?}");
    let info = agent.ok(&["pool-info", "badpool"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("State") && l.contains("inactive")),
        "{info}"
    );
    assert!(!vm.sh_ok("cat /proc/mounts").contains("/mykvm/badpool"));
    agent.ok(&["pool-undefine", "badpool"]);
    eprintln!("walk-through done {:?} after boot", started.elapsed());
    drop(agent);
    drop(vm);
    drop(nfs);
    drop(lab);
}

/// A busybox test guest defined in the guest, booted (nested TCG) from the
/// pool: kernel and initramfs are files on the export, its disk is the
/// qcow2 volume `test01` (cache none). Its workload formats and verifies a
/// checksummed region on that disk. While it runs the export is busy:
/// `pool-destroy` is refused and the pool stays up.
fn nested_guest_runs_from_the_pool(vm: &DebianVm, agent: &GuestAgent) {
    let on_pool = |f: &str| Path::new(TARGET).join(f);
    let image = GuestImage {
        kernel: on_pool(KERNEL),
        initrd: on_pool(INITRD),
    };
    let mut spec = GuestSpec::new("nested", &image)
        .workload("tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=4");
    spec.memory_mib = 160;
    spec.disks.push(TestDisk {
        path: on_pool("test01"),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    vm.write_file("/root/nested.xml", &spec.to_xml());
    agent.ok(&["define", "/root/nested.xml"]);
    agent.ok(&["start", "nested"]);
    let text = agent.wait_console("nested", Duration::from_secs(900), "disk checks", |t| {
        let log = SerialLog::parse(t);
        t.contains("TERN-FAIL")
            || (log.has("TERN-DISK formatted") && log.count("TERN-DISK ok") >= 2)
    });
    assert!(!text.contains("TERN-FAIL"), "{text}");
    let busy = agent.tern(&["pool-destroy", "nfspool"]);
    assert!(
        busy.code != 0,
        "pool-destroy with a guest on the pool: {}",
        busy.stdout
    );
    eprintln!(
        "pool-destroy with the guest running: {}",
        busy.stderr.trim()
    );
    assert_eq!(target_mounts(vm).len(), 1, "the export must stay mounted");
    let info = agent.ok(&["pool-info", "nfspool"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("State") && l.contains("running")),
        "{info}"
    );
    agent.ok(&["destroy", "nested"]);
    agent.ok(&["undefine", "nested"]);
}
