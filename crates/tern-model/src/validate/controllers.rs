//! Controllers and addresses: only what Tern builds on the QEMU command
//! line passes, so no controller or bus is silently left out.

use super::{one_of, Result, ValidationError};
use crate::domain::{DiskBus, Domain};
use crate::guest::Address;
use crate::layout::is_q35;

const USB_MODELS: &[&str] = &[
    "qemu-xhci",
    "nec-xhci",
    "piix3-uhci",
    "ich9-ehci1",
    "ich9-uhci1",
    "ich9-uhci2",
    "ich9-uhci3",
    "none",
];

/// Controller kinds and models, and that every PCI address names a bus.
pub(super) fn validate_controllers(d: &Domain) -> Result {
    for c in &d.devices.controllers {
        one_of(
            "controller type",
            &c.controller_type,
            &["usb", "pci", "ide", "sata", "scsi", "virtio-serial"],
            "use a usb, pci, ide, sata, scsi or virtio-serial controller",
        )?;
        let Some(model) = c.model.as_deref() else {
            continue;
        };
        match c.controller_type.as_str() {
            "usb" => one_of(
                "USB controller model",
                model,
                USB_MODELS,
                "use qemu-xhci, nec-xhci, piix3-uhci, ich9-ehci1 (with ich9-uhci1..3) or none",
            )?,
            "pci" => one_of(
                "PCI controller model",
                model,
                &["pci-root", "pcie-root", "pcie-root-port", "pci-bridge", "pcie-to-pci-bridge"],
                "use pcie-root-port, pci-bridge or pcie-to-pci-bridge (switches and expander buses are not supported)",
            )?,
            "scsi" => one_of(
                "SCSI controller model",
                model,
                &["virtio-scsi", "lsilogic"],
                "use model='virtio-scsi'",
            )?,
            _ => {}
        }
    }
    let q35 = is_q35(d);
    if q35 && d.devices.disks.iter().any(|x| x.target_bus == DiskBus::Ide) {
        return Err(ValidationError::Unsupported {
            what: "disk bus",
            value: "ide on a q35 machine".into(),
            expected: "q35 has no IDE controller; use bus='sata'",
        });
    }
    if !q35 && d.devices.watchdogs.iter().any(|w| w.model == "itco") {
        return Err(ValidationError::Unsupported {
            what: "watchdog model",
            value: "itco on an i440fx machine".into(),
            expected: "iTCO is part of q35; use model='i6300esb'",
        });
    }
    for bus in pci_buses(d) {
        let known = d
            .devices
            .controllers
            .iter()
            .any(|c| c.controller_type == "pci" && c.index == u32::from(bus));
        if bus != 0 && !known {
            return Err(ValidationError::MissingPciBus(bus));
        }
    }
    Ok(())
}

/// The PCI buses device addresses refer to.
fn pci_buses(d: &Domain) -> Vec<u8> {
    let v = &d.devices;
    let addresses = v
        .disks
        .iter()
        .map(|x| &x.address)
        .chain(v.interfaces.iter().map(|x| &x.address))
        .chain(v.controllers.iter().map(|x| &x.address))
        .chain(v.videos.iter().map(|x| &x.address))
        .chain(v.sounds.iter().map(|x| &x.address))
        .chain(v.rngs.iter().map(|x| &x.address))
        .chain(v.watchdogs.iter().map(|x| &x.address))
        .chain(v.panics.iter().map(|x| &x.address))
        .chain(v.inputs.iter().map(|x| &x.address))
        .chain(std::iter::once(&v.memballoon_address));
    addresses
        .filter_map(|a| match a {
            Some(Address::Pci { bus, .. }) => Some(*bus),
            _ => None,
        })
        .collect()
}
