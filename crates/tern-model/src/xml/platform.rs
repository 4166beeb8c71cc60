//! Domain XML import of the platform: `<os>` (boot order, firmware),
//! `<cpu>`, `<features>` and `<clock>`.

use super::import::{
    elements, invalid, missing, parse_number, required_attr, set_once, text, unsupported_child,
    Result,
};
use super::XmlError;
use crate::domain::{BootDevice, Cpu, CpuMode, Features, Os};
use crate::guest::{
    CpuFeature, CpuTopology, FirmwareFeature, HypervFeature, Loader, Nvram, Sysinfo, Timer,
};
use roxmltree::Node;
use std::path::PathBuf;

/// `yes`/`no` (libvirt's tristate booleans).
pub(super) fn yes_no(node: Node, attr: &str) -> Result<Option<bool>> {
    match node.attribute(attr) {
        None => Ok(None),
        Some("yes") => Ok(Some(true)),
        Some("no") => Ok(Some(false)),
        Some(other) => Err(invalid(
            &format!("<{} {attr}=>", node.tag_name().name()),
            other,
            "use 'yes' or 'no'",
        )),
    }
}

/// `on`/`off` (`state=` of features).
pub(super) fn on_off(node: Node, attr: &str) -> Result<Option<bool>> {
    match node.attribute(attr) {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(other) => Err(invalid(
            &format!("<{} {attr}=>", node.tag_name().name()),
            other,
            "use 'on' or 'off'",
        )),
    }
}

pub(super) fn parse_os(node: Node) -> Result<Os> {
    let mut os_type = None;
    let mut os = Os::default();
    match node.attribute("firmware") {
        None => {}
        Some(f @ ("efi" | "bios")) => os.firmware = Some(f.to_string()),
        Some(other) => return Err(invalid("<os firmware=>", other, "use 'efi' or 'bios'")),
    }
    for child in elements(node) {
        match child.tag_name().name() {
            "type" => {
                set_once(&mut os_type, text(child).trim().to_string(), child)?;
                os.arch = child.attribute("arch").map(str::to_string);
                os.machine = child.attribute("machine").map(str::to_string);
            }
            "kernel" => set_once(&mut os.kernel, PathBuf::from(text(child)), child)?,
            "initrd" => set_once(&mut os.initrd, PathBuf::from(text(child)), child)?,
            "cmdline" => set_once(&mut os.cmdline, text(child), child)?,
            "boot" => os.boot.push(parse_boot(child)?),
            "loader" => set_once(&mut os.loader, parse_loader(child)?, child)?,
            "nvram" => set_once(&mut os.nvram, parse_nvram(child)?, child)?,
            "firmware" => os.firmware_features = parse_firmware_features(child)?,
            "bootmenu" => os.bootmenu = yes_no(child, "enable")?,
            "smbios" => match required_attr(child, "mode")? {
                m @ ("sysinfo" | "emulate") => os.smbios_mode = Some(m.to_string()),
                other => {
                    return Err(XmlError::Unsupported {
                        what: format!("<smbios mode='{other}'> (the host's SMBIOS)"),
                        fix: "use mode='sysinfo' with a <sysinfo> element, or 'emulate'"
                            .to_string(),
                    })
                }
            },
            _ => return Err(unsupported_child(node, child)),
        }
    }
    os.os_type = os_type.ok_or_else(|| missing("<os><type>"))?;
    Ok(os)
}

fn parse_boot(node: Node) -> Result<BootDevice> {
    let dev = required_attr(node, "dev")?;
    match dev {
        "hd" => Ok(BootDevice::Hd),
        "cdrom" => Ok(BootDevice::Cdrom),
        "network" => Ok(BootDevice::Network),
        "fd" => Ok(BootDevice::Fd),
        other => Err(invalid(
            "<boot dev=>",
            other,
            "use hd, cdrom, network or fd",
        )),
    }
}

