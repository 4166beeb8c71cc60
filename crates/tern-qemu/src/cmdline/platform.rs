//! The machine itself: `-machine`, `-cpu`, `-smp`, `-rtc`, firmware,
//! boot order, SMBIOS and what QEMU does on guest power-off, crash and
//! watchdog expiry.

use super::{escape_comma, Accel};
use tern_model::layout::is_q35;
use tern_model::{CpuMode, Domain, LifecycleAction};

/// Node names of the firmware flash images.
pub const PFLASH_CODE: &str = "pflash0-format";
/// Node name of the guest's UEFI variable store.
pub const PFLASH_VARS: &str = "pflash1-format";

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// `-machine TYPE,prop=...`: chipset features from `<features>` and `<clock>`.
pub fn machine_opts(d: &Domain) -> String {
    let mut m = d.os.machine.clone().unwrap_or_else(|| "pc".into());
    // Every USB controller is created explicitly, as libvirt does.
    m.push_str(",usb=off");
    if !d.features.acpi {
        m.push_str(",acpi=off");
    }
    if let Some(v) = d.features.vmport {
        m.push_str(&format!(",vmport={}", onoff(v)));
    }
    if let Some(v) = d.features.smm {
        m.push_str(&format!(",smm={}", onoff(v)));
    }
    if d.clock_timers
        .iter()
        .any(|t| t.name == "hpet" && t.present == Some(false))
    {
        m.push_str(",hpet=off");
    }
    if let Some(loader) = &d.os.loader {
        if loader.loader_type == "pflash" {
            m.push_str(&format!(",pflash0={PFLASH_CODE}"));
            if d.os.nvram.is_some() {
                m.push_str(&format!(",pflash1={PFLASH_VARS}"));
            }
        }
    }
    m
}

/// The `-cpu` value: model, then `<cpu><feature>` flags, Hyper-V
/// enlightenments and timer flags.
pub fn cpu_opts(d: &Domain, accel: Accel) -> String {
    let mut cpu = cpu_model(d, accel);
    if let Some(c) = &d.cpu {
        for f in &c.features {
            let sign = match f.policy.as_str() {
                "disable" | "forbid" => '-',
                _ => '+',
            };
            cpu.push_str(&format!(",{sign}{}", f.name));
        }
    }
    if d.features.hyperv_mode.as_deref() == Some("passthrough") {
        cpu.push_str(",hv-passthrough=on");
    }
    for h in d.features.hyperv.iter().filter(|h| h.on) {
        let flag = h.name.replace('_', "-");
        match (h.name.as_str(), &h.value) {
            ("spinlocks", Some(retries)) => {
                let n: u64 = retries.parse().unwrap_or(0x1fff);
                cpu.push_str(&format!(",hv-spinlocks={n:#x}"));
            }
            ("vendor_id", Some(v)) => cpu.push_str(&format!(",hv-vendor-id={}", escape_comma(v))),
            _ => cpu.push_str(&format!(",hv-{flag}=on")),
        }
    }
    for t in &d.clock_timers {
        match (t.name.as_str(), t.present) {
            ("hypervclock", Some(p)) => cpu.push_str(&format!(",hv-time={}", onoff(p))),
            ("kvmclock", Some(p)) => cpu.push_str(&format!(",kvmclock={}", onoff(p))),
            _ => {}
        }
    }
    if d.features.kvm_hidden == Some(true) {
        cpu.push_str(",kvm=off");
    }
    cpu
}

/// The named model; `host-model` not yet expanded by the agent falls back
/// to the host CPU, as before expansion existed.
pub fn cpu_model(d: &Domain, accel: Accel) -> String {
    match &d.cpu {
        None => "qemu64".into(),
        Some(cpu) => match cpu.mode {
            CpuMode::HostPassthrough | CpuMode::HostModel => match accel {
                Accel::Kvm => "host".into(),
                Accel::Tcg => "max".into(),
            },
            CpuMode::Maximum => "max".into(),
            CpuMode::Custom => cpu.model.clone().unwrap_or_else(|| "qemu64".into()),
        },
    }
}

/// `-smp`: online vCPUs, the hot-plug maximum and the topology.
pub fn smp_opts(d: &Domain) -> String {
    let mut smp = match d.vcpus_current {
        Some(current) => format!("{current},maxcpus={}", d.vcpus),
        None => d.vcpus.to_string(),
    };
    if let Some(t) = d.cpu.as_ref().and_then(|c| c.topology) {
        smp.push_str(&format!(",sockets={}", t.sockets));
        if t.dies != 1 {
            smp.push_str(&format!(",dies={}", t.dies));
        }
        if t.clusters != 1 {
            smp.push_str(&format!(",clusters={}", t.clusters));
        }
        smp.push_str(&format!(",cores={},threads={}", t.cores, t.threads));
    }
    smp
}

/// `-rtc` and the PIT's lost-tick policy.
pub fn clock_args(d: &Domain, accel: Accel, a: &mut Vec<String>) {
    let base = d.clock_offset.as_deref().unwrap_or("utc");
    let mut rtc = format!("base={base}");
    for t in &d.clock_timers {
        match (t.name.as_str(), t.tickpolicy.as_deref()) {
            ("rtc", Some("catchup")) => rtc.push_str(",driftfix=slew"),
            // Only KVM's in-kernel PIT has a lost-tick policy.
            ("pit", Some(policy)) if accel == Accel::Kvm => {
                let policy = if policy == "catchup" { "slew" } else { policy };
                a.push("-global".into());
                a.push(format!("kvm-pit.lost_tick_policy={policy}"));
            }
            _ => {}
        }
    }
    a.push("-rtc".into());
    a.push(rtc);
}

