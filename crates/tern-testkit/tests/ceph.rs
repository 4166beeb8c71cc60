//! The test kit's single-node Ceph (issue 21): QEMU's own tools read and
//! write RBD images through it with cephx, and a blocklisted client's
//! writes are refused by the OSDs (the fence Tern relies on).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use tern_testkit::ceph::{skip_without_ceph, CephCluster, POOL, QEMU_ID};

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `qemu-io` command in a fresh process; its combined output.
fn qemu_io_once(spec: &str, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, spec])
        .output()
        .expect("qemu-io");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn qemu_img_creates_and_reads_rbd_images_as_a_cephx_client() {
    if skip_without_ceph("qemu_img_creates_and_reads_rbd_images_as_a_cephx_client") {
        return;
    }
    let ceph = CephCluster::start();
    let spec = ceph.qemu_spec("disk1", QEMU_ID);
    qemu_img(&["create", "-f", "raw", &spec, "64M"]);
    let info = qemu_img(&["info", "--output=json", &spec]);
    let v: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info json");
    assert_eq!(v["virtual-size"], 64 << 20, "{info}");
    assert_eq!(v["format"], "raw", "{info}");
    let ls = ceph.rbd_ok("admin", &["ls", POOL]);
    assert!(ls.lines().any(|l| l == "disk1"), "rbd ls: {ls}");
    assert!(!ceph.key(QEMU_ID).is_empty());
    assert!(ceph.mon_addr().starts_with("127.0.0.1:"));
}

#[test]
fn a_blocklisted_client_cannot_write_and_another_takes_over() {
    if skip_without_ceph("a_blocklisted_client_cannot_write_and_another_takes_over") {
        return;
    }
    let ceph = CephCluster::start();
    let spec = ceph.qemu_spec("fenced", QEMU_ID);
    qemu_img(&["create", "-f", "raw", &spec, "16M"]);

    // The "old host": one long-lived librbd client that writes.
    let mut old = Command::new("qemu-io")
        .args(["-f", "raw", &spec])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let mut stdin = old.stdin.take().expect("stdin");
    let mut lines = BufReader::new(old.stdout.take().expect("stdout")).lines();
    let mut ask = |cmd: &str| -> String {
        writeln!(stdin, "{cmd}").expect("qemu-io command");
        stdin.flush().expect("flush");
        loop {
            let l = lines.next().expect("qemu-io output").expect("a line");
            if l.contains("wrote") || l.contains("failed") {
                return l;
            }
        }
    };
    let first = ask("write -P 0xaa 0 64k");
    assert!(first.contains("wrote"), "first write: {first}");

    // Its address, as the agent would learn it: the image's watcher.
    let status = ceph.rbd_ok("admin", &["status", &format!("{POOL}/fenced")]);
    let addr = status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("watcher="))
        .unwrap_or_else(|| panic!("no watcher in rbd status: {status}"))
        .to_string();
    ceph.admin_ok(&["osd", "blocklist", "add", &addr]);

    let fenced = ask("write -P 0xbb 65536 64k");
    assert!(
        fenced.contains("failed"),
        "a blocklisted client's write went through: {fenced}"
    );

    // The "rescue": a new client takes the lock and writes; the fenced
    // write never reached the image.
    let rescue = qemu_io_once(&spec, "write -P 0xcc 131072 64k");
    assert!(rescue.contains("wrote"), "rescue write: {rescue}");
    let kept = qemu_io_once(&spec, "read -P 0xaa 0 64k");
    assert!(
        kept.contains("read 65536/65536"),
        "first write lost: {kept}"
    );
    let hole = qemu_io_once(&spec, "read -P 0 65536 64k");
    assert!(
        hole.contains("read 65536/65536"),
        "the fenced write reached the image: {hole}"
    );
    let _ = old.kill();
    let _ = old.wait();
    ceph.admin_ok(&["osd", "blocklist", "rm", &addr]);
}
