//! Holes stay holes in a live storage migration.
//!
//! The source's mirror sends the disk's unallocated ranges as zero writes
//! that may unmap (blockdev-mirror's `unmap`, on by default), and QEMU's
//! NBD server passes the permission on. But a node unmaps only when it was
//! opened with `discard=unmap`; with the default (`ignore`) every hole of a
//! raw disk arrives as allocated zeros, and a 4 GiB disk holding 1 GiB
//! lands as 4 GiB on the destination.
//!
//! Turning `discard=unmap` on for the guest's disks would change what the
//! guest's own discards do, and was once taken back for that reason (see
//! docs/BENCHMARKS.md). So it is on only while the disks arrive: the
//! destination reopens each received raw disk's nodes with `discard=unmap`
//! before exporting them, and reopens them with the definition's own
//! options before the guest runs there (`blockdev-reopen` with the very
//! options the command line was built with, from
//! [`tern_qemu::cmdline::hotplug::disk_plug`]). The guest never runs with
//! a setting its definition does not have.

use crate::error::Result;
use crate::Agent;
use serde_json::{json, Value};
use tern_migrate::protocol::DiskCopy;
use tern_model::{DiskFormat, Domain};
use tern_qemu::cmdline::hotplug::disk_plug;
use tern_qemu::Qmp;

/// The `blockdev-reopen` options of each received disk that needs them:
/// a raw disk on a local file whose definition does not unmap already.
/// With `unmap`, every node unmaps; without, the definition's options.
fn reopen_sets(resolved: &Domain, disks: &[DiskCopy], unmap: bool) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for dc in disks {
        let Some(disk) = resolved
            .devices
            .disks
            .iter()
            .find(|d| d.target_dev == dc.target)
        else {
            continue;
        };
        if disk.format != DiskFormat::Raw || disk.discard.as_deref() == Some("unmap") {
            continue;
        }
        let Some(plug) = disk_plug(resolved, &dc.target) else {
            continue;
        };
        if !plug
            .blockdevs
            .iter()
            .all(|b| b["driver"] == "file" || b["driver"] == "raw")
        {
            continue;
        }
        let nodes = plug
            .blockdevs
            .into_iter()
            .map(|mut b| {
                if unmap {
                    b["discard"] = json!("unmap");
                }
                b
            })
            .collect();
        out.push(nodes);
    }
    out
}

/// Reopens the received disks' nodes of the incoming QEMU, unmapping
/// (`unmap`) or as their definition says. `live` is the live definition
/// the QEMU was started from.
pub async fn set_unmap(
    agent: &Agent,
    qmp: &Qmp,
    live: &Domain,
    disks: &[DiskCopy],
    unmap: bool,
) -> Result<()> {
    let resolved = agent.pools.resolve_disks(live).await?;
    for nodes in reopen_sets(&resolved, disks, unmap) {
        // Protocol node first: a format node may not unmap above a file
        // node that does not.
        for node in nodes {
            qmp.execute("blockdev-reopen", Some(json!({ "options": [node] })))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_migrate::protocol::CopyMode;

    fn domain(xml: &str) -> Domain {
        let mut d = tern_model::xml::parse_domain(xml).unwrap();
        tern_model::layout::assign_addresses(&mut d);
        d
    }

    fn copy(target: &str) -> DiskCopy {
        DiskCopy {
            target: target.into(),
            pool: None,
            volume: "v".into(),
            format: "raw".into(),
            virtual_size: 1 << 20,
            backing: None,
            mode: CopyMode::Full,
        }
    }

    const XML: &str = "<domain type='kvm'><name>g</name><memory unit='MiB'>64</memory>\
        <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
        <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
        <source file='/p/a.raw'/><target dev='vda' bus='virtio'/></disk>\
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
        <source file='/p/b.qcow2'/><target dev='vdb' bus='virtio'/></disk>\
        <disk type='file' device='disk'><driver name='qemu' type='raw' discard='unmap'/>\
        <source file='/p/c.raw'/><target dev='vdc' bus='virtio'/></disk>\
        </devices></domain>";

    #[test]
    fn only_raw_disks_that_do_not_unmap_are_reopened_and_back_as_defined() {
        let d = domain(XML);
        let disks = [copy("vda"), copy("vdb"), copy("vdc")];
        let on = reopen_sets(&d, &disks, true);
        assert_eq!(on.len(), 1, "{on:?}");
        assert_eq!(on[0].len(), 2, "file and raw nodes: {on:?}");
        assert_eq!(on[0][0]["driver"], "file");
        assert_eq!(on[0][0]["filename"], "/p/a.raw");
        assert!(on[0].iter().all(|n| n["discard"] == "unmap"));
        let off = reopen_sets(&d, &disks, false);
        assert!(off[0].iter().all(|n| n.get("discard").is_none()), "{off:?}");
        assert_eq!(on[0][1]["node-name"], off[0][1]["node-name"]);
    }
}