/// `<loader readonly='yes' type='pflash' secure='no'>PATH</loader>`;
/// `format='raw'` is the only format Tern writes.
fn parse_loader(node: Node) -> Result<Loader> {
    if let Some(format) = node.attribute("format").filter(|f| *f != "raw") {
        return Err(XmlError::Unsupported {
            what: format!("<loader format='{format}'>"),
            fix: "use a raw firmware image (Debian's ovmf package ships raw images)".to_string(),
        });
    }
    let loader_type = node.attribute("type").unwrap_or("rom").to_string();
    if !matches!(loader_type.as_str(), "rom" | "pflash") {
        return Err(invalid(
            "<loader type=>",
            &loader_type,
            "use 'pflash' or 'rom'",
        ));
    }
    let path = text(node).trim().to_string();
    if path.is_empty() {
        return Err(missing("the firmware path inside <loader>"));
    }
    Ok(Loader {
        path: PathBuf::from(path),
        readonly: yes_no(node, "readonly")?.unwrap_or(false),
        loader_type,
        secure: yes_no(node, "secure")?,
    })
}

/// `<nvram template=...>PATH</nvram>`; `templateFormat`/`format` must be raw.
fn parse_nvram(node: Node) -> Result<Nvram> {
    for attr in ["format", "templateFormat"] {
        if let Some(f) = node.attribute(attr).filter(|f| *f != "raw") {
            return Err(XmlError::Unsupported {
                what: format!("<nvram {attr}='{f}'>"),
                fix: "use a raw NVRAM file".to_string(),
            });
        }
    }
    if node.attribute("type").is_some() || elements(node).next().is_some() {
        return Err(XmlError::Unsupported {
            what: "<nvram type=...> with a <source> (network NVRAM)".to_string(),
            fix: "give the NVRAM file's path as the text of <nvram>".to_string(),
        });
    }
    let path = text(node).trim().to_string();
    if path.is_empty() {
        return Err(missing("the NVRAM path inside <nvram>"));
    }
    Ok(Nvram {
        path: PathBuf::from(path),
        template: node.attribute("template").map(PathBuf::from),
    })
}

fn parse_firmware_features(node: Node) -> Result<Vec<FirmwareFeature>> {
    let mut out = Vec::new();
    for child in elements(node) {
        if child.tag_name().name() != "feature" {
            return Err(unsupported_child(node, child));
        }
        out.push(FirmwareFeature {
            name: required_attr(child, "name")?.to_string(),
            enabled: yes_no(child, "enabled")?.unwrap_or(false),
        });
    }
    Ok(out)
}

/// `<cpu>`: mode, model, features and topology. A `<cpu>` with neither
/// mode nor model (only a topology) means "host default".
pub(super) fn parse_cpu(node: Node) -> Result<(Option<Cpu>, Option<CpuTopology>)> {
    let mode = match node.attribute("mode") {
        None => None,
        Some("custom") => Some(CpuMode::Custom),
        Some("host-model") => Some(CpuMode::HostModel),
        Some("host-passthrough") => Some(CpuMode::HostPassthrough),
        Some("maximum") => Some(CpuMode::Maximum),
        Some(other) => {
            return Err(invalid(
                "<cpu mode=>",
                other,
                "use custom, host-model, host-passthrough or maximum",
            ))
        }
    };
    let mut model: Option<String> = None;
    let mut topology = None;
    let mut features = Vec::new();
    for child in elements(node) {
        match child.tag_name().name() {
            // `fallback=` and `vendor_id=` only matter to libvirt's CPU checks.
            "model" => set_once(&mut model, text(child), child)?,
            "topology" => set_once(&mut topology, parse_topology(child)?, child)?,
            "feature" => features.push(parse_cpu_feature(child)?),
            // The vendor follows from the model.
            "vendor" => {}
            _ => return Err(unsupported_child(node, child)),
        }
    }
    // `<model fallback='allow'/>` (common with host-model) names no model.
    let model = model.filter(|m| !m.trim().is_empty());
    let match_mode = node.attribute("match").map(str::to_string);
    let check = node.attribute("check").map(str::to_string);
    let cpu = match (mode, &model, features.is_empty()) {
        (None, None, true) if match_mode.is_none() => None,
        _ => Some(Cpu {
            mode: mode.unwrap_or(CpuMode::Custom),
            model,
            features,
            match_mode,
            check,
            topology: None,
        }),
    };
    Ok((cpu, topology))
}

