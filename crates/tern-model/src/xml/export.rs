//! Domain XML export in `virsh dumpxml` layout.

use super::export_guest::{
    open_or_empty, write_address, write_clock, write_features, write_guest_devices,
    write_os_firmware,
};
use crate::domain::{
    BootDevice, CacheMode, CharDev, Console, Cpu, CpuMode, Devices, Disk, DiskBus, DiskDevice,
    DiskFormat, DiskRemote, DiskSourceType, Domain, Graphics, Interface, InterfaceKind,
    LifecycleAction, NetworkSource, Os, Serial,
};
use std::path::Path;

/// Attributes of one element, in output order.
pub(super) type Attrs = Vec<(&'static str, String)>;

/// Prints `d` as libvirt domain XML: two-space indentation, single-quoted
/// attributes and libvirt's element order, as `virsh dumpxml` does.
///
/// Memory is printed in KiB with `unit='KiB'`. Everything the model holds is
/// printed, so `parse_domain(&to_xml(&d)) == Ok(d)` for every domain that
/// passes [`validate`](crate::validate::validate).
pub fn to_xml(d: &Domain) -> String {
    let mut w = Writer::default();
    w.open("domain", vec![("type", d.domain_type.clone())]);
    w.text("name", vec![], &d.name);
    w.text("uuid", vec![], &d.uuid.hyphenated().to_string());
    if let Some(title) = &d.title {
        w.text("title", vec![], title);
    }
    if let Some(description) = &d.description {
        w.text("description", vec![], description);
    }
    let kib = || vec![("unit", "KiB".to_string())];
    w.text("memory", kib(), &d.memory_kib.to_string());
    w.text("currentMemory", kib(), &d.current_memory_kib.to_string());
    if let Some(mb) = &d.memory_backing {
        super::memory::write_memory_backing(&mut w, mb);
    }
    let mut vcpu = vec![("placement", "static".to_string())];
    push_opt(
        &mut vcpu,
        "current",
        d.vcpus_current.map(|c| c.to_string()).as_deref(),
    );
    push_opt(&mut vcpu, "cpuset", d.vcpu_cpuset.as_deref());
    w.text("vcpu", vcpu, &d.vcpus.to_string());
    if d.iothreads > 0 {
        w.text("iothreads", vec![], &d.iothreads.to_string());
    }
    if let Some(t) = &d.cputune {
        super::cputune::write_cputune(&mut w, t);
    }
    if let Some(t) = &d.numatune {
        super::memory::write_numatune(&mut w, t);
    }
    if let Some(info) = &d.sysinfo {
        super::export_guest::write_sysinfo(&mut w, info);
    }
    write_os(&mut w, &d.os);
    write_features(&mut w, &d.features);
    if let Some(cpu) = &d.cpu {
        write_cpu(&mut w, cpu);
    }
    write_clock(&mut w, d.clock_offset.as_deref(), &d.clock_timers);
    w.text("on_poweroff", vec![], lifecycle(d.on_poweroff));
    w.text("on_reboot", vec![], lifecycle(d.on_reboot));
    w.text("on_crash", vec![], lifecycle(d.on_crash));
    write_devices(&mut w, &d.devices);
    w.close("domain");
    w.out
}

fn write_os(w: &mut Writer, os: &Os) {
    let mut os_attrs = Attrs::new();
    push_opt(&mut os_attrs, "firmware", os.firmware.as_deref());
    w.open("os", os_attrs);
    let mut attrs = Attrs::new();
    push_opt(&mut attrs, "arch", os.arch.as_deref());
    push_opt(&mut attrs, "machine", os.machine.as_deref());
    w.text("type", attrs, &os.os_type);
    write_os_firmware(w, os);
    if let Some(kernel) = &os.kernel {
        w.text("kernel", vec![], &path(kernel));
    }
    if let Some(initrd) = &os.initrd {
        w.text("initrd", vec![], &path(initrd));
    }
    if let Some(cmdline) = &os.cmdline {
        w.text("cmdline", vec![], cmdline);
    }
    for boot in &os.boot {
        let dev = match boot {
            BootDevice::Hd => "hd",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Network => "network",
            BootDevice::Fd => "fd",
        };
        w.empty("boot", vec![("dev", dev.to_string())]);
    }
    if let Some(enable) = os.bootmenu {
        let v = if enable { "yes" } else { "no" };
        w.empty("bootmenu", vec![("enable", v.to_string())]);
    }
    w.close("os");
}

fn write_cpu(w: &mut Writer, cpu: &Cpu) {
    let mode = match cpu.mode {
        CpuMode::HostPassthrough => "host-passthrough",
        CpuMode::HostModel => "host-model",
        CpuMode::Custom => "custom",
        CpuMode::Maximum => "maximum",
    };
    let mut attrs = vec![("mode", mode.to_string())];
    push_opt(&mut attrs, "match", cpu.match_mode.as_deref());
    push_opt(&mut attrs, "check", cpu.check.as_deref());
    if cpu.model.is_none() && cpu.features.is_empty() && cpu.topology.is_none() {
        w.empty("cpu", attrs);
        return;
    }
    w.open("cpu", attrs);
    if let Some(model) = &cpu.model {
        w.text("model", vec![], model);
    }
    if let Some(t) = &cpu.topology {
        w.empty(
            "topology",
            vec![
                ("sockets", t.sockets.to_string()),
                ("dies", t.dies.to_string()),
                ("clusters", t.clusters.to_string()),
                ("cores", t.cores.to_string()),
                ("threads", t.threads.to_string()),
            ],
        );
    }
    for f in &cpu.features {
        w.empty(
            "feature",
            vec![("policy", f.policy.clone()), ("name", f.name.clone())],
        );
    }
    w.close("cpu");
}

fn lifecycle(action: LifecycleAction) -> &'static str {
    match action {
        LifecycleAction::Destroy => "destroy",
        LifecycleAction::Restart => "restart",
        LifecycleAction::Preserve => "preserve",
        LifecycleAction::RenameRestart => "rename-restart",
    }
}

