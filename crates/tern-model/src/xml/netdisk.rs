//! The `<source>` of disks that name no host path: `type='network'`
//! (`<source protocol=... name=...><host .../></source>`) and
//! `type='volume'` (`<source pool=... volume=...>`).

use super::import::{elements, invalid, missing, parse_number, required_attr, Result};
use super::XmlError;
use crate::domain::{
    DiskRemote, DiskSourceType, NetHost, NetProtocol, NetworkSource, VolumeSource,
};
use crate::secret::{CephAuth, SecretRef};
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
    let mut auth = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "host" => hosts.push(parse_host(child)?),
            // libvirt takes <auth> under <source> too (since 3.9).
            "auth" if protocol == NetProtocol::Rbd && auth.is_none() => {
                auth = Some(parse_auth(child)?)
            }
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
        auth,
    })
}

/// `<auth username='ID'><secret type='ceph' uuid='..'|usage='..'/></auth>`.
pub(super) fn parse_auth(node: Node) -> Result<CephAuth> {
    let username = required_attr(node, "username")?.to_string();
    let secret = elements(node)
        .find(|c| c.tag_name().name() == "secret")
        .ok_or_else(|| missing("<auth><secret type='ceph' uuid=...>"))?;
    if let Some(t) = secret.attribute("type").filter(|t| *t != "ceph") {
        return Err(XmlError::Unsupported {
            what: format!("<auth><secret type='{t}'>"),
            fix: "use type='ceph' (Tern keeps ceph secrets only)".to_string(),
        });
    }
    let secret = match (secret.attribute("uuid"), secret.attribute("usage")) {
        (Some(u), _) => SecretRef::Uuid(
            crate::secret::parse_uuid(u)
                .map_err(|_| invalid("<auth><secret uuid=>", u, "give the secret's uuid"))?,
        ),
        (None, Some(u)) => SecretRef::Usage(u.to_string()),
        (None, None) => return Err(missing("<auth><secret uuid=... or usage=...>")),
    };
    let auth = CephAuth { username, secret };
    auth.check()
        .map_err(|e| invalid("<auth username=>", &auth.username, &e.to_string()))?;
    Ok(auth)
}

/// The attributes of `<auth>` and of its `<secret>`.
pub(super) fn auth_attrs(a: &CephAuth) -> (Attrs, Attrs) {
    let secret = match &a.secret {
        SecretRef::Uuid(u) => ("uuid", u.clone()),
        SecretRef::Usage(u) => ("usage", u.clone()),
    };
    (
        vec![("username", a.username.clone())],
        vec![("type", "ceph".to_string()), secret],
    )
}

/// Sets the disk-level `<auth>` on its network source; refuses it on other
/// disks and twice.
pub(super) fn attach_auth(remote: &mut Option<DiskRemote>, auth: Option<CephAuth>) -> Result<()> {
    let Some(auth) = auth else { return Ok(()) };
    match remote {
        Some(DiskRemote::Network(n)) if n.protocol == NetProtocol::Rbd && n.auth.is_none() => {
            n.auth = Some(auth);
            Ok(())
        }
        Some(DiskRemote::Network(n)) if n.protocol == NetProtocol::Rbd => {
            Err(invalid("<disk><auth>", &auth.username, "give <auth> once"))
        }
        _ => Err(XmlError::Unsupported {
            what: "<disk><auth> on a disk that is not protocol='rbd'".to_string(),
            fix: "remove it; Tern passes credentials to rbd disks only".to_string(),
        }),
    }
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

#[cfg(test)]
mod tests {
    use crate::xml::{parse_domain, to_xml};
    use crate::{DiskRemote, SecretRef};

    fn domain(disk: &str) -> String {
        format!(
            "<domain type='kvm'><name>r</name><uuid>11111111-2222-3333-4444-555555555555</uuid><memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os><devices>{disk}</devices></domain>"
        )
    }

    /// What virt-install and OpenStack write: <auth> under <disk>.
    const NOVA: &str = "<disk type='network' device='disk'>
  <driver name='qemu' type='raw' cache='none'/>
  <source protocol='rbd' name='vms/web1_disk'>
    <host name='10.0.0.1' port='6789'/>
  </source>
  <auth username='nova'><secret type='ceph' uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/></auth>
  <target dev='vda' bus='virtio'/>
</disk>";

    #[test]
    fn rbd_auth_round_trips_from_disk_or_source() {
        let d = parse_domain(&domain(NOVA)).unwrap();
        let Some(DiskRemote::Network(n)) = &d.devices.disks[0].remote else {
            panic!("not a network disk")
        };
        let a = n.auth.as_ref().expect("auth");
        assert_eq!(a.username, "nova");
        assert_eq!(
            a.secret,
            SecretRef::Uuid("2ec115d7-3a88-3ceb-bc12-0ac909a6fd87".into())
        );
        let xml = to_xml(&d);
        assert!(xml.contains("<auth username='nova'>"), "{xml}");
        assert_eq!(parse_domain(&xml).unwrap(), d);
        // libvirt >= 3.9 also accepts it inside <source>.
        let inside = NOVA
            .replace("  </source>\n  <auth", "  <auth")
            .replace("</auth>", "</auth></source>");
        assert_eq!(parse_domain(&domain(&inside)).unwrap(), d);
        let usage = NOVA.replace(
            "uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'",
            "usage='client.nova secret'",
        );
        let d = parse_domain(&domain(&usage)).unwrap();
        assert_eq!(parse_domain(&to_xml(&d)).unwrap(), d);
    }

    #[test]
    fn auth_outside_rbd_or_without_a_secret_is_refused() {
        let nfs = NOVA
            .replace("protocol='rbd'", "protocol='nfs'")
            .replace("vms/web1_disk", "nfs/a");
        assert!(parse_domain(&domain(&nfs)).is_err());
        let bare = NOVA.replace(
            "<secret type='ceph' uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/>",
            "",
        );
        let e = parse_domain(&domain(&bare)).unwrap_err().to_string();
        assert!(e.contains("secret"), "{e}");
        let twice = NOVA.replace(
            "</auth>",
            "</auth><auth username='x'><secret type='ceph' usage='u'/></auth>",
        );
        assert!(parse_domain(&domain(&twice)).is_err());
    }
}
