//! Storage pools and volumes.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A storage pool: a directory (`pool-define-as NAME dir --target PATH`),
/// an NFS export (`pool-define-as NAME netfs --source-host H
/// --source-path P --target DIR`), a Ceph pool (`rbd`) or an LVM volume
/// group (`pool-define-as NAME logical --source-name VG [--source-dev PV]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDef {
    /// Pool name, unique per host.
    pub name: String,
    /// Directory holding the volumes.
    pub target: PathBuf,
    /// Whether other hosts see the same files (NFS, CephFS...). Live
    /// migration without storage copy is only safe for disks in shared pools.
    pub shared: bool,
    /// Start the pool when the agent starts.
    pub autostart: bool,
    /// `dir` (the default, and what definitions from before netfs hold) or `netfs`.
    #[serde(default)]
    pub kind: PoolKind,
    /// The export of a netfs pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<NetfsSource>,
    /// The Ceph pool of an rbd pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<RbdSource>,
    /// The volume group of a logical (LVM) pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalSource>,
}

/// What `pool-list` / `pool-info` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// The definition.
    #[serde(flatten)]
    pub def: PoolDef,
    /// Whether the pool is started (its directory checked and usable).
    pub active: bool,
    /// Bytes of the filesystem holding the pool.
    pub capacity: u64,
    /// Bytes used on that filesystem.
    pub allocation: u64,
    /// Bytes free for non-root users on that filesystem.
    pub available: u64,
    /// How an active netfs pool reaches its export (never `Auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<NetfsAccess>,
    /// An active rbd pool's Ceph cluster fsid: with the Ceph pool's name,
    /// the identity of the storage (two hosts' pools of one name are the
    /// same storage only when both agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_fsid: Option<String>,
}

impl PoolInfo {
    /// What identifies the storage beyond the pool's name, when known:
    /// `ceph:FSID/CEPHPOOL` for an rbd pool.
    pub fn identity(&self) -> Option<String> {
        let fsid = self.ceph_fsid.as_ref()?;
        let pool = self.def.rbd.as_ref()?;
        Some(format!("ceph:{fsid}/{}", pool.name))
    }
}

/// What `vol-list` / `vol-info` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// File name inside the pool.
    pub name: String,
    /// Absolute path.
    pub path: PathBuf,
    /// "qcow2" or "raw" (as qemu-img reports it).
    pub format: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes allocated on the host.
    pub allocation: u64,
    /// Backing file, if any.
    pub backing: Option<PathBuf>,
}

/// libvirt's pool types that Tern implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// A local (or already shared) directory.
    #[default]
    Dir,
    /// An NFS export.
    Netfs,
    /// A Ceph RBD pool: volumes are RBD images, opened by QEMU through librbd.
    Rbd,
    /// An LVM volume group: volumes are logical volumes, block devices
    /// under `/dev/VG`.
    Logical,
}

impl PoolKind {
    /// libvirt's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Dir => "dir",
            PoolKind::Netfs => "netfs",
            PoolKind::Rbd => "rbd",
            PoolKind::Logical => "logical",
        }
    }
}

/// The export of a netfs pool (`--source-host`, `--source-path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetfsSource {
    /// The NFS server's name or address.
    pub host: String,
    /// The exported directory, absolute (`/nfs`).
    pub path: String,
    /// How to reach it; `Auto` decides when the pool starts.
    #[serde(default)]
    pub access: NetfsAccess,
}

impl NetfsSource {
    /// `nfs://HOST/PATH/FILE`, the URL QEMU and qemu-img open a volume by.
    pub fn url(&self, file: &str) -> String {
        format!("nfs://{}{}", self.host, self.file_path(file))
    }

    /// The path QEMU's nfs block driver takes: `/PATH/FILE`.
    pub fn file_path(&self, file: &str) -> String {
        let dir = self.path.trim_matches('/');
        if dir.is_empty() {
            format!("/{file}")
        } else {
            format!("/{dir}/{file}")
        }
    }
}

/// The Ceph side of an rbd pool (`--source-host MON[:PORT]` (repeatable),
/// `--source-name POOL`, `--auth-username ID`, `--secret-usage|uuid`), as
/// libvirt's `<pool type='rbd'><source><host/><name/><auth/></source>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbdSource {
    /// Monitors; a port of `None` is Ceph's default (6789).
    pub hosts: Vec<crate::NetHost>,
    /// The Ceph pool's name.
    pub name: String,
    /// The cephx user and the secret holding its key; `None` for a
    /// cluster without cephx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::CephAuth>,
}

impl RbdSource {
    /// The monitors as Ceph's `mon_host` (`-m`) takes them.
    pub fn mon_host(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("{}:{}", h.name, h.port.unwrap_or(6789)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The LVM side of a logical pool (`--source-name VG`, `--source-dev
/// PV` (repeatable)), as libvirt's `<pool type='logical'><source><name/>
/// <device path=/></source>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalSource {
    /// The volume group's name.
    pub vg: String,
    /// Its physical volumes: `pool-build` makes them and the group; when
    /// given, every LVM command of the pool sees only these devices
    /// (`--devices`), never the rest of the host's disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<PathBuf>,
}

impl LogicalSource {
    /// Refuses a volume group name LVM would not take, or device paths
    /// that are not plain absolute paths.
    pub fn check(&self) -> Result<(), String> {
        let ok = !self.vg.is_empty()
            && !self.vg.starts_with('-')
            && self.vg != "."
            && self.vg != ".."
            && self.vg.len() <= 127
            && self
                .vg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b));
        if !ok {
            return Err(format!(
                "volume group '{}' is not a name LVM takes (letters, digits, '+_.-', not starting with '-'); give --source-name VG",
                self.vg
            ));
        }
        for d in &self.devices {
            let plain = d.is_absolute()
                && !d.components().any(|c| c == std::path::Component::ParentDir)
                && !d.to_string_lossy().contains(',');
            if !plain {
                return Err(format!(
                    "source device '{}' is not a plain absolute path; give --source-dev /dev/DEVICE",
                    d.display()
                ));
            }
        }
        Ok(())
    }