fn write_devices(w: &mut Writer, devices: &Devices) {
    w.open("devices", vec![]);
    if let Some(emulator) = &devices.emulator {
        w.text("emulator", vec![], &path(emulator));
    }
    for disk in &devices.disks {
        write_disk(w, disk);
    }
    for controller in &devices.controllers {
        let mut attrs = vec![
            ("type", controller.controller_type.clone()),
            ("index", controller.index.to_string()),
        ];
        push_opt(&mut attrs, "model", controller.model.as_deref());
        super::export_guest::write_controller(w, attrs, controller);
    }
    for interface in &devices.interfaces {
        write_interface(w, interface);
    }
    for serial in &devices.serials {
        write_serial(w, serial);
    }
    for console in &devices.consoles {
        write_console(w, console);
    }
    super::export_guest::write_channels(w, &devices.channels);
    for input in &devices.inputs {
        let mut attrs = vec![("type", input.input_type.clone())];
        push_opt(&mut attrs, "bus", input.bus.as_deref());
        if open_or_empty(w, "input", attrs, input.address.is_some()) {
            write_address(w, &input.address);
            w.close("input");
        }
    }
    super::export_guest::write_tpms(w, &devices.tpms);
    for graphics in &devices.graphics {
        write_graphics(w, graphics);
    }
    super::export_guest::write_sound(w, devices);
    for video in &devices.videos {
        let mut attrs = vec![("type", video.model.clone())];
        push_opt(
            &mut attrs,
            "vram",
            video.vram.map(|v| v.to_string()).as_deref(),
        );
        push_opt(
            &mut attrs,
            "heads",
            video.heads.map(|h| h.to_string()).as_deref(),
        );
        if video.primary {
            attrs.push(("primary", "yes".to_string()));
        }
        w.open("video", vec![]);
        w.empty("model", attrs);
        write_address(w, &video.address);
        w.close("video");
    }
    write_guest_devices(w, devices);
    w.close("devices");
}

