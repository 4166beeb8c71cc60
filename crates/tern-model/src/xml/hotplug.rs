//! One device as `virsh attach-device` and `detach-device` take it: a
//! `<disk>` or an `<interface>` element on its own.
//!
//! The fragment is parsed by the domain importer itself (inside a minimal
//! `<domain>`), so a hot-plugged device passes exactly the checks and
//! takes exactly the defaults it would in a definition: a device Tern
//! could not start with a guest is refused the same way when added live.

use super::{parse_domain, XmlError};
use crate::domain::{Disk, Interface};

/// A device to add to, or remove from, a domain.
#[derive(Debug, Clone, PartialEq)]
pub enum HotDevice {
    /// A `<disk>`.
    Disk(Disk),
    /// An `<interface>`.
    Interface(Interface),
}

impl HotDevice {
    /// How the device is named in messages: the disk's target, the NIC's MAC.
    pub fn describe(&self) -> String {
        match self {
            HotDevice::Disk(d) => format!("disk {}", d.target_dev),
            HotDevice::Interface(i) => match &i.mac {
                Some(m) => format!("interface {m}"),
                None => "interface".into(),
            },
        }
    }
}

/// Parses a device fragment. Only `<disk>` and `<interface>` can be added
/// or removed while a guest runs; any other element is refused by name.
pub fn parse_device(xml: &str) -> Result<HotDevice, XmlError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| XmlError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    let tag = root.tag_name().name();
    if root.tag_name().namespace().is_some() || !matches!(tag, "disk" | "interface") {
        return Err(XmlError::Unsupported {
            what: format!("attaching or detaching <{tag}>"),
            fix: "pass one <disk> or <interface> element".into(),
        });
    }
    let fragment = &xml[root.range()];
    let wrapped = format!(
        "<domain type='kvm'><name>hotplug</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os><devices>{fragment}</devices></domain>"
    );
    let d = parse_domain(&wrapped)?;
    Ok(match tag {
        "disk" => HotDevice::Disk(d.devices.disks.into_iter().next().ok_or(
            XmlError::MissingElement {
                what: "<disk>".into(),
            },
        )?),
        _ => HotDevice::Interface(d.devices.interfaces.into_iter().next().ok_or(
            XmlError::MissingElement {
                what: "<interface>".into(),
            },
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_and_an_interface_parse_as_in_a_definition() {
        let d = parse_device(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='/var/lib/tern/images/x.raw'/><target dev='vdb' bus='virtio'/></disk>",
        )
        .unwrap();
        assert!(matches!(&d, HotDevice::Disk(x) if x.target_dev == "vdb"));
        let n = parse_device(
            "<interface type='bridge'><source bridge='br0'/><mac address='52:54:00:aa:bb:cc'/>\
             <model type='virtio'/></interface>",
        )
        .unwrap();
        assert_eq!(n.describe(), "interface 52:54:00:aa:bb:cc");
    }

    #[test]
    fn other_devices_are_refused_by_name() {
        let e = parse_device("<hostdev mode='subsystem'/>").unwrap_err();
        assert!(e.to_string().contains("<hostdev>"), "{e}");
        let e = parse_device("<disk type='file'><target dev='vdb'/>").unwrap_err();
        assert!(matches!(e, XmlError::Malformed(_)), "{e}");
    }
}
