//! Domain XML import: the `<domain>` element and everything outside
//! `<devices>` (see `devices.rs` for those).

use super::devices::parse_devices;
use super::platform::{
    check_topology, parse_clock, parse_cpu, parse_features, parse_os, parse_sysinfo,
};
use super::units::{self, UnitError};
use super::XmlError;
use crate::domain::{Domain, LifecycleAction};
use crate::validate::validate;
use roxmltree::{Document, Node};
use std::str::FromStr;
use uuid::Uuid;

pub(super) type Result<T> = std::result::Result<T, XmlError>;

/// Top-level elements that only describe a running instance or host-side
/// policy Tern manages itself; they are accepted and dropped.
const IGNORED_TOP_LEVEL: &[&str] = &["metadata", "seclabel", "resource", "pm", "on_lockfailure"];

/// Parses a libvirt domain XML document (e.g. `virsh dumpxml` output) into a
/// [`Domain`], then checks it with [`validate`].
///
/// A missing `<uuid>` gets a fresh random one, a missing `<currentMemory>`
/// equals `<memory>`, a missing `<vcpu>` means one vCPU. See the module
/// documentation for what is honoured, ignored and refused.
pub fn parse_domain(xml: &str) -> Result<Domain> {
    let doc = Document::parse(xml).map_err(|e| XmlError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        let shown = match root.tag_name().namespace() {
            Some(uri) if root.tag_name().name() == "domain" => format!("domain xmlns='{uri}'"),
            _ => qualified_name(root),
        };
        return Err(XmlError::NotDomain(shown));
    }
    // `id=` is the runtime domain id and is ignored.
    let domain_type = required_attr(root, "type")?.to_string();

    let mut name = None;
    let mut uuid = None;
    let mut title = None;
    let mut description = None;
    let mut memory = None;
    let mut current_memory = None;
    let mut vcpus = None;
    let mut os = None;
    let mut cpu = None;
    let mut features = None;
    let mut clock = None;
    let mut on_poweroff = None;
    let mut on_reboot = None;
    let mut on_crash = None;
    let mut devices = None;
    let mut sysinfo = None;
    let mut memory_backing = None;
    let mut cputune = None;
    let mut numatune = None;
    let mut iothreads = None;

    for child in elements(root) {
        if child.tag_name().namespace().is_some() {
            return Err(refuse_top_level(&qualified_name(child)));
        }
        match child.tag_name().name() {
            "name" => set_once(&mut name, text(child), child)?,
            "uuid" => set_once(&mut uuid, parse_uuid(child)?, child)?,
            "title" => set_once(&mut title, text(child), child)?,
            "description" => set_once(&mut description, text(child), child)?,
            "memory" => set_once(&mut memory, parse_memory(child)?, child)?,
            "currentMemory" => set_once(&mut current_memory, parse_memory(child)?, child)?,
            "vcpu" => set_once(&mut vcpus, parse_vcpu(child)?, child)?,
            "os" => set_once(&mut os, parse_os(child)?, child)?,
            "cpu" => set_once(&mut cpu, parse_cpu(child)?, child)?,
            "features" => set_once(&mut features, parse_features(child)?, child)?,
            "clock" => set_once(&mut clock, parse_clock(child)?, child)?,
            "on_poweroff" => set_once(&mut on_poweroff, parse_lifecycle(child)?, child)?,
            "on_reboot" => set_once(&mut on_reboot, parse_lifecycle(child)?, child)?,
            "on_crash" => set_once(&mut on_crash, parse_lifecycle(child)?, child)?,
            "devices" => set_once(&mut devices, parse_devices(child)?, child)?,
            "sysinfo" => set_once(&mut sysinfo, parse_sysinfo(child)?, child)?,
            "cputune" => set_once(&mut cputune, super::cputune::parse_cputune(child)?, child)?,
            "iothreads" => set_once(
                &mut iothreads,
                parse_number::<u32>(&text(child), "<iothreads>")?,
                child,
            )?,
            "numatune" => set_once(&mut numatune, super::memory::parse_numatune(child)?, child)?,
            "memoryBacking" => set_once(
                &mut memory_backing,
                super::memory::parse_memory_backing(child)?,
                child,
            )?,
            ignored if IGNORED_TOP_LEVEL.contains(&ignored) => {}
            other => return Err(refuse_top_level(other)),
        }
    }

    let name = name.ok_or_else(|| missing("<name>"))?;
    let memory_kib = memory.ok_or_else(|| missing("<memory>"))?;
    let (vcpus, vcpus_current, vcpu_cpuset) = vcpus.unwrap_or((1, None, None));
    if let Some(p) = cputune
        .as_ref()
        .and_then(|t: &crate::domain::CpuTune| t.vcpupins.iter().find(|p| p.vcpu >= vcpus))
    {
        return Err(invalid(
            "<vcpupin vcpu=>",
            &p.vcpu.to_string(),
            &format!(
                "pin vCPU {} only if the domain has it: it has {vcpus} (0-{})",
                p.vcpu,
                vcpus - 1
            ),
        ));
    }
    let (mut cpu, topology) = cpu.unwrap_or((None, None));
    if let Some(topology) = topology {
        check_topology(topology, vcpus)?;
        // A topology alone still needs a <cpu> to live in.
        cpu.get_or_insert_with(|| crate::domain::Cpu {
            mode: crate::domain::CpuMode::Custom,
            model: None,
            features: Vec::new(),
            match_mode: None,
            check: None,
            topology: None,
        })
        .topology = Some(topology);
    }
    let (clock_offset, clock_timers) = match clock {
        Some((offset, timers)) => (Some(offset), timers),
        None => (None, Vec::new()),
    };
    let domain = Domain {
        name,
        uuid: uuid.unwrap_or_else(Uuid::new_v4),
        domain_type,
        title,
        description,
        memory_kib,
        current_memory_kib: current_memory.unwrap_or(memory_kib),
        vcpus,
        os: os.ok_or_else(|| missing("<os>"))?,
        cpu,
        features: features.unwrap_or_default(),
        clock_offset,
        on_poweroff: on_poweroff.unwrap_or(LifecycleAction::Destroy),
        on_reboot: on_reboot.unwrap_or(LifecycleAction::Restart),
        on_crash: on_crash.unwrap_or(LifecycleAction::Destroy),
        devices: devices.unwrap_or_default(),
        clock_timers,
        vcpus_current,
        sysinfo,
        memory_backing,
        cputune,
        vcpu_cpuset,
        numatune,
        iothreads: iothreads.unwrap_or(0),
    };
    check_iothreads(&domain)?;
    validate(&domain)?;
    Ok(domain)
}

