//! The fixture documents: a real `virsh dumpxml` of a running guest and the
//! direct-kernel test guest used across Tern's tests.

use std::path::{Path, PathBuf};
use tern_model::xml::{parse_domain, to_xml};
use tern_model::*;

const SEED004: &str = include_str!("fixtures/seed004.xml");
const TESTGUEST: &str = include_str!("fixtures/testguest.xml");

fn parse(xml: &str) -> Domain {
    parse_domain(xml).unwrap_or_else(|e| panic!("fixture refused: {e}"))
}

fn assert_round_trip(d: &Domain) {
    let xml = to_xml(d);
    let back = parse_domain(&xml).unwrap_or_else(|e| panic!("export refused: {e}\n{xml}"));
    assert_eq!(&back, d, "round trip changed the domain:\n{xml}");
    // Exporting again is stable.
    assert_eq!(to_xml(&back), xml);
}

#[test]
fn seed004_parses_with_the_expected_fields() {
    let mut d = parse(SEED004);
    // Addresses are checked by the disk assertions below and by the export test.
    let addresses = (
        d.devices.interfaces[0].address.take(),
        d.devices.videos[0].address.take(),
    );
    assert_eq!(
        addresses,
        (Some(Address::pci(0, 3)), Some(Address::pci(0, 2)))
    );
    for c in &mut d.devices.controllers {
        c.address = None;
    }
    d.devices.memballoon_address = None;
    assert_eq!(d.name, "ubuntu-14.04");
    assert_eq!(d.uuid.to_string(), "2f3c6b0e-8d41-4a5f-9c7e-1b2d3e4f5a60");
    assert_eq!(d.domain_type, "kvm");
    assert_eq!(
        (d.memory_kib, d.current_memory_kib, d.vcpus),
        (2_097_152, 2_097_152, 1)
    );
    assert_eq!(d.os.os_type, "hvm");
    assert_eq!(d.os.arch.as_deref(), Some("x86_64"));
    assert_eq!(d.os.machine.as_deref(), Some("pc-i440fx-trusty"));
    assert_eq!(d.os.boot, vec![BootDevice::Hd]);
    assert_eq!(d.os.kernel, None);
    assert_eq!(d.cpu, None);
    assert_eq!(
        d.features,
        Features {
            acpi: true,
            apic: true,
            pae: true,
            vmport: None,
            smm: None,
            vmcoreinfo: None,
            hyperv_mode: None,
            hyperv: vec![],
            kvm_hidden: None,
        }
    );
    assert_eq!(d.clock_offset.as_deref(), Some("utc"));
    assert_eq!(
        (d.on_poweroff, d.on_reboot, d.on_crash),
        (
            LifecycleAction::Destroy,
            LifecycleAction::Restart,
            LifecycleAction::Restart
        )
    );

    let dev = &d.devices;
    assert_eq!(
        dev.emulator.as_deref(),
        Some(Path::new("/usr/bin/kvm-spice"))
    );
    assert_eq!(
        dev.disks,
        vec![
            Disk {
                source_type: DiskSourceType::File,
                device: DiskDevice::Disk,
                format: DiskFormat::Qcow2,
                cache: Some(CacheMode::None),
                source: Some(PathBuf::from("/var/lib/tern/images/ubuntu-14.04.img")),
                remote: None,
                target_dev: "vda".to_string(),
                target_bus: DiskBus::Virtio,
                readonly: false,
                shareable: false,
                io: None,
                discard: None,
                detect_zeroes: None,
                iothread: None,
                boot_order: None,
                serial: None,
                address: Some(Address::pci(0, 4)),
            },
            Disk {
                source_type: DiskSourceType::Block,
                device: DiskDevice::Cdrom,
                format: DiskFormat::Raw,
                cache: None,
                source: None,
                remote: None,
                target_dev: "hdc".to_string(),
                target_bus: DiskBus::Ide,
                readonly: true,
                shareable: false,
                io: None,
                discard: None,
                detect_zeroes: None,
                iothread: None,
                boot_order: None,
                serial: None,
                address: Some(Address::Drive {
                    controller: 0,
                    bus: 1,
                    target: 0,
                    unit: 0,
                }),
            },
        ]
    );
    let controllers: Vec<_> = dev
        .controllers
        .iter()
        .map(|c| (c.controller_type.as_str(), c.index, c.model.as_deref()))
        .collect();
    assert_eq!(
        controllers,
        vec![
            ("usb", 0, None),
            ("pci", 0, Some("pci-root")),
            ("ide", 0, None)
        ]
    );
    assert_eq!(
        dev.interfaces,
        vec![Interface {
            kind: InterfaceKind::Bridge {
                bridge: "ubuntu_br".to_string()
            },
            mac: Some("52:54:11:9b:d5:11".to_string()),
            model: Some("virtio".to_string()),
            virtualport: Some(VirtualPort {
                port_type: "openvswitch".to_string(),
                interface_id: Some("18a45d7e-d96b-4b9e-9d92-dc9ff3ea77e0".to_string()),
            }),
            boot_order: None,
            address: None,
        }]
    );
    assert_eq!(
        dev.serials,
        vec![Serial {
            kind: CharDev::Pty,
            port: 0
        }]
    );
    assert_eq!(
        dev.consoles,
        vec![Console {
            kind: CharDev::Pty,
            target_type: "serial".to_string(),
            port: 0
        }]
    );
    let inputs: Vec<_> = dev
        .inputs
        .iter()
        .map(|i| (i.input_type.as_str(), i.bus.as_deref()))
        .collect();
    assert_eq!(
        inputs,
        vec![("mouse", Some("ps2")), ("keyboard", Some("ps2"))]
    );
    assert_eq!(
        dev.graphics,
        vec![Graphics {
            kind: "vnc".to_string(),
            port: Some(5908),
            autoport: true,
            listen: Some(String::new()),
            spice: None,
        }]
    );
    assert_eq!(
        dev.videos,
        vec![Video {
            model: "cirrus".to_string(),
            vram: Some(9216),
            heads: Some(1),
            primary: false,
            address: None,
        }]
    );
    assert_eq!(dev.memballoon.as_deref(), Some("virtio"));
}

