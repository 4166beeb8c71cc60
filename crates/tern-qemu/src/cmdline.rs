//! QEMU command line from a domain definition.
//!
//! The same definition must give the same guest-visible machine on every
//! host, or migration fails (or worse, silently corrupts device state). So
//! everything guest-visible comes from the [`Domain`] alone, and only
//! host-local wiring (sockets, tap names, log files, accelerator) comes from
//! the [`LaunchSpec`].

mod devices;
pub mod hotplug;
mod memory;
mod platform;

pub use devices::{channel_socket, swtpm_dir, swtpm_socket};
pub use platform::{cpu_model, PFLASH_CODE, PFLASH_VARS};

use devices::pci_addr;
use std::path::{Path, PathBuf};
use tern_model::layout::is_q35;
use tern_model::{
    Address, CacheMode, CharDev, DiskBus, DiskDevice, DiskFormat, Domain, InterfaceKind,
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
    /// TCP port for a SPICE graphics device.
    pub spice_port: Option<u16>,
    /// Start with `-incoming defer` (migration destination).
    pub incoming: bool,
    /// Start with vCPUs stopped (`-S`).
    pub paused: bool,
    /// The hugetlbfs directory guest RAM lives in, for a guest with
    /// `<memoryBacking><hugepages/>` (the agent picks it per host).
    pub mem_path: Option<PathBuf>,
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
    let (ram, machine_ram) = memory::memory_args(spec);
    if let Some(o) = &ram {
        push(&["-object", o]);
    }
    push(&["-machine", &(platform::machine_opts(d) + &machine_ram)]);
    push(&["-accel", spec.accel.as_str()]);
    push(&["-cpu", &platform::cpu_opts(d, spec.accel)]);
    push(&["-m", &format!("{}M", d.memory_kib.div_ceil(1024))]);
    push(&["-smp", &platform::smp_opts(d)]);
    push(&["-msg", "timestamp=on"]);
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            qmp_socket(&spec.run_dir).display()
        ),
    ]);
    push(&["-pidfile", &pid_file(&spec.run_dir).display().to_string()]);
    if let Some(k) = &d.os.kernel {
        push(&["-kernel", &k.display().to_string()]);
    }
    if let Some(i) = &d.os.initrd {
        push(&["-initrd", &i.display().to_string()]);
    }
    if let Some(c) = &d.os.cmdline {
        push(&["-append", c]);
    }
    if d.os.bootmenu == Some(true) {
        push(&["-boot", "menu=on"]);
    }
    platform::action_args(d, &mut a);
    platform::clock_args(d, spec.accel, &mut a);
    platform::firmware_args(d, &mut a);
    platform::smbios_args(d, &mut a);

    devices::pci_controllers(d, &mut a);
    devices::controllers(d, &mut a);
    netblock::secret_objects(d, &spec.run_dir, &mut a);
    // `<iothreads>N`: iothread1..iothreadN, which disks name.
    for t in 1..=d.iothreads {
        a.extend(["-object".to_string(), format!("iothread,id=iothread{t}")]);
    }
    disks(d, &mut a);
    nics(spec, &mut a);
    serials(spec, &mut a);
    devices::channels(spec, &mut a);
    devices::inputs(d, &mut a);
    devices::tpm(spec, &mut a);
    display(spec, &mut a);
    devices::sound(d, &mut a);
    devices::misc(d, &mut a);
    if spec.paused || spec.incoming {
        a.push("-S".into());
    }
    if spec.incoming {
        a.extend(["-incoming".to_string(), "defer".to_string()]);
    }
    a
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

pub use netblock::{disk_secret_file, disk_secret_id};