/// A disk's `<driver iothread=N>` needs a virtio disk and N within
/// `<iothreads>`.
fn check_iothreads(d: &Domain) -> Result<()> {
    for disk in &d.devices.disks {
        let Some(t) = disk.iothread else { continue };
        if disk.target_bus != crate::domain::DiskBus::Virtio {
            return Err(invalid(
                "<disk><driver iothread=>",
                &t.to_string(),
                &format!(
                    "only virtio disks run in an I/O thread; drop it from disk '{}'",
                    disk.target_dev
                ),
            ));
        }
        if t == 0 || t > d.iothreads {
            return Err(invalid(
                "<disk><driver iothread=>",
                &t.to_string(),
                &format!(
                    "use 1 to {} (the domain's <iothreads>), or raise <iothreads>",
                    d.iothreads
                ),
            ));
        }
    }
    Ok(())
}

/// Refusal of a top-level element outside the honoured and ignored lists.
fn refuse_top_level(name: &str) -> XmlError {
    let why = match name {
        "maxMemory" => " (memory hotplug)",
        "vcpus" => " (vCPU hotplug)",
        "memtune" | "blkiotune" => " (host resource tuning)",
        "iothreadids" => " (named I/O thread ids; give <iothreads>N</iothreads>)",
        "bootloader" | "bootloader_args" => " (host-side boot loader)",
        "idmap" => " (container id mapping)",
        "genid" => " (VM generation ID)",
        "launchSecurity" => " (memory encryption)",
        "qemu:commandline" | "qemu:capabilities" => " (QEMU command-line passthrough)",
        _ => "",
    };
    XmlError::Unsupported {
        what: format!("element <{name}>{why}"),
        fix: "remove it from the domain XML".to_string(),
    }
}

fn parse_uuid(node: Node) -> Result<Uuid> {
    let raw = text(node);
    Uuid::parse_str(raw.trim()).map_err(|_| XmlError::InvalidValue {
        what: "<uuid>".to_string(),
        value: raw,
        expected: "write a UUID such as 4dea22b3-1d52-d8f3-2516-782e98ab3fa0, or remove <uuid> to have one generated".to_string(),
    })
}

/// `<memory>` / `<currentMemory>` in KiB, honouring `unit=`.
fn parse_memory(node: Node) -> Result<u64> {
    let element = node.tag_name().name();
    let value: u64 = parse_number(&text(node), &format!("<{element}>"))?;
    let unit = node.attribute("unit");
    units::to_kib(value, unit).map_err(|e| match e {
        UnitError::UnknownUnit => XmlError::InvalidValue {
            what: format!("<{element} unit=>"),
            value: unit.unwrap_or_default().to_string(),
            expected: units::UNITS_HELP.to_string(),
        },
        UnitError::Overflow => XmlError::InvalidValue {
            what: format!("<{element}>"),
            value: format!("{value} {}", unit.unwrap_or("KiB")),
            expected: "use a realistic amount of memory".to_string(),
        },
    })
}

