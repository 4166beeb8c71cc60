//! `-blockdev` for `<disk type='network'>`: QEMU's own network block
//! drivers (nfs through libnfs, rbd, iscsi, gluster; Debian ships them in
//! qemu-block-extra). Written as JSON so names need no comma escaping.

use super::{cache_flags, file_node};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tern_model::{Disk, DiskRemote, Domain, NetProtocol, NetworkSource};

/// The protocol node for `n`, named like a file disk's protocol node.
fn protocol_node(disk: &Disk, n: &NetworkSource, read_only: bool) -> Value {
    let (direct, no_flush, _) = cache_flags(disk.cache);
    let mut v = match n.protocol {
        NetProtocol::Nfs => json!({
            "driver": "nfs",
            "server": {"type": "inet", "host": host(n, 0)},
            "path": format!("/{}", n.name.trim_start_matches('/')),
        }),
        NetProtocol::Gluster => {
            let (volume, path) = split_first(&n.name);
            json!({
                "driver": "gluster",
                "volume": volume,
                "path": path,
                "server": servers(n, 24007),
            })
        }
        NetProtocol::Rbd => {
            let (pool, image) = split_first(&n.name);
            let mut v = json!({"driver": "rbd", "pool": pool, "image": image});
            if !n.hosts.is_empty() {
                // rbd's servers are InetSocketAddressBase: no "type" (QEMU
                // refuses `server[0].type`), unlike gluster's SocketAddress.
                let mut list = servers(n, 6789);
                if let Value::Array(items) = &mut list {
                    for i in items {
                        if let Value::Object(o) = i {
                            o.remove("type");
                        }
                    }
                }
                v["server"] = list;
            }
            if let Some(a) = &n.auth {
                v["user"] = json!(a.username);
                v["key-secret"] = json!(disk_secret_id(&disk.target_dev));
                v["auth-client-required"] = json!(["cephx"]);
            }
            v
        }
        NetProtocol::Iscsi => {
            // name='iqn.2013-07.com.example:target/1': target, then LUN.
            let (target, lun) = n.name.rsplit_once('/').unwrap_or((n.name.as_str(), "0"));
            let port = n.hosts.first().and_then(|h| h.port).unwrap_or(3260);
            json!({
                "driver": "iscsi",
                "transport": "tcp",
                "portal": format!("{}:{port}", host(n, 0)),
                "target": target,
                "lun": lun.parse::<u32>().unwrap_or(0),
            })
        }
    };
    v["node-name"] = json!(file_node(&disk.target_dev));
    v["cache"] = json!({"direct": direct, "no-flush": no_flush});
    v["read-only"] = json!(read_only);
    v
}

/// The id of the `secret` object holding the cephx key of disk `dev`.
pub fn disk_secret_id(target_dev: &str) -> String {
    format!("sec-{target_dev}")
}

/// Where the agent puts the cephx key of disk `dev` for QEMU: a file of
/// mode 0600 in the run directory, read once by `-object secret,file=`
/// (the key is never on QEMU's command line).
pub fn disk_secret_file(run_dir: &Path, target_dev: &str) -> PathBuf {
    run_dir.join(format!("{}.key", disk_secret_id(target_dev)))
}

/// `-object secret,id=sec-DEV,file=RUN/sec-DEV.key,format=base64` for every
/// rbd disk with `<auth>`, before the `-blockdev`s that name them.
pub(super) fn secret_objects(d: &Domain, run_dir: &Path, a: &mut Vec<String>) {
    for disk in &d.devices.disks {
        let Some(DiskRemote::Network(n)) = &disk.remote else {
            continue;
        };
        if disk.source.is_some() || n.auth.is_none() {
            continue;
        }
        a.push("-object".into());
        a.push(format!(
            "secret,id={},file={},format=base64",
            disk_secret_id(&disk.target_dev),
            super::escape_comma(
                &disk_secret_file(run_dir, &disk.target_dev)
                    .display()
                    .to_string()
            )
        ));
    }
}

fn host(n: &NetworkSource, i: usize) -> String {
    n.hosts.get(i).map(|h| h.name.clone()).unwrap_or_default()
}

fn split_first(name: &str) -> (String, String) {
    let name = name.trim_start_matches('/');
    match name.split_once('/') {
        Some((a, b)) => (a.to_string(), b.to_string()),
        None => (name.to_string(), String::new()),
    }
}

fn servers(n: &NetworkSource, default_port: u16) -> Value {
    Value::Array(
        n.hosts
            .iter()
            .map(|h| {
                json!({
                    "type": "inet",
                    "host": h.name,
                    "port": h.port.unwrap_or(default_port).to_string(),
                })
            })
            .collect(),
    )
}

