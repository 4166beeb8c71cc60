//! The corpus: domain XML as virt-install, virt-manager, OpenStack Nova and
//! a Proxmox conversion write it. Each document defines, gets a stable
//! layout, and round-trips through `dumpxml` keeping every element and
//! attribute Tern accepted (only the documented ignored ones go).

use std::collections::BTreeSet;
use tern_model::layout::assign_addresses;
use tern_model::xml::{parse_domain, to_xml};
use tern_model::*;

/// (file name, text) of every corpus document.
pub const CORPUS: &[(&str, &str)] = &[
    (
        "virt-install-q35-bios.xml",
        include_str!("fixtures/corpus/virt-install-q35-bios.xml"),
    ),
    (
        "virt-install-q35-uefi.xml",
        include_str!("fixtures/corpus/virt-install-q35-uefi.xml"),
    ),
    (
        "virt-manager-i440fx.xml",
        include_str!("fixtures/corpus/virt-manager-i440fx.xml"),
    ),
    (
        "openstack-nova.xml",
        include_str!("fixtures/corpus/openstack-nova.xml"),
    ),
    (
        "proxmox-converted.xml",
        include_str!("fixtures/corpus/proxmox-converted.xml"),
    ),
    // Written by virt-install itself (scripts/virt-install-corpus.sh).
    (
        "virt-install/debian12-defaults.xml",
        include_str!("fixtures/corpus/virt-install/debian12-defaults.xml"),
    ),
    (
        "virt-install/debian12-q35-bios.xml",
        include_str!("fixtures/corpus/virt-install/debian12-q35-bios.xml"),
    ),
    (
        "virt-install/debian12-q35-uefi.xml",
        include_str!("fixtures/corpus/virt-install/debian12-q35-uefi.xml"),
    ),
    (
        "virt-install/debian12-i440fx-vnc.xml",
        include_str!("fixtures/corpus/virt-install/debian12-i440fx-vnc.xml"),
    ),
];

/// Elements and attributes accepted and dropped (README, "Accepted and
/// ignored"), plus ones whose spelling Tern normalises.
const DROPPED: &[&str] = &[
    // Host-side or informational.
    "metadata",
    "pm",
    "suspend-to-mem",
    "suspend-to-disk",
    "log",
    "stats",
    // Runtime-only: the tap name libvirt chose.
    "interface/target",
    // Normalised: memory is printed in KiB, and the default ISA serial model.
    "memory@unit",
    "currentMemory@unit",
    "cpu@migratable",
    "model@fallback",
    "serial/target@type",
    "target/model",
    "video/model@ram",
    "video/model@vgamem",
    "graphics@tlsPort",
    // `<listen type='address'/>` without an address is the default; a listen
    // address is checked through `graphics@listen`.
    "graphics/listen",
];

/// Every `parent/element@attr=value` (and `parent/element`) in a document,
/// outside foreign namespaces.
fn shape(xml: &str) -> BTreeSet<String> {
    let doc = roxmltree::Document::parse(xml).expect("well-formed");
    let mut out = BTreeSet::new();
    for n in doc.descendants().filter(|n| n.is_element()) {
        if n.ancestors()
            .any(|a| a.is_element() && a.tag_name().namespace().is_some())
        {
            continue;
        }
        let parent = n
            .parent_element()
            .map(|p| p.tag_name().name())
            .unwrap_or("");
        let name = n.tag_name().name();
        if dropped(parent, name, None) {
            continue;
        }
        out.insert(format!("{parent}/{name}"));
        for a in n.attributes() {
            if !dropped(parent, name, Some(a.name())) {
                out.insert(format!("{parent}/{name}@{}={}", a.name(), a.value()));
            }
        }
    }
    out
}

fn dropped(parent: &str, name: &str, attr: Option<&str>) -> bool {
    DROPPED.iter().any(|d| {
        let (path, a) = d.split_once('@').map_or((*d, None), |(p, a)| (p, Some(a)));
        let hit = path == name || path == format!("{parent}/{name}");
        match a {
            None => hit,
            Some(a) => hit && attr == Some(a),
        }
    })
}

fn define(name: &str, xml: &str) -> Domain {
    let mut d = parse_domain(xml).unwrap_or_else(|e| panic!("{name} refused: {e}"));
    assign_addresses(&mut d);
    d
}

#[test]
fn every_corpus_document_defines_and_round_trips() {
    for (name, xml) in CORPUS {
        let d = define(name, xml);
        let out = to_xml(&d);
        let back =
            parse_domain(&out).unwrap_or_else(|e| panic!("{name}: export refused: {e}\n{out}"));
        assert_eq!(back, d, "{name}: round trip changed the domain:\n{out}");
        let lost: Vec<_> = shape(xml).difference(&shape(&out)).cloned().collect();
        assert!(lost.is_empty(), "{name}: dumpxml lost {lost:#?}\n{out}");
    }
}