/// `<vcpu current=... cpuset=...>N</vcpu>`: N the maximum, `current` the
/// vCPUs online at start, `cpuset` the host CPUs they (and the emulator)
/// run on. `placement='static'` is what QEMU does anyway; numad placement
/// (`placement='auto'`) is refused by name.
fn parse_vcpu(node: Node) -> Result<(u32, Option<u32>, Option<String>)> {
    let cpuset = match node.attribute("cpuset") {
        None => None,
        Some(raw) => {
            super::cputune::parse_cpuset(raw).map_err(|e| {
                invalid(
                    "<vcpu cpuset=>",
                    raw,
                    &format!("{e}; write host CPUs such as '0-3,^2'"),
                )
            })?;
            Some(raw.to_string())
        }
    };
    match node.attribute("placement") {
        None | Some("static") => {}
        Some("auto") => {
            return Err(XmlError::Unsupported {
                what: "<vcpu placement='auto'> (numad placement)".to_string(),
                fix: "use placement='static' or drop it".to_string(),
            })
        }
        Some(other) => {
            return Err(invalid(
                "<vcpu placement=>",
                other,
                "use placement='static'",
            ))
        }
    }
    let count: u32 = parse_number(&text(node), "<vcpu>")?;
    let current = match node.attribute("current") {
        None => None,
        Some(current) => {
            let current: u32 = parse_number(current, "<vcpu current=>")?;
            if current == 0 || current > count {
                return Err(invalid(
                    "<vcpu current=>",
                    &current.to_string(),
                    &format!("use 1 to the maximum of {count}"),
                ));
            }
            (current != count).then_some(current)
        }
    };
    Ok((count, current, cpuset))
}

fn parse_lifecycle(node: Node) -> Result<LifecycleAction> {
    let raw = text(node);
    match raw.trim() {
        "destroy" => Ok(LifecycleAction::Destroy),
        "restart" => Ok(LifecycleAction::Restart),
        "preserve" => Ok(LifecycleAction::Preserve),
        "rename-restart" => Ok(LifecycleAction::RenameRestart),
        _ => Err(invalid(
            &format!("<{}>", node.tag_name().name()),
            &raw,
            "use destroy, restart, preserve or rename-restart",
        )),
    }
}

// ---------------------------------------------------------------------------
// Helpers shared with devices.rs.

/// The element children of `node`, skipping text, comments and PIs.
pub(super) fn elements<'a, 'input>(
    node: Node<'a, 'input>,
) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children().filter(Node::is_element)
}

/// All text directly inside `node` (entities decoded), unmodified.
pub(super) fn text(node: Node) -> String {
    node.children()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect()
}

/// `prefix:name` for namespaced elements, `name` otherwise.
pub(super) fn qualified_name(node: Node) -> String {
    let tag = node.tag_name();
    match tag.namespace().and_then(|uri| node.lookup_prefix(uri)) {
        Some(prefix) if !prefix.is_empty() => format!("{prefix}:{}", tag.name()),
        _ => tag.name().to_string(),
    }
}

/// The value of `attr` on `node`, or an error naming both.
pub(super) fn required_attr<'a>(node: Node<'a, '_>, attr: &'static str) -> Result<&'a str> {
    node.attribute(attr)
        .ok_or_else(|| XmlError::MissingAttribute {
            element: qualified_name(node),
            attribute: attr,
        })
}

/// Stores `value` in `slot`, refusing a second occurrence of `node`.
pub(super) fn set_once<T>(slot: &mut Option<T>, value: T, node: Node) -> Result<()> {
    if slot.is_some() {
        let parent = node
            .parent_element()
            .map(|p| format!("{}><", qualified_name(p)))
            .unwrap_or_default();
        return Err(XmlError::Duplicate {
            element: format!("{parent}{}", qualified_name(node)),
        });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses a number, ignoring surrounding whitespace.
pub(super) fn parse_number<T: FromStr>(raw: &str, what: &str) -> Result<T> {
    raw.trim()
        .parse()
        .map_err(|_| invalid(what, raw, "write a non-negative whole number in range"))
}

/// An [`XmlError::InvalidValue`].
pub(super) fn invalid(what: &str, value: &str, expected: &str) -> XmlError {
    XmlError::InvalidValue {
        what: what.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// An [`XmlError::MissingElement`].
pub(super) fn missing(what: &str) -> XmlError {
    XmlError::MissingElement {
        what: what.to_string(),
    }
}

/// Refusal of a child element Tern does not honour inside `parent`.
pub(super) fn unsupported_child(parent: Node, child: Node) -> XmlError {
    XmlError::Unsupported {
        what: format!("<{}><{}>", qualified_name(parent), qualified_name(child)),
        fix: "remove it from the domain XML".to_string(),
    }
}