/// Firmware: UEFI code and variables as two pflash devices, or a BIOS ROM.
pub fn firmware_args(d: &Domain, a: &mut Vec<String>) {
    let Some(loader) = &d.os.loader else { return };
    let code = escape_comma(&loader.path.display().to_string());
    if loader.loader_type == "rom" {
        a.extend(["-bios".into(), code]);
        return;
    }
    a.push("-blockdev".into());
    a.push(format!(
        "driver=file,filename={code},node-name=pflash0-storage,read-only={}",
        onoff(loader.readonly)
    ));
    a.push("-blockdev".into());
    a.push(format!(
        "driver=raw,file=pflash0-storage,node-name={PFLASH_CODE},read-only={}",
        onoff(loader.readonly)
    ));
    if let Some(nvram) = &d.os.nvram {
        let vars = escape_comma(&nvram.path.display().to_string());
        a.push("-blockdev".into());
        a.push(format!(
            "driver=file,filename={vars},node-name=pflash1-storage,read-only=off"
        ));
        a.push("-blockdev".into());
        a.push(format!(
            "driver=raw,file=pflash1-storage,node-name={PFLASH_VARS},read-only=off"
        ));
    }
    if loader.secure == Some(true) {
        a.push("-global".into());
        a.push("driver=cfi.pflash01,property=secure,value=on".into());
    }
}

/// `-smbios` from `<sysinfo>` when `<os><smbios mode='sysinfo'/>` shows it.
pub fn smbios_args(d: &Domain, a: &mut Vec<String>) {
    if d.os.smbios_mode.as_deref() != Some("sysinfo") {
        return;
    }
    let Some(info) = &d.sysinfo else { return };
    for (kind, entries) in [(0, &info.bios), (1, &info.system)] {
        if entries.is_empty() {
            continue;
        }
        let mut arg = format!("type={kind}");
        for (k, v) in entries {
            arg.push_str(&format!(",{k}={}", escape_comma(v)));
        }
        a.extend(["-smbios".into(), arg]);
    }
}

/// What QEMU does by itself on guest events. Power-off with an action
/// other than destroy, and a reported panic, pause QEMU and leave the
/// decision to the agent (see the agent's monitor), as libvirt does.
pub fn action_args(d: &Domain, a: &mut Vec<String>) {
    let mut actions = Vec::new();
    if d.on_reboot == LifecycleAction::Destroy {
        actions.push("reboot=shutdown".to_string());
    }
    if d.on_poweroff != LifecycleAction::Destroy {
        actions.push("shutdown=pause".to_string());
    }
    if !d.devices.panics.is_empty() {
        actions.push("panic=pause".to_string());
    }
    if let Some(w) = d.devices.watchdogs.first() {
        actions.push(format!("watchdog={}", w.action));
    }
    if !actions.is_empty() {
        a.extend(["-action".into(), actions.join(",")]);
    }
}

/// Boot priorities: `<boot order=>` on devices wins; otherwise `<os><boot
/// dev=...>` gives the first disk, cdrom and NIC their place, as libvirt
/// does. Returns (disk bootindex per disk, NIC bootindex per NIC).
pub fn boot_indexes(d: &Domain) -> (Vec<Option<u32>>, Vec<Option<u32>>) {
    let dev = &d.devices;
    let per_device = dev.disks.iter().any(|x| x.boot_order.is_some())
        || dev.interfaces.iter().any(|i| i.boot_order.is_some());
    if per_device {
        return (
            dev.disks.iter().map(|x| x.boot_order).collect(),
            dev.interfaces.iter().map(|i| i.boot_order).collect(),
        );
    }
    let mut disks = vec![None; dev.disks.len()];
    let mut nics = vec![None; dev.interfaces.len()];
    if d.os.kernel.is_some() {
        return (disks, nics);
    }
    let order: Vec<tern_model::BootDevice> = if d.os.boot.is_empty() {
        vec![tern_model::BootDevice::Hd]
    } else {
        d.os.boot.clone()
    };
    for (i, dev_kind) in order.iter().enumerate() {
        let index = Some(i as u32 + 1);
        let want = match dev_kind {
            tern_model::BootDevice::Hd => Some(tern_model::DiskDevice::Disk),
            tern_model::BootDevice::Cdrom => Some(tern_model::DiskDevice::Cdrom),
            tern_model::BootDevice::Network => None,
            tern_model::BootDevice::Fd => continue,
        };
        match want {
            Some(kind) => {
                if let Some(n) = dev.disks.iter().position(|x| x.device == kind) {
                    disks[n] = disks[n].or(index);
                }
            }
            None if !nics.is_empty() => nics[0] = nics[0].or(index),
            None => {}
        }
    }
    (disks, nics)
}

/// The PCI bus id QEMU knows bus `n` by.
pub fn pci_bus(d: &Domain, n: u8) -> String {
    match (n, is_q35(d)) {
        (0, true) => "pcie.0".into(),
        _ => format!("pci.{n}"),
    }
}
