//! Controllers and the small devices, each at its recorded address.

use super::platform::pci_bus;
use super::{escape_comma, LaunchSpec};
use std::path::{Path, PathBuf};
use tern_model::layout::{default_usb_model, is_q35};
use tern_model::{Address, ChannelKind, Controller, Domain};

/// `,bus=...,addr=...` for a PCI address; empty without one.
pub fn pci_addr(d: &Domain, address: &Option<Address>) -> String {
    match address {
        Some(Address::Pci {
            bus,
            slot,
            function,
            multifunction,
            ..
        }) => {
            let mut s = format!(",bus={},addr={slot:#x}", pci_bus(d, *bus));
            if *function != 0 {
                s.push_str(&format!(".{function:#x}"));
            }
            if *multifunction {
                s.push_str(",multifunction=on");
            }
            s
        }
        _ => String::new(),
    }
}

fn device(a: &mut Vec<String>, spec: String) {
    a.push("-device".into());
    a.push(spec);
}

/// PCI bridges and root ports, in index order so each exists before use.
pub fn pci_controllers(d: &Domain, a: &mut Vec<String>) {
    let mut pci: Vec<&Controller> = d
        .devices
        .controllers
        .iter()
        .filter(|c| c.controller_type == "pci" && c.index > 0)
        .collect();
    pci.sort_by_key(|c| c.index);
    for c in pci {
        let id = format!("pci.{}", c.index);
        let at = pci_addr(d, &c.address);
        let spec = match c.model.as_deref() {
            Some("pcie-root-port") => {
                let mut s = "pcie-root-port".to_string();
                if let Some(port) = &c.detail.port {
                    s.push_str(&format!(",port={port}"));
                }
                s.push_str(&format!(
                    ",chassis={},id={id}{at}",
                    c.detail.chassis.unwrap_or(c.index)
                ));
                s
            }
            Some("pci-bridge") => format!(
                "pci-bridge,chassis_nr={},id={id}{at}",
                c.detail.chassis.unwrap_or(c.index)
            ),
            Some("pcie-to-pci-bridge") => format!("pcie-pci-bridge,id={id}{at}"),
            // Refused by validation; nothing else reaches here.
            _ => continue,
        };
        device(a, spec);
    }
}

/// USB, virtio-serial, SCSI and SATA controllers.
pub fn controllers(d: &Domain, a: &mut Vec<String>) {
    let q35 = is_q35(d);
    for c in &d.devices.controllers {
        let at = pci_addr(d, &c.address);
        let i = c.index;
        let spec = match c.controller_type.as_str() {
            "usb" => match usb_device(d, c) {
                Some(s) => s,
                None => continue,
            },
            "virtio-serial" => {
                let ports = c
                    .detail
                    .ports
                    .map(|p| format!(",max_ports={p}"))
                    .unwrap_or_default();
                format!("virtio-serial-pci,id=virtio-serial{i}{ports}{at}")
            }
            "scsi" => {
                let queues = c
                    .detail
                    .queues
                    .map(|q| format!(",num_queues={q}"))
                    .unwrap_or_default();
                match c.model.as_deref() {
                    Some("virtio-scsi") => format!("virtio-scsi-pci,id=scsi{i}{queues}{at}"),
                    _ => format!("lsi,id=scsi{i}{at}"),
                }
            }
            // Q35's first AHCI controller is part of the chipset.
            "sata" if q35 && i == 0 => continue,
            "sata" => format!("ahci,id=sata{i}{at}"),
            _ => continue,
        };
        device(a, spec);
    }
}

