//! Stable device layout: the addresses and implicit controllers libvirt
//! writes into a definition when it is defined.
//!
//! A guest's PCI slots, disk units and virtio-serial ports are part of
//! what the guest sees (Windows re-detects hardware that moves, Linux may
//! rename NICs), and migration only works if both ends build the same
//! machine. So addresses that the XML gives are kept, and the missing ones
//! are assigned once, deterministically, and recorded in the definition;
//! [`assign_addresses`] is idempotent, so calling it again at start,
//! restart or on a migration destination changes nothing.

use crate::domain::{Controller, DiskBus, Domain};
use crate::guest::{Address, ControllerDetail};
use std::collections::BTreeSet;

/// Whether the machine type is a Q35 (PCIe) machine.
pub fn is_q35(d: &Domain) -> bool {
    d.os.machine.as_deref().is_some_and(|m| m.contains("q35"))
}

/// The USB controller model libvirt picks when the XML names none.
pub fn default_usb_model(d: &Domain) -> &'static str {
    if is_q35(d) {
        "qemu-xhci"
    } else {
        "piix3-uhci"
    }
}

/// Adds the controllers the devices need and fills every missing address.
pub fn assign_addresses(d: &mut Domain) {
    add_implicit_controllers(d);
    assign_drive_addresses(d);
    assign_serial_ports(d);
    assign_usb_ports(d);
    assign_pci_slots(d);
}

fn has_controller(d: &Domain, kind: &str) -> bool {
    d.devices
        .controllers
        .iter()
        .any(|c| c.controller_type == kind)
}

fn controller(kind: &str, model: Option<&str>) -> Controller {
    Controller {
        controller_type: kind.to_string(),
        index: 0,
        model: model.map(str::to_string),
        detail: ControllerDetail::default(),
        address: None,
    }
}

/// libvirt adds the controllers that devices hang off when the XML omits them.
fn add_implicit_controllers(d: &mut Domain) {
    let disks = &d.devices.disks;
    let needs = [
        (
            "sata",
            None,
            disks.iter().any(|x| x.target_bus == DiskBus::Sata),
        ),
        (
            "scsi",
            Some("virtio-scsi"),
            disks.iter().any(|x| x.target_bus == DiskBus::Scsi),
        ),
        (
            "virtio-serial",
            None,
            !d.devices.channels.is_empty()
                || d.devices.consoles.iter().any(|c| c.target_type == "virtio"),
        ),
        (
            "usb",
            Some(default_usb_model(d)),
            !d.devices.redirdevs.is_empty()
                || d.devices
                    .inputs
                    .iter()
                    .any(|i| i.bus.as_deref() == Some("usb")),
        ),
    ];
    for (kind, model, needed) in needs {
        if needed && !has_controller(d, kind) {
            d.devices.controllers.push(controller(kind, model));
        }
    }
}

/// The index libvirt derives from a target name: "sdc" → 2, "hdb" → 1.
pub fn target_index(dev: &str) -> u32 {
    let suffix = dev.get(2..).unwrap_or("");
    let mut idx: u32 = 0;
    for (i, c) in suffix.chars().enumerate() {
        if !c.is_ascii_lowercase() {
            break;
        }
        idx = (idx + u32::from(i > 0))
            .saturating_mul(26)
            .saturating_add(c as u32 - 'a' as u32);
    }
    idx
}

/// Drive addresses for IDE, SATA and SCSI disks, as libvirt assigns them
/// from the target name.
fn assign_drive_addresses(d: &mut Domain) {
    for disk in &mut d.devices.disks {
        if disk.address.is_some() {
            continue;
        }
        let idx = target_index(&disk.target_dev);
        disk.address = match disk.target_bus {
            DiskBus::Virtio => None,
            DiskBus::Ide => Some(Address::Drive {
                controller: idx / 4,
                bus: (idx % 4) / 2,
                target: 0,
                unit: idx % 2,
            }),
            DiskBus::Sata => Some(Address::Drive {
                controller: idx / 6,
                bus: 0,
                target: 0,
                unit: idx % 6,
            }),
            DiskBus::Scsi => Some(Address::Drive {
                controller: idx / 7,
                bus: 0,
                target: 0,
                unit: idx % 7,
            }),
        };
    }
}

/// virtio-serial ports: libvirt starts channels at port 1.
fn assign_serial_ports(d: &mut Domain) {
    let mut used: BTreeSet<u32> = d
        .devices
        .channels
        .iter()
        .filter_map(|c| match c.address {
            Some(Address::VirtioSerial { port, .. }) => Some(port),
            _ => None,
        })
        .collect();
    for channel in &mut d.devices.channels {
        if channel.address.is_none() {
            let port = (1..).find(|p| !used.contains(p)).unwrap_or(1);
            used.insert(port);
            channel.address = Some(Address::VirtioSerial {
                controller: 0,
                bus: 0,
                port,
            });
        }
    }
}

