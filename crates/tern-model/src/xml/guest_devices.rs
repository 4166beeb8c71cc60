//! Domain XML import of device addresses and of the small devices that
//! virt-install, OpenStack and Proxmox add: `<channel>`, `<rng>`,
//! `<watchdog>`, `<sound>`, `<audio>`, `<tpm>`, `<panic>`, `<redirdev>`.

use super::import::{
    elements, invalid, missing, parse_number, required_attr, set_once, unsupported_child, Result,
};
use super::XmlError;
use crate::guest::{
    Address, Audio, Channel, ChannelKind, Panic, RedirDev, Rng, Sound, Tpm, Watchdog,
};
use roxmltree::Node;
use std::path::PathBuf;

/// A number written in decimal or as 0x-prefixed hex, as libvirt allows.
fn parse_hex_or_dec<T: TryFrom<u64>>(node: Node, attr: &'static str) -> Result<T> {
    let Some(raw) = node.attribute(attr) else {
        return T::try_from(0).map_err(|_| invalid("<address>", "0", "internal"));
    };
    let value = match raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => raw.parse().ok(),
    };
    value.and_then(|v| T::try_from(v).ok()).ok_or_else(|| {
        invalid(
            &format!("<address {attr}=>"),
            raw,
            "write a number in range, e.g. 0x03",
        )
    })
}

/// `<address>`; `None` for an ISA address at the device's default port.
pub(super) fn parse_address(node: Node) -> Result<Option<Address>> {
    let kind = required_attr(node, "type")?;
    let address = match kind {
        "pci" => {
            let slot: u8 = parse_hex_or_dec(node, "slot")?;
            let function: u8 = parse_hex_or_dec(node, "function")?;
            if slot > 31 || function > 7 {
                return Err(invalid(
                    "<address type='pci'>",
                    &format!("slot {slot:#x} function {function:#x}"),
                    "slot is 0x00 to 0x1f, function 0x0 to 0x7",
                ));
            }
            let domain: u16 = parse_hex_or_dec(node, "domain")?;
            if domain != 0 {
                return Err(XmlError::Unsupported {
                    what: format!("PCI domain {domain:#06x} in <address>"),
                    fix: "use domain='0x0000'".to_string(),
                });
            }
            Address::Pci {
                domain,
                bus: parse_hex_or_dec(node, "bus")?,
                slot,
                function,
                multifunction: match node.attribute("multifunction") {
                    None | Some("off") => false,
                    Some("on") => true,
                    Some(other) => {
                        return Err(invalid("<address multifunction=>", other, "use 'on' or 'off'"))
                    }
                },
            }
        }
        "drive" => Address::Drive {
            controller: parse_hex_or_dec(node, "controller")?,
            bus: parse_hex_or_dec(node, "bus")?,
            target: parse_hex_or_dec(node, "target")?,
            unit: parse_hex_or_dec(node, "unit")?,
        },
        "virtio-serial" => Address::VirtioSerial {
            controller: parse_hex_or_dec(node, "controller")?,
            bus: parse_hex_or_dec(node, "bus")?,
            port: parse_hex_or_dec(node, "port")?,
        },
        "usb" => Address::Usb {
            bus: parse_hex_or_dec(node, "bus")?,
            port: required_attr(node, "port")?.to_string(),
        },
        "isa" if matches!(node.attribute("iobase"), None | Some("0x505")) => return Ok(None),
        other => {
            return Err(XmlError::Unsupported {
                what: format!("<address type='{other}'>"),
                fix: "use a PCI, drive, virtio-serial or usb address, or remove <address> to have one assigned".to_string(),
            })
        }
    };
    Ok(Some(address))
}

