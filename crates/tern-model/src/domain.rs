//! The domain definition: what a guest is, independent of where it runs.
//!
//! These types mirror the subset of libvirt's domain XML that Tern honours.
//! Anything Tern accepts here it must also be able to start, migrate and
//! print back (see `xml` for the import/export and its round-trip tests).

use crate::guest::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use uuid::Uuid;

/// A guest definition, as `virsh define` would store it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Unique name on a host (`<name>`).
    pub name: String,
    /// Stable identity across hosts (`<uuid>`).
    pub uuid: Uuid,
    /// `<domain type=...>`: "kvm" or "qemu". The accelerator actually used is
    /// a host setting; this is kept for round trips.
    pub domain_type: String,
    /// Free-form `<title>`.
    pub title: Option<String>,
    /// Free-form `<description>`.
    pub description: Option<String>,
    /// Maximum memory in KiB (`<memory>`).
    pub memory_kib: u64,
    /// Current memory in KiB (`<currentMemory>`); equal to `memory_kib` when absent.
    pub current_memory_kib: u64,
    /// Number of virtual CPUs (`<vcpu>`).
    pub vcpus: u32,
    /// Boot configuration (`<os>`).
    pub os: Os,
    /// CPU model (`<cpu>`); `None` lets the host default apply.
    pub cpu: Option<Cpu>,
    /// `<features>`: acpi / apic / pae flags.
    pub features: Features,
    /// `<clock offset=...>`.
    pub clock_offset: Option<String>,
    /// `<on_poweroff>`.
    pub on_poweroff: LifecycleAction,
    /// `<on_reboot>`.
    pub on_reboot: LifecycleAction,
    /// `<on_crash>`.
    pub on_crash: LifecycleAction,
    /// Everything under `<devices>`.
    pub devices: Devices,
    /// `<clock><timer>` elements.
    #[serde(default)]
    pub clock_timers: Vec<Timer>,
    /// `<vcpu current=...>`: vCPUs online at start (hot-pluggable up to `vcpus`).
    #[serde(default)]
    pub vcpus_current: Option<u32>,
    /// `<sysinfo type='smbios'>`.
    #[serde(default)]
    pub sysinfo: Option<Sysinfo>,
    /// `<memoryBacking>`: huge pages, KSM and preallocation of guest RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_backing: Option<MemoryBacking>,
    /// `<cputune>`: vCPU and emulator threads pinned to host CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cputune: Option<CpuTune>,
    /// `<vcpu cpuset=>`: the host CPUs every vCPU and the emulator may run
    /// on unless `<cputune>` pins them otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_cpuset: Option<String>,
    /// `<numatune><memory>`: the host NUMA nodes guest RAM comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numatune: Option<NumaTune>,
    /// `<iothreads>N</iothreads>`: I/O threads QEMU runs (`-object
    /// iothread`), numbered 1..=N, for disks that name one.
    #[serde(default)]
    pub iothreads: u32,
}

/// `<numatune><memory mode= nodeset=/>`: a memory policy QEMU sets on
/// guest RAM itself (`host-nodes=`, `policy=`), without cgroups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaTune {
    /// `strict`, `preferred` or `interleave`.
    pub mode: String,
    /// Host NUMA nodes, as libvirt writes them (`0-1,^3`).
    pub nodeset: String,
}

impl NumaTune {
    /// QEMU's `policy=` for the mode.
    pub fn qemu_policy(&self) -> &'static str {
        match self.mode.as_str() {
            "preferred" => "preferred",
            "interleave" => "interleave",
            _ => "bind",
        }
    }
}

/// `<cputune>`: thread pinning, which the agent applies with
/// `sched_setaffinity` on QEMU's threads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CpuTune {
    /// `<vcpupin vcpu= cpuset=>`.
    #[serde(default)]
    pub vcpupins: Vec<VcpuPin>,
    /// `<emulatorpin cpuset=>`: QEMU's threads other than the vCPUs.
    #[serde(default)]
    pub emulatorpin: Option<String>,
}

/// One `<vcpupin>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuPin {
    /// The vCPU's index.
    pub vcpu: u32,
    /// Host CPUs, as libvirt writes them (`0-3,^2`).
    pub cpuset: String,
}

/// `<memoryBacking>`: how the host backs guest RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemoryBacking {
    /// `<hugepages>`: guest RAM on hugetlbfs (`memory-backend-file`).
    #[serde(default)]
    pub hugepages: Option<Hugepages>,
    /// `<nosharepages/>`: KSM does not merge this guest's pages (`mem-merge=off`).
    #[serde(default)]
    pub nosharepages: bool,
    /// `<allocation mode='immediate'>`: all RAM allocated at start (`prealloc=on`).
    #[serde(default)]
    pub preallocate: bool,
}

