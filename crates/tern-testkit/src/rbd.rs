//! Tern on the test kit's Ceph (issue 21): a host's secret and rbd pool
//! defined with the commands an operator types, guests whose disk is an
//! RBD image (a `<disk type='volume'>` of the rbd pool, or a
//! `<disk type='network'>` with `<auth>`), and what a test checks about
//! where the key went.

use crate::ceph::{CephCluster, POOL, QEMU_ID};
use crate::{build_or_reuse, BuildOptions, GuestSpec, TernHost};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The uuid every test host gives the cephx key of `client.qemu`.
pub const SECRET_UUID: &str = "6f2a1c3e-9d4b-4e8a-b1c2-3d4e5f6a7b8c";
/// Its usage name.
pub const SECRET_USAGE: &str = "client.qemu secret";
/// The name of the rbd pool [`add_rbd_pool`] defines.
pub const RBD_POOL: &str = "ceph";

/// The libvirt XML of the secret.
pub fn secret_xml() -> String {
    format!(
        "<secret ephemeral='no' private='yes'>\n  <uuid>{SECRET_UUID}</uuid>\n  <usage type='ceph'>\n    <name>{SECRET_USAGE}</name>\n  </usage>\n</secret>\n"
    )
}

/// `secret-define` and `secret-set-value --file` on `h` with `key` (base64),
/// from files written (the key mode 0600) into `h`'s directory.
pub fn define_secret(h: &TernHost, key: &str) {
    let dir = h.state_dir().with_file_name("secret-files");
    std::fs::create_dir_all(&dir).expect("secret file directory");
    let xml = dir.join("secret.xml");
    std::fs::write(&xml, secret_xml()).expect("secret XML");
    h.ok(&["secret-define", xml.to_str().expect("utf-8")]);
    let keyfile = dir.join("client.qemu.key");
    let _ = std::fs::remove_file(&keyfile);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&keyfile)
        .expect("key file");
    std::io::Write::write_all(&mut f, key.as_bytes()).expect("write key");
    h.ok(&[
        "secret-set-value",
        "--secret",
        SECRET_UUID,
        "--file",
        keyfile.to_str().expect("utf-8"),
    ]);
    let _ = std::fs::remove_file(&keyfile);
}

/// The secret (with `client.qemu`'s key) and the rbd pool [`RBD_POOL`] on
/// the cluster's pool, defined and started on `h` as virsh users do.
pub fn add_rbd_pool(h: &TernHost, ceph: &CephCluster) {
    define_secret(h, &ceph.key(QEMU_ID));
    h.ok(&[
        "pool-define-as",
        RBD_POOL,
        "rbd",
        "--source-host",
        &ceph.mon_addr(),
        "--source-name",
        POOL,
        "--auth-type",
        "ceph",
        "--auth-username",
        QEMU_ID,
        "--secret-usage",
        SECRET_USAGE,
    ]);
    h.ok(&["pool-start", RBD_POOL]);
}

/// A `<disk type='volume'>` of the rbd pool.
pub fn volume_disk_xml(volume: &str, dev: &str) -> String {
    format!(
        "    <disk type='volume' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source pool='{RBD_POOL}' volume='{volume}'/>\n      <target dev='{dev}' bus='virtio'/>\n    </disk>\n"
    )
}

/// A `<disk type='network'>` on image `image` of the cluster's pool, with
/// `<auth>` as virt-install and OpenStack write it.
pub fn network_disk_xml(ceph: &CephCluster, image: &str, dev: &str) -> String {
    let port = ceph.mon_ports().v1;
    format!(
        "    <disk type='network' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source protocol='rbd' name='{POOL}/{image}'>\n        <host name='127.0.0.1' port='{port}'/>\n      </source>\n      <auth username='{QEMU_ID}'>\n        <secret type='ceph' usage='{SECRET_USAGE}'/>\n      </auth>\n      <target dev='{dev}' bus='virtio'/>\n    </disk>\n"
    )
}

