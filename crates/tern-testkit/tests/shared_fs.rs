//! A dir pool declared `--shared` is verified by its filesystem type
//! before a live migration leaves its disks in place: on a local
//! filesystem it is refused by name, unless the operator declared the
//! directory in `shared_filesystems`. Real `ternd`, `tern` and QEMU.

use tern_testkit::host::local_qemu_table;
use tern_testkit::pair::boot_guest;
use tern_testkit::{HostOptions, TernHost};

fn host(name: &str, qemu: Option<String>) -> TernHost {
    TernHost::start_with(HostOptions {
        name: name.into(),
        qemu,
        ..Default::default()
    })
}

#[test]
fn a_shared_dir_pool_on_a_local_filesystem_is_refused_unless_declared() {
    let pool = tempfile::Builder::new()
        .prefix("tern-localfs-")
        .tempdir()
        .unwrap();
    // A and B trust only the filesystem type; C declares the temp directory.
    let a = host("lfs-a", Some(local_qemu_table()));
    let b = host("lfs-b", Some(local_qemu_table()));
    let c = host("lfs-c", None);
    for h in [&a, &b, &c] {
        h.add_pool("shared", pool.path(), true);
    }
    boot_guest(&a, "lfs1", "tern.mem=32 tern.dirty=0");

    let out = a.tern(&["migrate", "--live", "lfs1", &b.uri()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrated from a local filesystem");
    assert!(err.contains("pool 'shared' is declared --shared"), "{err}");
    assert!(err.contains("a local filesystem"), "{err}");
    assert!(err.contains(&pool.path().display().to_string()), "{err}");
    assert!(err.contains("shared_filesystems"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Nothing moved: the guest still runs on A, and B has no such domain.
    assert_eq!(a.ok(&["domstate", "lfs1"]).trim(), "running");
    assert!(!b.ok(&["list", "--all"]).contains("lfs1"));

    // The destination checks too: C declares the directory shared, B
    // does not, so a migration from C to B is refused there.
    a.ok(&["destroy", "lfs1"]);
    let xml = a.ok(&["dumpxml", "lfs1"]);
    let path = c.root.join("lfs1.xml");
    std::fs::write(&path, xml).unwrap();
    c.ok(&["define", path.to_str().unwrap()]);
    a.ok(&["undefine", "lfs1"]);
    c.ok(&["start", "lfs1"]);
    tern_testkit::pair::wait_ready(&c, "lfs1", 2);
    let out = c.tern(&["migrate", "--live", "lfs1", &b.uri()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "B took a disk on a local filesystem");
    assert!(err.contains("a local filesystem"), "{err}");

    // Between two hosts that both declare the directory, it goes.
    let d = host("lfs-d", None);
    d.add_pool("shared", pool.path(), true);
    let out = c.tern(&["migrate", "--live", "lfs1", &d.uri()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_console(
        "lfs1",
        std::time::Duration::from_secs(90),
        "heartbeats on the destination",
        |t| tern_testkit::SerialLog::parse(t).heartbeats.len() >= 2,
    );
    d.ok(&["destroy", "lfs1"]);
}