/// The protocol `-blockdev` of a network disk; the format node on top of
/// it is written like a file disk's.
pub(super) fn protocol_blockdev(disk: &Disk, n: &NetworkSource, read_only: bool) -> String {
    protocol_node(disk, n, read_only).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_model::{
        CacheMode, DiskBus, DiskDevice, DiskFormat, DiskRemote, DiskSourceType, NetHost,
    };

    fn disk(
        protocol: NetProtocol,
        name: &str,
        hosts: &[(&str, Option<u16>)],
    ) -> (Disk, NetworkSource) {
        let n = NetworkSource {
            protocol,
            name: name.into(),
            hosts: hosts
                .iter()
                .map(|(h, p)| NetHost {
                    name: h.to_string(),
                    port: *p,
                })
                .collect(),
            auth: None,
        };
        let d = Disk {
            source_type: DiskSourceType::Network,
            device: DiskDevice::Disk,
            format: DiskFormat::Qcow2,
            cache: Some(CacheMode::None),
            source: None,
            target_dev: "vda".into(),
            target_bus: DiskBus::Virtio,
            readonly: false,
            shareable: false,
            remote: Some(DiskRemote::Network(n.clone())),
            io: None,
            discard: None,
            detect_zeroes: None,
            iothread: None,
            boot_order: None,
            serial: None,
            address: None,
        };
        (d, n)
    }

    fn node(protocol: NetProtocol, name: &str, hosts: &[(&str, Option<u16>)]) -> Value {
        let (d, n) = disk(protocol, name, hosts);
        serde_json::from_str(&protocol_blockdev(&d, &n, false)).unwrap()
    }

    #[test]
    fn nfs_opens_the_export_path_on_the_server() {
        let v = node(NetProtocol::Nfs, "nfs/test01", &[("10.0.0.3", None)]);
        assert_eq!(v["driver"], "nfs");
        assert_eq!(v["server"], json!({"type": "inet", "host": "10.0.0.3"}));
        assert_eq!(v["path"], "/nfs/test01");
        assert_eq!(v["node-name"], json!(file_node("vda")));
        assert_eq!(v["cache"]["direct"], true);
        assert_eq!(v["read-only"], false);
    }

    #[test]
    fn rbd_with_auth_names_a_secret_object_never_the_key() {
        let (mut d, mut n) = disk(NetProtocol::Rbd, "tern/img", &[("127.0.0.1", Some(6790))]);
        n.auth = Some(tern_model::CephAuth {
            username: "qemu".into(),
            secret: tern_model::SecretRef::Usage("client.qemu secret".into()),
        });
        d.remote = Some(DiskRemote::Network(n.clone()));
        let v: Value = serde_json::from_str(&protocol_blockdev(&d, &n, false)).unwrap();
        assert_eq!(v["user"], "qemu");
        assert_eq!(v["key-secret"], "sec-vda");
        assert_eq!(v["auth-client-required"], json!(["cephx"]));
        assert_eq!(v["server"][0]["port"], "6790");
        assert!(v["server"][0].get("type").is_none(), "{v}");
        let mut dom = tern_model::xml::parse_domain(
            "<domain type='kvm'><name>r</name><memory>65536</memory><os><type>hvm</type></os></domain>",
        )
        .unwrap();
        dom.devices.disks.push(d);
        let mut a = Vec::new();
        secret_objects(&dom, Path::new("/run/t/r"), &mut a);
        assert_eq!(
            a,
            [
                "-object",
                "secret,id=sec-vda,file=/run/t/r/sec-vda.key,format=base64"
            ]
        );
    }

    #[test]
    fn rbd_gluster_and_iscsi_split_their_names() {
        let v = node(NetProtocol::Rbd, "pool/img", &[("mon1", None)]);
        assert_eq!(
            (v["pool"].as_str(), v["image"].as_str()),
            (Some("pool"), Some("img"))
        );
        assert_eq!(v["server"][0]["port"], "6789");
        assert!(v.get("key-secret").is_none() && v.get("user").is_none());
        let v = node(
            NetProtocol::Gluster,
            "vol/dir/a.qcow2",
            &[("g1", Some(24008))],
        );
        assert_eq!(
            (v["volume"].as_str(), v["path"].as_str()),
            (Some("vol"), Some("dir/a.qcow2"))
        );
        assert_eq!(v["server"][0]["port"], "24008");
        let v = node(
            NetProtocol::Iscsi,
            "iqn.2013-07.com.example:t1/2",
            &[("h", None)],
        );
        assert_eq!(v["portal"], "h:3260");
        assert_eq!(v["target"], "iqn.2013-07.com.example:t1");
        assert_eq!(v["lun"], 2);
    }
}