#[test]
fn testguest_parses_with_the_expected_fields() {
    let d = parse(TESTGUEST);
    assert_eq!(d.name, "tg1");
    assert_eq!(
        (d.memory_kib, d.current_memory_kib, d.vcpus),
        (262_144, 262_144, 1)
    );
    assert_eq!(
        d.os.kernel.as_deref(),
        Some(Path::new("/var/lib/tern/testguest/vmlinux"))
    );
    assert_eq!(
        d.os.initrd.as_deref(),
        Some(Path::new("/var/lib/tern/testguest/initrd.img"))
    );
    assert_eq!(
        d.os.cmdline.as_deref(),
        Some("console=ttyS0 quiet panic=-1 tern.mem=64 tern.dirty=0")
    );
    assert_eq!(
        d.cpu,
        Some(Cpu {
            mode: CpuMode::Custom,
            model: Some("qemu64".to_string()),
            features: vec![],
            match_mode: None,
            check: None,
            topology: None,
        })
    );
    let disk = &d.devices.disks[0];
    assert_eq!(
        disk.source.as_deref(),
        Some(Path::new("/var/lib/tern/pools/shared/tg1.raw"))
    );
    assert_eq!(
        (disk.format, disk.cache, disk.target_bus),
        (DiskFormat::Raw, Some(CacheMode::None), DiskBus::Virtio)
    );
    let nic = &d.devices.interfaces[0];
    assert_eq!(nic.kind, InterfaceKind::User);
    assert_eq!(nic.model.as_deref(), Some("virtio"));
    assert!(nic.mac.is_some());
    assert_eq!(
        d.devices.serials,
        vec![Serial {
            kind: CharDev::File {
                path: PathBuf::from("/tmp/tg1.log")
            },
            port: 0
        }]
    );
    assert!(d.devices.graphics.is_empty());
    assert_eq!(d.devices.memballoon.as_deref(), Some("none"));
}

#[test]
fn fixtures_round_trip() {
    assert_round_trip(&parse(SEED004));
    assert_round_trip(&parse(TESTGUEST));
}

#[test]
fn seed004_export_drops_only_runtime_details() {
    let xml = to_xml(&parse(SEED004));
    for runtime in ["id='55'", "<alias", "vnet8", "/dev/pts", "tty=", "seclabel"] {
        assert!(
            !xml.contains(runtime),
            "{runtime} leaked into the export:\n{xml}"
        );
    }
    for kept in [
        "<vcpu placement='static'>1</vcpu>",
        "<type arch='x86_64' machine='pc-i440fx-trusty'>hvm</type>",
        "<driver name='qemu' type='qcow2' cache='none'/>",
        "<parameters interfaceid='18a45d7e-d96b-4b9e-9d92-dc9ff3ea77e0'/>",
        "<graphics type='vnc' port='5908' autoport='yes' listen=''>",
        "<listen type='address' address=''/>",
        "<model type='cirrus' vram='9216' heads='1'/>",
        "<address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>",
        "<address type='drive' controller='0' bus='1' target='0' unit='0'/>",
    ] {
        assert!(xml.contains(kept), "{kept} missing from the export:\n{xml}");
    }
}