/// `<hugepages>`, with at most one page size for all guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hugepages {
    /// `<page size=>` in KiB; `None`: the host's default huge page size.
    #[serde(default)]
    pub page_size_kib: Option<u64>,
}

/// `<os>`: firmware-less direct kernel boot or disk boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Os {
    /// `<type>` text, always "hvm" for QEMU/KVM guests.
    pub os_type: String,
    /// `<type arch=...>`.
    pub arch: Option<String>,
    /// `<type machine=...>`: QEMU machine type; must match on both migration ends.
    pub machine: Option<String>,
    /// `<kernel>` for direct kernel boot.
    pub kernel: Option<PathBuf>,
    /// `<initrd>`.
    pub initrd: Option<PathBuf>,
    /// `<cmdline>`.
    pub cmdline: Option<String>,
    /// `<boot dev=...>` in order.
    pub boot: Vec<BootDevice>,
    /// `<bootmenu enable=...>`.
    #[serde(default)]
    pub bootmenu: Option<bool>,
    /// `<os firmware=...>`: "efi" or "bios"; Tern fills in `loader` and
    /// `nvram` for "efi" at define time, as libvirt does.
    #[serde(default)]
    pub firmware: Option<String>,
    /// `<firmware><feature>` requests (secure-boot, enrolled-keys).
    #[serde(default)]
    pub firmware_features: Vec<FirmwareFeature>,
    /// `<loader>`.
    #[serde(default)]
    pub loader: Option<Loader>,
    /// `<nvram>`.
    #[serde(default)]
    pub nvram: Option<Nvram>,
    /// `<smbios mode=...>`: "sysinfo" shows `<sysinfo>` to the guest.
    #[serde(default)]
    pub smbios_mode: Option<String>,
}

/// `<boot dev=...>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    /// `hd`
    Hd,
    /// `cdrom`
    Cdrom,
    /// `network`
    Network,
    /// `fd`
    Fd,
}

/// `<cpu mode=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// How the guest CPU relates to the host's.
    pub mode: CpuMode,
    /// `<model>` for `custom` mode (e.g. "qemu64", "Skylake-Server").
    pub model: Option<String>,
    /// `<feature policy=... name=...>` flags on top of the model.
    #[serde(default)]
    pub features: Vec<CpuFeature>,
    /// `match=` (exact, minimum, strict), kept as written.
    #[serde(default)]
    pub match_mode: Option<String>,
    /// `check=` (none, partial, full), kept as written.
    #[serde(default)]
    pub check: Option<String>,
    /// `<topology>`.
    #[serde(default)]
    pub topology: Option<CpuTopology>,
}

/// libvirt's CPU modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuMode {
    /// `host-passthrough`: `-cpu host` (KVM) or `-cpu max` (TCG).
    HostPassthrough,
    /// `host-model`: treated like passthrough, resolved per host.
    HostModel,
    /// `custom`: a named model.
    Custom,
    /// `maximum`: `-cpu max`.
    Maximum,
}

/// `<features>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Features {
    /// `<acpi/>`
    pub acpi: bool,
    /// `<apic/>`
    pub apic: bool,
    /// `<pae/>`
    pub pae: bool,
    /// `<vmport state=...>`: VMware I/O port (i440fx/q35 only).
    #[serde(default)]
    pub vmport: Option<bool>,
    /// `<smm state=...>`: System Management Mode (needed by secure boot).
    #[serde(default)]
    pub smm: Option<bool>,
    /// `<vmcoreinfo state=...>`: lets a guest kernel tell QEMU where its crash notes are.
    #[serde(default)]
    pub vmcoreinfo: Option<bool>,
    /// `<hyperv mode=...>`; `None` when absent.
    #[serde(default)]
    pub hyperv_mode: Option<String>,
    /// The `<hyperv>` enlightenments.
    #[serde(default)]
    pub hyperv: Vec<HypervFeature>,
    /// `<kvm><hidden state='on'/>`.
    #[serde(default)]
    pub kvm_hidden: Option<bool>,
}

/// What happens on guest power-off, reboot or crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleAction {
    /// Stop the QEMU process.
    Destroy,
    /// Restart the guest in the same QEMU.
    Restart,
    /// Keep QEMU around, paused, for debugging.
    Preserve,
    /// Rename and restart (accepted, treated as restart).
    RenameRestart,
}