/// USB ports for USB inputs and redirected devices, from port 1.
fn assign_usb_ports(d: &mut Domain) {
    let mut used: BTreeSet<String> = BTreeSet::new();
    let given = d
        .devices
        .inputs
        .iter()
        .map(|i| &i.address)
        .chain(d.devices.redirdevs.iter().map(|r| &r.address));
    for address in given.flatten() {
        if let Address::Usb { port, .. } = address {
            used.insert(port.clone());
        }
    }
    let mut next = move || {
        let port = (1u32..)
            .map(|p| p.to_string())
            .find(|p| !used.contains(p))
            .unwrap_or_default();
        used.insert(port.clone());
        Some(Address::Usb { bus: 0, port })
    };
    for input in &mut d.devices.inputs {
        if input.bus.as_deref() == Some("usb") && input.address.is_none() {
            input.address = next();
        }
    }
    for redir in &mut d.devices.redirdevs {
        if redir.address.is_none() {
            redir.address = next();
        }
    }
}

/// Which (bus, slot) pairs are taken, with the chipset's own slots.
fn used_slots(d: &Domain) -> BTreeSet<(u8, u8)> {
    let mut used = BTreeSet::from([(0, 0)]);
    if is_q35(d) {
        used.insert((0, 0x1f));
    } else {
        used.insert((0, 1));
    }
    for address in pci_addresses(d).into_iter().flatten() {
        if let Address::Pci { bus, slot, .. } = address {
            used.insert((*bus, *slot));
        }
    }
    used
}

/// Every device's PCI-capable address slot, in libvirt's assignment order.
fn pci_addresses(d: &Domain) -> Vec<&Option<Address>> {
    let dev = &d.devices;
    let mut out: Vec<&Option<Address>> = Vec::new();
    out.extend(dev.videos.iter().map(|v| &v.address));
    out.extend(dev.controllers.iter().map(|c| &c.address));
    out.extend(dev.interfaces.iter().map(|i| &i.address));
    out.extend(dev.disks.iter().map(|x| &x.address));
    out.extend(dev.sounds.iter().map(|s| &s.address));
    out.extend(dev.watchdogs.iter().map(|w| &w.address));
    out.extend(dev.rngs.iter().map(|r| &r.address));
    out.push(&dev.memballoon_address);
    out.extend(dev.panics.iter().map(|p| &p.address));
    out
}

/// Whether a controller is a PCI device of its own (not part of the
/// chipset, not a root bus).
fn controller_is_pci_device(c: &Controller, q35: bool) -> bool {
    match c.controller_type.as_str() {
        "pci" => !matches!(c.model.as_deref(), Some("pci-root") | Some("pcie-root")),
        "ide" => false,
        "sata" => !(q35 && c.index == 0),
        "usb" => c.model.as_deref() != Some("none"),
        "virtio-serial" | "scsi" => true,
        _ => false,
    }
}

