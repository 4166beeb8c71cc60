//! Host-down recovery fenced by Ceph itself (issue 21): a host whose agent
//! dies while its QEMU runs on and writes to its RBD image is declared down,
//! the controller blocklists that QEMU's client address (which the agent
//! reported while healthy) through the other host, and only then rescues
//! the guest there. The old guest's own disk checks show its I/O failing
//! from then on; the rescued guest verifies every block at boot and holds
//! the image's exclusive lock. When the host comes back, the controller
//! ends its fenced stale copy and then removes the entry. A host that
//! dies before it ever reported its guest's client is fenced all the
//! same: the controller blocklists the clients the image itself shows
//! (its watcher and lock owner) before the rescue. Real
//! Ceph, real QEMU under TCG, a real controller; needs root and the Ceph
//! packages.

use tern_testkit::ceph::{skip_without_ceph, CephCluster};
use tern_testkit::cluster::{
    enable_host_down_policy, rescues_succeeded, wait_log, wait_server, LONG,
};
use tern_testkit::fencing::runs_guest;
use tern_testkit::rbd::{
    add_rbd_pool, blocklisted, define_guest_with_disk, lockers, volume_disk_xml, wait_blocklisted,
    wait_disk_ok, watchers, RBD_POOL,
};
use tern_testkit::{SerialLog, TestController};

#[test]
fn a_dead_hosts_rbd_client_is_blocklisted_before_its_guest_is_rescued() {
    let test = "a_dead_hosts_rbd_client_is_blocklisted_before_its_guest_is_rescued";
    if skip_without_ceph(test) {
        return;
    }
    let ceph = CephCluster::start();
    let c = TestController::file(&[]);
    let mut a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    for h in [&a, &b] {
        add_rbd_pool(h, &ceph);
    }
    a.ok(&["vol-create-as", RBD_POOL, "vm-disk", "16M"]);
    define_guest_with_disk(
        &a,
        "vm",
        "tern.mem=16 tern.dirty=0",
        4,
        &volume_disk_xml("vm-disk", "vda"),
    );
    a.ok(&["start", "vm"]);
    wait_disk_ok(&a, "vm", 2);
    wait_server(&c, "vm", "a", "running");
    enable_host_down_policy(&c, "a");

    // A reports its QEMU's client: the image's one watcher, and the
    // owner of its exclusive lock (the guest writes its disk).
    let on_image = watchers(&ceph, "vm-disk");
    assert_eq!(on_image.len(), 1, "{on_image:?}");
    let addr = on_image[0].clone();
    assert_eq!(
        lockers(&ceph, "vm-disk"),
        on_image,
        "the writer holds the lock"
    );
    let host = c.wait_json(
        &["host-show", "a"],
        LONG,
        "a reports its RBD client as the lock owner",
        |v| {
            v["report"]["rbd_clients"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|x| x["addr"] == addr.as_str() && x["lock_owner"] == true)
            })
        },
    );
    assert_eq!(host["report"]["rbd_clients"][0]["domain"], "vm");

    // Only the agent dies: A's QEMU runs on and keeps writing.
    let console_a = a.console_log("vm");
    a.kill9();
    wait_server(&c, "vm", "b", "running");
    assert!(
        blocklisted(&ceph, &addr),
        "the rescue ran without the fence"
    );
    assert!(
        !a.qemu_pids().is_empty(),
        "A's QEMU was killed: the fence was not the storage's"
    );

    // The old guest sees its disk fail and never reports a good second
    // after the first error: none of its writes reach the image.
    let text = wait_log(&console_a, 0, "TERN-FAIL");
    let first_fail = text.find("TERN-FAIL").expect("a failure");
    assert!(
        !text[first_fail..].contains("TERN-DISK ok"),
        "A's guest wrote after the fence:\n{}",
        tern_testkit::tail(&text, 20)
    );

    // The rescued guest took the lock, verified every block at boot and goes on.
    let boot = b.wait_console("vm", LONG, "the disk verified at boot on B", |t| {
        t.contains("TERN-DISK verified") || t.contains("TERN-FAIL")
    });
    assert!(SerialLog::parse(&boot).failures.is_empty(), "{boot}");
    wait_disk_ok(&b, "vm", 3);
    assert_eq!(rescues_succeeded(&c), 1);
    let on_image = watchers(&ceph, "vm-disk");
    assert_eq!(
        on_image.len(),
        1,
        "two clients have the image: {on_image:?}"
    );
    assert_ne!(on_image[0], addr);
    // The rescued guest's QEMU broke the fenced client's exclusive lock and holds it.
    assert_eq!(
        lockers(&ceph, "vm-disk"),
        on_image,
        "the exclusive lock's owner"
    );

    // A comes back with its fenced QEMU: the controller ends that stale
    // copy, and only then removes the entry.
    a.restart();
    wait_blocklisted(&ceph, &addr, false, LONG);
    assert!(
        !runs_guest(&a.state_dir(), "vm"),
        "the entry went while A's fenced QEMU still runs"
    );
    wait_disk_ok(&b, "vm", 1);
}