/// `<devices>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Devices {
    /// `<emulator>` path, if pinned.
    pub emulator: Option<PathBuf>,
    /// `<disk>` elements.
    pub disks: Vec<Disk>,
    /// `<interface>` elements.
    pub interfaces: Vec<Interface>,
    /// `<serial>` elements.
    pub serials: Vec<Serial>,
    /// `<console>` elements (usually an alias of serial 0).
    pub consoles: Vec<Console>,
    /// `<graphics>` elements.
    pub graphics: Vec<Graphics>,
    /// `<video>` elements.
    pub videos: Vec<Video>,
    /// `<controller>` elements (kept for round trips; QEMU adds its own).
    pub controllers: Vec<Controller>,
    /// `<input>` elements.
    pub inputs: Vec<Input>,
    /// `<memballoon model=...>`; `None` means no balloon element.
    pub memballoon: Option<String>,
    /// The balloon's `<address>`.
    #[serde(default)]
    pub memballoon_address: Option<Address>,
    /// `<channel>` elements.
    #[serde(default)]
    pub channels: Vec<Channel>,
    /// `<rng>` elements.
    #[serde(default)]
    pub rngs: Vec<Rng>,
    /// `<watchdog>` elements.
    #[serde(default)]
    pub watchdogs: Vec<Watchdog>,
    /// `<sound>` elements.
    #[serde(default)]
    pub sounds: Vec<Sound>,
    /// `<audio>` elements.
    #[serde(default)]
    pub audios: Vec<Audio>,
    /// `<tpm>` elements.
    #[serde(default)]
    pub tpms: Vec<Tpm>,
    /// `<panic>` elements.
    #[serde(default)]
    pub panics: Vec<Panic>,
    /// `<redirdev>` elements.
    #[serde(default)]
    pub redirdevs: Vec<RedirDev>,
}

/// `<disk type=... device=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// `type='file'` or `type='block'`.
    pub source_type: DiskSourceType,
    /// `device='disk'` or `device='cdrom'`.
    pub device: DiskDevice,
    /// `<driver type=...>`: image format.
    pub format: DiskFormat,
    /// `<driver cache=...>`; `None` means the hypervisor default.
    pub cache: Option<CacheMode>,
    /// `<source file=...>` / `<source dev=...>`; `None` for an empty cdrom.
    pub source: Option<PathBuf>,
    /// Where a `type='network'` or `type='volume'` disk lives (its
    /// `<source>` names no host path); `None` for file and block disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<DiskRemote>,
    /// `<target dev=...>` e.g. "vda".
    pub target_dev: String,
    /// `<target bus=...>`.
    pub target_bus: DiskBus,
    /// `<readonly/>`
    pub readonly: bool,
    /// `<shareable/>`
    pub shareable: bool,
    /// `<driver io=...>`: native, threads or io_uring.
    #[serde(default)]
    pub io: Option<String>,
    /// `<driver discard=...>`: unmap or ignore.
    #[serde(default)]
    pub discard: Option<String>,
    /// `<driver detect_zeroes=...>`: off, on or unmap.
    #[serde(default)]
    pub detect_zeroes: Option<String>,
    /// `<driver iothread=N>`: the I/O thread (1..=`iothreads`) a virtio
    /// disk runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iothread: Option<u32>,
    /// `<boot order=...>`: per-device boot priority.
    #[serde(default)]
    pub boot_order: Option<u32>,
    /// `<serial>`: the disk serial number the guest sees.
    #[serde(default)]
    pub serial: Option<String>,
    /// Where the disk sits (PCI for virtio, drive for IDE/SATA/SCSI).
    #[serde(default)]
    pub address: Option<Address>,
}

/// Where a disk's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskSourceType {
    /// A regular file.
    File,
    /// A block device.
    Block,
    /// An image QEMU opens itself over the network (`<source protocol=...>`).
    Network,
    /// A volume of a storage pool (`<source pool=... volume=...>`), resolved
    /// on each host by that host's pool of the same name.
    Volume,
}

/// What the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskDevice {
    /// A hard disk.
    Disk,
    /// A CD-ROM drive.
    Cdrom,
}

/// Image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// qcow2
    Qcow2,
    /// raw
    Raw,
}

/// libvirt's `cache=` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// No host page cache (O_DIRECT): safe for migration on shared storage.
    None,
    /// Write-through page cache.
    Writethrough,
    /// Write-back page cache: unsafe for shared-storage migration.
    Writeback,
    /// O_DIRECT without flushes.
    Directsync,
    /// Ignore flushes entirely.
    Unsafe,
}

/// Disk bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk
    Virtio,
    /// IDE
    Ide,
    /// SATA (AHCI)
    Sata,
    /// SCSI (virtio-scsi)
    Scsi,
}

/// `<interface>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Backend.
    pub kind: InterfaceKind,
    /// `<mac address=...>`, lower case.
    pub mac: Option<String>,
    /// `<model type=...>` e.g. "virtio", "e1000".
    pub model: Option<String>,
    /// `<virtualport type='openvswitch'>` with its interface id.
    pub virtualport: Option<VirtualPort>,
    /// `<boot order=...>`.
    #[serde(default)]
    pub boot_order: Option<u32>,
    /// Where the NIC sits.
    #[serde(default)]
    pub address: Option<Address>,
}

