//! Semantic checks on a [`Domain`], whether parsed from XML or built in code.
//!
//! [`validate`] accepts exactly the domains Tern can start, migrate and print
//! back: every domain it accepts survives `parse_domain(&to_xml(&d))`
//! unchanged.

use crate::domain::{CharDev, DiskBus, DiskDevice, Domain, InterfaceKind};
use crate::names::{validate_name, NameError};
use crate::text::one_line;
use std::collections::HashSet;
use std::path::Path;
use thiserror::Error;

/// Highest vCPU count Tern accepts.
pub const MAX_VCPUS: u32 = 255;

/// Why a domain definition was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValidationError {
    /// The domain name cannot be used as a file name or QEMU option value.
    #[error("{}", one_line(&.0.to_string()))]
    Name(#[from] NameError),
    /// `<memory>` is zero.
    #[error("memory is 0 KiB; give the domain some memory")]
    ZeroMemory,
    /// `<memory>` is not a whole number of the requested huge pages.
    #[error("memory of {memory_kib} KiB is not a whole number of {page_kib} KiB huge pages; make <memory> a multiple of the <hugepages><page size=>")]
    HugepageMultiple {
        /// The guest's memory.
        memory_kib: u64,
        /// The page size asked for.
        page_kib: u64,
    },
    /// `<currentMemory>` is zero.
    #[error("currentMemory is 0 KiB; give the domain some memory or drop <currentMemory>")]
    ZeroCurrentMemory,
    /// `<currentMemory>` exceeds `<memory>`.
    #[error("currentMemory ({current} KiB) is larger than memory ({maximum} KiB); lower currentMemory or raise memory")]
    CurrentMemoryTooLarge {
        /// `<currentMemory>` in KiB.
        current: u64,
        /// `<memory>` in KiB.
        maximum: u64,
    },
    /// `<vcpu>` is 0 or above [`MAX_VCPUS`].
    #[error("vcpu count {0} is out of range; use 1 to 255 vCPUs")]
    VcpuCount(u32),
    /// `<initrd>` or `<cmdline>` without `<kernel>`.
    #[error("<os> has an initrd or cmdline but no kernel; add <kernel> or remove them")]
    BootArgsWithoutKernel,
    /// A `<title>` spanning lines (libvirt refuses those too).
    #[error(
        "the title contains a newline; keep <title> on one line and use <description> for more"
    )]
    MultilineTitle,
    /// A string-valued setting outside the values Tern honours.
    #[error("{what} '{}' is not supported; {expected}", one_line(.value))]
    Unsupported {
        /// The setting, e.g. "domain type".
        what: &'static str,
        /// The value found.
        value: String,
        /// The values to use instead.
        expected: &'static str,
    },
    /// A disk `<target dev>` that is not a plain lower-case name like "vda".
    #[error("disk target dev '{}' is not a lower-case letter name like vda, hdc or sdb; rename it", one_line(.0))]
    BadTargetDev(String),
    /// Two disks share a `<target dev>`.
    #[error("disk target dev '{}' is used by more than one disk; give each disk its own target dev", one_line(.0))]
    DuplicateTargetDev(String),
    /// A non-cdrom disk without `<source>`.
    #[error("disk '{}' has no source; add <source file=...> or <source dev=...> (only a cdrom may be empty)", one_line(.0))]
    DiskWithoutSource(String),
    /// A cdrom not marked read-only.
    #[error("cdrom '{}' is not read-only; mark it readonly (libvirt treats every cdrom as read-only)", one_line(.0))]
    WritableCdrom(String),
    /// A cdrom on the virtio bus, which has no removable media.
    #[error("cdrom '{}' is on the virtio bus, which has no removable media; use bus='sata', 'ide' or 'scsi'", one_line(.0))]
    VirtioCdrom(String),
    /// A MAC address not written as six lower-case hex pairs.
    #[error("MAC address '{}' is malformed; write six hex pairs like 52:54:00:12:34:56", one_line(.0))]
    BadMac(String),
    /// A multicast MAC address (low bit of the first octet set).
    #[error("MAC address '{}' is a multicast address; use a unicast one such as 52:54:00:xx:xx:xx", one_line(.0))]
    MulticastMac(String),
    /// A PCI address on a bus no `<controller type='pci'>` provides.
    #[error("an <address> names PCI bus {0:#04x}, but no <controller type='pci' index='{0}'> provides it; add the controller or fix the address")]
    MissingPciBus(u8),
    /// Two interfaces share a MAC address.
    #[error("MAC address '{}' is used by more than one interface; give each interface its own MAC", one_line(.0))]
    DuplicateMac(String),
    /// A bridge interface without a bridge name.
    #[error("a bridge interface has an empty bridge name; set <source bridge=...>")]
    EmptyBridge,
    /// A virtual port on something other than a bridge.
    #[error(
        "<virtualport> is only supported on bridge interfaces; remove it or use type='bridge'"
    )]
    VirtualPortWithoutBridge,
    /// A CPU model that is present but empty.
    #[error("the CPU model is empty; name a model such as qemu64 or remove <model>")]
    EmptyCpuModel,
    /// A VNC port outside -1..=65535.
    #[error(
        "graphics port {0} is out of range; use -1 with autoport or a port from 5900 to 65535"
    )]
    GraphicsPort(i32),
    /// Text or a path XML cannot carry (control characters, non-UTF-8 paths).
    #[error("{0} contains a control character or is not valid UTF-8; remove it so the domain XML can hold it")]
    Unrepresentable(String),
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