/// `<channel type='unix'|'spicevmc'>` with a virtio `<target name=...>`.
pub(super) fn parse_channel(node: Node) -> Result<Channel> {
    let kind = required_attr(node, "type")?;
    let mut path = None;
    let mut target_name = None;
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "source" if kind == "unix" => {
                if let Some(mode) = child.attribute("mode").filter(|m| *m != "bind") {
                    return Err(XmlError::Unsupported {
                        what: format!("<channel><source mode='{mode}'>"),
                        fix: "use mode='bind' (QEMU listens on the socket)".to_string(),
                    });
                }
                set_once(&mut path, child.attribute("path").map(PathBuf::from), child)?;
            }
            "target" => {
                let target_type = required_attr(child, "type")?;
                if target_type != "virtio" {
                    return Err(XmlError::Unsupported {
                        what: format!("<channel><target type='{target_type}'>"),
                        fix: "use <target type='virtio' name=...>".to_string(),
                    });
                }
                // `state=` is the guest agent's connection state at dumpxml time.
                set_once(
                    &mut target_name,
                    required_attr(child, "name")?.to_string(),
                    child,
                )?;
            }
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            "alias" => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    let kind = match kind {
        "unix" => ChannelKind::Unix {
            path: path.flatten(),
        },
        "spicevmc" => ChannelKind::Spicevmc,
        other => {
            return Err(XmlError::Unsupported {
                what: format!("<channel type='{other}'>"),
                fix: "use type='unix' (guest agent) or type='spicevmc'".to_string(),
            })
        }
    };
    Ok(Channel {
        kind,
        target_name: target_name.ok_or_else(|| missing("<channel><target name=...>"))?,
        address: address.flatten(),
    })
}

/// `<rng model='virtio'><backend model='random'>/dev/urandom</backend>`.
pub(super) fn parse_rng(node: Node) -> Result<Rng> {
    let model = required_attr(node, "model")?;
    if !model.starts_with("virtio") {
        return Err(XmlError::Unsupported {
            what: format!("<rng model='{model}'>"),
            fix: "use model='virtio'".to_string(),
        });
    }
    let mut source = None;
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "backend" => {
                let backend = required_attr(child, "model")?;
                if backend != "random" {
                    return Err(XmlError::Unsupported {
                        what: format!("<rng><backend model='{backend}'>"),
                        fix: "use <backend model='random'>/dev/urandom</backend>".to_string(),
                    });
                }
                let text = super::import::text(child).trim().to_string();
                let path = if text.is_empty() {
                    "/dev/urandom".to_string()
                } else {
                    text
                };
                set_once(&mut source, PathBuf::from(path), child)?;
            }
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            "alias" => {}
            // `<rate>` limits entropy; refusing keeps the guest's view honest.
            _ => return Err(unsupported_child(node, child)),
        }
    }
    Ok(Rng {
        source: source.ok_or_else(|| missing("<rng><backend model='random'>"))?,
        address: address.flatten(),
    })
}

/// Watchdog actions QEMU's `-action watchdog=` knows.
pub(crate) const WATCHDOG_ACTIONS: &[&str] = &[
    "reset",
    "shutdown",
    "poweroff",
    "pause",
    "none",
    "dump",
    "inject-nmi",
];

/// `<watchdog model=... action=...>`.
pub(super) fn parse_watchdog(node: Node) -> Result<Watchdog> {
    let model = required_attr(node, "model")?;
    if !matches!(model, "i6300esb" | "ib700" | "itco") {
        return Err(XmlError::Unsupported {
            what: format!("<watchdog model='{model}'>"),
            fix: "use model='i6300esb', 'ib700' or 'itco'".to_string(),
        });
    }
    let action = node.attribute("action").unwrap_or("reset");
    if !WATCHDOG_ACTIONS.contains(&action) {
        return Err(invalid(
            "<watchdog action=>",
            action,
            &format!("use one of {}", WATCHDOG_ACTIONS.join(", ")),
        ));
    }
    if action == "dump" {
        return Err(XmlError::Unsupported {
            what: "<watchdog action='dump'> (host-side core dump)".to_string(),
            fix: "use action='reset', 'poweroff' or 'pause'".to_string(),
        });
    }
    let address = parse_only_address(node)?;
    Ok(Watchdog {
        model: model.to_string(),
        action: action.to_string(),
        address,
    })
}

/// The optional `<address>` of a device that has no other children.
fn parse_only_address(node: Node) -> Result<Option<Address>> {
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            "alias" => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    Ok(address.flatten())
}