/// A dies right after it started the guest: the controller last saw the
/// guest shut off, and A never reports a Ceph client anyway
/// (`--fault-hide-rbd-clients`). The fence finds the client on the image.
#[test]
fn a_host_dying_right_after_a_start_is_fenced_by_its_image_and_the_guest_rescued() {
    let test = "a_host_dying_right_after_a_start_is_fenced_by_its_image_and_the_guest_rescued";
    if skip_without_ceph(test) {
        return;
    }
    let ceph = CephCluster::start();
    let c = TestController::file(&[]);
    let mut a = TestController::host(&[&c], "a", &["--fault-hide-rbd-clients"]);
    let b = TestController::host(&[&c], "b", &[]);
    for h in [&a, &b] {
        add_rbd_pool(h, &ceph);
    }
    a.ok(&["vol-create-as", RBD_POOL, "vm-disk", "16M"]);
    define_guest_with_disk(
        &a,
        "vm",
        "tern.mem=16 tern.dirty=0",
        4,
        &volume_disk_xml("vm-disk", "vda"),
    );
    wait_server(&c, "vm", "a", "ready");
    enable_host_down_policy(&c, "a");

    // Started, and A dies as soon as its QEMU has the image open.
    a.ok(&["start", "vm"]);
    let addr = loop {
        if let [only] = watchers(&ceph, "vm-disk").as_slice() {
            break only.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let console_a = a.console_log("vm");
    a.kill9();
    let host = c.json(&["host-show", "a"]);
    assert!(
        host["report"]["rbd_clients"]
            .as_array()
            .is_none_or(|l| l.is_empty()),
        "a reported a client: {host}"
    );

    wait_server(&c, "vm", "b", "running");
    assert!(
        blocklisted(&ceph, &addr),
        "the rescue ran without fencing the image's client"
    );
    assert!(
        !a.qemu_pids().is_empty(),
        "A's QEMU was killed: the fence was not the storage's"
    );
    // A's guest boots on regardless; its disk fails from the fence on.
    let text = wait_log(&console_a, 0, "TERN-FAIL");
    let first_fail = text.find("TERN-FAIL").expect("a failure");
    assert!(
        !text[first_fail..].contains("TERN-DISK ok"),
        "A's guest wrote after the fence:\n{}",
        tern_testkit::tail(&text, 20)
    );
    // A's guest may have written nothing before the fence (then B's finds
    // no earlier blocks to verify): B's checks pass either way.
    let boot = b.wait_console("vm", LONG, "disk checks on B", |t| {
        t.contains("TERN-DISK ok") || t.contains("TERN-FAIL")
    });
    assert!(SerialLog::parse(&boot).failures.is_empty(), "{boot}");
    wait_disk_ok(&b, "vm", 3);
    assert_eq!(rescues_succeeded(&c), 1);
    let on_image = watchers(&ceph, "vm-disk");
    assert_eq!(
        on_image.len(),
        1,
        "two clients have the image: {on_image:?}"
    );
    assert_ne!(on_image[0], addr);
    assert_eq!(
        lockers(&ceph, "vm-disk"),
        on_image,
        "the rescued guest's lock"
    );

    // The entry found on the image was recorded: it goes once A is back
    // and its stale copy is gone.
    a.restart();
    wait_blocklisted(&ceph, &addr, false, LONG);
    assert!(
        !runs_guest(&a.state_dir(), "vm"),
        "the entry went while A's fenced QEMU still runs"
    );
    wait_disk_ok(&b, "vm", 1);
}