#[test]
fn layout_is_stable_and_idempotent() {
    for (name, xml) in CORPUS {
        let d = define(name, xml);
        let mut again = d.clone();
        assign_addresses(&mut again);
        assert_eq!(again, d, "{name}: a second assignment moved devices");
        // A definition read back from dumpxml gets the same layout.
        assert_eq!(define(name, &to_xml(&d)), d, "{name}");
        let mut slots = BTreeSet::new();
        for a in pci_addresses(&d) {
            if let Address::Pci {
                bus,
                slot,
                function,
                ..
            } = a
            {
                assert!(
                    slots.insert((bus, slot, function)),
                    "{name}: two devices at {bus}:{slot}.{function}"
                );
            }
        }
    }
}

fn pci_addresses(d: &Domain) -> Vec<Address> {
    let v = &d.devices;
    let all = v
        .disks
        .iter()
        .map(|x| &x.address)
        .chain(v.interfaces.iter().map(|x| &x.address))
        .chain(v.controllers.iter().map(|x| &x.address))
        .chain(v.videos.iter().map(|x| &x.address))
        .chain(v.sounds.iter().map(|x| &x.address))
        .chain(v.rngs.iter().map(|x| &x.address))
        .chain(v.watchdogs.iter().map(|x| &x.address))
        .chain(std::iter::once(&v.memballoon_address));
    all.flatten().cloned().collect()
}

#[test]
fn nova_gets_smbios_and_assigned_addresses() {
    let d = define("nova", CORPUS[3].1);
    assert_eq!(d.os.smbios_mode.as_deref(), Some("sysinfo"));
    let system = &d.sysinfo.as_ref().expect("sysinfo").system;
    assert!(system.contains(&("product".into(), "OpenStack Nova".into())));
    assert_eq!(d.cpu.as_ref().map(|c| c.mode), Some(CpuMode::HostModel));
    // Nothing was addressed in the XML: q35 puts video at slot 1, the rest after it.
    assert_eq!(d.devices.videos[0].address, Some(Address::pci(0, 1)));
    assert!(d.devices.disks[0].address.is_some());
    assert_eq!(
        d.devices.disks[1].address,
        Some(Address::Drive {
            controller: 0,
            bus: 0,
            target: 0,
            unit: 0
        })
    );
    assert!(d
        .devices
        .controllers
        .iter()
        .any(|c| c.controller_type == "sata"));
}

#[test]
fn nova_with_cpu_shares_is_refused_by_name() {
    let xml = CORPUS[3]
        .1
        .replace("<clock", "<cputune><shares>2048</shares></cputune><clock");
    let err = parse_domain(&xml).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "<cputune><shares> (CPU bandwidth needs libvirt's cgroups) is not supported"
        ),
        "{err}"
    );
}

/// virt-install's default: libvirt's `default` network. Tern maps the
/// name to a bridge on each host (`net-define-as`), so the XML is kept as
/// written.
#[test]
fn virt_install_with_a_libvirt_network_keeps_the_network() {
    let xml = CORPUS[0]
        .1
        .replace("<interface type='bridge'>", "<interface type='network'>")
        .replace("<source bridge='br0'/>", "<source network='default'/>");
    let d = parse_domain(&xml).unwrap();
    assert!(matches!(
        &d.devices.interfaces[0].kind,
        tern_model::InterfaceKind::Network { network } if network == "default"
    ));
    assert!(tern_model::xml::to_xml(&d).contains("<source network='default'/>"));
}

/// virt-install writes its PCIe root ports without `index=`: each gets
/// the next free index (1..=14 after pcie-root's 0), so every one of
/// them reaches QEMU as its own port.
#[test]
fn virt_install_root_ports_get_their_own_indexes() {
    let (name, xml) = CORPUS
        .iter()
        .find(|(n, _)| *n == "virt-install/debian12-q35-bios.xml")
        .unwrap();
    let d = define(name, xml);
    let pci: Vec<(u32, Option<&str>)> = d
        .devices
        .controllers
        .iter()
        .filter(|c| c.controller_type == "pci")
        .map(|c| (c.index, c.model.as_deref()))
        .collect();
    assert_eq!(pci[0], (0, Some("pcie-root")));
    let ports: Vec<u32> = pci[1..].iter().map(|(i, _)| *i).collect();
    assert_eq!(ports, (1..=14).collect::<Vec<_>>());
    assert!(to_xml(&d).contains("<controller type='pci' index='14' model='pcie-root-port'>"));
}

#[test]
fn two_controllers_at_one_index_are_refused_by_name() {
    let xml = CORPUS[0].1.replace(
        "<controller type='pci' index='2' model='pcie-root-port'>",
        "<controller type='pci' index='1' model='pcie-root-port'>",
    );
    let err = parse_domain(&xml).unwrap_err().to_string();
    assert!(
        err.contains("<controller type='pci' index=>") && err.contains('1'),
        "{err}"
    );
}
