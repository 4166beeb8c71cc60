//! Domain XML import: `<disk>` and its `<driver>`, `<source>` and `<target>`.

use super::devices::is_runtime_only;
use super::guest_devices::parse_address;
use super::import::{
    elements, invalid, missing, parse_number, required_attr, set_once, unsupported_child, Result,
};
use super::XmlError;
use crate::domain::{CacheMode, Disk, DiskBus, DiskDevice, DiskFormat, DiskSourceType};
use roxmltree::Node;
use std::path::PathBuf;

pub(super) fn parse_disk(node: Node) -> Result<Disk> {
    let source_type =
        match required_attr(node, "type")? {
            "file" => DiskSourceType::File,
            "block" => DiskSourceType::Block,
            "network" => DiskSourceType::Network,
            "volume" => DiskSourceType::Volume,
            other => return Err(XmlError::Unsupported {
                what: format!("<disk type='{other}'>"),
                fix: "use type='file' with <source file=...>, type='block' with <source dev=...>, type='network' or type='volume'"
                    .to_string(),
            }),
        };
    let device = match node.attribute("device").unwrap_or("disk") {
        "disk" => DiskDevice::Disk,
        "cdrom" => DiskDevice::Cdrom,
        "floppy" => {
            return Err(XmlError::Unsupported {
                what: "<disk device='floppy'>".to_string(),
                fix: "remove the floppy disk from the domain XML".to_string(),
            })
        }
        "lun" => {
            return Err(XmlError::Unsupported {
                what: "<disk device='lun'> (SCSI command passthrough)".to_string(),
                fix: "use device='disk'".to_string(),
            })
        }
        other => {
            return Err(invalid(
                "<disk device=>",
                other,
                "use device='disk' or 'cdrom'",
            ))
        }
    };

    let mut driver = None;
    let mut source = None;
    let mut target = None;
    let mut readonly = false;
    let mut shareable = false;
    let mut boot_order = None;
    let mut serial = None;
    let mut address = None;
    let mut remote = None;
    let mut auth = None;
    let names_no_path = matches!(
        source_type,
        DiskSourceType::Network | DiskSourceType::Volume
    );
    for child in elements(node) {
        match child.tag_name().name() {
            "driver" => set_once(&mut driver, parse_disk_driver(child)?, child)?,
            "boot" => set_once(&mut boot_order, parse_boot_order(child)?, child)?,
            "serial" => set_once(&mut serial, super::import::text(child), child)?,
            "address" => set_once(&mut address, parse_address(child)?, child)?,
            "source" if names_no_path => set_once(
                &mut remote,
                super::netdisk::parse_source(child, source_type)?,
                child,
            )?,
            "source" => set_once(&mut source, parse_disk_source(child, source_type)?, child)?,
            "target" => set_once(&mut target, parse_disk_target(child)?, child)?,
            "auth" if source_type == DiskSourceType::Network => {
                set_once(&mut auth, super::netdisk::parse_auth(child)?, child)?
            }
            "readonly" => readonly = true,
            "shareable" => shareable = true,
            // The backing chain as libvirt probed it; Tern reads it from the image.
            "backingStore" => {}
            _ if is_runtime_only(child) => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    let DriverOpts {
        format,
        cache,
        io,
        discard,
        detect_zeroes,
        iothread,
    } = driver.unwrap_or_default();
    super::netdisk::attach_auth(&mut remote, auth)?;
    let (target_dev, target_bus) = target.ok_or_else(|| missing("<disk><target dev=...>"))?;
    Ok(Disk {
        source_type,
        device,
        format,
        cache,
        source: source.flatten(),
        remote,
        target_dev,
        target_bus,
        // libvirt treats every cdrom as read-only.
        readonly: readonly || device == DiskDevice::Cdrom,
        shareable,
        io,
        discard,
        detect_zeroes,
        iothread,
        boot_order,
        serial,
        address: address.flatten(),
    })
}

/// What `<disk><driver>` says.
struct DriverOpts {
    format: DiskFormat,
    cache: Option<CacheMode>,
    io: Option<String>,
    discard: Option<String>,
    detect_zeroes: Option<String>,
    iothread: Option<u32>,
}

impl Default for DriverOpts {
    fn default() -> Self {
        DriverOpts {
            format: DiskFormat::Raw,
            cache: None,
            io: None,
            discard: None,
            detect_zeroes: None,
            iothread: None,
        }
    }
}

/// `<boot order=N>` on a disk or interface.
pub(super) fn parse_boot_order(node: Node) -> Result<u32> {
    let order: u32 = parse_number(required_attr(node, "order")?, "<boot order=>")?;
    if order == 0 {
        return Err(invalid("<boot order=>", "0", "boot orders start at 1"));
    }
    Ok(order)
}

/// An optional attribute that must be one of `allowed`.
fn one_of_attr(node: Node, attr: &'static str, allowed: &[&str]) -> Result<Option<String>> {
    match node.attribute(attr) {
        None => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v.to_string())),
        Some(v) => Err(invalid(
            &format!("<disk><driver {attr}=>"),
            v,
            &format!("use {}", allowed.join(", ")),
        )),
    }
}