/// The QEMU device for a USB controller; `None` for model='none'.
fn usb_device(d: &Domain, c: &Controller) -> Option<String> {
    let model = c.model.as_deref().unwrap_or(default_usb_model(d));
    let at = pci_addr(d, &c.address);
    let id = if c.index == 0 {
        "usb".to_string()
    } else {
        format!("usb{}", c.index)
    };
    let ports = c.detail.ports.unwrap_or(15);
    let spec = match model {
        "none" => return None,
        "qemu-xhci" => format!("qemu-xhci,p2={ports},p3={ports},id={id}{at}"),
        "nec-xhci" => format!("nec-usb-xhci,p2={ports},p3={ports},id={id}{at}"),
        "piix3-uhci" => format!("piix3-usb-uhci,id={id}{at}"),
        "ich9-ehci1" => format!("ich9-usb-ehci1,id={id}{at}"),
        m if m.starts_with("ich9-uhci") => {
            let n = m.trim_start_matches("ich9-uhci");
            let start = c.detail.master_startport.unwrap_or(0);
            format!("ich9-usb-uhci{n},masterbus={id}.0,firstport={start}{at}")
        }
        _ => return None,
    };
    Some(spec)
}

/// The guest-agent (or other unix) channel's socket: the XML's path, or
/// one in the run directory.
pub fn channel_socket(run_dir: &Path, kind: &ChannelKind, target_name: &str) -> Option<PathBuf> {
    match kind {
        ChannelKind::Unix { path: Some(p) } => Some(p.clone()),
        ChannelKind::Unix { path: None } => Some(run_dir.join(format!("{target_name}.sock"))),
        ChannelKind::Spicevmc => None,
    }
}

/// virtio-serial ports: the guest agent's socket and SPICE's agent channel.
pub fn channels(spec: &LaunchSpec<'_>, a: &mut Vec<String>) {
    for (i, c) in spec.domain.devices.channels.iter().enumerate() {
        let id = format!("charchannel{i}");
        let chardev = match channel_socket(&spec.run_dir, &c.kind, &c.target_name) {
            Some(path) => format!(
                "socket,id={id},path={},server=on,wait=off",
                escape_comma(&path.display().to_string())
            ),
            None => format!("spicevmc,id={id},name=vdagent"),
        };
        a.extend(["-chardev".into(), chardev]);
        let (controller, port) = match c.address {
            Some(Address::VirtioSerial {
                controller, port, ..
            }) => (controller, port),
            _ => (0, i as u32 + 1),
        };
        device(
            a,
            format!(
                "virtserialport,bus=virtio-serial{controller}.0,nr={port},chardev={id},id=channel{i},name={}",
                escape_comma(&c.target_name)
            ),
        );
    }
}

/// `,bus=usb.0,port=N` for a USB address.
fn usb_addr(address: &Option<Address>) -> String {
    match address {
        Some(Address::Usb { bus, port }) => {
            let bus = if *bus == 0 {
                "usb".to_string()
            } else {
                format!("usb{bus}")
            };
            format!(",bus={bus}.0,port={port}")
        }
        _ => String::new(),
    }
}

/// USB and virtio input devices (PS/2 ones are part of the chipset).
pub fn inputs(d: &Domain, a: &mut Vec<String>) {
    for (i, input) in d.devices.inputs.iter().enumerate() {
        let kind = match input.input_type.as_str() {
            "tablet" => "tablet",
            "keyboard" => "kbd",
            _ => "mouse",
        };
        match input.bus.as_deref() {
            Some("usb") => device(
                a,
                format!("usb-{kind},id=input{i}{}", usb_addr(&input.address)),
            ),
            Some("virtio") => {
                let kind = if kind == "kbd" { "keyboard" } else { kind };
                device(
                    a,
                    format!(
                        "virtio-{kind}-pci,id=input{i}{}",
                        pci_addr(d, &input.address)
                    ),
                )
            }
            _ => {}
        }
    }
    for (i, r) in d.devices.redirdevs.iter().enumerate() {
        a.extend([
            "-chardev".into(),
            format!("spicevmc,id=charredir{i},name=usbredir"),
        ]);
        device(
            a,
            format!(
                "usb-redir,chardev=charredir{i},id=redir{i}{}",
                usb_addr(&r.address)
            ),
        );
    }
}

