//! Disks copied into and out of an rbd pool on the test kit's Ceph
//! (issue 21): a cold migration from the rbd pool into a directory pool and
//! back (holes kept, every byte compared by the agent, the guest verifying
//! its disk at boot on each host), and a running guest's disk mirrored from
//! a directory pool into an RBD image with `--copy-storage-all`, keeping
//! its holes. Real QEMU
//! under TCG, real Ceph; needs root and the Ceph packages.

use tern_testkit::ceph::{skip_without_ceph, CephCluster, POOL};
use tern_testkit::checks::{
    allocated, boot_and_verify, boot_with_disk, live_migrate, shut_off, wait_disk_ok,
};
use tern_testkit::rbd::{
    add_rbd_pool, define_guest_with_disk, image_usage, images, volume_disk_xml, RBD_POOL,
};
use tern_testkit::HostPair;

/// Ceph, two hosts with the rbd pool and a local directory pool `local`.
fn setup(name: &str) -> (CephCluster, HostPair, Vec<tempfile::TempDir>) {
    let ceph = CephCluster::start();
    let p = HostPair::start(name, &[], &[]);
    let locals: Vec<tempfile::TempDir> = (0..2)
        .map(|_| {
            tempfile::Builder::new()
                .prefix("tern-local-")
                .tempdir()
                .expect("local pool dir")
        })
        .collect();
    for (h, dir) in [(&p.a, &locals[0]), (&p.b, &locals[1])] {
        add_rbd_pool(h, &ceph);
        h.add_pool("local", dir.path(), false);
    }
    (ceph, p, locals)
}

fn ok(out: std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `migrate --cold --target-pool local` copies the guest's RBD image into
/// B's directory pool (staged and compared on A, MAC-checked on the wire),
/// deletes the image with `--delete-source-storage`, and the guest verifies
/// every block at boot on B; then back with `--target-pool ceph`, which
/// writes the verified file into a new RBD image that keeps the file's
/// holes and becomes a `type='volume'` disk of the rbd pool.
#[test]
fn cold_migration_between_the_rbd_pool_and_a_dir_pool_both_ways() {
    let test = "cold_migration_between_the_rbd_pool_and_a_dir_pool_both_ways";
    if skip_without_ceph(test) {
        return;
    }
    let (ceph, p, locals) = setup("rcold");
    let name = "rbdcold";
    p.a.ok(&["vol-create-as", RBD_POOL, "cold01", "64M"]);
    define_guest_with_disk(
        &p.a,
        name,
        "tern.mem=16 tern.dirty=0",
        4,
        &volume_disk_xml("cold01", "vda"),
    );
    p.a.ok(&["start", name]);
    wait_disk_ok(&p.a, name, 2);
    shut_off(&p.a, name);

    let flags = [
        "migrate",
        "--cold",
        "--undefinesource",
        "--delete-source-storage",
        "--target-pool",
    ];
    ok(
        p.a.tern(&[&flags[..], &["local", name, &p.b.uri()]].concat()),
        "cold migration RBD -> dir",
    );
    let in_local = locals[1].path().join("cold01");
    assert!(
        !images(&ceph).contains(&"cold01".to_string()),
        "the source's RBD image was kept"
    );
    assert_eq!(std::fs::metadata(&in_local).unwrap().len(), 64 << 20);
    let held = allocated(&in_local);
    assert!(held < 32 << 20, "holes were filled: {held}");
    boot_and_verify(&p.b, name);
    shut_off(&p.b, name);

    ok(
        p.b.tern(&[&flags[..], &[RBD_POOL, name, &p.a.uri()]].concat()),
        "cold migration dir -> RBD",
    );
    assert!(!in_local.exists(), "B's pool kept the source's copy");
    let (size, used) = image_usage(&ceph, "cold01");
    assert_eq!(size, 64 << 20);
    assert!(
        used < 32 << 20,
        "holes were filled in the RBD image: {used}"
    );
    let xml = p.a.ok(&["dumpxml", name]);
    assert!(
        xml.contains("type='volume'") && xml.contains(&format!("pool='{RBD_POOL}'")),
        "{xml}"
    );
    let blk = p.a.ok(&["domblklist", name]);
    assert!(blk.contains(&format!("rbd:{POOL}/cold01")), "{blk}");
    boot_and_verify(&p.a, name);
}

/// `--copy-storage-all --target-pool ceph`: B creates an RBD image of the
/// disk's size and exports it over NBD from its incoming QEMU, which opens
/// it through librbd; A's mirror writes into it; the guest goes on
/// verifying its disk on B (each pass re-reads every block it wrote, on A
/// too), which then names the disk as a volume of the rbd pool.
#[test]
fn a_local_disk_is_mirrored_into_the_rbd_pool() {
    let test = "a_local_disk_is_mirrored_into_the_rbd_pool";
    if skip_without_ceph(test) {
        return;
    }
    let (ceph, p, locals) = setup("rmir");
    let name = "rbdmir";
    // 64 MiB, of which the guest writes its first 4 MiB: one RBD object.
    p.a.ok(&["vol-create-as", "local", "mir01", "64M", "--format", "raw"]);
    let source = locals[0].path().join("mir01");
    boot_with_disk(&p.a, name, &source, "raw");
    let src = allocated(&source);
    assert!(src > 0 && src < 16 << 20, "the source holds {src} bytes");

    let into = ["--copy-storage-all", "--target-pool", RBD_POOL];
    live_migrate(&p.a, &into, name, &p.b.uri());
    wait_disk_ok(&p.b, name, 2);
    // The holes stayed holes: the image uses what the source held (RBD
    // counts whole 4 MiB objects; the guest's region is one).
    let (size, used) = image_usage(&ceph, "mir01");
    let ev = p.b.ok(&["domjobevents", name]);
    eprintln!(
        "allocated: source {} KiB, RBD image {} KiB of {} KiB",
        src >> 10,
        used >> 10,
        size >> 10
    );
    assert!(
        used * 100 <= src.max(4 << 20) * 105,
        "the RBD image uses {used} bytes for the source's {src}; B's events:\n{ev}"
    );
    assert!(!ev.contains("keep discard=unmap"), "{ev}");
    assert_eq!(p.qemu_counts(), (0, 1), "the guest runs on B only");
    let blk = p.b.ok(&["domblklist", name]);
    assert!(blk.contains(&format!("rbd:{POOL}/mir01")), "{blk}");
    assert!(images(&ceph).contains(&"mir01".to_string()));
    assert_eq!(size, 64 << 20);
    assert!(
        !locals[1].path().join("mir01").exists(),
        "B's local pool got the copy"
    );
    p.b.ok(&["destroy", name]);
    p.b.ok(&["vol-delete", "mir01", "--pool", RBD_POOL]);
}