fn write_disk(w: &mut Writer, disk: &Disk) {
    let (source_type, source_attr) = match disk.source_type {
        DiskSourceType::File => ("file", "file"),
        DiskSourceType::Block => ("block", "dev"),
        DiskSourceType::Network => ("network", ""),
        DiskSourceType::Volume => ("volume", ""),
    };
    let device = match disk.device {
        DiskDevice::Disk => "disk",
        DiskDevice::Cdrom => "cdrom",
    };
    w.open(
        "disk",
        vec![
            ("type", source_type.to_string()),
            ("device", device.to_string()),
        ],
    );
    let format = match disk.format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    };
    let mut driver = vec![("name", "qemu".to_string()), ("type", format.to_string())];
    let cache = disk.cache.map(|c| match c {
        CacheMode::None => "none",
        CacheMode::Writethrough => "writethrough",
        CacheMode::Writeback => "writeback",
        CacheMode::Directsync => "directsync",
        CacheMode::Unsafe => "unsafe",
    });
    push_opt(&mut driver, "cache", cache);
    push_opt(&mut driver, "io", disk.io.as_deref());
    push_opt(&mut driver, "discard", disk.discard.as_deref());
    push_opt(&mut driver, "detect_zeroes", disk.detect_zeroes.as_deref());
    push_opt(
        &mut driver,
        "iothread",
        disk.iothread.map(|t| t.to_string()).as_deref(),
    );
    w.empty("driver", driver);
    if let Some(source) = &disk.source {
        w.empty("source", vec![(source_attr, path(source))]);
    }
    if let Some(remote) = &disk.remote {
        let (attrs, hosts) = super::netdisk::source_attrs(remote);
        if hosts.is_empty() {
            w.empty("source", attrs);
        } else {
            w.open("source", attrs);
            for h in hosts {
                w.empty("host", h);
            }
            w.close("source");
        }
        if let DiskRemote::Network(NetworkSource { auth: Some(a), .. }) = remote {
            // Under <disk>, where virt-install and OpenStack write it.
            let (auth, secret) = super::netdisk::auth_attrs(a);
            w.open("auth", auth);
            w.empty("secret", secret);
            w.close("auth");
        }
    }
    let bus = match disk.target_bus {
        DiskBus::Virtio => "virtio",
        DiskBus::Ide => "ide",
        DiskBus::Sata => "sata",
        DiskBus::Scsi => "scsi",
    };
    w.empty(
        "target",
        vec![("dev", disk.target_dev.clone()), ("bus", bus.to_string())],
    );
    if disk.readonly {
        w.empty("readonly", vec![]);
    }
    if disk.shareable {
        w.empty("shareable", vec![]);
    }
    if let Some(serial) = &disk.serial {
        w.text("serial", vec![], serial);
    }
    if let Some(order) = disk.boot_order {
        w.empty("boot", vec![("order", order.to_string())]);
    }
    write_address(w, &disk.address);
    w.close("disk");
}

fn write_interface(w: &mut Writer, interface: &Interface) {
    let kind = match &interface.kind {
        InterfaceKind::User => "user",
        InterfaceKind::Bridge { .. } => "bridge",
        InterfaceKind::Network { .. } => "network",
    };
    w.open("interface", vec![("type", kind.to_string())]);
    if let Some(mac) = &interface.mac {
        w.empty("mac", vec![("address", mac.clone())]);
    }
    match &interface.kind {
        InterfaceKind::Bridge { bridge } => w.empty("source", vec![("bridge", bridge.clone())]),
        InterfaceKind::Network { network } => w.empty("source", vec![("network", network.clone())]),
        InterfaceKind::User => {}
    }
    if let Some(port) = &interface.virtualport {
        let attrs = vec![("type", port.port_type.clone())];
        match &port.interface_id {
            Some(id) => {
                w.open("virtualport", attrs);
                w.empty("parameters", vec![("interfaceid", id.clone())]);
                w.close("virtualport");
            }
            None => w.empty("virtualport", attrs),
        }
    }
    if let Some(model) = &interface.model {
        w.empty("model", vec![("type", model.clone())]);
    }
    if let Some(order) = interface.boot_order {
        w.empty("boot", vec![("order", order.to_string())]);
    }
    write_address(w, &interface.address);
    w.close("interface");
}