/// The protocol node of a local disk: a file or a block device.
fn file_blockdev(disk: &tern_model::Disk, src: &Path, ro: bool, a: &mut Vec<String>) {
    let (direct, no_flush, _) = cache_flags(disk.cache);
    let file_driver = if disk.source_type == tern_model::DiskSourceType::Block {
        "host_device"
    } else {
        "file"
    };
    let aio = match (disk.io.as_deref(), direct) {
        (Some(io), _) => format!(",aio={io}"),
        (None, true) => ",aio=native".to_string(),
        (None, false) => String::new(),
    };
    a.push("-blockdev".into());
    a.push(format!(
        "driver={file_driver},filename={},node-name={},cache.direct={},cache.no-flush={},read-only={}{aio}{}",
        escape_comma(&src.display().to_string()),
        file_node(&disk.target_dev),
        onoff(direct),
        onoff(no_flush),
        onoff(ro),
        discard_opt(disk),
    ));
}

fn discard_opt(disk: &tern_model::Disk) -> String {
    disk.discard
        .as_deref()
        .map(|d| format!(",discard={d}"))
        .unwrap_or_default()
}

/// The format node (`driver=qcow2|raw`) over a disk's protocol node, with
/// the guest's discard and zero-detection settings.
fn format_blockdev(disk: &tern_model::Disk, ro: bool, a: &mut Vec<String>) {
    let (direct, no_flush, _) = cache_flags(disk.cache);
    let fmt = match disk.format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    };
    let zeroes = disk
        .detect_zeroes
        .as_deref()
        .map(|z| format!(",detect-zeroes={z}"))
        .unwrap_or_default();
    a.push("-blockdev".into());
    a.push(format!(
        "driver={fmt},file={},node-name={},cache.direct={},cache.no-flush={},read-only={}{}{zeroes}",
        file_node(&disk.target_dev),
        drive_node(&disk.target_dev),
        onoff(direct),
        onoff(no_flush),
        onoff(ro),
        discard_opt(disk),
    ));
}

/// The bus a disk's device plugs into, from its drive address.
fn drive_bus(d: &Domain, disk: &tern_model::Disk) -> String {
    let (controller, bus, target, unit) = match disk.address {
        Some(Address::Drive {
            controller,
            bus,
            target,
            unit,
        }) => (controller, bus, target, unit),
        _ => (0, 0, 0, 0),
    };
    match disk.target_bus {
        DiskBus::Virtio => pci_addr(d, &disk.address),
        DiskBus::Ide => format!(",bus=ide.{bus},unit={unit}"),
        DiskBus::Sata if is_q35(d) && controller == 0 => format!(",bus=ide.{unit}"),
        DiskBus::Sata => format!(",bus=sata{controller}.{unit}"),
        DiskBus::Scsi => {
            format!(",bus=scsi{controller}.0,channel={bus},scsi-id={target},lun={unit}")
        }
    }
}

fn disks(d: &Domain, a: &mut Vec<String>) {
    let (boot, _) = platform::boot_indexes(d);
    for (n, disk) in d.devices.disks.iter().enumerate() {
        let node = drive_node(&disk.target_dev);
        let ro = disk.readonly || disk.device == DiskDevice::Cdrom;
        if let (None, Some(tern_model::DiskRemote::Network(n))) = (&disk.source, &disk.remote) {
            a.push("-blockdev".into());
            a.push(netblock::protocol_blockdev(disk, n, ro));
            format_blockdev(disk, ro, a);
        }
        if let Some(src) = &disk.source {
            file_blockdev(disk, src, ro, a);
            format_blockdev(disk, ro, a);
        }
        let (_, _, write_cache) = cache_flags(disk.cache);
        let drive = if disk.source.is_some()
            || matches!(disk.remote, Some(tern_model::DiskRemote::Network(_)))
        {
            format!(",drive={node}")
        } else {
            String::new()
        };
        let boot = boot[n]
            .map(|b| format!(",bootindex={b}"))
            .unwrap_or_default();
        let serial = disk
            .serial
            .as_deref()
            .map(|s| format!(",serial={}", escape_comma(s)))
            .unwrap_or_default();
        let id = &disk.target_dev;
        let at = drive_bus(d, disk);
        let cd = disk.device == DiskDevice::Cdrom;
        let iothread = disk
            .iothread
            .map(|t| format!(",iothread=iothread{t}"))
            .unwrap_or_default();
        let dev = match disk.target_bus {
            DiskBus::Virtio => format!(
                "virtio-blk-pci,id={id}{drive},write-cache={}{at}{boot}{serial}{iothread}",
                onoff(write_cache)
            ),
            DiskBus::Ide | DiskBus::Sata => {
                let kind = if cd { "ide-cd" } else { "ide-hd" };
                format!("{kind},id={id}{at}{drive}{boot}{serial}")
            }
            DiskBus::Scsi => {
                let kind = if cd { "scsi-cd" } else { "scsi-hd" };
                format!("{kind},id={id}{at}{drive}{boot}{serial}")
            }
        };
        a.push("-device".into());
        a.push(dev);
    }
}