/// The XML of the test guest `name` whose only disk is `disk_xml` (as
/// vda; `disk_mb` MiB of it written and verified by the guest).
pub fn guest_xml_with_disk(name: &str, workload: &str, disk_mb: u64, disk_xml: &str) -> String {
    let img = build_or_reuse(&BuildOptions::default()).expect("test guest");
    let spec = GuestSpec::new(name, &img).workload(&format!(
        "{workload} tern.disk=/dev/vda tern.disk_mb={disk_mb} tern.verify_rate=32"
    ));
    spec.to_xml().replace(
        "    <serial type='pty'>",
        &format!("{disk_xml}    <serial type='pty'>"),
    )
}

/// Defines on `h` the guest of [`guest_xml_with_disk`].
pub fn define_guest_with_disk(
    h: &TernHost,
    name: &str,
    workload: &str,
    disk_mb: u64,
    disk_xml: &str,
) {
    let xml = guest_xml_with_disk(name, workload, disk_mb, disk_xml);
    let file = h.state_dir().with_file_name(format!("{name}.xml"));
    std::fs::write(&file, xml).expect("guest XML");
    h.ok(&["define", file.to_str().expect("utf-8")]);
}

pub use crate::checks::{disk_oks, wait_disk_ok};

/// The command lines of `h`'s QEMUs, for checks that no key is on them.
pub fn qemu_cmdlines(h: &TernHost) -> Vec<String> {
    h.qemu_pids()
        .into_iter()
        .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .collect()
}

/// Files under `dir` (recursively) whose content holds `needle`.
pub fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_holding(&p, needle));
        } else if std::fs::read(&p)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            out.push(p.display().to_string());
        }
    }
    out
}

/// The images of the cluster's pool [`POOL`], as `client.admin` sees them.
pub fn images(ceph: &CephCluster) -> Vec<String> {
    ceph.rbd_ok("admin", &["ls", POOL])
        .lines()
        .map(str::to_string)
        .collect()
}

/// (provisioned, used) bytes of image `image` of [`POOL`], from `rbd du`:
/// a copy that kept its holes uses less than it provides.
pub fn image_usage(ceph: &CephCluster, image: &str) -> (u64, u64) {
    let out = ceph.rbd_ok(
        "admin",
        &["du", "--format", "json", &format!("{POOL}/{image}")],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("rbd du json");
    let img = &v["images"][0];
    (
        img["provisioned_size"].as_u64().unwrap_or(0),
        img["used_size"].as_u64().unwrap_or(0),
    )
}

/// Whether client address `addr` is on the cluster's OSD blocklist.
pub fn blocklisted(ceph: &CephCluster, addr: &str) -> bool {
    ceph.admin_ok(&["osd", "blocklist", "ls"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(addr))
}

/// Waits (up to `timeout`) until `addr` is on the blocklist (`on`) or off it.
pub fn wait_blocklisted(ceph: &CephCluster, addr: &str, on: bool, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while blocklisted(ceph, addr) != on {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} {} the blocklist after {timeout:?}: {}",
            if on { "never went on" } else { "stayed on" },
            ceph.admin_ok(&["osd", "blocklist", "ls"])
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The client addresses watching image `image` of [`POOL`].
pub fn watchers(ceph: &CephCluster, image: &str) -> Vec<String> {
    let out = ceph.rbd_ok(
        "admin",
        &["status", "--format", "json", &format!("{POOL}/{image}")],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("rbd status json");
    v["watchers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["address"].as_str().map(str::to_string))
        .collect()
}

/// The client addresses holding a lock on image `image` of [`POOL`]
/// (`rbd lock ls`: the exclusive lock a writer's librbd takes shows there).
pub fn lockers(ceph: &CephCluster, image: &str) -> Vec<String> {
    let out = ceph.rbd_ok(
        "admin",
        &["lock", "ls", "--format", "json", &format!("{POOL}/{image}")],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let entries: Vec<serde_json::Value> = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(m) => m.into_iter().map(|(_, e)| e).collect(),
        _ => Vec::new(),
    };
    entries
        .iter()
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect()
}