/// Opens a `<serial>`/`<console>` and prints its backend.
fn open_char_dev(w: &mut Writer, element: &'static str, kind: &CharDev) {
    match kind {
        CharDev::Pty => w.open(element, vec![("type", "pty".to_string())]),
        CharDev::File { path: file } => {
            w.open(element, vec![("type", "file".to_string())]);
            w.empty("source", vec![("path", path(file))]);
        }
    }
}

fn write_serial(w: &mut Writer, serial: &Serial) {
    open_char_dev(w, "serial", &serial.kind);
    w.empty("target", vec![("port", serial.port.to_string())]);
    w.close("serial");
}

fn write_console(w: &mut Writer, console: &Console) {
    open_char_dev(w, "console", &console.kind);
    w.empty(
        "target",
        vec![
            ("type", console.target_type.clone()),
            ("port", console.port.to_string()),
        ],
    );
    w.close("console");
}

fn write_graphics(w: &mut Writer, graphics: &Graphics) {
    let mut attrs = vec![("type", graphics.kind.clone())];
    push_opt(
        &mut attrs,
        "port",
        graphics.port.map(|p| p.to_string()).as_deref(),
    );
    let autoport = if graphics.autoport { "yes" } else { "no" };
    attrs.push(("autoport", autoport.to_string()));
    push_opt(&mut attrs, "listen", graphics.listen.as_deref());
    let compression = graphics
        .spice
        .as_ref()
        .and_then(|s| s.image_compression.clone());
    if graphics.listen.is_none() && compression.is_none() {
        w.empty("graphics", attrs);
        return;
    }
    w.open("graphics", attrs);
    if let Some(address) = &graphics.listen {
        w.empty(
            "listen",
            vec![
                ("type", "address".to_string()),
                ("address", address.clone()),
            ],
        );
    }
    if let Some(c) = compression {
        w.empty("image", vec![("compression", c)]);
    }
    w.close("graphics");
}

pub(super) fn push_opt(attrs: &mut Attrs, name: &'static str, value: Option<&str>) {
    if let Some(value) = value {
        attrs.push((name, value.to_string()));
    }
}

/// Paths as text; `validate` refuses paths that are not UTF-8.
pub(super) fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// An indenting XML writer.
#[derive(Default)]
pub(super) struct Writer {
    pub(super) out: String,
    depth: usize,
}

impl Writer {
    fn start_tag(&mut self, name: &str, attrs: &Attrs) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("='");
            escape_attr(&mut self.out, value);
            self.out.push('\'');
        }
    }

    /// `<name attrs>` on its own line; children follow until [`Self::close`].
    pub(super) fn open(&mut self, name: &str, attrs: Attrs) {
        self.start_tag(name, &attrs);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    pub(super) fn close(&mut self, name: &str) {
        self.depth = self.depth.saturating_sub(1);
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// `<name attrs/>`.
    pub(super) fn empty(&mut self, name: &str, attrs: Attrs) {
        self.start_tag(name, &attrs);
        self.out.push_str("/>\n");
    }

    /// `<name attrs>text</name>` on one line.
    pub(super) fn text(&mut self, name: &str, attrs: Attrs, text: &str) {
        self.start_tag(name, &attrs);
        self.out.push('>');
        escape_text(&mut self.out, text);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }
}

/// Escapes element text. `\r` is written as a character reference because
/// XML parsers turn a literal CR into LF.
fn escape_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Escapes an attribute value. Tab, LF and CR are written as character
/// references because XML parsers turn them into spaces in attributes.
fn escape_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text_and_attributes() {
        let mut text = String::new();
        escape_text(&mut text, "a<b>&'\"\r\n");
        assert_eq!(text, "a&lt;b&gt;&amp;'\"&#13;\n");
        let mut attr = String::new();
        escape_attr(&mut attr, "a<b>&'\"\t\n");
        assert_eq!(attr, "a&lt;b&gt;&amp;&apos;&quot;&#9;&#10;");
    }

    #[test]
    fn writer_indents_two_spaces() {
        let mut w = Writer::default();
        w.open("a", vec![("x", "1".to_string())]);
        w.empty("b", vec![]);
        w.text("c", vec![], "t");
        w.close("a");
        assert_eq!(w.out, "<a x='1'>\n  <b/>\n  <c>t</c>\n</a>\n");
    }
}