/// Assigns free slots on bus 0: the primary video card first (slot 2 on
/// i440fx, slot 1 on Q35, as libvirt does), then controllers, NICs,
/// virtio disks, sound, watchdog, RNG, balloon.
fn assign_pci_slots(d: &mut Domain) {
    let q35 = is_q35(d);
    let mut used = used_slots(d);
    let mut take = |preferred: Option<u8>| -> Option<Address> {
        let slot = preferred
            .filter(|s| !used.contains(&(0, *s)))
            .or_else(|| (1u8..0x1f).find(|s| !used.contains(&(0, *s))))?;
        used.insert((0, slot));
        Some(Address::pci(0, slot))
    };
    let dev = &mut d.devices;
    for (i, video) in dev.videos.iter_mut().enumerate() {
        if video.address.is_none() && video.model != "none" {
            let preferred = (i == 0).then_some(if q35 { 1 } else { 2 });
            video.address = take(preferred);
        }
    }
    for c in &mut dev.controllers {
        if c.address.is_some() || !controller_is_pci_device(c, q35) {
            continue;
        }
        // The i440fx PIIX3 USB controller is function 2 of the chipset slot.
        if !q35
            && c.controller_type == "usb"
            && matches!(c.model.as_deref(), None | Some("piix3-uhci"))
        {
            c.address = Some(Address::Pci {
                domain: 0,
                bus: 0,
                slot: 1,
                function: 2,
                multifunction: false,
            });
            continue;
        }
        c.address = take(None);
    }
    for i in &mut dev.interfaces {
        if i.address.is_none() {
            i.address = take(None);
        }
    }
    for x in &mut dev.disks {
        if x.address.is_none() && x.target_bus == DiskBus::Virtio {
            x.address = take(None);
        }
    }
    for s in &mut dev.sounds {
        if s.address.is_none() {
            s.address = take(None);
        }
    }
    for w in &mut dev.watchdogs {
        if w.address.is_none() && w.model == "i6300esb" {
            w.address = take(None);
        }
    }
    for r in &mut dev.rngs {
        if r.address.is_none() {
            r.address = take(None);
        }
    }
    if dev.memballoon.as_deref() == Some("virtio") && dev.memballoon_address.is_none() {
        dev.memballoon_address = take(None);
    }
    for p in &mut dev.panics {
        if p.address.is_none() && p.model == "pvpanic" {
            p.address = take(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_domain;

    fn domain(machine: &str, devices: &str) -> Domain {
        parse_domain(&format!(
            "<domain type='kvm'><name>l</name><memory>1024</memory>\
             <os><type machine='{machine}'>hvm</type></os><devices>{devices}</devices></domain>"
        ))
        .expect("parses")
    }

    #[test]
    fn target_names_give_libvirt_indexes() {
        for (dev, idx) in [
            ("sda", 0),
            ("hdb", 1),
            ("sdz", 25),
            ("sdaa", 26),
            ("vdab", 27),
        ] {
            assert_eq!(target_index(dev), idx, "{dev}");
        }
    }

    #[test]
    fn drive_addresses_follow_the_target_name() {
        let mut d = domain(
            "pc",
            "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>\
             <disk type='file'><source file='/a'/><target dev='sdb' bus='sata'/></disk>\
             <disk type='file'><source file='/b'/><target dev='sdh' bus='scsi'/></disk>",
        );
        assert_addresses(&mut d);
        let a: Vec<_> = d.devices.disks.iter().map(|x| x.address.clone()).collect();
        assert_eq!(
            a[0],
            Some(Address::Drive {
                controller: 0,
                bus: 1,
                target: 0,
                unit: 0
            })
        );
        assert_eq!(
            a[1],
            Some(Address::Drive {
                controller: 0,
                bus: 0,
                target: 0,
                unit: 1
            })
        );
        assert_eq!(
            a[2],
            Some(Address::Drive {
                controller: 1,
                bus: 0,
                target: 0,
                unit: 0
            })
        );
        // The SATA and SCSI controllers the disks need were added.
        let kinds: Vec<_> = d
            .devices
            .controllers
            .iter()
            .map(|c| c.controller_type.as_str())
            .collect();
        assert_eq!(kinds, ["sata", "scsi"]);
    }

    fn assert_addresses(d: &mut Domain) {
        assign_addresses(d);
        let again = d.clone();
        assign_addresses(d);
        assert_eq!(*d, again, "assignment is idempotent");
    }

    #[test]
    fn pci_slots_skip_given_ones_and_the_chipset() {
        let mut d = domain(
            "pc-i440fx-10.0",
            "<interface type='user'><address type='pci' bus='0x00' slot='0x03'/></interface>\
             <interface type='user'/>\
             <disk type='file'><source file='/a'/><target dev='vda'/></disk>\
             <video><model type='vga'/></video><memballoon model='virtio'/>",
        );
        assert_addresses(&mut d);
        assert_eq!(d.devices.videos[0].address, Some(Address::pci(0, 2)));
        assert_eq!(d.devices.interfaces[1].address, Some(Address::pci(0, 4)));
        assert_eq!(d.devices.disks[0].address, Some(Address::pci(0, 5)));
        assert_eq!(d.devices.memballoon_address, Some(Address::pci(0, 6)));
        let mut q = domain(
            "q35",
            "<video><model type='virtio'/></video><watchdog model='i6300esb'/>",
        );
        assert_addresses(&mut q);
        assert_eq!(q.devices.videos[0].address, Some(Address::pci(0, 1)));
        assert_eq!(q.devices.watchdogs[0].address, Some(Address::pci(0, 2)));
    }

    #[test]
    fn channels_get_serial_ports_and_usb_inputs_ports() {
        let mut d = domain(
            "q35",
            "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
             <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>\
             <input type='tablet' bus='usb'/><redirdev bus='usb' type='spicevmc'/>",
        );
        assert_addresses(&mut d);
        let ports: Vec<_> = d
            .devices
            .channels
            .iter()
            .map(|c| c.address.clone())
            .collect();
        assert_eq!(
            ports,
            [1, 2].map(|port| Some(Address::VirtioSerial {
                controller: 0,
                bus: 0,
                port
            }))
        );
        assert_eq!(
            d.devices.inputs[0].address,
            Some(Address::Usb {
                bus: 0,
                port: "1".into()
            })
        );
        assert_eq!(
            d.devices.redirdevs[0].address,
            Some(Address::Usb {
                bus: 0,
                port: "2".into()
            })
        );
        let usb = d
            .devices
            .controllers
            .iter()
            .find(|c| c.controller_type == "usb")
            .unwrap();
        assert_eq!(usb.model.as_deref(), Some("qemu-xhci"));
    }
}