fn parse_cpu_feature(node: Node) -> Result<CpuFeature> {
    let policy = node.attribute("policy").unwrap_or("require");
    if !matches!(
        policy,
        "require" | "force" | "disable" | "forbid" | "optional"
    ) {
        return Err(invalid(
            "<cpu><feature policy=>",
            policy,
            "use require, force, disable, forbid or optional",
        ));
    }
    let name = required_attr(node, "name")?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid(
            "<cpu><feature name=>",
            name,
            "use a CPU flag name such as 'vmx'",
        ));
    }
    Ok(CpuFeature {
        policy: policy.to_string(),
        name: name.to_string(),
    })
}

fn parse_topology(node: Node) -> Result<CpuTopology> {
    let required = |attr: &'static str| -> Result<u32> {
        parse_number(required_attr(node, attr)?, &format!("<topology {attr}=>"))
    };
    let optional = |attr: &'static str| -> Result<u32> {
        node.attribute(attr)
            .map_or(Ok(1), |v| parse_number(v, &format!("<topology {attr}=>")))
    };
    Ok(CpuTopology {
        sockets: required("sockets")?,
        dies: optional("dies")?,
        clusters: optional("clusters")?,
        cores: required("cores")?,
        threads: required("threads")?,
    })
}

/// The declared topology must describe exactly `<vcpu>` CPUs, as QEMU's
/// `-smp` requires.
pub(super) fn check_topology(t: CpuTopology, vcpus: u32) -> Result<()> {
    let total = [t.dies, t.clusters, t.cores, t.threads]
        .iter()
        .try_fold(u64::from(t.sockets), |acc, n| {
            acc.checked_mul(u64::from(*n))
        });
    if total == Some(u64::from(vcpus)) {
        return Ok(());
    }
    Err(XmlError::InvalidValue {
        what: "<cpu><topology>".to_string(),
        value: format!(
            "sockets={} cores={} threads={}",
            t.sockets, t.cores, t.threads
        ),
        expected: format!(
            "sockets*cores*threads must equal the <vcpu> count ({vcpus}); fix it or remove <topology>"
        ),
    })
}

/// `<features>`: every child is honoured or refused by name.
pub(super) fn parse_features(node: Node) -> Result<Features> {
    let mut f = Features::default();
    for child in elements(node) {
        let state = || on_off(child, "state");
        match child.tag_name().name() {
            "acpi" => f.acpi = true,
            "apic" => f.apic = true,
            "pae" => f.pae = true,
            "vmport" => f.vmport = state()?,
            "smm" => f.smm = Some(state()?.unwrap_or(true)),
            "vmcoreinfo" => f.vmcoreinfo = Some(state()?.unwrap_or(true)),
            "hyperv" => {
                f.hyperv_mode = Some(child.attribute("mode").unwrap_or("custom").to_string());
                f.hyperv = parse_hyperv(child)?;
            }
            "kvm" => {
                for k in elements(child) {
                    match k.tag_name().name() {
                        "hidden" => f.kvm_hidden = on_off(k, "state")?,
                        _ => return Err(unsupported_child(child, k)),
                    }
                }
            }
            other => {
                return Err(XmlError::Unsupported {
                    what: format!("<features><{other}>"),
                    fix: "remove it from <features>".to_string(),
                })
            }
        }
    }
    Ok(f)
}

/// Hyper-V enlightenments Tern maps to `-cpu hv-*` flags.
pub const HYPERV_FEATURES: &[&str] = &[
    "relaxed",
    "vapic",
    "spinlocks",
    "vpindex",
    "runtime",
    "synic",
    "stimer",
    "reset",
    "vendor_id",
    "frequencies",
    "reenlightenment",
    "tlbflush",
    "ipi",
    "evmcs",
];

