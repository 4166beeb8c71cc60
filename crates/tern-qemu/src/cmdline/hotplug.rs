//! A device added to a running guest, as QMP needs it.
//!
//! The arguments come from the very functions that build the command
//! line, so a device plugged in live and the same device at the next
//! start (on this host, or on a migration's destination, which starts
//! QEMU from the definition) are one and the same: same properties, same
//! PCI address, same node names. The `-blockdev` and `-netdev` option
//! strings are turned into the JSON objects `blockdev-add` and
//! `netdev_add` take; the `-device` string goes to `device_add` as it is
//! (through the human monitor, which parses it exactly as `-device` does).

use super::{disks, nics, LaunchSpec};
use serde_json::{Map, Value};
use tern_model::Domain;

/// Options QEMU types as booleans (written on/off on the command line).
const BOOL_KEYS: &[&str] = &[
    "read-only",
    "auto-read-only",
    "force-share",
    "cache.direct",
    "cache.no-flush",
    "vhost",
];

/// Splits an option string on its single commas (`,,` is an escaped comma).
fn split_opts(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

/// `driver=file,cache.direct=on,...` as a JSON object; dotted keys nest.
/// A leading bare word is the value of `implied` (`tap,id=...` is
/// `type=tap,id=...`).
/// A string already in QEMU's JSON syntax (`-blockdev {"driver":...}`, as
/// network disks are written) is parsed as it is.
pub fn opts_to_json(s: &str, implied: &str) -> Value {
    if s.trim_start().starts_with('{') {
        if let Ok(v) = serde_json::from_str(s) {
            return v;
        }
    }
    let mut root = Map::new();
    for (n, part) in split_opts(s).into_iter().enumerate() {
        let (key, val) = match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if n == 0 => (implied.to_string(), part),
            None => continue,
        };
        let value = if BOOL_KEYS.contains(&key.as_str()) {
            Value::Bool(val == "on")
        } else {
            Value::String(val)
        };
        let mut map = &mut root;
        let mut path: Vec<&str> = key.split('.').collect();
        let last = path.pop().unwrap_or_default();
        for p in path {
            map = map
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an option is both a value and a group");
        }
        map.insert(last.to_string(), value);
    }
    Value::Object(root)
}

/// A disk to plug in live: its block nodes (protocol first, for
/// `blockdev-add` in order) and its `-device` string.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskPlug {
    /// `blockdev-add` arguments, bottom node first.
    pub blockdevs: Vec<Value>,
    /// The `device_add` option string.
    pub device: String,
}

/// The plug of disk `target` of `d` (whose addresses are assigned).
pub fn disk_plug(d: &Domain, target: &str) -> Option<DiskPlug> {
    let mut a = Vec::new();
    disks(d, &mut a);
    let mut blockdevs = Vec::new();
    let mut it = a.chunks(2);
    for pair in &mut it {
        match pair {
            [flag, v] if flag == "-blockdev" => blockdevs.push(opts_to_json(v, "driver")),
            [flag, v] if flag == "-device" => {
                if split_opts(v).iter().any(|p| *p == format!("id={target}")) {
                    return Some(DiskPlug {
                        blockdevs,
                        device: v.clone(),
                    });
                }
                blockdevs.clear();
            }
            _ => {}
        }
    }
    None
}

/// A NIC to plug in live: its `netdev_add` arguments and `-device` string.
#[derive(Debug, Clone, PartialEq)]
pub struct NicPlug {
    /// `netdev_add` arguments.
    pub netdev: Value,
    /// The `device_add` option string.
    pub device: String,
}

/// The plug of NIC number `index` of the launch's domain.
pub fn nic_plug(spec: &LaunchSpec<'_>, index: usize) -> Option<NicPlug> {
    let mut a = Vec::new();
    nics(spec, &mut a);
    let pairs: Vec<&[String]> = a.chunks(2).collect();
    let netdev = pairs
        .iter()
        .filter(|p| p[0] == "-netdev")
        .nth(index)?
        .get(1)?;
    let device = pairs
        .iter()
        .filter(|p| p[0] == "-device")
        .nth(index)?
        .get(1)?;
    Some(NicPlug {
        netdev: opts_to_json(netdev, "type"),
        device: device.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_become_typed_nested_json() {
        let v = opts_to_json(
            "driver=file,filename=/a,,b.raw,node-name=file-vdb,cache.direct=on,cache.no-flush=off,read-only=off,aio=native",
            "driver",
        );
        assert_eq!(
            v,
            json!({"driver": "file", "filename": "/a,b.raw", "node-name": "file-vdb",
                   "cache": {"direct": true, "no-flush": false}, "read-only": false, "aio": "native"})
        );
        let n = opts_to_json(
            "tap,id=hostnet1,ifname=tnx1,script=no,downscript=no",
            "type",
        );
        assert_eq!(n["type"], "tap");
        assert_eq!(n["ifname"], "tnx1");
    }

    #[test]
    fn a_disk_plug_matches_the_command_line() {
        let xml = "<domain type='kvm'><name>h</name><memory unit='MiB'>64</memory>\
            <os><type arch='x86_64'>hvm</type></os><devices>\
            <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/i/a.raw'/><target dev='vda'/></disk>\
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/b.qcow2'/><target dev='vdb'/></disk>\
            </devices></domain>";
        let mut d = tern_model::xml::parse_domain(xml).unwrap();
        tern_model::layout::assign_addresses(&mut d);
        let p = disk_plug(&d, "vdb").unwrap();
        assert_eq!(p.blockdevs.len(), 2);
        assert_eq!(p.blockdevs[0]["filename"], "/i/b.qcow2");
        assert_eq!(p.blockdevs[1]["driver"], "qcow2");
        assert_eq!(p.blockdevs[1]["file"], "file-vdb");
        assert!(
            p.device
                .starts_with("virtio-blk-pci,id=vdb,drive=drive-vdb"),
            "{}",
            p.device
        );
        assert!(p.device.contains("addr=0x"), "{}", p.device);
        assert!(disk_plug(&d, "vdc").is_none());
    }
}