/// `<sound model=...>` with an optional `<audio id=...>` and `<codec>`.
pub(super) fn parse_sound(node: Node) -> Result<Sound> {
    let model = required_attr(node, "model")?;
    if !matches!(model, "ich9" | "ich6" | "ac97") {
        return Err(XmlError::Unsupported {
            what: format!("<sound model='{model}'>"),
            fix: "use model='ich9', 'ich6' or 'ac97'".to_string(),
        });
    }
    let mut audio_id = None;
    let mut address = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "audio" => {
                let id = parse_number(required_attr(child, "id")?, "<sound><audio id=>")?;
                set_once(&mut audio_id, id, child)?;
            }
            "codec" if child.attribute("type") == Some("duplex") => {}
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            "alias" => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    Ok(Sound {
        model: model.to_string(),
        audio_id,
        address: address.flatten(),
    })
}

/// `<audio id=... type='none'|'spice'>`.
pub(super) fn parse_audio(node: Node) -> Result<Audio> {
    let kind = required_attr(node, "type")?;
    if !matches!(kind, "none" | "spice") {
        return Err(XmlError::Unsupported {
            what: format!("<audio type='{kind}'> (host sound output)"),
            fix: "use type='none' or 'spice'".to_string(),
        });
    }
    if let Some(child) = elements(node).next() {
        return Err(unsupported_child(node, child));
    }
    Ok(Audio {
        id: parse_number(required_attr(node, "id")?, "<audio id=>")?,
        kind: kind.to_string(),
    })
}

/// `<tpm model=...><backend type='emulator' version='2.0'/></tpm>`.
pub(super) fn parse_tpm(node: Node) -> Result<Tpm> {
    let model = node.attribute("model").unwrap_or("tpm-tis");
    if !matches!(model, "tpm-crb" | "tpm-tis") {
        return Err(XmlError::Unsupported {
            what: format!("<tpm model='{model}'>"),
            fix: "use model='tpm-crb' or 'tpm-tis'".to_string(),
        });
    }
    let mut version = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "backend" => {
                let backend = required_attr(child, "type")?;
                if backend != "emulator" {
                    return Err(XmlError::Unsupported {
                        what: format!("<tpm><backend type='{backend}'> (host TPM passthrough)"),
                        fix: "use <backend type='emulator' version='2.0'/> (swtpm)".to_string(),
                    });
                }
                let v = child.attribute("version").unwrap_or("2.0");
                if v != "2.0" {
                    return Err(XmlError::Unsupported {
                        what: format!("TPM version {v}"),
                        fix: "use version='2.0'".to_string(),
                    });
                }
                if let Some(grand) = elements(child).next() {
                    return Err(unsupported_child(child, grand));
                }
                set_once(&mut version, v.to_string(), child)?;
            }
            "alias" => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    Ok(Tpm {
        model: model.to_string(),
        version: version.ok_or_else(|| missing("<tpm><backend type='emulator'>"))?,
    })
}

/// `<panic model='isa'|'pvpanic'>`.
pub(super) fn parse_panic(node: Node) -> Result<Panic> {
    let model = node.attribute("model").unwrap_or("isa");
    if !matches!(model, "isa" | "pvpanic") {
        return Err(XmlError::Unsupported {
            what: format!("<panic model='{model}'>"),
            fix: "use model='isa' or 'pvpanic'".to_string(),
        });
    }
    Ok(Panic {
        model: model.to_string(),
        address: parse_only_address(node)?,
    })
}

/// `<redirdev bus='usb' type='spicevmc'>`.
pub(super) fn parse_redirdev(node: Node) -> Result<RedirDev> {
    let kind = required_attr(node, "type")?;
    if node.attribute("bus").unwrap_or("usb") != "usb" || kind != "spicevmc" {
        return Err(XmlError::Unsupported {
            what: format!("<redirdev type='{kind}'>"),
            fix: "use <redirdev bus='usb' type='spicevmc'/> or remove it".to_string(),
        });
    }
    Ok(RedirDev {
        address: parse_only_address(node)?,
    })
}
