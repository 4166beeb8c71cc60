//! LVM inside a [`DebianVm`], for tests of logical pools on a real
//! device-mapper (this machine's kernel has none; Debian's has): what
//! `lvs`, `vgs` and `pvs` there say, a recognisable content for a logical
//! volume and its checksum read past the page cache, and a domain whose
//! only disk is a `type='block'` device.

use crate::debian_vm::DebianVm;

/// One logical volume as `lvs` in the guest reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvRow {
    /// Its name in the group.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is activated (its device node exists).
    pub active: bool,
}

/// The logical volumes of group `vg` (empty when the group has none, or
/// does not exist).
pub fn lvs(vm: &DebianVm, vg: &str) -> Vec<LvRow> {
    let o = vm.sh(&format!(
        "lvs --noheadings --units b --nosuffix --separator , -o lv_name,lv_size,lv_active {vg}"
    ));
    parse_lvs(&o.stdout)
}

fn parse_lvs(text: &str) -> Vec<LvRow> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(',');
            Some(LvRow {
                name: f.next()?.to_string(),
                size: f.next()?.parse().ok()?,
                active: f.next().unwrap_or("").trim() == "active",
            })
        })
        .collect()
}

/// Logical volume `lv` of group `vg`, if it exists.
pub fn lv(vm: &DebianVm, vg: &str, lv: &str) -> Option<LvRow> {
    lvs(vm, vg).into_iter().find(|r| r.name == lv)
}

/// (size, free) in bytes of group `vg`; `None` when it does not exist.
pub fn vg_space(vm: &DebianVm, vg: &str) -> Option<(u64, u64)> {
    let o = vm.sh(&format!(
        "vgs --noheadings --units b --nosuffix --separator , -o vg_size,vg_free {vg}"
    ));
    if o.code != 0 {
        return None;
    }
    let mut f = o.stdout.trim().split(',').map(|v| v.parse().ok());
    Some((f.next()??, f.next()??))
}

/// The physical volumes of group `vg`.
pub fn vg_pvs(vm: &DebianVm, vg: &str) -> Vec<String> {
    vm.sh_ok("pvs --noheadings --separator , -o pv_name,vg_name")
        .lines()
        .filter_map(|l| l.trim().split_once(','))
        .filter(|(_, g)| *g == vg)
        .map(|(pv, _)| pv.to_string())
        .collect()
}

/// Fills block device `dev` with a content of its own: zeros, random
/// bytes from MiB 1 to 9, and `marker` at MiB 12 (so it must be at least
/// 13 MiB). Its first MiB stays zero, so no firmware finds a boot sector
/// there. Written past the page cache and synced.
pub fn write_pattern(vm: &DebianVm, dev: &str, marker: &str) {
    vm.sh_ok(&format!(
        "set -e; test -b {dev}; \
         dd if=/dev/zero of={dev} bs=1M oflag=direct status=none 2>/dev/null || true; \
         dd if=/dev/urandom of={dev} bs=1M seek=1 count=8 oflag=direct iflag=fullblock status=none; \
         printf '%s' '{marker}' | dd of={dev} bs=1M seek=12 conv=notrunc,fsync status=none; \
         sync"
    ));
}

/// SHA-256 of the whole of block device `dev`, read with O_DIRECT (what
/// the device holds, not what the page cache remembers).
pub fn sha256(vm: &DebianVm, dev: &str) -> String {
    let out = vm.sh_ok(&format!(
        "exec bash -c 'set -o pipefail; dd if={dev} bs=1M iflag=direct status=none | sha256sum'"
    ));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A domain without a kernel whose only disk is block device `dev`
/// (`<disk type='block'>`, raw, cache none): its QEMU runs SeaBIOS, which
/// reads the disk and writes nothing to it. What a test migrates when it
/// needs a running guest but cannot wait for a nested guest to boot.
pub fn block_domain_xml(name: &str, dev: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64'>hvm</type>\n    <boot dev='hd'/>\n  </os>\n  <devices>\n    <disk type='block' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source dev='{dev}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n  </devices>\n</domain>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvs_rows_as_lvm_prints_them() {
        let text = "  cold-disk,16777216,active\n  old,8388608,\n";
        assert_eq!(
            parse_lvs(text),
            vec![
                LvRow {
                    name: "cold-disk".into(),
                    size: 16 << 20,
                    active: true
                },
                LvRow {
                    name: "old".into(),
                    size: 8 << 20,
                    active: false
                }
            ]
        );
        assert!(parse_lvs("").is_empty());
    }

    #[test]
    fn the_block_domain_names_its_device() {
        let x = block_domain_xml("d1", "/dev/vgA/x");
        assert!(x.contains("<disk type='block' device='disk'>"), "{x}");
        assert!(x.contains("<source dev='/dev/vgA/x'/>"), "{x}");
        assert!(!x.contains("<kernel>"), "{x}");
    }
}
