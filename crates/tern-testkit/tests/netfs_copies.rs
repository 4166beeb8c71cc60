//! Copies to and from the walk-through's NFS pool: a cold migration that
//! leaves the export's volume in place, a cold copy off the export into a
//! directory pool and back, and a running guest's disk mirrored onto the
//! export and back. The export is reached by QEMU over `nfs://` on this
//! kernel, so the agent stages files it copies (see cold_stage.rs). Real
//! QEMU under TCG; needs root and the NFS packages.

use tern_testkit::checks::{
    allocated, boot_and_verify, boot_with_disk, live_migrate, shut_off, wait_disk_ok,
};
use tern_testkit::netns::skip_unless_root;
use tern_testkit::nfs::{skip_without_nfs_server, NfsPair};

fn skip(test: &str) -> bool {
    skip_unless_root(test) || skip_without_nfs_server(test)
}

/// A cold migration of a guest whose disk is on the shared export moves
/// the definition and leaves the volume where both hosts see it; the guest
/// boots on B and verifies every block it wrote on A.
#[test]
fn cold_migration_leaves_the_nfs_volume_in_place() {
    let test = "cold_migration_leaves_the_nfs_volume_in_place";
    if skip(test) {
        return;
    }
    let p = NfsPair::start("cold");
    p.a.ok(&[
        "vol-create-as",
        "nfspool",
        "cold01",
        "64M",
        "--format",
        "qcow2",
    ]);
    let name = "nfscold";
    boot_with_disk(&p.a, name, &p.target.join("cold01"), "qcow2");
    shut_off(&p.a, name);
    let before = std::fs::metadata(p.nfs.export_dir().join("cold01")).unwrap();
    let out = p.a.tern(&["migrate", "--cold", name, &p.b.uri()]);
    assert!(
        out.status.success(),
        "cold migration failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was copied or rewritten on the export.
    let after = std::fs::metadata(p.nfs.export_dir().join("cold01")).unwrap();
    assert_eq!(
        (before.len(), before.modified().unwrap()),
        (after.len(), after.modified().unwrap())
    );
    boot_and_verify(&p.b, name);
}

/// `--copy-storage-all --target-pool nfspool`: a disk in A's local pool is
/// mirrored into the export (a pool QEMU reaches over `nfs://` on this
/// kernel), verified by the guest on B, then mirrored back into A's local
/// pool (its stale copy deleted first, as virsh users do); the export's
/// copy is then B's to delete with `vol-delete`.
#[test]
fn a_local_disk_is_mirrored_into_the_nfs_pool_and_back() {
    let test = "a_local_disk_is_mirrored_into_the_nfs_pool_and_back";
    if skip(test) {
        return;
    }
    let p = NfsPair::start("mir");
    let locals: Vec<tempfile::TempDir> = (0..2)
        .map(|_| {
            tempfile::Builder::new()
                .prefix("tern-local-")
                .tempdir()
                .unwrap()
        })
        .collect();
    p.a.add_pool("local", locals[0].path(), false);
    p.b.add_pool("local", locals[1].path(), false);
    let name = "nfsmir";
    p.a.ok(&["vol-create-as", "local", "mir01", "16M", "--format", "raw"]);
    boot_with_disk(&p.a, name, &locals[0].path().join("mir01"), "raw");

    let into = ["--copy-storage-all", "--target-pool", "nfspool"];
    live_migrate(&p.a, &into, name, &p.b.uri());
    wait_disk_ok(&p.b, name, 2);
    let blk = p.b.ok(&["domblklist", name]);
    assert!(
        blk.contains(&p.target.join("mir01").display().to_string()),
        "{blk}"
    );
    assert!(
        p.nfs.export_dir().join("mir01").is_file(),
        "no copy on the export"
    );
    assert!(
        !locals[1].path().join("mir01").exists(),
        "B's local pool got the copy"
    );

    p.a.ok(&["vol-delete", "mir01", "--pool", "local"]);
    let back = ["--copy-storage-all", "--target-pool", "local"];
    live_migrate(&p.b, &back, name, &p.a.uri());
    wait_disk_ok(&p.a, name, 2);
    let blk = p.a.ok(&["domblklist", name]);
    assert!(
        blk.contains(&locals[0].path().join("mir01").display().to_string()),
        "{blk}"
    );
    // The export's copy is B's to delete now, through the pool.
    p.b.ok(&["vol-delete", "mir01", "--pool", "nfspool"]);
    assert!(!p.nfs.export_dir().join("mir01").exists());
}

/// A cold migration out of the NFS pool into a directory pool and back:
/// with `--target-pool` the disk on the export is copied (staged through
/// the agent, since QEMU alone reaches the export on this kernel), holes
/// stay holes on both trips, `--delete-source-storage` removes the copy
/// left behind, and the guest verifies every block at boot on each host.
#[test]
fn cold_migration_between_the_nfs_pool_and_a_dir_pool_both_ways() {
    let test = "cold_migration_between_the_nfs_pool_and_a_dir_pool_both_ways";
    if skip(test) {
        return;
    }
    let p = NfsPair::start("cnd");
    let local = tempfile::Builder::new()
        .prefix("tern-local-")
        .tempdir()
        .unwrap();
    p.b.add_pool("local", local.path(), false);
    p.a.ok(&[
        "vol-create-as",
        "nfspool",
        "cold02",
        "64M",
        "--format",
        "raw",
    ]);
    let name = "nfsdir";
    boot_with_disk(&p.a, name, &p.target.join("cold02"), "raw");
    shut_off(&p.a, name);

    let on_export = p.nfs.export_dir().join("cold02");
    let in_local = local.path().join("cold02");
    let flags = [
        "migrate",
        "--cold",
        "--undefinesource",
        "--delete-source-storage",
        "--target-pool",
    ];
    let out =
        p.a.tern(&[&flags[..], &["local", name, &p.b.uri()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!on_export.exists(), "the export kept the source's copy");
    assert_eq!(std::fs::metadata(&in_local).unwrap().len(), 64 << 20);
    assert!(
        allocated(&in_local) < 32 << 20,
        "holes were filled: {}",
        allocated(&in_local)
    );
    boot_and_verify(&p.b, name);
    shut_off(&p.b, name);

    let out =
        p.b.tern(&[&flags[..], &["nfspool", name, &p.a.uri()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!in_local.exists(), "B's pool kept the source's copy");
    assert_eq!(std::fs::metadata(&on_export).unwrap().len(), 64 << 20);
    assert!(
        allocated(&on_export) < 32 << 20,
        "holes were filled: {}",
        allocated(&on_export)
    );
    let blk = p.a.ok(&["domblklist", name]);
    assert!(
        blk.contains(&p.target.join("cold02").display().to_string()),
        "{blk}"
    );
    boot_and_verify(&p.a, name);
}
