//! The `<source>` of disks that name no host path: `type='network'`
//! (`<source protocol=... name=...><host .../></source>`) and
//! `type='volume'` (`<source pool=... volume=...>`).

use super::import::{elements, invalid, missing, parse_number, required_attr, Result};
use super::XmlError;
use crate::domain::{
    DiskRemote, DiskSourceType, NetHost, NetProtocol, NetworkSource, VolumeSource,
};
use roxmltree::Node;

/// Parses the `<source>` of a network or volume disk.
pub(super) fn parse_source(node: Node, kind: DiskSourceType) -> Result<DiskRemote> {
    match kind {
        DiskSourceType::Volume => Ok(DiskRemote::Volume(VolumeSource {
            pool: required_attr(node, "pool")?.to_string(),
            volume: required_attr(node, "volume")?.to_string(),
        })),
        _ => parse_network(node).map(DiskRemote::Network),
    }
}

fn parse_network(node: Node) -> Result<NetworkSource> {
    let raw = required_attr(node, "protocol")?;
    let protocol = NetProtocol::parse(raw).ok_or_else(|| XmlError::Unsupported {
        what: format!("network disk protocol '{raw}'"),
        fix: "use protocol='nfs', 'rbd', 'iscsi' or 'gluster'".to_string(),
    })?;
    let name = required_attr(node, "name")?.to_string();
    if name.trim_matches('/').is_empty() {
        return Err(invalid(
            "<disk><source name=>",
            &name,
            "name the image, e.g. name='export/dir/image.qcow2' for nfs",
        ));
    }
    let mut hosts = Vec::new();
    for child in elements(node) {
        match child.tag_name().name() {
            "host" => hosts.push(parse_host(child)?),
            // Ceph/iSCSI credentials and the like: not honoured, refuse.
            other => {
                return Err(XmlError::Unsupported {
                    what: format!("<disk><source><{other}>"),
                    fix: "remove it; Tern passes only the protocol, name and hosts to QEMU"
                        .to_string(),
                })
            }
        }
    }
    if hosts.is_empty() && protocol != NetProtocol::Rbd {
        return Err(missing("<disk type='network'><source><host name=...>"));
    }
    Ok(NetworkSource {
        protocol,
        name,
        hosts,
    })
}

fn parse_host(node: Node) -> Result<NetHost> {
    if let Some(t) = node.attribute("transport").filter(|t| *t != "tcp") {
        return Err(XmlError::Unsupported {
            what: format!("<source><host transport='{t}'>"),
            fix: "use transport='tcp' (the default)".to_string(),
        });
    }
    let name = required_attr(node, "name")?.to_string();
    let port = match node.attribute("port") {
        Some(p) => Some(parse_number::<u16>(p, "<source><host port=>")?),
        None => None,
    };
    Ok(NetHost { name, port })
}

/// Attributes of one element, in output order.
type Attrs = Vec<(&'static str, String)>;

/// The attributes of `<source>` and of each `<host>` under it, in
/// `virsh dumpxml` order.
pub(super) fn source_attrs(remote: &DiskRemote) -> (Attrs, Vec<Attrs>) {
    match remote {
        DiskRemote::Volume(v) => (
            vec![("pool", v.pool.clone()), ("volume", v.volume.clone())],
            Vec::new(),
        ),
        DiskRemote::Network(n) => (
            vec![
                ("protocol", n.protocol.as_str().to_string()),
                ("name", n.name.clone()),
            ],
            n.hosts
                .iter()
                .map(|h| {
                    let mut a = vec![("name", h.name.clone())];
                    if let Some(p) = h.port {
                        a.push(("port", p.to_string()));
                    }
                    a
                })
                .collect(),
        ),
    }
}
