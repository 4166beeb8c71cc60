//! QEMU command line from a domain definition.
//!
//! The same definition must give the same guest-visible machine on every
//! host, or migration fails (or worse, silently corrupts device state). So
//! everything guest-visible comes from the [`Domain`] alone, and only
//! host-local wiring (sockets, tap names, log files, accelerator) comes from
//! the [`LaunchSpec`].

use std::path::{Path, PathBuf};
use tern_model::{
    CacheMode, CharDev, CpuMode, DiskBus, DiskDevice, DiskFormat, Domain, InterfaceKind,
    LifecycleAction,
};

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Host side of one guest NIC, in the order of `domain.devices.interfaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// QEMU's user-mode network.
    User,
    /// A tap device the agent created and attached to the bridge.
    Tap {
        /// Host interface name.
        ifname: String,
    },
}

/// Host-local facts needed to launch a domain.
#[derive(Debug, Clone)]
pub struct LaunchSpec<'a> {
    /// The guest.
    pub domain: &'a Domain,
    /// Accelerator.
    pub accel: Accel,
    /// Per-run directory: QMP socket, pid file, console log.
    pub run_dir: PathBuf,
    /// One backend per interface.
    pub nets: Vec<NetBackend>,
    /// VNC display number (port - 5900) for a VNC graphics device.
    pub vnc_display: Option<u16>,
    /// Start with `-incoming defer` (migration destination).
    pub incoming: bool,
    /// Start with vCPUs stopped (`-S`).
    pub paused: bool,
}

/// Path of the QMP socket inside a run directory.
pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}

/// Path of the pid file inside a run directory.
pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.pid")
}

/// Path of the serial console log for a pty serial port.
pub fn console_log(run_dir: &Path, port: u32) -> PathBuf {
    if port == 0 {
        run_dir.join("console.log")
    } else {
        run_dir.join(format!("console-{port}.log"))
    }
}

/// QEMU's own stderr log inside a run directory.
pub fn qemu_log(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.log")
}

/// The node name of a disk's format layer; NBD exports and block jobs use it.
pub fn drive_node(target_dev: &str) -> String {
    format!("drive-{target_dev}")
}

/// The node name of a disk's protocol (file) layer.
pub fn file_node(target_dev: &str) -> String {
    format!("file-{target_dev}")
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Builds QEMU's arguments (without the binary) for a launch.
pub fn build_command_line(spec: &LaunchSpec<'_>) -> Vec<String> {
    let d = spec.domain;
    let mut a: Vec<String> = Vec::new();
    let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));

    push(&["-name", &format!("guest={},debug-threads=on", d.name)]);
    push(&["-uuid", &d.uuid.to_string()]);
    push(&["-nodefaults", "-no-user-config"]);
    let machine = d.os.machine.as_deref().unwrap_or("pc");
    push(&["-machine", machine]);
    push(&["-accel", spec.accel.as_str()]);
    push(&["-cpu", &cpu_model(d, spec.accel)]);
    push(&["-m", &format!("{}M", d.memory_kib.div_ceil(1024))]);
    push(&["-smp", &d.vcpus.to_string()]);
    push(&["-msg", "timestamp=on"]);
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            qmp_socket(&spec.run_dir).display()
        ),
    ]);
    push(&["-pidfile", &pid_file(&spec.run_dir).display().to_string()]);
    if d.on_reboot == LifecycleAction::Destroy {
        push(&["-no-reboot"]);
    }
    if let Some(k) = &d.os.kernel {
        push(&["-kernel", &k.display().to_string()]);
    }
    if let Some(i) = &d.os.initrd {
        push(&["-initrd", &i.display().to_string()]);
    }
    if let Some(c) = &d.os.cmdline {
        push(&["-append", c]);
    }

    disks(d, &mut a);
    nics(spec, &mut a);
    serials(spec, &mut a);
    display(spec, &mut a);

    if d.devices
        .controllers
        .iter()
        .any(|c| c.controller_type == "usb" && c.model.as_deref() != Some("none"))
        || d.devices
            .inputs
            .iter()
            .any(|i| i.bus.as_deref() == Some("usb"))
    {
        a.extend(["-usb".to_string()]);
        for i in d
            .devices
            .inputs
            .iter()
            .filter(|i| i.bus.as_deref() == Some("usb"))
        {
            let dev = match i.input_type.as_str() {
                "tablet" => "usb-tablet",
                "keyboard" => "usb-kbd",
                _ => "usb-mouse",
            };
            a.extend(["-device".to_string(), dev.to_string()]);
        }
    }
    if matches!(d.devices.memballoon.as_deref(), Some("virtio")) {
        a.extend([
            "-device".to_string(),
            "virtio-balloon-pci,id=balloon0".to_string(),
        ]);
    }
    if spec.paused || spec.incoming {
        a.push("-S".into());
    }
    if spec.incoming {
        a.extend(["-incoming".to_string(), "defer".to_string()]);
    }
    a
}

fn cpu_model(d: &Domain, accel: Accel) -> String {
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

fn cache_flags(cache: Option<CacheMode>) -> (bool, bool, bool) {
    // (direct, no_flush, write_cache) as libvirt maps its cache modes.
    match cache.unwrap_or(CacheMode::Writeback) {
        CacheMode::None => (true, false, true),
        CacheMode::Writethrough => (false, false, false),
        CacheMode::Writeback => (false, false, true),
        CacheMode::Directsync => (true, false, false),
        CacheMode::Unsafe => (false, true, true),
    }
}

mod netblock;

/// The format node (`driver=qcow2|raw`) over a disk's protocol node.
fn format_blockdev(disk: &tern_model::Disk, ro: bool, a: &mut Vec<String>) {
    let (direct, no_flush, _) = cache_flags(disk.cache);
    let fmt = match disk.format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    };
    a.push("-blockdev".into());
    a.push(format!(
        "driver={fmt},file={},node-name={},cache.direct={},cache.no-flush={},read-only={}",
        file_node(&disk.target_dev),
        drive_node(&disk.target_dev),
        onoff(direct),
        onoff(no_flush),
        onoff(ro),
    ));
}

fn ide_slot(dev: &str) -> (u32, u32) {
    let idx = dev
        .chars()
        .last()
        .map(|c| (c as u32).saturating_sub('a' as u32))
        .unwrap_or(0);
    (idx / 2, idx % 2)
}

fn disks(d: &Domain, a: &mut Vec<String>) {
    let mut have_ahci = false;
    let mut have_scsi = false;
    let boot_hd = d.os.kernel.is_none();
    let mut boot_given = false;
    for (n, disk) in d.devices.disks.iter().enumerate() {
        let node = drive_node(&disk.target_dev);
        let ro = disk.readonly || disk.device == DiskDevice::Cdrom;
        if let (None, Some(tern_model::DiskRemote::Network(n))) = (&disk.source, &disk.remote) {
            a.push("-blockdev".into());
            a.push(netblock::protocol_blockdev(disk, n, ro));
            format_blockdev(disk, ro, a);
        }
        if let Some(src) = &disk.source {
            let (direct, no_flush, _) = cache_flags(disk.cache);
            let file_driver = if disk.source_type == tern_model::DiskSourceType::Block {
                "host_device"
            } else {
                "file"
            };
            a.push("-blockdev".into());
            a.push(format!(
                "driver={file_driver},filename={},node-name={},cache.direct={},cache.no-flush={},read-only={}{}",
                escape_comma(&src.display().to_string()),
                file_node(&disk.target_dev),
                onoff(direct),
                onoff(no_flush),
                onoff(ro),
                if direct { ",aio=native" } else { "" },
            ));
            let fmt = match disk.format {
                DiskFormat::Qcow2 => "qcow2",
                DiskFormat::Raw => "raw",
            };
            a.push("-blockdev".into());
            a.push(format!(
                "driver={fmt},file={},node-name={node},cache.direct={},cache.no-flush={},read-only={}",
                file_node(&disk.target_dev),
                onoff(direct),
                onoff(no_flush),
                onoff(ro),
            ));
        }
        let (_, _, write_cache) = cache_flags(disk.cache);
        let drive = if disk.source.is_some()
            || matches!(disk.remote, Some(tern_model::DiskRemote::Network(_)))
        {
            format!(",drive={node}")
        } else {
            String::new()
        };
        let boot = if boot_hd && !boot_given && disk.device == DiskDevice::Disk {
            boot_given = true;
            ",bootindex=1"
        } else {
            ""
        };
        let id = &disk.target_dev;
        let dev = match (disk.target_bus, disk.device) {
            (DiskBus::Virtio, _) => format!(
                "virtio-blk-pci,id={id}{drive},write-cache={}{boot}",
                onoff(write_cache)
            ),
            (DiskBus::Ide, dev) => {
                let (bus, unit) = ide_slot(id);
                let kind = if dev == DiskDevice::Cdrom {
                    "ide-cd"
                } else {
                    "ide-hd"
                };
                format!("{kind},id={id},bus=ide.{bus},unit={unit}{drive}{boot}")
            }
            (DiskBus::Sata, dev) => {
                if !have_ahci {
                    a.push("-device".into());
                    a.push("ahci,id=ahci0".into());
                    have_ahci = true;
                }
                let kind = if dev == DiskDevice::Cdrom {
                    "ide-cd"
                } else {
                    "ide-hd"
                };
                format!("{kind},id={id},bus=ahci0.{n}{drive}{boot}")
            }
            (DiskBus::Scsi, dev) => {
                if !have_scsi {
                    a.push("-device".into());
                    a.push("virtio-scsi-pci,id=scsi0".into());
                    have_scsi = true;
                }
                let kind = if dev == DiskDevice::Cdrom {
                    "scsi-cd"
                } else {
                    "scsi-hd"
                };
                format!("{kind},id={id},bus=scsi0.0{drive}{boot}")
            }
        };
        a.push("-device".into());
        a.push(dev);
    }
}

fn nics(spec: &LaunchSpec<'_>, a: &mut Vec<String>) {
    for (i, (iface, backend)) in spec
        .domain
        .devices
        .interfaces
        .iter()
        .zip(spec.nets.iter())
        .enumerate()
    {
        let netdev = match (backend, &iface.kind) {
            (NetBackend::Tap { ifname }, _) => {
                format!("tap,id=hostnet{i},ifname={ifname},script=no,downscript=no")
            }
            (NetBackend::User, InterfaceKind::User) | (NetBackend::User, _) => {
                format!("user,id=hostnet{i}")
            }
        };
        a.push("-netdev".into());
        a.push(netdev);
        let model = match iface.model.as_deref() {
            None | Some("virtio") => "virtio-net-pci",
            Some("e1000") => "e1000",
            Some("rtl8139") => "rtl8139",
            Some("e1000e") => "e1000e",
            Some(other) => other,
        };
        let mac = iface
            .mac
            .as_deref()
            .map(|m| format!(",mac={m}"))
            .unwrap_or_default();
        a.push("-device".into());
        a.push(format!("{model},id=net{i},netdev=hostnet{i}{mac}"));
    }
}

fn serials(spec: &LaunchSpec<'_>, a: &mut Vec<String>) {
    let d = spec.domain;
    // A <console type=serial> is an alias of serial 0; a lone console
    // still needs the serial port to exist.
    let mut ports: Vec<(u32, &CharDev)> = d
        .devices
        .serials
        .iter()
        .map(|s| (s.port, &s.kind))
        .collect();
    if ports.is_empty() {
        if let Some(c) = d
            .devices
            .consoles
            .iter()
            .find(|c| c.target_type == "serial")
        {
            ports.push((c.port, &c.kind));
        }
    }
    for (port, kind) in &ports {
        let id = format!("charserial{port}");
        let chardev = match kind {
            CharDev::Pty => format!(
                "pty,id={id},logfile={},logappend=on",
                escape_comma(&console_log(&spec.run_dir, *port).display().to_string())
            ),
            CharDev::File { path } => format!(
                "file,id={id},path={},append=on",
                escape_comma(&path.display().to_string())
            ),
        };
        a.push("-chardev".into());
        a.push(chardev);
        a.push("-device".into());
        a.push(format!(
            "isa-serial,chardev={id},id=serial{port},index={port}"
        ));
    }
    for (i, c) in d
        .devices
        .consoles
        .iter()
        .filter(|c| c.target_type == "virtio")
        .enumerate()
    {
        if i == 0 {
            a.push("-device".into());
            a.push("virtio-serial-pci,id=virtio-serial0".into());
        }
        let id = format!("charconsole{i}");
        let chardev = match &c.kind {
            CharDev::Pty => format!(
                "pty,id={id},logfile={},logappend=on",
                escape_comma(
                    &spec
                        .run_dir
                        .join(format!("virtcon-{i}.log"))
                        .display()
                        .to_string()
                )
            ),
            CharDev::File { path } => format!(
                "file,id={id},path={},append=on",
                escape_comma(&path.display().to_string())
            ),
        };
        a.push("-chardev".into());
        a.push(chardev);
        a.push("-device".into());
        a.push(format!("virtconsole,chardev={id},id=console{i}"));
    }
}

fn display(spec: &LaunchSpec<'_>, a: &mut Vec<String>) {
    let d = spec.domain;
    let vnc = d.devices.graphics.iter().find(|g| g.kind == "vnc");
    match (vnc, spec.vnc_display) {
        (Some(g), Some(disp)) => {
            let listen = match g.listen.as_deref() {
                None | Some("") => "127.0.0.1",
                Some(l) => l,
            };
            let listen = if listen.contains(':') {
                format!("[{listen}]")
            } else {
                listen.to_string()
            };
            a.push("-vnc".into());
            a.push(format!("{listen}:{disp}"));
        }
        _ => {
            a.push("-display".into());
            a.push("none".into());
        }
    }
    for v in &d.devices.videos {
        let dev = match v.model.as_str() {
            "none" => continue,
            "cirrus" => "cirrus-vga".to_string(),
            "vga" => "VGA".to_string(),
            "virtio" => "virtio-vga".to_string(),
            "qxl" => "qxl-vga".to_string(),
            "bochs" => "bochs-display".to_string(),
            other => other.to_string(),
        };
        let vram = match (v.model.as_str(), v.vram) {
            ("cirrus", _) => String::new(),
            (_, Some(kib)) if v.model == "vga" => format!(",vgamem_mb={}", (kib / 1024).max(1)),
            _ => String::new(),
        };
        a.push("-device".into());
        a.push(format!("{dev},id=video0{vram}"));
    }
}

/// QEMU option values escape ',' by doubling it.
fn escape_comma(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_model::*;

    fn guest() -> Domain {
        Domain {
            name: "g1".into(),
            uuid: "8b4a3a59-2e36-4a37-9d1c-2f1f5c2e7a11".parse().unwrap(),
            domain_type: "kvm".into(),
            title: None,
            description: None,
            memory_kib: 262144,
            current_memory_kib: 262144,
            vcpus: 2,
            os: Os {
                os_type: "hvm".into(),
                kernel: Some("/k".into()),
                initrd: Some("/i".into()),
                cmdline: Some("console=ttyS0".into()),
                ..Default::default()
            },
            cpu: None,
            features: Features::default(),
            clock_offset: None,
            on_poweroff: LifecycleAction::Destroy,
            on_reboot: LifecycleAction::Restart,
            on_crash: LifecycleAction::Destroy,
            devices: Devices {
                disks: vec![Disk {
                    source_type: DiskSourceType::File,
                    device: DiskDevice::Disk,
                    format: DiskFormat::Qcow2,
                    cache: Some(CacheMode::None),
                    source: Some("/pool/a,b.qcow2".into()),
                    remote: None,
                    target_dev: "vda".into(),
                    target_bus: DiskBus::Virtio,
                    readonly: false,
                    shareable: false,
                }],
                interfaces: vec![Interface {
                    kind: InterfaceKind::Bridge {
                        bridge: "br0".into(),
                    },
                    mac: Some("52:54:00:00:00:01".into()),
                    model: Some("virtio".into()),
                    virtualport: None,
                }],
                serials: vec![Serial {
                    kind: CharDev::Pty,
                    port: 0,
                }],
                ..Default::default()
            },
        }
    }

    #[test]
    fn command_line_has_guest_visible_devices_and_host_wiring() {
        let d = guest();
        let spec = LaunchSpec {
            domain: &d,
            accel: Accel::Tcg,
            run_dir: "/run/tern/g1".into(),
            nets: vec![NetBackend::Tap {
                ifname: "tn0".into(),
            }],
            vnc_display: None,
            incoming: true,
            paused: false,
        };
        let a = build_command_line(&spec).join(" ");
        assert!(a.contains("-m 256M"), "{a}");
        assert!(a.contains("-smp 2"));
        assert!(a.contains("-accel tcg"));
        assert!(a.contains("-cpu qemu64"));
        assert!(a.contains("filename=/pool/a,,b.qcow2"), "{a}");
        assert!(a.contains("cache.direct=on"));
        assert!(a.contains("virtio-blk-pci,id=vda,drive=drive-vda"));
        assert!(a.contains("tap,id=hostnet0,ifname=tn0"));
        assert!(a.contains("virtio-net-pci,id=net0,netdev=hostnet0,mac=52:54:00:00:00:01"));
        assert!(a.contains("logfile=/run/tern/g1/console.log"));
        assert!(a.contains("-incoming defer"));
        assert!(a.contains("-S"));
        assert!(a.contains("-display none"));
    }

    #[test]
    fn host_passthrough_maps_per_accelerator() {
        let mut d = guest();
        d.cpu = Some(Cpu {
            mode: CpuMode::HostPassthrough,
            model: None,
        });
        assert_eq!(cpu_model(&d, Accel::Kvm), "host");
        assert_eq!(cpu_model(&d, Accel::Tcg), "max");
    }

    #[test]
    fn ide_slots_follow_libvirt_naming() {
        assert_eq!(ide_slot("hda"), (0, 0));
        assert_eq!(ide_slot("hdb"), (0, 1));
        assert_eq!(ide_slot("hdc"), (1, 0));
        assert_eq!(ide_slot("hdd"), (1, 1));
    }
}