/// `<driver name='qemu' type=... cache=... io=... discard=... detect_zeroes=...>`.
fn parse_disk_driver(node: Node) -> Result<DriverOpts> {
    for (attr, _) in node.attributes().map(|a| (a.name(), a.value())) {
        if !matches!(
            attr,
            "name" | "type" | "cache" | "io" | "discard" | "detect_zeroes" | "iothread"
        ) {
            return Err(XmlError::Unsupported {
                what: format!("<disk><driver {attr}=...>"),
                fix: "remove the attribute".to_string(),
            });
        }
    }
    if let Some(name) = node.attribute("name").filter(|n| *n != "qemu") {
        return Err(invalid("<disk><driver name=>", name, "use name='qemu'"));
    }
    let format = match node.attribute("type").unwrap_or("raw") {
        "raw" => DiskFormat::Raw,
        "qcow2" => DiskFormat::Qcow2,
        other => {
            return Err(XmlError::Unsupported {
                what: format!("disk image format '{other}'"),
                fix: "convert the image with `qemu-img convert -O qcow2` and use type='qcow2', or use type='raw'".to_string(),
            })
        }
    };
    let cache = match node.attribute("cache") {
        None | Some("default") => None,
        Some("none") => Some(CacheMode::None),
        Some("writethrough") => Some(CacheMode::Writethrough),
        Some("writeback") => Some(CacheMode::Writeback),
        Some("directsync") => Some(CacheMode::Directsync),
        Some("unsafe") => Some(CacheMode::Unsafe),
        Some(other) => {
            return Err(invalid(
                "<disk><driver cache=>",
                other,
                "use none, writethrough, writeback, directsync or unsafe",
            ))
        }
    };
    Ok(DriverOpts {
        format,
        cache,
        io: one_of_attr(node, "io", &["native", "threads", "io_uring"])?,
        discard: one_of_attr(node, "discard", &["unmap", "ignore"])?,
        detect_zeroes: one_of_attr(node, "detect_zeroes", &["off", "on", "unmap"])?,
        iothread: node
            .attribute("iothread")
            .map(|t| parse_number(t, "<disk><driver iothread=>"))
            .transpose()?,
    })
}

/// `<source file=...>` for file disks, `<source dev=...>` for block disks;
/// `None` when the element names neither (an empty cdrom).
fn parse_disk_source(node: Node, source_type: DiskSourceType) -> Result<Option<PathBuf>> {
    let (wanted, other, kind) = match source_type {
        DiskSourceType::File => ("file", "dev", "file"),
        DiskSourceType::Block => ("dev", "file", "block"),
        DiskSourceType::Network | DiskSourceType::Volume => return Ok(None),
    };
    if let Some(path) = node.attribute(wanted) {
        return Ok(Some(PathBuf::from(path)));
    }
    if node.attribute(other).is_some() {
        return Err(XmlError::InvalidValue {
            what: format!("<disk type='{kind}'><source>"),
            value: format!("{other}=..."),
            expected: format!(
                "a {kind} disk takes <source {wanted}=...>; fix the attribute or the disk type"
            ),
        });
    }
    Ok(None)
}

/// `<target dev=... bus=...>`; without `bus=` the bus follows the name:
/// vd* → virtio, hd* → ide, sd* → sata.
fn parse_disk_target(node: Node) -> Result<(String, DiskBus)> {
    let dev = required_attr(node, "dev")?;
    let bus = match node.attribute("bus") {
        Some("virtio") => DiskBus::Virtio,
        Some("ide") => DiskBus::Ide,
        Some("sata") => DiskBus::Sata,
        Some("scsi") => DiskBus::Scsi,
        Some(other) => {
            return Err(XmlError::Unsupported {
                what: format!("disk bus '{other}'"),
                fix: "use bus='virtio', 'sata', 'scsi' or 'ide'".to_string(),
            })
        }
        None if dev.starts_with("vd") => DiskBus::Virtio,
        None if dev.starts_with("hd") => DiskBus::Ide,
        None if dev.starts_with("sd") => DiskBus::Sata,
        None => {
            return Err(invalid(
                "<disk><target dev=> without bus=",
                dev,
                "name it vdX, hdX or sdX, or add bus='virtio', 'sata', 'scsi' or 'ide'",
            ))
        }
    };
    Ok((dev.to_string(), bus))
}
