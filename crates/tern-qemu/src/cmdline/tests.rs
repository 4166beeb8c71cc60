//! Command-line unit tests: the test guest and the corpus documents.

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
                io: None,
                discard: None,
                detect_zeroes: None,
                iothread: None,
                boot_order: None,
                serial: None,
                address: None,
            }],
            interfaces: vec![Interface {
                kind: InterfaceKind::Bridge {
                    bridge: "br0".into(),
                },
                mac: Some("52:54:00:00:00:01".into()),
                model: Some("virtio".into()),
                virtualport: None,
                boot_order: None,
                address: None,
            }],
            serials: vec![Serial {
                kind: CharDev::Pty,
                port: 0,
            }],
            ..Default::default()
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
        spice_port: None,
        incoming: true,
        paused: false,
        mem_path: None,
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
        features: vec![],
        match_mode: None,
        check: None,
        topology: None,
    });
    assert_eq!(cpu_model(&d, Accel::Kvm), "host");
    assert_eq!(cpu_model(&d, Accel::Tcg), "max");
}

/// A corpus document from tern-model's fixtures, defined (layout assigned).
fn corpus(name: &str) -> Domain {
    let path = format!(
        "{}/../tern-model/tests/fixtures/corpus/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let xml = std::fs::read_to_string(&path).expect("corpus file");
    let mut d = tern_model::xml::parse_domain(&xml).expect("corpus parses");
    tern_model::layout::assign_addresses(&mut d);
    d
}

fn line(d: &Domain) -> String {
    let spec = LaunchSpec {
        domain: d,
        accel: Accel::Tcg,
        run_dir: "/run/t".into(),
        nets: d
            .devices
            .interfaces
            .iter()
            .map(|_| NetBackend::User)
            .collect(),
        vnc_display: Some(0),
        spice_port: Some(5930),
        incoming: false,
        paused: true,
        mem_path: None,
    };
    build_command_line(&spec).join(" ")
}

#[test]
fn q35_bios_honours_clock_features_addresses_and_devices() {
    let a = line(&corpus("virt-install-q35-bios.xml"));
    for want in [
        "-machine pc-q35-7.2,usb=off,vmport=off,hpet=off",
        "-rtc base=utc,driftfix=slew",
        "pcie-root-port,port=0x10,chassis=1,id=pci.1,bus=pcie.0,addr=0x2,multifunction=on",
        "pcie-root-port,port=0x18,chassis=9,id=pci.9,bus=pcie.0,addr=0x3,multifunction=on",
        "qemu-xhci,p2=15,p3=15,id=usb,bus=pci.2,addr=0x0",
        "virtio-serial-pci,id=virtio-serial0,bus=pci.3,addr=0x0",
        "discard=unmap",
        "virtio-blk-pci,id=vda,drive=drive-vda,write-cache=on,bus=pci.4,addr=0x0,bootindex=1",
        "ide-cd,id=sda,bus=ide.0",
        "virtio-net-pci,id=net0,netdev=hostnet0,mac=52:54:00:6b:3c:58,bus=pci.1,addr=0x0",
        "socket,id=charchannel0,path=/run/t/org.qemu.guest_agent.0.sock,server=on,wait=off",
        "virtserialport,bus=virtio-serial0.0,nr=1,chardev=charchannel0,id=channel0,name=org.qemu.guest_agent.0",
        "usb-tablet,id=input0,bus=usb.0,port=1",
        "virtio-vga,id=video0,bus=pcie.0,addr=0x1",
        "i6300esb,id=watchdog0,bus=pci.8,addr=0x0",
        "-action watchdog=reset",
        "virtio-balloon-pci,id=balloon0,bus=pci.5,addr=0x0",
        "rng-random,id=objrng0,filename=/dev/urandom",
        "virtio-rng-pci,rng=objrng0,id=rng0,bus=pci.6,addr=0x0",
    ] {
        assert!(a.contains(want), "missing {want} in\n{a}");
    }
}

#[test]
fn q35_uefi_has_pflash_tpm_spice_and_sound() {
    let a = line(&corpus("virt-install-q35-uefi.xml"));
    for want in [
        "pflash0=pflash0-format,pflash1=pflash1-format",
        "smm=on",
        "driver=file,filename=/usr/share/OVMF/OVMF_CODE_4M.fd,node-name=pflash0-storage,read-only=on",
        "filename=/var/lib/libvirt/qemu/nvram/debian12-uefi_VARS.fd",
        "-tpmdev emulator,id=tpm-tpm0,chardev=chrtpm0",
        "tpm-crb,tpmdev=tpm-tpm0,id=tpm0",
        "-spice port=5930,addr=127.0.0.1,disable-ticketing=on,seamless-migration=on,image-compression=off",
        "spicevmc,id=charchannel1,name=vdagent",
        "name=com.redhat.spice.0",
        "-audiodev spice,id=audio1",
        "ich9-intel-hda,id=sound0,bus=pcie.0,addr=0x1b",
        "hda-duplex,id=sound0-codec0,bus=sound0.0,cad=0,audiodev=audio1",
        "usb-redir,chardev=charredir1,id=redir1,bus=usb.0,port=3",
    ] {
        assert!(a.contains(want), "missing {want} in\n{a}");
    }
}

#[test]
fn i440fx_windows_guest_keeps_its_slots_and_hyperv() {
    let a = line(&corpus("virt-manager-i440fx.xml"));
    for want in [
        "-machine pc-i440fx-7.2,usb=off,vmport=off,hpet=off",
        "hv-relaxed=on,hv-vapic=on,hv-spinlocks=0x1fff,hv-time=on",
        "-rtc base=localtime,driftfix=slew",
        "-boot menu=on",
        "ich9-usb-ehci1,id=usb,bus=pci.0,addr=0x5.0x7",
        "ich9-usb-uhci1,masterbus=usb.0,firstport=0,bus=pci.0,addr=0x5,multifunction=on",
        "ich9-usb-uhci3,masterbus=usb.0,firstport=4,bus=pci.0,addr=0x5.0x2",
        "aio=native,discard=unmap",
        "discard=unmap,detect-zeroes=unmap",
        "ide-hd,id=hda,bus=ide.0,unit=0,drive=drive-hda,bootindex=2",
        "ide-cd,id=hdb,bus=ide.0,unit=1,drive=drive-hdb,bootindex=1",
        "e1000,id=net0,netdev=hostnet0,mac=52:54:00:a1:b2:c3,bus=pci.0,addr=0x3",
        "intel-hda,id=sound0,bus=pci.0,addr=0x4",
        "qxl-vga,id=video0,bus=pci.0,addr=0x2",
    ] {
        assert!(a.contains(want), "missing {want} in\n{a}");
    }
}

#[test]
fn nova_and_proxmox_guests_get_smbios_topology_and_boot_order() {
    let a = line(&corpus("openstack-nova.xml"));
    for want in [
        "-smbios type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova",
        "-smp 2,sockets=2,cores=1,threads=1",
        "-device vmcoreinfo",
        "-machine q35,usb=off,hpet=off",
    ] {
        assert!(a.contains(want), "missing {want} in\n{a}");
    }
    let a = line(&corpus("proxmox-converted.xml"));
    for want in [
        "-cpu kvm64,+lahf_lm,+sep",
        "-smp 4,sockets=1,cores=4,threads=1",
        "driver=host_device,filename=/dev/pve/vm-105-disk-0",
        "virtio-scsi-pci,id=scsi0,bus=pci.0,addr=0x5",
        "scsi-hd,id=sda,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-sda,bootindex=1",
        "virtio-net-pci,id=net0,netdev=hostnet0,mac=bc:24:11:5e:7a:03,bus=pci.0,addr=0x12,bootindex=2",
        "piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2",
        "-smbios type=1,uuid=4a1f0e2d-6c3b-4e5a-8f7d-9b0c1d2e3f40",
    ] {
        assert!(a.contains(want), "missing {want} in\n{a}");
    }
}

#[test]
fn lifecycle_actions_map_to_qemu_actions() {
    let mut d = guest();
    d.on_poweroff = LifecycleAction::Restart;
    d.on_reboot = LifecycleAction::Destroy;
    d.devices.panics.push(Panic {
        model: "isa".into(),
        address: None,
    });
    let a = line(&d);
    assert!(
        a.contains("-action reboot=shutdown,shutdown=pause,panic=pause"),
        "{a}"
    );
    assert!(a.contains("-device pvpanic"), "{a}");
}

#[test]
fn vcpu_hotplug_maximum_and_topology_reach_smp() {
    let mut d = guest();
    d.vcpus = 4;
    d.vcpus_current = Some(2);
    d.cpu = Some(Cpu {
        mode: CpuMode::Custom,
        model: Some("Westmere".into()),
        features: vec![
            CpuFeature {
                policy: "require".into(),
                name: "avx".into(),
            },
            CpuFeature {
                policy: "disable".into(),
                name: "vmx".into(),
            },
        ],
        match_mode: Some("exact".into()),
        check: None,
        topology: Some(CpuTopology {
            sockets: 2,
            dies: 1,
            clusters: 1,
            cores: 2,
            threads: 1,
        }),
    });
    let a = line(&d);
    assert!(
        a.contains("-smp 2,maxcpus=4,sockets=2,cores=2,threads=1"),
        "{a}"
    );
    assert!(a.contains("-cpu Westmere,+avx,-vmx"), "{a}");
}

/// Even a definition that skipped validation cannot add QEMU options
/// through a model or listen address; file paths are comma-escaped.
#[test]
fn models_and_listen_addresses_cannot_carry_options() {
    let mut d = guest();
    d.devices.interfaces[0].model = Some("virtio-net-pci,romfile=/etc/shadow".into());
    d.devices.videos.push(Video {
        model: "VGA,romfile=/etc/shadow".into(),
        vram: None,
        heads: None,
        primary: true,
        address: None,
    });
    d.devices.graphics.push(Graphics {
        kind: "vnc".into(),
        port: Some(-1),
        autoport: true,
        listen: Some("0.0.0.0:1,password=on".into()),
        spice: None,
    });
    d.devices.serials[0].kind = CharDev::File {
        path: "/pool/x,append=off,path=/etc/shadow".into(),
    };
    let a = line(&d);
    assert!(!a.contains("romfile"), "{a}");
    assert!(!a.contains("password"), "{a}");
    assert!(a.contains("-vnc 127.0.0.1:0"), "{a}");
    assert!(
        a.contains("path=/pool/x,,append=off,,path=/etc/shadow,append=on"),
        "{a}"
    );
    d.devices.graphics[0].listen = Some("::1".into());
    assert!(line(&d).contains("-vnc [::1]:0"));
}

#[test]
fn hugepages_put_guest_ram_on_the_hugetlbfs_the_agent_picked() {
    let mut d = guest();
    d.memory_backing = Some(tern_model::MemoryBacking {
        hugepages: Some(tern_model::Hugepages {
            page_size_kib: None,
        }),
        nosharepages: true,
        preallocate: true,
    });
    let spec = LaunchSpec {
        domain: &d,
        accel: Accel::Tcg,
        run_dir: "/run/t".into(),
        nets: vec![],
        vnc_display: None,
        spice_port: None,
        incoming: false,
        paused: false,
        mem_path: Some("/dev/huge,pages".into()),
    };
    let a = build_command_line(&spec).join(" ");
    assert!(
        a.contains("-object memory-backend-file,id=pc.ram,mem-path=/dev/huge,,pages,size=256M,share=off,prealloc=on,merge=off"),
        "{a}"
    );
    assert!(a.contains(",memory-backend=pc.ram"), "{a}");
    assert!(a.contains("-m 256M"), "{a}");
}

#[test]
fn nosharepages_alone_turns_merging_off_on_the_machine() {
    let mut d = guest();
    d.memory_backing = Some(tern_model::MemoryBacking {
        nosharepages: true,
        ..Default::default()
    });
    let a = line(&d);
    assert!(a.contains(",mem-merge=off"), "{a}");
    assert!(!a.contains("memory-backend"), "{a}");
    d.memory_backing = Some(tern_model::MemoryBacking {
        preallocate: true,
        ..Default::default()
    });
    let a = line(&d);
    assert!(
        a.contains("-object memory-backend-ram,id=pc.ram,size=256M,prealloc=on"),
        "{a}"
    );
}

#[test]
fn numatune_binds_guest_ram_to_host_nodes() {
    let mut d = guest();
    d.numatune = Some(tern_model::NumaTune {
        mode: "strict".into(),
        nodeset: "0,2".into(),
    });
    let a = line(&d);
    assert!(
        a.contains(
            "-object memory-backend-ram,id=pc.ram,size=256M,host-nodes=0,host-nodes=2,policy=bind"
        ),
        "{a}"
    );
    assert!(a.contains(",memory-backend=pc.ram"), "{a}");
}

#[test]
fn iothreads_are_objects_that_virtio_disks_run_in() {
    let mut d = guest();
    d.iothreads = 2;
    d.devices.disks[0].iothread = Some(2);
    let a = line(&d);
    assert!(
        a.contains("-object iothread,id=iothread1 -object iothread,id=iothread2"),
        "{a}"
    );
    assert!(a.contains(",iothread=iothread2"), "{a}");
}
