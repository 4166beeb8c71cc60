//! What a rescue may define on another host.
//!
//! A rescue restarts a dead host's server elsewhere from the definition
//! the controller stored for it (the server record, written only from the
//! reports of the host whose certificate names it; see [`crate::authz`]),
//! never from a definition in a request. The stored definition still came
//! from the dead host, so before the rescue host is asked to define it,
//! its disks are checked against what the *rescue host* says of itself:
//! every local disk must lie in a pool that host reports as shared. A
//! compromised host cannot make the controller plant a definition reading
//! another host's files by calling a private disk "shared".

use tern_api::cluster::HostReport;

/// Why the stored definition `xml` of server `name` must not be defined on
/// the host that reported `dest`; `Ok` when it may.
pub fn check(name: &str, xml: &str, dest: &HostReport) -> Result<(), String> {
    let d = tern_model::xml::parse_domain(xml)
        .map_err(|e| format!("the stored definition of {name} does not parse: {e}"))?;
    if d.name != name {
        return Err(format!(
            "the stored definition is of domain '{}', not of server '{name}'",
            d.name
        ));
    }
    for disk in &d.devices.disks {
        let Some(path) = &disk.source else {
            // Network disks (nfs://...) name no local file.
            continue;
        };
        let shared = dest.pools.iter().any(|p| {
            // A relative or empty target (an rbd pool's `rbd:POOL`)
            // holds no file: `starts_with("")` is true of every path.
            p.def.shared && p.def.target.is_absolute() && path.starts_with(&p.def.target)
        });
        if !shared {
            return Err(format!(
                "disk {} of {name} ({}) is in no shared pool of host {}; a rescue restarts only servers on shared storage",
                disk.target_dev,
                path.display(),
                dest.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_model::PoolInfo;

    fn xml(name: &str, disk: &str) -> String {
        format!(
            "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
        )
    }

    fn host(shared_dir: &str) -> HostReport {
        let pool: PoolInfo = serde_json::from_value(serde_json::json!({
            "name": "shared", "target": shared_dir, "shared": true,
            "autostart": true, "kind": "dir",
            "active": true, "capacity": 0, "allocation": 0, "available": 0
        }))
        .unwrap();
        HostReport {
            name: "b".into(),
            pools: vec![pool],
            ..Default::default()
        }
    }

    #[test]
    fn only_disks_in_the_rescue_hosts_shared_pools_pass() {
        let b = host("/srv/shared");
        assert_eq!(check("vm", &xml("vm", "/srv/shared/vm.raw"), &b), Ok(()));
        let e = check("vm", &xml("vm", "/etc/shadow"), &b).unwrap_err();
        assert!(e.contains("no shared pool of host b"), "{e}");
        let e = check("vm", &xml("other", "/srv/shared/vm.raw"), &b).unwrap_err();
        assert!(e.contains("not of server 'vm'"), "{e}");
    }

    #[test]
    fn an_rbd_pool_holds_no_file() {
        let mut b = host("/srv/shared");
        for target in ["rbd:vms", ""] {
            b.pools[0].def.target = target.into();
            b.pools[0].def.kind = tern_model::PoolKind::Rbd;
            let e = check("vm", &xml("vm", "/etc/shadow"), &b).unwrap_err();
            assert!(e.contains("no shared pool of host b"), "{target}: {e}");
        }
    }
}