/// Network backend of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum InterfaceKind {
    /// `type='user'`: QEMU's slirp.
    User,
    /// `type='bridge'` with `<source bridge=...>`.
    Bridge {
        /// The host bridge to join.
        bridge: String,
    },
    /// `type='network'` with `<source network=...>`: a network each host
    /// defines (`tern net-define-as NAME --bridge BR`), so one definition
    /// joins the right bridge wherever the guest runs.
    Network {
        /// The network's name.
        network: String,
    },
}

/// `<virtualport>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualPort {
    /// `type=` e.g. "openvswitch".
    pub port_type: String,
    /// `<parameters interfaceid=...>`.
    pub interface_id: Option<String>,
}

/// `<serial>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serial {
    /// Backend.
    pub kind: CharDev,
    /// `<target port=...>`.
    pub port: u32,
}

/// `<console>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Console {
    /// Backend.
    pub kind: CharDev,
    /// `<target type=...>` e.g. "serial".
    pub target_type: String,
    /// `<target port=...>`.
    pub port: u32,
}

/// Character device backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum CharDev {
    /// A pseudo terminal (the agent also logs it for `tern console`).
    Pty,
    /// Append to a file.
    File {
        /// `<source path=...>`
        path: PathBuf,
    },
}

/// `<graphics>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graphics {
    /// Only "vnc" is honoured.
    pub kind: String,
    /// `port=`; `None` or -1 with autoport.
    pub port: Option<i32>,
    /// `autoport='yes'`.
    pub autoport: bool,
    /// `listen=` address.
    pub listen: Option<String>,
    /// SPICE-only settings.
    #[serde(default)]
    pub spice: Option<SpiceOptions>,
}

/// `<video><model type=... vram=... heads=.../></video>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Video {
    /// e.g. "cirrus", "vga", "virtio", "none".
    pub model: String,
    /// `vram=` KiB.
    pub vram: Option<u64>,
    /// `heads=`.
    pub heads: Option<u32>,
    /// `primary='yes'`.
    #[serde(default)]
    pub primary: bool,
    /// Where the adapter sits.
    #[serde(default)]
    pub address: Option<Address>,
}

/// `<controller type=... index=... model=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controller {
    /// e.g. "usb", "pci", "ide".
    pub controller_type: String,
    /// `index=`.
    pub index: u32,
    /// `model=`.
    pub model: Option<String>,
    /// Children and attributes that shape the device.
    #[serde(default)]
    pub detail: ControllerDetail,
    /// Where the controller sits.
    #[serde(default)]
    pub address: Option<Address>,
}

/// `<input type=... bus=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// e.g. "mouse", "keyboard", "tablet".
    pub input_type: String,
    /// e.g. "ps2", "usb".
    pub bus: Option<String>,
    /// Where a USB or virtio input device sits.
    #[serde(default)]
    pub address: Option<Address>,
}

/// The `<source>` of a disk that names no host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum DiskRemote {
    /// `<disk type='network'>`.
    Network(NetworkSource),
    /// `<disk type='volume'>`.
    Volume(VolumeSource),
}

/// `<source protocol=... name=...><host name=... port=.../></source>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSource {
    /// The protocol, which is also the QEMU block driver that opens it.
    pub protocol: NetProtocol,
    /// `name=`: for nfs `export/path/file`, for rbd `pool/image`, for gluster
    /// `volume/path`, for iscsi `iqn.../lun`. Kept as written.
    pub name: String,
    /// `<host>` elements (rbd may list several monitors).
    pub hosts: Vec<NetHost>,
    /// `<auth username=..><secret type='ceph' uuid|usage=../></auth>` (rbd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::CephAuth>,
}

/// Network disk protocols Tern knows how to hand to QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetProtocol {
    /// NFSv3 through libnfs (`nfs://`).
    Nfs,
    /// Ceph RBD through librbd.
    Rbd,
    /// iSCSI through libiscsi.
    Iscsi,
    /// GlusterFS through libgfapi.
    Gluster,
}

impl NetProtocol {
    /// The XML spelling, which is also QEMU's block driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetProtocol::Nfs => "nfs",
            NetProtocol::Rbd => "rbd",
            NetProtocol::Iscsi => "iscsi",
            NetProtocol::Gluster => "gluster",
        }
    }

    /// Parses the XML spelling.
    pub fn parse(s: &str) -> Option<NetProtocol> {
        [
            NetProtocol::Nfs,
            NetProtocol::Rbd,
            NetProtocol::Iscsi,
            NetProtocol::Gluster,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// `<host name=... port=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetHost {
    /// Host name or address.
    pub name: String,
    /// Port; `None` means the protocol's default.
    pub port: Option<u16>,
}

/// `<source pool=... volume=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSource {
    /// Storage pool name (the same on every host the guest may run on).
    pub pool: String,
    /// Volume name inside the pool.
    pub volume: String,
}