/// Checks that `d` is a domain Tern can start, migrate and print back.
///
/// Called by [`parse_domain`](crate::xml::parse_domain) on every document; call it yourself on
/// domains built in code before storing them.
pub fn validate(d: &Domain) -> Result {
    validate_name("domain", &d.name)?;
    check_plain("the domain name", &d.name)?;
    one_of(
        "domain type",
        &d.domain_type,
        &["kvm", "qemu"],
        "use type='kvm' or type='qemu'",
    )?;
    if d.title.as_deref().is_some_and(|t| t.contains(['\n', '\r'])) {
        return Err(ValidationError::MultilineTitle);
    }
    validate_memory(d)?;
    if !(1..=MAX_VCPUS).contains(&d.vcpus) {
        return Err(ValidationError::VcpuCount(d.vcpus));
    }
    one_of("OS type", &d.os.os_type, &["hvm"], "use <type>hvm</type>")?;
    if d.os.kernel.is_none() && (d.os.initrd.is_some() || d.os.cmdline.is_some()) {
        return Err(ValidationError::BootArgsWithoutKernel);
    }
    if let Some(cpu) = &d.cpu {
        if cpu.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(ValidationError::EmptyCpuModel);
        }
    }
    if let Some(offset) = &d.clock_offset {
        one_of(
            "clock offset",
            offset,
            &["utc", "localtime"],
            "use offset='utc' or offset='localtime'",
        )?;
    }
    validate_disks(d)?;
    validate_interfaces(d)?;
    validate_other_devices(d)?;
    controllers::validate_controllers(d)?;
    qemu_values::validate_qemu_values(d)?;
    validate_representable(d)
}

fn validate_memory(d: &Domain) -> Result {
    if d.memory_kib == 0 {
        return Err(ValidationError::ZeroMemory);
    }
    if d.current_memory_kib == 0 {
        return Err(ValidationError::ZeroCurrentMemory);
    }
    if d.current_memory_kib > d.memory_kib {
        return Err(ValidationError::CurrentMemoryTooLarge {
            current: d.current_memory_kib,
            maximum: d.memory_kib,
        });
    }
    let page = d
        .memory_backing
        .as_ref()
        .and_then(|m| m.hugepages)
        .and_then(|h| h.page_size_kib);
    if let Some(page_kib) = page {
        if !d.memory_kib.is_multiple_of(page_kib) {
            return Err(ValidationError::HugepageMultiple {
                memory_kib: d.memory_kib,
                page_kib,
            });
        }
    }
    Ok(())
}

