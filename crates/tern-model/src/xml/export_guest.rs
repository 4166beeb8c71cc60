//! Export of addresses, firmware, features, clock, controllers and the
//! small devices, in `virsh dumpxml` layout.

use super::export::{path, push_opt, Attrs, Writer};
use crate::domain::{Controller, Devices, Features, Os};
use crate::guest::{Address, Channel, ChannelKind, Timer, Tpm};

/// Opens `name` if it will have children (returns true), else writes it empty.
pub(super) fn open_or_empty(w: &mut Writer, name: &str, attrs: Attrs, children: bool) -> bool {
    if children {
        w.open(name, attrs);
    } else {
        w.empty(name, attrs);
    }
    children
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

/// `<address .../>` as libvirt prints it (PCI numbers in hex).
pub(super) fn write_address(w: &mut Writer, address: &Option<Address>) {
    let Some(address) = address else { return };
    let attrs = match address {
        Address::Pci {
            domain,
            bus,
            slot,
            function,
            multifunction,
        } => {
            let mut a = vec![
                ("type", "pci".to_string()),
                ("domain", format!("{domain:#06x}")),
                ("bus", format!("{bus:#04x}")),
                ("slot", format!("{slot:#04x}")),
                ("function", format!("{function:#x}")),
            ];
            if *multifunction {
                a.push(("multifunction", "on".to_string()));
            }
            a
        }
        Address::Drive {
            controller,
            bus,
            target,
            unit,
        } => vec![
            ("type", "drive".to_string()),
            ("controller", controller.to_string()),
            ("bus", bus.to_string()),
            ("target", target.to_string()),
            ("unit", unit.to_string()),
        ],
        Address::VirtioSerial {
            controller,
            bus,
            port,
        } => vec![
            ("type", "virtio-serial".to_string()),
            ("controller", controller.to_string()),
            ("bus", bus.to_string()),
            ("port", port.to_string()),
        ],
        Address::Usb { bus, port } => vec![
            ("type", "usb".to_string()),
            ("bus", bus.to_string()),
            ("port", port.clone()),
        ],
    };
    w.empty("address", attrs);
}

/// `<loader>`, `<nvram>` and `<firmware>` inside `<os>`.
pub(super) fn write_os_firmware(w: &mut Writer, os: &Os) {
    if !os.firmware_features.is_empty() {
        w.open("firmware", vec![]);
        for f in &os.firmware_features {
            w.empty(
                "feature",
                vec![("enabled", yes_no(f.enabled)), ("name", f.name.clone())],
            );
        }
        w.close("firmware");
    }
    if let Some(mode) = &os.smbios_mode {
        w.empty("smbios", vec![("mode", mode.clone())]);
    }
    if let Some(l) = &os.loader {
        let mut attrs = vec![("readonly", yes_no(l.readonly))];
        push_opt(&mut attrs, "secure", l.secure.map(yes_no).as_deref());
        attrs.push(("type", l.loader_type.clone()));
        w.text("loader", attrs, &path(&l.path));
    }
    if let Some(n) = &os.nvram {
        let mut attrs = Attrs::new();
        push_opt(
            &mut attrs,
            "template",
            n.template.as_deref().map(path).as_deref(),
        );
        w.text("nvram", attrs, &path(&n.path));
    }
}

pub(super) fn write_features(w: &mut Writer, f: &Features) {
    let any = f.acpi
        || f.apic
        || f.pae
        || f.vmport.is_some()
        || f.smm.is_some()
        || f.vmcoreinfo.is_some()
        || f.hyperv_mode.is_some()
        || f.kvm_hidden.is_some();
    if !any {
        return;
    }
    w.open("features", vec![]);
    for (name, on) in [("acpi", f.acpi), ("apic", f.apic), ("pae", f.pae)] {
        if on {
            w.empty(name, vec![]);
        }
    }
    if let Some(mode) = &f.hyperv_mode {
        if open_or_empty(
            w,
            "hyperv",
            vec![("mode", mode.clone())],
            !f.hyperv.is_empty(),
        ) {
            for h in &f.hyperv {
                let mut attrs = vec![("state", on_off(h.on))];
                match h.name.as_str() {
                    "spinlocks" => push_opt(&mut attrs, "retries", h.value.as_deref()),
                    "vendor_id" => push_opt(&mut attrs, "value", h.value.as_deref()),
                    _ => {}
                }
                w.empty(&h.name, attrs);
            }
            w.close("hyperv");
        }
    }
    if let Some(hidden) = f.kvm_hidden {
        w.open("kvm", vec![]);
        w.empty("hidden", vec![("state", on_off(hidden))]);
        w.close("kvm");
    }
    for (name, state) in [
        ("vmport", f.vmport),
        ("smm", f.smm),
        ("vmcoreinfo", f.vmcoreinfo),
    ] {
        if let Some(on) = state {
            w.empty(name, vec![("state", on_off(on))]);
        }
    }
    w.close("features");
}

pub(super) fn write_clock(w: &mut Writer, offset: Option<&str>, timers: &[Timer]) {
    let Some(offset) = offset else { return };
    if !open_or_empty(
        w,
        "clock",
        vec![("offset", offset.to_string())],
        !timers.is_empty(),
    ) {
        return;
    }
    for t in timers {
        let mut attrs = vec![("name", t.name.clone())];
        push_opt(&mut attrs, "tickpolicy", t.tickpolicy.as_deref());
        push_opt(&mut attrs, "present", t.present.map(yes_no).as_deref());
        w.empty("timer", attrs);
    }
    w.close("clock");
}

/// `<controller>` with its model name, target, master and address.
pub(super) fn write_controller(w: &mut Writer, mut attrs: Attrs, c: &Controller) {
    let d = &c.detail;
    push_opt(
        &mut attrs,
        "ports",
        d.ports.map(|p| p.to_string()).as_deref(),
    );
    let children = d.model_name.is_some()
        || d.chassis.is_some()
        || d.port.is_some()
        || d.master_startport.is_some()
        || d.queues.is_some()
        || c.address.is_some();
    if !open_or_empty(w, "controller", attrs, children) {
        return;
    }
    if let Some(q) = d.queues {
        w.empty("driver", vec![("queues", q.to_string())]);
    }
    if let Some(start) = d.master_startport {
        w.empty("master", vec![("startport", start.to_string())]);
    }
    if let Some(name) = &d.model_name {
        w.empty("model", vec![("name", name.clone())]);
    }
    if d.chassis.is_some() || d.port.is_some() {
        let mut t = Attrs::new();
        push_opt(
            &mut t,
            "chassis",
            d.chassis.map(|c| c.to_string()).as_deref(),
        );
        push_opt(&mut t, "port", d.port.as_deref());
        w.empty("target", t);
    }
    write_address(w, &c.address);
    w.close("controller");
}

pub(super) fn write_channels(w: &mut Writer, channels: &[Channel]) {
    for c in channels {
        match &c.kind {
            ChannelKind::Unix { path: p } => {
                w.open("channel", vec![("type", "unix".to_string())]);
                let mut attrs = vec![("mode", "bind".to_string())];
                push_opt(&mut attrs, "path", p.as_deref().map(path).as_deref());
                w.empty("source", attrs);
            }
            ChannelKind::Spicevmc => w.open("channel", vec![("type", "spicevmc".to_string())]),
        }
        w.empty(
            "target",
            vec![
                ("type", "virtio".to_string()),
                ("name", c.target_name.clone()),
            ],
        );
        write_address(w, &c.address);
        w.close("channel");
    }
}

pub(super) fn write_tpms(w: &mut Writer, tpms: &[Tpm]) {
    for t in tpms {
        w.open("tpm", vec![("model", t.model.clone())]);
        w.empty(
            "backend",
            vec![
                ("type", "emulator".to_string()),
                ("version", t.version.clone()),
            ],
        );
        w.close("tpm");
    }
}

/// `<sound>` then `<audio>`, as libvirt orders them.
pub(super) fn write_sound(w: &mut Writer, d: &Devices) {
    for s in &d.sounds {
        let children = s.audio_id.is_some() || s.address.is_some();
        if open_or_empty(w, "sound", vec![("model", s.model.clone())], children) {
            if let Some(id) = s.audio_id {
                w.empty("audio", vec![("id", id.to_string())]);
            }
            write_address(w, &s.address);
            w.close("sound");
        }
    }
    for a in &d.audios {
        w.empty(
            "audio",
            vec![("id", a.id.to_string()), ("type", a.kind.clone())],
        );
    }
}

/// Devices after `<video>`: redirdev, watchdog, memballoon, rng, panic.
pub(super) fn write_guest_devices(w: &mut Writer, d: &Devices) {
    for r in &d.redirdevs {
        let attrs = vec![("bus", "usb".to_string()), ("type", "spicevmc".to_string())];
        if open_or_empty(w, "redirdev", attrs, r.address.is_some()) {
            write_address(w, &r.address);
            w.close("redirdev");
        }
    }
    for wd in &d.watchdogs {
        let attrs = vec![("model", wd.model.clone()), ("action", wd.action.clone())];
        if open_or_empty(w, "watchdog", attrs, wd.address.is_some()) {
            write_address(w, &wd.address);
            w.close("watchdog");
        }
    }
    if let Some(model) = &d.memballoon {
        let attrs = vec![("model", model.clone())];
        if open_or_empty(w, "memballoon", attrs, d.memballoon_address.is_some()) {
            write_address(w, &d.memballoon_address);
            w.close("memballoon");
        }
    }
    for r in &d.rngs {
        w.open("rng", vec![("model", "virtio".to_string())]);
        w.text(
            "backend",
            vec![("model", "random".to_string())],
            &path(&r.source),
        );
        write_address(w, &r.address);
        w.close("rng");
    }
    for p in &d.panics {
        let attrs = vec![("model", p.model.clone())];
        if open_or_empty(w, "panic", attrs, p.address.is_some()) {
            write_address(w, &p.address);
            w.close("panic");
        }
    }
}

/// `<sysinfo type='smbios'>`.
pub(super) fn write_sysinfo(w: &mut Writer, info: &crate::guest::Sysinfo) {
    w.open("sysinfo", vec![("type", "smbios".to_string())]);
    for (name, entries) in [("bios", &info.bios), ("system", &info.system)] {
        if entries.is_empty() {
            continue;
        }
        w.open(name, vec![]);
        for (key, value) in entries {
            w.text("entry", vec![("name", key.clone())], value);
        }
        w.close(name);
    }
    w.close("sysinfo");
}