/// Sound cards and the host side they play to.
pub fn sound(d: &Domain, a: &mut Vec<String>) {
    let dev = &d.devices;
    if dev.sounds.is_empty() && dev.audios.is_empty() {
        return;
    }
    for au in &dev.audios {
        a.extend(["-audiodev".into(), format!("{},id=audio{}", au.kind, au.id)]);
    }
    if dev.audios.is_empty() {
        a.extend(["-audiodev".into(), "none,id=audio1".into()]);
    }
    for (i, s) in dev.sounds.iter().enumerate() {
        let audio = format!(
            "audio{}",
            s.audio_id.or(dev.audios.first().map(|x| x.id)).unwrap_or(1)
        );
        let at = pci_addr(d, &s.address);
        match s.model.as_str() {
            "ac97" => device(a, format!("AC97,id=sound{i},audiodev={audio}{at}")),
            model => {
                let hda = if model == "ich9" {
                    "ich9-intel-hda"
                } else {
                    "intel-hda"
                };
                device(a, format!("{hda},id=sound{i}{at}"));
                device(
                    a,
                    format!("hda-duplex,id=sound{i}-codec0,bus=sound{i}.0,cad=0,audiodev={audio}"),
                );
            }
        }
    }
}

/// Watchdog, RNG, balloon, panic notifier, vmcoreinfo.
pub fn misc(d: &Domain, a: &mut Vec<String>) {
    let dev = &d.devices;
    for (i, w) in dev.watchdogs.iter().enumerate() {
        match w.model.as_str() {
            "i6300esb" => device(
                a,
                format!("i6300esb,id=watchdog{i}{}", pci_addr(d, &w.address)),
            ),
            "ib700" => device(a, format!("ib700,id=watchdog{i}")),
            // iTCO is part of Q35's LPC bridge; the action applies to it.
            _ => {}
        }
    }
    for (i, r) in dev.rngs.iter().enumerate() {
        a.extend([
            "-object".into(),
            format!(
                "rng-random,id=objrng{i},filename={}",
                escape_comma(&r.source.display().to_string())
            ),
        ]);
        device(
            a,
            format!(
                "virtio-rng-pci,rng=objrng{i},id=rng{i}{}",
                pci_addr(d, &r.address)
            ),
        );
    }
    if dev.memballoon.as_deref() == Some("virtio") {
        device(
            a,
            format!(
                "virtio-balloon-pci,id=balloon0{}",
                pci_addr(d, &dev.memballoon_address)
            ),
        );
    }
    for p in &dev.panics {
        match p.model.as_str() {
            "pvpanic" => device(a, format!("pvpanic-pci{}", pci_addr(d, &p.address))),
            _ => device(a, "pvpanic".into()),
        }
    }
    if d.features.vmcoreinfo == Some(true) {
        device(a, "vmcoreinfo".into());
    }
}

/// The swtpm control socket in a run directory.
pub fn swtpm_socket(run_dir: &Path) -> PathBuf {
    swtpm_dir(run_dir).join("ctrl.sock")
}

/// The directory of a guest's swtpm (its socket and log): swtpm drops to
/// QEMU's unprivileged user before it creates them, so it gets a
/// directory of its own rather than write access to the run directory.
pub fn swtpm_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("swtpm")
}

/// TPM front end and its swtpm back end (started by the agent).
pub fn tpm(spec: &LaunchSpec<'_>, a: &mut Vec<String>) {
    for (i, t) in spec.domain.devices.tpms.iter().enumerate() {
        let sock = escape_comma(&swtpm_socket(&spec.run_dir).display().to_string());
        a.extend([
            "-chardev".into(),
            format!("socket,id=chrtpm{i},path={sock}"),
            "-tpmdev".into(),
            format!("emulator,id=tpm-tpm{i},chardev=chrtpm{i}"),
        ]);
        device(a, format!("{},tpmdev=tpm-tpm{i},id=tpm{i}", t.model));
    }
}