fn validate_disks(d: &Domain) -> Result {
    let mut targets = HashSet::new();
    for disk in &d.devices.disks {
        let dev = &disk.target_dev;
        if dev.is_empty() || !dev.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(ValidationError::BadTargetDev(dev.clone()));
        }
        if !targets.insert(dev.as_str()) {
            return Err(ValidationError::DuplicateTargetDev(dev.clone()));
        }
        match disk.device {
            DiskDevice::Disk if disk.source.is_none() && disk.remote.is_none() => {
                return Err(ValidationError::DiskWithoutSource(dev.clone()))
            }
            DiskDevice::Cdrom if !disk.readonly => {
                return Err(ValidationError::WritableCdrom(dev.clone()))
            }
            DiskDevice::Cdrom if disk.target_bus == DiskBus::Virtio => {
                return Err(ValidationError::VirtioCdrom(dev.clone()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `mac` is six colon-separated pairs of lower-case hex digits.
fn is_canonical_mac(mac: &str) -> bool {
    let pairs: Vec<&str> = mac.split(':').collect();
    pairs.len() == 6
        && pairs.iter().all(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn validate_interfaces(d: &Domain) -> Result {
    let mut macs = HashSet::new();
    for interface in &d.devices.interfaces {
        match &interface.kind {
            InterfaceKind::Bridge { bridge } if bridge.is_empty() => {
                return Err(ValidationError::EmptyBridge)
            }
            InterfaceKind::Network { network } if network.is_empty() => {
                return Err(ValidationError::EmptyBridge)
            }
            InterfaceKind::User if interface.virtualport.is_some() => {
                return Err(ValidationError::VirtualPortWithoutBridge)
            }
            _ => {}
        }
        if let Some(port) = &interface.virtualport {
            one_of(
                "virtualport type",
                &port.port_type,
                &["openvswitch"],
                "use <virtualport type='openvswitch'> or remove it",
            )?;
        }
        if let Some(mac) = &interface.mac {
            if !is_canonical_mac(mac) {
                return Err(ValidationError::BadMac(mac.clone()));
            }
            let first = u8::from_str_radix(&mac[..2], 16)
                .map_err(|_| ValidationError::BadMac(mac.clone()))?;
            if first & 1 == 1 {
                return Err(ValidationError::MulticastMac(mac.clone()));
            }
            if !macs.insert(mac.as_str()) {
                return Err(ValidationError::DuplicateMac(mac.clone()));
            }
        }
    }
    Ok(())
}

fn validate_other_devices(d: &Domain) -> Result {
    for graphics in &d.devices.graphics {
        one_of(
            "graphics type",
            &graphics.kind,
            &["vnc", "spice"],
            "use <graphics type='vnc'> or 'spice', or remove it",
        )?;
        if let Some(port) = graphics.port {
            if !(-1..=65535).contains(&port) {
                return Err(ValidationError::GraphicsPort(port));
            }
        }
    }
    for input in &d.devices.inputs {
        one_of(
            "input type",
            &input.input_type,
            &["mouse", "keyboard", "tablet"],
            "use type='mouse', 'keyboard' or 'tablet'",
        )?;
        if let Some(bus) = &input.bus {
            one_of(
                "input bus",
                bus,
                &["ps2", "usb", "virtio"],
                "use bus='ps2', 'usb' or 'virtio'",
            )?;
        }
    }
    Ok(())
}

fn one_of(what: &'static str, value: &str, allowed: &[&str], expected: &'static str) -> Result {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::Unsupported {
            what,
            value: value.to_string(),
            expected,
        })
    }
}

/// Whether XML 1.0 can carry `c` (as-is or as a character reference).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

fn check_text(what: &str, value: &str) -> Result {
    if value.chars().all(xml_char) {
        Ok(())
    } else {
        Err(ValidationError::Unrepresentable(what.to_string()))
    }
}

/// Like [`check_text`], but also refuses control characters that XML could
/// carry: they have no business in names, paths or identifiers.
fn check_plain(what: &str, value: &str) -> Result {
    if value.chars().any(|c| c.is_control() || !xml_char(c)) {
        return Err(ValidationError::Unrepresentable(what.to_string()));
    }
    Ok(())
}

fn check_path(what: &str, path: &Path) -> Result {
    match path.to_str() {
        Some(s) => check_plain(what, s),
        None => Err(ValidationError::Unrepresentable(what.to_string())),
    }
}

/// Every string the model holds must survive a trip through XML text.
fn validate_representable(d: &Domain) -> Result {
    let opt = |what: &str, value: &Option<String>| match value {
        Some(v) => check_plain(what, v),
        None => Ok(()),
    };
    if let Some(title) = &d.title {
        check_text("the title", title)?;
    }
    if let Some(description) = &d.description {
        check_text("the description", description)?;
    }
    if let Some(cmdline) = &d.os.cmdline {
        check_text("the kernel cmdline", cmdline)?;
    }
    opt("the OS arch", &d.os.arch)?;
    opt("the machine type", &d.os.machine)?;
    for (what, path) in [
        ("the kernel path", &d.os.kernel),
        ("the initrd path", &d.os.initrd),
        ("the emulator path", &d.devices.emulator),
    ] {
        if let Some(path) = path {
            check_path(what, path)?;
        }
    }
    if let Some(cpu) = &d.cpu {
        opt("the CPU model", &cpu.model)?;
    }
    for disk in &d.devices.disks {
        if let Some(source) = &disk.source {
            check_path("a disk source path", source)?;
        }
        match &disk.remote {
            Some(crate::DiskRemote::Network(n)) => {
                check_plain("a network disk name", &n.name)?;
                for h in &n.hosts {
                    check_plain("a network disk host", &h.name)?;
                }
            }
            Some(crate::DiskRemote::Volume(v)) => {
                check_plain("a disk's pool name", &v.pool)?;
                check_plain("a disk's volume name", &v.volume)?;
            }
            None => {}
        }
    }
    for interface in &d.devices.interfaces {
        match &interface.kind {
            InterfaceKind::Bridge { bridge } => check_plain("a bridge name", bridge)?,
            InterfaceKind::Network { network } => check_plain("a network name", network)?,
            InterfaceKind::User => {}
        }
        opt("an interface model", &interface.model)?;
        if let Some(port) = &interface.virtualport {
            opt("a virtualport interface id", &port.interface_id)?;
        }
    }
    let char_devs = d.devices.serials.iter().map(|s| &s.kind);
    for kind in char_devs.chain(d.devices.consoles.iter().map(|c| &c.kind)) {
        if let CharDev::File { path } = kind {
            check_path("a serial or console log path", path)?;
        }
    }
    for console in &d.devices.consoles {
        check_plain("a console target type", &console.target_type)?;
    }
    for graphics in &d.devices.graphics {
        opt("a graphics listen address", &graphics.listen)?;
    }
    for video in &d.devices.videos {
        check_plain("a video model", &video.model)?;
    }
    for controller in &d.devices.controllers {
        check_plain("a controller type", &controller.controller_type)?;
        opt("a controller model", &controller.model)?;
    }
    opt("the memballoon model", &d.devices.memballoon)
}

mod controllers;
pub mod qemu_values;

#[cfg(test)]
mod tests;
