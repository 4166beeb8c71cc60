//! Import/export tests on inline documents; the fixture files are exercised
//! by `tests/xml_fixtures.rs`.

use super::*;
use crate::domain::*;
use std::path::PathBuf;
use uuid::Uuid;

mod netdisk;
mod refusals;

/// Wraps `body` (elements inside `<domain>`) with the minimum Tern needs.
pub(super) fn doc(body: &str) -> String {
    format!(
        "<domain type='kvm'><name>t</name><memory>1024</memory>\
         <os><type>hvm</type></os>{body}</domain>"
    )
}

/// Wraps `devices` inside `<devices>` of a minimal domain.
pub(super) fn with_devices(devices: &str) -> String {
    doc(&format!("<devices>{devices}</devices>"))
}

/// Parses `xml`, expecting an error whose one-line message contains `needle`.
pub(super) fn refused(xml: &str, needle: &str) -> XmlError {
    let err = match parse_domain(xml) {
        Ok(d) => panic!("expected an error containing {needle:?}, parsed {d:?}"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert!(!message.contains('\n'), "multi-line message: {message:?}");
    assert!(
        message.contains("; "),
        "message gives no remedy: {message:?}"
    );
    err
}

pub(super) fn round_trip(d: &Domain) {
    let xml = to_xml(d);
    match parse_domain(&xml) {
        Ok(back) => assert_eq!(&back, d, "round trip changed the domain:\n{xml}"),
        Err(e) => panic!("to_xml output refused: {e}\n{xml}"),
    }
}

/// A domain using most of what the model can express.
fn rich() -> Domain {
    Domain {
        name: "edge-case_1".to_string(),
        uuid: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        domain_type: "qemu".to_string(),
        title: Some("A & B <test> 'quoted' \"double\"".to_string()),
        description: Some("line one\nline two\r\n\ttabbed & <escaped> ]]> 'q' \"dq\"".to_string()),
        memory_kib: 4_194_304,
        current_memory_kib: 1_048_577,
        vcpus: 4,
        os: Os {
            os_type: "hvm".to_string(),
            arch: Some("x86_64".to_string()),
            machine: Some("pc-i440fx-7.2".to_string()),
            kernel: Some(PathBuf::from("/boot/vmlinuz with space")),
            initrd: Some(PathBuf::from("/boot/initrd&<>.img")),
            cmdline: Some(
                "root=/dev/vda1 console=ttyS0 init='/bin/sh -c \"a && b < c > d\"'".to_string(),
            ),
            boot: vec![
                BootDevice::Cdrom,
                BootDevice::Hd,
                BootDevice::Network,
                BootDevice::Fd,
            ],
            bootmenu: None,
            firmware: None,
            firmware_features: vec![],
            loader: None,
            nvram: None,
            smbios_mode: None,
        },
        cpu: Some(Cpu {
            mode: CpuMode::Custom,
            model: Some("Skylake-Server".to_string()),
            features: vec![],
            match_mode: None,
            check: None,
            topology: None,
        }),
        features: Features {
            acpi: true,
            apic: false,
            pae: true,
            vmport: None,
            smm: None,
            vmcoreinfo: None,
            hyperv_mode: None,
            hyperv: vec![],
            kvm_hidden: None,
        },
        clock_offset: Some("localtime".to_string()),
        on_poweroff: LifecycleAction::Preserve,
        on_reboot: LifecycleAction::RenameRestart,
        on_crash: LifecycleAction::Restart,
        devices: Devices {
            emulator: Some(PathBuf::from("/usr/bin/qemu-system-x86_64")),
            disks: vec![
                Disk {
                    source_type: DiskSourceType::Block,
                    device: DiskDevice::Disk,
                    format: DiskFormat::Raw,
                    cache: Some(CacheMode::Directsync),
                    source: Some(PathBuf::from("/dev/vg0/it's")),
                    remote: None,
                    target_dev: "sda".to_string(),
                    target_bus: DiskBus::Scsi,
                    readonly: false,
                    shareable: true,
                    io: None,
                    discard: None,
                    detect_zeroes: None,
                    iothread: None,
                    boot_order: None,
                    serial: None,
                    address: None,
                },
                Disk {
                    source_type: DiskSourceType::File,
                    device: DiskDevice::Cdrom,
                    format: DiskFormat::Qcow2,
                    cache: None,
                    source: Some(PathBuf::from("/isos/a\"b.iso")),
                    remote: None,
                    target_dev: "sdb".to_string(),
                    target_bus: DiskBus::Sata,
                    readonly: true,
                    shareable: false,
                    io: None,
                    discard: None,
                    detect_zeroes: None,
                    iothread: None,
                    boot_order: None,
                    serial: None,
                    address: None,
                },
                Disk {
                    source_type: DiskSourceType::File,
                    device: DiskDevice::Disk,
                    format: DiskFormat::Qcow2,
                    cache: Some(CacheMode::Unsafe),
                    source: Some(PathBuf::from("/var/lib/tern/x.qcow2")),
                    remote: None,
                    target_dev: "vdz".to_string(),
                    target_bus: DiskBus::Virtio,
                    readonly: true,
                    shareable: false,
                    io: None,
                    discard: None,
                    detect_zeroes: None,
                    iothread: None,
                    boot_order: None,
                    serial: None,
                    address: None,
                },
            ],
            interfaces: vec![
                Interface {
                    kind: InterfaceKind::User,
                    mac: None,
                    model: Some("e1000".to_string()),
                    virtualport: None,
                    boot_order: None,
                    address: None,
                },
                Interface {
                    kind: InterfaceKind::Bridge {
                        bridge: "br0".to_string(),
                    },
                    mac: Some("52:54:00:ab:cd:ef".to_string()),
                    model: None,
                    virtualport: Some(VirtualPort {
                        port_type: "openvswitch".to_string(),
                        interface_id: None,
                    }),
                    boot_order: None,
                    address: None,
                },
            ],
            serials: vec![
                Serial {
                    kind: CharDev::Pty,
                    port: 0,
                },
                Serial {
                    kind: CharDev::File {
                        path: PathBuf::from("/var/log/tern/&.log"),
                    },
                    port: 3,
                },
            ],
            consoles: vec![Console {
                kind: CharDev::File {
                    path: PathBuf::from("/tmp/console.log"),
                },
                target_type: "virtio".to_string(),
                port: 1,
            }],
            graphics: vec![
                Graphics {
                    kind: "vnc".to_string(),
                    port: None,
                    autoport: false,
                    listen: None,
                    spice: None,
                },
                Graphics {
                    kind: "vnc".to_string(),
                    port: Some(-1),
                    autoport: true,
                    listen: Some("::1".to_string()),
                    spice: None,
                },
            ],
            videos: vec![Video {
                model: "virtio".to_string(),
                vram: None,
                heads: Some(2),
                primary: false,
                address: None,
            }],
            controllers: vec![Controller {
                controller_type: "usb".to_string(),
                index: 1,
                model: Some("qemu-xhci".to_string()),
                detail: Default::default(),
                address: None,
            }],
            inputs: vec![Input {
                input_type: "tablet".to_string(),
                bus: Some("usb".to_string()),
                address: None,
            }],
            memballoon: Some("none".to_string()),
            memballoon_address: None,
            channels: vec![],
            rngs: vec![],
            watchdogs: vec![],
            sounds: vec![],
            audios: vec![],
            tpms: vec![],
            panics: vec![],
            redirdevs: vec![],
        },
        clock_timers: vec![],
        vcpus_current: None,
        sysinfo: None,
        memory_backing: None,
        cputune: None,
        vcpu_cpuset: None,
        numatune: None,
        iothreads: 0,
    }
}

#[test]
fn minimal_document_gets_libvirt_defaults() {
    let d = parse_domain(&doc("")).expect("minimal domain parses");
    assert_eq!(d.name, "t");
    assert_eq!(d.domain_type, "kvm");
    assert_eq!(d.memory_kib, 1024);
    assert_eq!(d.current_memory_kib, 1024);
    assert_eq!(d.vcpus, 1);
    assert_eq!(d.on_poweroff, LifecycleAction::Destroy);
    assert_eq!(d.on_reboot, LifecycleAction::Restart);
    assert_eq!(d.on_crash, LifecycleAction::Destroy);
    assert_eq!(d.cpu, None);
    assert_eq!(d.clock_offset, None);
    assert_eq!(d.devices, Devices::default());
    assert_eq!(d.uuid.get_version_num(), 4, "a missing uuid gets a v4 one");
    round_trip(&d);
}

#[test]
fn memory_units_follow_libvirt() {
    let parse = |memory: &str| {
        parse_domain(&format!(
            "<domain type='kvm'><name>t</name>{memory}<os><type>hvm</type></os></domain>"
        ))
    };
    let cases = [
        ("<memory unit='MiB'>256</memory>", 262_144),
        ("<memory unit='M'>256</memory>", 262_144),
        ("<memory unit='GiB'>2</memory>", 2_097_152),
        ("<memory unit='GB'>1</memory>", 976_563),
        ("<memory unit='b'>1025</memory>", 2),
        ("<memory unit='bytes'>4096</memory>", 4),
        ("<memory unit='KB'>1000</memory>", 977),
        ("<memory> 512 </memory>", 512),
    ];
    for (xml, kib) in cases {
        let d = parse(xml).unwrap_or_else(|e| panic!("{xml}: {e}"));
        assert_eq!(d.memory_kib, kib, "{xml}");
    }
    let d = parse("<memory unit='GiB'>1</memory><currentMemory unit='MiB'>512</currentMemory>")
        .expect("parses");
    assert_eq!((d.memory_kib, d.current_memory_kib), (1_048_576, 524_288));
}

#[test]
fn export_looks_like_virsh_dumpxml() {
    let mut d = parse_domain(&doc("")).expect("parses");
    d.uuid = Uuid::from_u128(1);
    let xml = to_xml(&d);
    let expected = "<domain type='kvm'>\n  <name>t</name>\n  \
        <uuid>00000000-0000-0000-0000-000000000001</uuid>\n  \
        <memory unit='KiB'>1024</memory>\n  <currentMemory unit='KiB'>1024</currentMemory>\n  \
        <vcpu placement='static'>1</vcpu>\n  <os>\n    <type>hvm</type>\n  </os>\n  \
        <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  \
        <on_crash>destroy</on_crash>\n  <devices>\n  </devices>\n</domain>\n";
    assert_eq!(xml, expected);
}

#[test]
fn rich_domain_round_trips_with_escaping() {
    let d = rich();
    let xml = to_xml(&d);
    assert!(
        xml.contains("<title>A &amp; B &lt;test&gt; 'quoted' \"double\"</title>"),
        "{xml}"
    );
    assert!(xml.contains("<source dev='/dev/vg0/it&apos;s'/>"), "{xml}");
    assert!(xml.contains("<source file='/isos/a&quot;b.iso'/>"), "{xml}");
    assert!(
        xml.contains("&#13;"),
        "CR must be a character reference: {xml}"
    );
    assert!(xml.contains("<memory unit='KiB'>4194304</memory>"), "{xml}");
    round_trip(&d);
}

#[test]
fn every_enum_value_round_trips() {
    let base = rich();
    for mode in [
        CpuMode::HostPassthrough,
        CpuMode::HostModel,
        CpuMode::Custom,
        CpuMode::Maximum,
    ] {
        for model in [None, Some("qemu64".to_string())] {
            let mut d = base.clone();
            d.cpu = Some(Cpu {
                mode,
                model: model.clone(),
                features: vec![],
                match_mode: None,
                check: None,
                topology: None,
            });
            round_trip(&d);
        }
    }
    for cache in [
        None,
        Some(CacheMode::None),
        Some(CacheMode::Writethrough),
        Some(CacheMode::Writeback),
        Some(CacheMode::Directsync),
        Some(CacheMode::Unsafe),
    ] {
        let mut d = base.clone();
        d.devices.disks[0].cache = cache;
        round_trip(&d);
    }
    for (bus, dev) in [
        (DiskBus::Virtio, "vda"),
        (DiskBus::Ide, "hda"),
        (DiskBus::Sata, "sdc"),
        (DiskBus::Scsi, "xyz"),
    ] {
        let mut d = base.clone();
        d.devices.disks[0].target_bus = bus;
        d.devices.disks[0].target_dev = dev.to_string();
        round_trip(&d);
    }
    for action in [
        LifecycleAction::Destroy,
        LifecycleAction::Restart,
        LifecycleAction::Preserve,
        LifecycleAction::RenameRestart,
    ] {
        let mut d = base.clone();
        d.on_poweroff = action;
        d.on_reboot = action;
        d.on_crash = action;
        round_trip(&d);
    }
    let mut d = base.clone();
    d.features = Features::default();
    d.cpu = None;
    d.clock_offset = None;
    d.title = Some(String::new());
    d.description = None;
    d.os = Os {
        os_type: "hvm".to_string(),
        ..Os::default()
    };
    d.devices = Devices::default();
    round_trip(&d);
}

#[test]
fn runtime_only_details_are_ignored() {
    let xml = "<domain type='kvm' id='7'><name>t</name><memory>1024</memory>\
        <os><type>hvm</type><bootmenu enable='no'/></os>\
        <metadata><x:y xmlns:x='urn:x'>anything</x:y></metadata>\
        <seclabel type='dynamic' model='apparmor'><label>l</label></seclabel>\
        <resource><partition>/machine</partition></resource>\
        <pm><suspend-to-mem enabled='no'/></pm><on_lockfailure>poweroff</on_lockfailure>\
        <features><acpi/><hyperv><relaxed state='on'/></hyperv><vmport state='off'/></features>\
        <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>\
        <devices>\
        <interface type='user'><target dev='vnet0'/><alias name='net0'/>\
          <address type='pci' slot='0x03'/></interface>\
        <serial type='pty'><source path='/dev/pts/3'/><target port='0'/><alias name='serial0'/></serial>\
        <console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/><target type='serial' port='0'/></console>\
        <controller type='usb' index='0' model='ich9-ehci1'><master startport='0'/><address type='pci'/></controller>\
        <memballoon model='virtio'><stats period='10'/><alias name='balloon0'/></memballoon>\
        </devices></domain>";
    let d = parse_domain(xml).expect("runtime-only details are accepted");
    assert!(d.features.acpi && !d.features.apic);
    assert_eq!(d.clock_offset.as_deref(), Some("utc"));
    assert_eq!(d.devices.interfaces[0].kind, InterfaceKind::User);
    assert_eq!(d.devices.serials[0].kind, CharDev::Pty);
    assert_eq!(d.devices.consoles[0].kind, CharDev::Pty);
    assert_eq!(d.devices.memballoon.as_deref(), Some("virtio"));
    round_trip(&d);
}

#[test]
fn disk_defaults_follow_libvirt() {
    let d = parse_domain(&with_devices(
        "<disk type='file'><source file='/a.img'/><target dev='vda'/></disk>\
         <disk type='file' device='disk'><source file='/b.img'/><target dev='hdb'/></disk>\
         <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='sdc'/></disk>\
         <disk type='file' device='cdrom'><source/><target dev='hdd'/></disk>",
    ))
    .expect("parses");
    let disks = &d.devices.disks;
    assert_eq!(disks[0].target_bus, DiskBus::Virtio);
    assert_eq!(disks[0].format, DiskFormat::Raw);
    assert_eq!(disks[0].cache, None);
    assert_eq!(disks[1].target_bus, DiskBus::Ide);
    assert_eq!(disks[2].target_bus, DiskBus::Sata);
    assert_eq!(disks[2].source, Some(PathBuf::from("/dev/sdz")));
    assert_eq!(disks[3].source, None);
    assert!(disks[3].readonly, "a cdrom is implicitly read-only");
    round_trip(&d);
}

#[test]
fn graphics_autoport_and_listen() {
    let d = parse_domain(&with_devices(
        "<graphics type='vnc'/>\
         <graphics type='vnc' port='5901'/>\
         <graphics type='vnc' port='5902' autoport='no' listen='0.0.0.0'/>\
         <graphics type='vnc' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>",
    ))
    .expect("parses");
    let g = &d.devices.graphics;
    assert_eq!((g[0].port, g[0].autoport), (None, true));
    assert_eq!((g[1].port, g[1].autoport), (Some(5901), false));
    assert_eq!(g[2].listen.as_deref(), Some("0.0.0.0"));
    assert_eq!(g[3].listen.as_deref(), Some("127.0.0.1"));
    round_trip(&d);
}

#[test]
fn cpu_topology_must_match_vcpus() {
    let ok = doc("<vcpu>4</vcpu><cpu mode='host-passthrough'>\
                  <topology sockets='1' cores='2' threads='2'/></cpu>");
    let d = parse_domain(&ok).expect("matching topology is accepted");
    assert_eq!(d.cpu.map(|c| c.mode), Some(CpuMode::HostPassthrough));
    let only_topology =
        doc("<vcpu>2</vcpu><cpu><topology sockets='2' cores='1' threads='1'/></cpu>");
    let cpu = parse_domain(&only_topology)
        .expect("parses")
        .cpu
        .expect("a cpu");
    assert_eq!(
        (cpu.model, cpu.topology.map(|t| t.sockets)),
        (None, Some(2))
    );
    let model_only = doc("<cpu><model fallback='allow'>qemu64</model></cpu>");
    let cpu = parse_domain(&model_only).expect("parses").cpu;
    assert_eq!(
        cpu,
        Some(Cpu {
            mode: CpuMode::Custom,
            model: Some("qemu64".to_string()),
            features: vec![],
            match_mode: None,
            check: None,
            topology: None,
        })
    );
    refused(
        &doc("<vcpu>4</vcpu><cpu><topology sockets='1' cores='2' threads='1'/></cpu>"),
        "sockets*cores*threads must equal the <vcpu> count (4)",
    );
}

#[test]
fn mac_addresses_are_normalised_to_lower_case() {
    let d = parse_domain(&with_devices(
        "<interface type='bridge'><mac address='52:54:00:AB:CD:EF'/><source bridge='br0'/></interface>",
    ))
    .expect("parses");
    assert_eq!(
        d.devices.interfaces[0].mac.as_deref(),
        Some("52:54:00:ab:cd:ef")
    );
}

#[test]
fn whitespace_in_text_survives() {
    let mut d = parse_domain(&doc("")).expect("parses");
    d.description = Some("\n  padded\t \n".to_string());
    d.title = Some("  spaced  ".to_string());
    d.name = " spaced name ".to_string();
    d.os.kernel = Some(PathBuf::from(" /k "));
    d.os.cmdline = Some(" a  b ".to_string());
    round_trip(&d);
}