fn nics(spec: &LaunchSpec<'_>, a: &mut Vec<String>) {
    let (_, boot) = platform::boot_indexes(spec.domain);
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
            Some("ne2k_pci") => "ne2k_pci",
            Some("pcnet") => "pcnet",
            Some("vmxnet3") => "vmxnet3",
            Some("igb") => "igb",
            // validate() refuses every other model (an option smuggled in
            // as `virtio-net-pci,romfile=...` never reaches QEMU).
            Some(_) => "virtio-net-pci",
        };
        let mac = iface
            .mac
            .as_deref()
            .map(|m| format!(",mac={m}"))
            .unwrap_or_default();
        let at = pci_addr(spec.domain, &iface.address);
        let boot = boot
            .get(i)
            .copied()
            .flatten()
            .map(|b| format!(",bootindex={b}"))
            .unwrap_or_default();
        a.push("-device".into());
        a.push(format!(
            "{model},id=net{i},netdev=hostnet{i}{mac}{at}{boot}"
        ));
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
            let listen = match listen_ip(g.listen.as_deref()) {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            a.push("-vnc".into());
            a.push(format!("{listen}:{disp}"));
        }
        _ => {
            a.push("-display".into());
            a.push("none".into());
        }
    }
    let spice = d.devices.graphics.iter().find(|g| g.kind == "spice");
    if let (Some(g), Some(port)) = (spice, spec.spice_port) {
        let listen = listen_ip(g.listen.as_deref());
        let mut opts =
            format!("port={port},addr={listen},disable-ticketing=on,seamless-migration=on");
        if let Some(c) = g
            .spice
            .as_ref()
            .and_then(|s| s.image_compression.as_deref())
        {
            opts.push_str(&format!(",image-compression={c}"));
        }
        a.push("-spice".into());
        a.push(opts);
    }
    for (i, v) in d.devices.videos.iter().enumerate() {
        let dev = match v.model.as_str() {
            "none" => continue,
            "cirrus" => "cirrus-vga".to_string(),
            "vga" => "VGA".to_string(),
            "virtio" => "virtio-vga".to_string(),
            "qxl" if i == 0 => "qxl-vga".to_string(),
            "qxl" => "qxl".to_string(),
            "bochs" => "bochs-display".to_string(),
            "ramfb" => "ramfb".to_string(),
            // validate() refuses every other model.
            _ => continue,
        };
        let vram = match (v.model.as_str(), v.vram) {
            ("cirrus", _) => String::new(),
            (_, Some(kib)) if v.model == "vga" => format!(",vgamem_mb={}", (kib / 1024).max(1)),
            _ => String::new(),
        };
        a.push("-device".into());
        a.push(format!(
            "{dev},id=video{i}{vram}{}",
            pci_addr(d, &v.address)
        ));
    }
}

/// A graphics listen address; loopback unless it is an IP address
/// (validate() refuses anything else, so nothing can add options here).
fn listen_ip(listen: Option<&str>) -> std::net::IpAddr {
    listen
        .and_then(|l| l.parse().ok())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// QEMU option values escape ',' by doubling it.
pub(crate) fn escape_comma(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests;
