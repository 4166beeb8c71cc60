use super::*;
use crate::domain::*;
use std::path::PathBuf;
use uuid::Uuid;

fn valid() -> Domain {
    Domain {
        name: "vm1".to_string(),
        uuid: Uuid::from_u128(42),
        domain_type: "kvm".to_string(),
        title: None,
        description: None,
        memory_kib: 262_144,
        current_memory_kib: 262_144,
        vcpus: 1,
        os: Os {
            os_type: "hvm".to_string(),
            ..Os::default()
        },
        cpu: None,
        features: Features::default(),
        clock_offset: None,
        on_poweroff: LifecycleAction::Destroy,
        on_reboot: LifecycleAction::Restart,
        on_crash: LifecycleAction::Destroy,
        devices: Devices {
            disks: vec![disk("vda")],
            interfaces: vec![nic("52:54:00:00:00:01")],
            ..Devices::default()
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

fn disk(dev: &str) -> Disk {
    Disk {
        source_type: DiskSourceType::File,
        device: DiskDevice::Disk,
        format: DiskFormat::Raw,
        cache: None,
        source: Some(PathBuf::from(format!("/images/{dev}.raw"))),
        remote: None,
        target_dev: dev.to_string(),
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
    }
}

fn nic(mac: &str) -> Interface {
    Interface {
        kind: InterfaceKind::User,
        mac: Some(mac.to_string()),
        model: None,
        virtualport: None,
        boot_order: None,
        address: None,
    }
}

/// Applies `change` to a valid domain and returns the resulting error.
fn error_after(change: impl FnOnce(&mut Domain)) -> ValidationError {
    let mut d = valid();
    change(&mut d);
    let err = match validate(&d) {
        Ok(()) => panic!("expected a validation error for {d:?}"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(!message.contains('\n'), "multi-line message: {message:?}");
    assert!(
        message.contains("; "),
        "message gives no remedy: {message:?}"
    );
    err
}

#[test]
fn accepts_a_valid_domain() {
    assert_eq!(validate(&valid()), Ok(()));
}

#[test]
fn checks_name_memory_and_vcpus() {
    assert!(matches!(
        error_after(|d| d.name = "../x".into()),
        ValidationError::Name(_)
    ));
    assert!(matches!(
        error_after(|d| d.name = "a\nb".into()),
        ValidationError::Name(_)
    ));
    assert_eq!(
        error_after(|d| d.memory_kib = 0),
        ValidationError::ZeroMemory
    );
    assert_eq!(
        error_after(|d| d.current_memory_kib = 0),
        ValidationError::ZeroCurrentMemory
    );
    assert_eq!(
        error_after(|d| d.current_memory_kib = d.memory_kib + 1),
        ValidationError::CurrentMemoryTooLarge {
            current: 262_145,
            maximum: 262_144
        }
    );
    assert_eq!(error_after(|d| d.vcpus = 0), ValidationError::VcpuCount(0));
    assert_eq!(
        error_after(|d| d.vcpus = 256),
        ValidationError::VcpuCount(256)
    );
    let mut d = valid();
    d.vcpus = MAX_VCPUS;
    assert_eq!(validate(&d), Ok(()));
}

#[test]
fn checks_disks() {
    for bad in ["", "vd1", "VDA", "vd-a", "v da"] {
        assert_eq!(
            error_after(|d| d.devices.disks[0].target_dev = bad.into()),
            ValidationError::BadTargetDev(bad.into()),
            "{bad:?}"
        );
    }
    assert_eq!(
        error_after(|d| d.devices.disks.push(disk("vda"))),
        ValidationError::DuplicateTargetDev("vda".into())
    );
    assert_eq!(
        error_after(|d| d.devices.disks[0].source = None),
        ValidationError::DiskWithoutSource("vda".into())
    );
    let cdrom = |readonly, bus| Disk {
        device: DiskDevice::Cdrom,
        source: None,
        readonly,
        target_bus: bus,
        format: DiskFormat::Qcow2,
        ..disk("hdc")
    };
    assert_eq!(
        error_after(|d| d.devices.disks.push(cdrom(false, DiskBus::Ide))),
        ValidationError::WritableCdrom("hdc".into())
    );
    assert_eq!(
        error_after(|d| d.devices.disks.push(cdrom(true, DiskBus::Virtio))),
        ValidationError::VirtioCdrom("hdc".into())
    );
    // An empty cdrom is fine whatever its declared format.
    let mut d = valid();
    d.devices.disks.push(cdrom(true, DiskBus::Ide));
    assert_eq!(validate(&d), Ok(()));
}

#[test]
fn checks_mac_addresses() {
    for bad in [
        "52:54:00:00:00",
        "52:54:00:00:00:0g",
        "52-54-00-00-00-01",
        "52:54:00:AB:00:01",
        "525:4:00:00:00:01",
    ] {
        assert_eq!(
            error_after(|d| d.devices.interfaces[0].mac = Some(bad.into())),
            ValidationError::BadMac(bad.into()),
            "{bad:?}"
        );
    }
    assert_eq!(
        error_after(|d| d.devices.interfaces[0].mac = Some("03:00:00:00:00:01".into())),
        ValidationError::MulticastMac("03:00:00:00:00:01".into())
    );
    assert_eq!(
        error_after(|d| d.devices.interfaces.push(nic("52:54:00:00:00:01"))),
        ValidationError::DuplicateMac("52:54:00:00:00:01".into())
    );
    let mut d = valid();
    d.devices.interfaces.push(nic("52:54:00:00:00:02"));
    d.devices.interfaces[1].mac = None;
    d.devices.interfaces.push(Interface {
        mac: None,
        ..nic("")
    });
    assert_eq!(
        validate(&d),
        Ok(()),
        "several interfaces without a MAC are fine"
    );
}

#[test]
fn checks_string_settings() {
    assert!(matches!(
        error_after(|d| d.domain_type = "xen".into()),
        ValidationError::Unsupported { .. }
    ));
    assert!(matches!(
        error_after(|d| d.os.os_type = "exe".into()),
        ValidationError::Unsupported { .. }
    ));
    assert!(matches!(
        error_after(|d| d.clock_offset = Some("timezone".into())),
        ValidationError::Unsupported { .. }
    ));
    assert_eq!(
        error_after(|d| d.title = Some("a\nb".into())),
        ValidationError::MultilineTitle
    );
    assert_eq!(
        error_after(|d| d.os.cmdline = Some("quiet".into())),
        ValidationError::BootArgsWithoutKernel
    );
    assert_eq!(
        error_after(|d| d.cpu = Some(Cpu {
            mode: CpuMode::Custom,
            model: Some(" ".into()),
            features: vec![],
            match_mode: None,
            check: None,
            topology: None,
        })),
        ValidationError::EmptyCpuModel
    );
    assert_eq!(
        error_after(|d| d.devices.interfaces[0].kind = InterfaceKind::Bridge {
            bridge: String::new()
        }),
        ValidationError::EmptyBridge
    );
    assert_eq!(
        error_after(|d| {
            d.devices.interfaces[0].virtualport = Some(VirtualPort {
                port_type: "openvswitch".into(),
                interface_id: None,
            })
        }),
        ValidationError::VirtualPortWithoutBridge
    );
    assert!(matches!(
        error_after(|d| {
            d.devices.interfaces[0].kind = InterfaceKind::Bridge {
                bridge: "br0".into(),
            };
            d.devices.interfaces[0].virtualport = Some(VirtualPort {
                port_type: "802.1Qbh".into(),
                interface_id: None,
            });
        }),
        ValidationError::Unsupported { .. }
    ));
    let vnc = |port| Graphics {
        kind: "vnc".into(),
        port,
        autoport: false,
        listen: None,
        spice: None,
    };
    assert_eq!(
        error_after(|d| d.devices.graphics.push(vnc(Some(-2)))),
        ValidationError::GraphicsPort(-2)
    );
    assert!(matches!(
        error_after(|d| d.devices.graphics.push(Graphics {
            kind: "rdp".into(),
            ..vnc(None)
        })),
        ValidationError::Unsupported { .. }
    ));
    assert!(matches!(
        error_after(|d| d.devices.inputs.push(Input {
            input_type: "passthrough".into(),
            bus: None,
            address: None,
        })),
        ValidationError::Unsupported { .. }
    ));
}

#[test]
fn refuses_text_xml_cannot_carry() {
    assert!(matches!(
        error_after(|d| d.description = Some("bell\u{7}".into())),
        ValidationError::Unrepresentable(_)
    ));
    assert!(matches!(
        error_after(|d| d.devices.emulator = Some(PathBuf::from("/usr/bin/q\nemu"))),
        ValidationError::Unrepresentable(_)
    ));
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = PathBuf::from(std::ffi::OsStr::from_bytes(b"/images/\xff.raw"));
        assert!(matches!(
            error_after(|d| d.devices.disks[0].source = Some(not_utf8)),
            ValidationError::Unrepresentable(_)
        ));
    }
    let mut d = valid();
    d.description = Some("multi\nline\r\n\twith tabs".into());
    assert_eq!(
        validate(&d),
        Ok(()),
        "newlines and tabs are fine in a description"
    );
}

#[test]
fn option_smuggling_in_models_and_addresses_is_refused() {
    let mut d = valid();
    d.devices.interfaces[0].model = Some("virtio-net-pci,romfile=/etc/shadow".into());
    let e = validate(&d).unwrap_err().to_string();
    assert!(e.contains("NIC model") && e.contains("use virtio"), "{e}");
    d.devices.interfaces[0].model = Some("e1000".into());
    validate(&d).unwrap();

    let mut d = valid();
    d.devices.videos.push(Video {
        model: "VGA,romfile=/etc/shadow".into(),
        vram: None,
        heads: None,
        primary: true,
        address: None,
    });
    let e = validate(&d).unwrap_err().to_string();
    assert!(e.contains("video model"), "{e}");

    let mut d = valid();
    d.cpu = Some(Cpu {
        mode: CpuMode::Custom,
        model: Some("qemu64,+vmx".into()),
        features: vec![],
        match_mode: None,
        check: None,
        topology: None,
    });
    assert!(validate(&d).unwrap_err().to_string().contains("CPU model"));
    d.cpu.as_mut().unwrap().model = Some("Skylake-Server-v4".into());
    validate(&d).unwrap();
    d.cpu
        .as_mut()
        .unwrap()
        .features
        .push(crate::guest::CpuFeature {
            policy: "require".into(),
            name: "sse4.2,romfile=x".into(),
        });
    assert!(validate(&d)
        .unwrap_err()
        .to_string()
        .contains("CPU feature"));

    let mut d = valid();
    d.os.machine = Some("q35,memory-backend=x".into());
    assert!(validate(&d)
        .unwrap_err()
        .to_string()
        .contains("machine type"));

    for (listen, ok) in [
        ("127.0.0.1", true),
        ("::1", true),
        ("0.0.0.0", true),
        ("127.0.0.1:1,password=on", false),
        ("localhost", false),
    ] {
        let mut d = valid();
        d.devices.graphics.push(Graphics {
            kind: "vnc".into(),
            port: Some(-1),
            autoport: true,
            listen: Some(listen.into()),
            spice: None,
        });
        assert_eq!(validate(&d).is_ok(), ok, "{listen}");
    }
}

#[test]
fn rng_sources_and_audio_back_ends_are_allow_listed() {
    let mut d = valid();
    d.devices.rngs.push(crate::guest::Rng {
        source: PathBuf::from("/etc/shadow"),
        address: None,
    });
    assert!(validate(&d).unwrap_err().to_string().contains("rng source"));
    d.devices.rngs[0].source = PathBuf::from("/dev/urandom");
    validate(&d).unwrap();
    d.devices.audios.push(crate::guest::Audio {
        id: 1,
        kind: "wav,path=/etc/passwd".into(),
    });
    assert!(validate(&d).unwrap_err().to_string().contains("audio"));
}
