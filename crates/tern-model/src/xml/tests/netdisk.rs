//! Network and volume disks: parse, print back, refuse what QEMU cannot get.

use super::{refused, round_trip, with_devices};
use crate::domain::{DiskRemote, DiskSourceType, NetProtocol};
use crate::xml::{parse_domain, to_xml};

const NFS: &str = "<disk type='network' device='disk'>
  <driver name='qemu' type='qcow2' cache='none'/>
  <source protocol='nfs' name='nfs/test01'><host name='192.168.1.101'/></source>
  <target dev='vda' bus='virtio'/>
</disk>";

#[test]
fn nfs_disk_parses_and_round_trips() {
    let d = parse_domain(&with_devices(NFS)).unwrap();
    let disk = &d.devices.disks[0];
    assert_eq!(disk.source_type, DiskSourceType::Network);
    assert_eq!(disk.source, None);
    match &disk.remote {
        Some(DiskRemote::Network(n)) => {
            assert_eq!(n.protocol, NetProtocol::Nfs);
            assert_eq!(n.name, "nfs/test01");
            assert_eq!(n.hosts[0].name, "192.168.1.101");
            assert_eq!(n.hosts[0].port, None);
        }
        other => panic!("not a network source: {other:?}"),
    }
    round_trip(&d);
    let xml = to_xml(&d);
    assert!(xml.contains("<disk type='network' device='disk'>"), "{xml}");
    assert!(
        xml.contains(
            "<source protocol='nfs' name='nfs/test01'>\n        <host name='192.168.1.101'/>"
        ),
        "{xml}"
    );
}

#[test]
fn rbd_with_monitors_and_ports_round_trips() {
    let xml = with_devices(
        "<disk type='network'><source protocol='rbd' name='pool/img'>\
         <host name='mon1' port='6789'/><host name='mon2'/></source>\
         <target dev='vdb'/></disk>",
    );
    let d = parse_domain(&xml).unwrap();
    round_trip(&d);
}

#[test]
fn volume_disk_round_trips() {
    let d = parse_domain(&with_devices(
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>\
         <source pool='nfspool' volume='test01'/><target dev='vda'/></disk>",
    ))
    .unwrap();
    match &d.devices.disks[0].remote {
        Some(DiskRemote::Volume(v)) => {
            assert_eq!((v.pool.as_str(), v.volume.as_str()), ("nfspool", "test01"))
        }
        other => panic!("not a volume source: {other:?}"),
    }
    round_trip(&d);
    assert!(to_xml(&d).contains("<source pool='nfspool' volume='test01'/>"));
}

#[test]
fn bad_network_disks_are_refused_by_name() {
    refused(
        &with_devices("<disk type='network'><source protocol='sheepdog' name='x'><host name='h'/></source><target dev='vda'/></disk>"),
        "network disk protocol 'sheepdog'",
    );
    refused(
        &with_devices(
            "<disk type='network'><source protocol='nfs' name='e/f'/><target dev='vda'/></disk>",
        ),
        "<host name=...>",
    );
    refused(
        &with_devices("<disk type='network'><source protocol='nfs' name='e/f'><host name='h' transport='rdma'/></source><target dev='vda'/></disk>"),
        "transport='rdma'",
    );
    refused(
        &with_devices("<disk type='network'><target dev='vda'/></disk>"),
        "has no source",
    );
    refused(
        &with_devices("<disk type='volume'><source pool='p'/><target dev='vda'/></disk>"),
        "volume=",
    );
}

#[test]
fn a_network_interface_round_trips() {
    let d = parse_domain(&with_devices(
        "<interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/>\
         <model type='virtio'/></interface>",
    ))
    .unwrap();
    assert_eq!(
        d.devices.interfaces[0].kind,
        crate::InterfaceKind::Network {
            network: "default".into()
        }
    );
    let xml = to_xml(&d);
    assert!(xml.contains("<interface type='network'>"), "{xml}");
    assert!(xml.contains("<source network='default'/>"), "{xml}");
    assert_eq!(parse_domain(&xml).unwrap(), d);
}