fn parse_hyperv(node: Node) -> Result<Vec<HypervFeature>> {
    let mut out = Vec::new();
    for child in elements(node) {
        let name = child.tag_name().name();
        if !HYPERV_FEATURES.contains(&name) {
            return Err(XmlError::Unsupported {
                what: format!("<hyperv><{name}>"),
                fix: format!("use only {}", HYPERV_FEATURES.join(", ")),
            });
        }
        if elements(child).next().is_some() {
            return Err(XmlError::Unsupported {
                what: format!("options inside <hyperv><{name}>"),
                fix: format!("write <{name} state='on'/>"),
            });
        }
        let value = match name {
            "spinlocks" => child.attribute("retries"),
            "vendor_id" => child.attribute("value"),
            _ => None,
        };
        out.push(HypervFeature {
            name: name.to_string(),
            on: on_off(child, "state")?.unwrap_or(false),
            value: value.map(str::to_string),
        });
    }
    Ok(out)
}

/// Timers Tern can map to QEMU.
const TIMERS: &[&str] = &["rtc", "pit", "hpet", "kvmclock", "hypervclock", "tsc"];

/// `<clock offset=...>` with its `<timer>` children; an absent offset is
/// libvirt's default, "utc".
pub(super) fn parse_clock(node: Node) -> Result<(String, Vec<Timer>)> {
    let offset = node.attribute("offset").unwrap_or("utc");
    if !matches!(offset, "utc" | "localtime") {
        return Err(XmlError::Unsupported {
            what: format!("<clock offset='{offset}'>"),
            fix: "use offset='utc' or 'localtime'".to_string(),
        });
    }
    let mut timers = Vec::new();
    for child in elements(node) {
        if child.tag_name().name() != "timer" {
            return Err(unsupported_child(node, child));
        }
        let name = required_attr(child, "name")?;
        if !TIMERS.contains(&name) {
            return Err(XmlError::Unsupported {
                what: format!("<timer name='{name}'>"),
                fix: format!("use one of {}", TIMERS.join(", ")),
            });
        }
        let tickpolicy = child.attribute("tickpolicy");
        if let Some(p) = tickpolicy {
            if !matches!(p, "delay" | "catchup" | "merge" | "discard") {
                return Err(invalid(
                    "<timer tickpolicy=>",
                    p,
                    "use delay, catchup, merge or discard",
                ));
            }
        }
        timers.push(Timer {
            name: name.to_string(),
            present: yes_no(child, "present")?,
            tickpolicy: tickpolicy.map(str::to_string),
        });
    }
    Ok((offset.to_string(), timers))
}

/// SMBIOS fields QEMU's `-smbios` takes, per `<sysinfo>` child.
pub(crate) const SYSINFO_BIOS: &[&str] = &["vendor", "version", "date", "release"];
pub(crate) const SYSINFO_SYSTEM: &[&str] = &[
    "manufacturer",
    "product",
    "version",
    "serial",
    "uuid",
    "sku",
    "family",
];

/// `<sysinfo type='smbios'>` with `<bios>` and `<system>` entries.
pub(super) fn parse_sysinfo(node: Node) -> Result<Sysinfo> {
    let kind = required_attr(node, "type")?;
    if kind != "smbios" {
        return Err(XmlError::Unsupported {
            what: format!("<sysinfo type='{kind}'>"),
            fix: "use type='smbios'".to_string(),
        });
    }
    let mut info = Sysinfo::default();
    for child in elements(node) {
        let (list, allowed) = match child.tag_name().name() {
            "bios" => (&mut info.bios, SYSINFO_BIOS),
            "system" => (&mut info.system, SYSINFO_SYSTEM),
            _ => return Err(unsupported_child(node, child)),
        };
        for entry in elements(child) {
            let name = required_attr(entry, "name")?;
            if entry.tag_name().name() != "entry" || !allowed.contains(&name) {
                return Err(XmlError::Unsupported {
                    what: format!(
                        "<sysinfo><{}><entry name='{name}'>",
                        child.tag_name().name()
                    ),
                    fix: format!("use one of {}", allowed.join(", ")),
                });
            }
            list.push((name.to_string(), text(entry)));
        }
    }
    Ok(info)
}