    /// The directory LVM names the group's volumes under: `/dev/VG`.
    pub fn default_target(&self) -> PathBuf {
        PathBuf::from("/dev").join(&self.vg)
    }
}

/// How a host reaches a netfs pool's export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetfsAccess {
    /// `mount` when the kernel has an NFS client (`nfs` in
    /// /proc/filesystems), `qemu` otherwise.
    #[default]
    Auto,
    /// The kernel mounts the export on the target (`mount -t nfs`).
    Mount,
    /// Nothing is mounted: QEMU opens volumes as `nfs://` itself and the
    /// agent's volume operations use qemu-img and an NFSv3 client.
    Qemu,
}

impl NetfsAccess {
    /// The spelling of `--access`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetfsAccess::Auto => "auto",
            NetfsAccess::Mount => "mount",
            NetfsAccess::Qemu => "qemu",
        }
    }

    /// The mode to use given whether the kernel has an NFS client.
    pub fn resolve(self, kernel_nfs: bool) -> NetfsAccess {
        match self {
            NetfsAccess::Auto if kernel_nfs => NetfsAccess::Mount,
            NetfsAccess::Auto => NetfsAccess::Qemu,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(path: &str) -> NetfsSource {
        NetfsSource {
            host: "192.168.1.101".into(),
            path: path.into(),
            access: NetfsAccess::Auto,
        }
    }

    #[test]
    fn urls_join_export_and_file_with_single_slashes() {
        assert_eq!(src("/nfs").url("test01"), "nfs://192.168.1.101/nfs/test01");
        assert_eq!(
            src("/nfs/").url("a.qcow2"),
            "nfs://192.168.1.101/nfs/a.qcow2"
        );
        assert_eq!(src("/").url("a"), "nfs://192.168.1.101/a");
        assert_eq!(src("/srv/vm").file_path("a"), "/srv/vm/a");
        assert_eq!(src("/").file_path("a"), "/a");
    }

    #[test]
    fn auto_access_follows_the_kernel() {
        assert_eq!(NetfsAccess::Auto.resolve(true), NetfsAccess::Mount);
        assert_eq!(NetfsAccess::Auto.resolve(false), NetfsAccess::Qemu);
        assert_eq!(NetfsAccess::Qemu.resolve(true), NetfsAccess::Qemu);
        assert_eq!(NetfsAccess::Mount.resolve(false), NetfsAccess::Mount);
    }

    #[test]
    fn old_definitions_load_as_dir_pools() {
        let d: PoolDef =
            serde_json::from_str(r#"{"name":"p","target":"/t","shared":true,"autostart":false}"#)
                .unwrap();
        assert_eq!(d.kind, PoolKind::Dir);
        assert_eq!(d.source, None);
        assert_eq!(d.rbd, None);
    }

    #[test]
    fn logical_sources_take_lvm_names_and_plain_devices() {
        let src = |vg: &str, dev: &str| LogicalSource {
            vg: vg.into(),
            devices: vec![PathBuf::from(dev)],
        };
        assert!(src("vg0", "/dev/sdb").check().is_ok());
        assert!(src("tern-t_1.x+", "/dev/loop3").check().is_ok());
        assert_eq!(
            src("vg0", "/dev/sdb").default_target(),
            PathBuf::from("/dev/vg0")
        );
        for bad in ["", "-vg", "..", "a/b", "a b"] {
            let e = src(bad, "/dev/sdb").check().unwrap_err();
            assert!(e.contains("--source-name"), "{e}");
        }
        for bad in ["sdb", "/dev/../etc/x", "/dev/a,/dev/b"] {
            let e = src("vg", bad).check().unwrap_err();
            assert!(e.contains("--source-dev"), "{e}");
        }
        let d: PoolDef = serde_json::from_str(
            r#"{"name":"p","target":"/dev/vg","shared":false,"autostart":false,"kind":"logical","logical":{"vg":"vg"}}"#,
        )
        .unwrap();
        assert_eq!(d.kind, PoolKind::Logical);
        assert!(d.logical.unwrap().devices.is_empty());
    }

    #[test]
    fn rbd_monitors_default_to_port_6789() {
        let s = RbdSource {
            hosts: vec![
                crate::NetHost {
                    name: "10.0.0.1".into(),
                    port: None,
                },
                crate::NetHost {
                    name: "10.0.0.2".into(),
                    port: Some(3300),
                },
            ],
            name: "vms".into(),
            auth: None,
        };
        assert_eq!(s.mon_host(), "10.0.0.1:6789,10.0.0.2:3300");
    }
}
