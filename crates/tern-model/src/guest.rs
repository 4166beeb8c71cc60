//! The parts of a definition that operators' tools (virt-install,
//! virt-manager, OpenStack Nova, Proxmox exports) write beyond a bare
//! disk-and-NIC guest: device addresses, firmware, clock timers,
//! hypervisor features, and the small devices (guest-agent channel, RNG,
//! watchdog, sound, TPM, panic notifier).
//!
//! Every field here is guest-visible or decides what QEMU does on a guest
//! event, so all of it reaches the QEMU command line and `dumpxml`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `<address>`: where a device sits on its bus. Given, it is honoured;
/// absent, Tern assigns one at define time (see [`crate::layout`]) so the
/// guest's device layout never changes between starts and hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Address {
    /// `type='pci'`: domain:bus:slot.function.
    Pci {
        /// `domain=` (always 0 for Tern).
        domain: u16,
        /// `bus=`: 0 is the root bus, others are `<controller type='pci' index=N>`.
        bus: u8,
        /// `slot=` 0..=31.
        slot: u8,
        /// `function=` 0..=7.
        function: u8,
        /// `multifunction='on'`.
        multifunction: bool,
    },
    /// `type='drive'`: a disk on an IDE, SATA or SCSI controller.
    Drive {
        /// `controller=`.
        controller: u32,
        /// `bus=`.
        bus: u32,
        /// `target=`.
        target: u32,
        /// `unit=`.
        unit: u32,
    },
    /// `type='virtio-serial'`: a port on a virtio-serial controller.
    VirtioSerial {
        /// `controller=`.
        controller: u32,
        /// `bus=`.
        bus: u32,
        /// `port=`.
        port: u32,
    },
    /// `type='usb'`: a port on a USB controller.
    Usb {
        /// `bus=`.
        bus: u32,
        /// `port=` (dotted for hubs, e.g. "1.2").
        port: String,
    },
}

impl Address {
    /// A PCI address on `bus` at `slot`, function 0.
    pub fn pci(bus: u8, slot: u8) -> Address {
        Address::Pci {
            domain: 0,
            bus,
            slot,
            function: 0,
            multifunction: false,
        }
    }
}

/// `<clock><timer name=... present=... tickpolicy=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// rtc, pit, hpet, kvmclock, hypervclock, tsc.
    pub name: String,
    /// `present='yes'|'no'`.
    pub present: Option<bool>,
    /// `tickpolicy=` delay, catchup, merge, discard.
    pub tickpolicy: Option<String>,
}

/// One `<features><hyperv>` enlightenment, e.g. `<relaxed state='on'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervFeature {
    /// Element name: relaxed, vapic, spinlocks, vpindex, runtime, synic,
    /// stimer, reset, frequencies, reenlightenment, tlbflush, ipi, vendor_id.
    pub name: String,
    /// `state='on'`.
    pub on: bool,
    /// `retries=` (spinlocks) or `value=` (vendor_id).
    pub value: Option<String>,
}

/// `<os><loader>`: the firmware image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loader {
    /// The code image, e.g. /usr/share/OVMF/OVMF_CODE_4M.fd.
    pub path: PathBuf,
    /// `readonly='yes'`.
    pub readonly: bool,
    /// `type='pflash'` or `'rom'`.
    pub loader_type: String,
    /// `secure='yes'|'no'`.
    pub secure: Option<bool>,
}

/// `<os><nvram template=...>`: the guest's own UEFI variable store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nvram {
    /// The per-guest variable file.
    pub path: PathBuf,
    /// The empty store it is created from.
    pub template: Option<PathBuf>,
}

/// `<os><firmware><feature enabled=... name=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFeature {
    /// e.g. secure-boot, enrolled-keys.
    pub name: String,
    /// `enabled='yes'`.
    pub enabled: bool,
}

/// `<cpu><feature policy=... name=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeature {
    /// require, force, disable, forbid or optional.
    pub policy: String,
    /// QEMU/libvirt flag name, e.g. "vmx", "pcid".
    pub name: String,
}

/// `<cpu><topology>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    /// `sockets=`.
    pub sockets: u32,
    /// `dies=` (1 when absent).
    pub dies: u32,
    /// `clusters=` (1 when absent).
    pub clusters: u32,
    /// `cores=`.
    pub cores: u32,
    /// `threads=`.
    pub threads: u32,
}

/// Details of a `<controller>` that decide what QEMU builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ControllerDetail {
    /// `ports=` (USB xHCI, virtio-serial).
    pub ports: Option<u32>,
    /// `<model name=...>` (PCI controllers).
    pub model_name: Option<String>,
    /// `<target chassis=...>` (PCI root ports).
    pub chassis: Option<u32>,
    /// `<target port=...>` (PCI root ports), as written (e.g. "0x10").
    pub port: Option<String>,
    /// `<master startport=...>` (USB companion controllers).
    pub master_startport: Option<u32>,
    /// `<driver queues=...>`.
    pub queues: Option<u32>,
}

/// `<channel>`: a virtio-serial port to a host socket or SPICE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Backend.
    pub kind: ChannelKind,
    /// `<target type='virtio' name=...>`, e.g. "org.qemu.guest_agent.0".
    pub target_name: String,
    /// Where the port sits.
    pub address: Option<Address>,
}

/// Backend of a `<channel>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum ChannelKind {
    /// `type='unix'`: a socket QEMU listens on. The path is host-local; an
    /// absent one is chosen in the run directory at start.
    Unix {
        /// `<source mode='bind' path=...>`.
        path: Option<PathBuf>,
    },
    /// `type='spicevmc'`: the SPICE agent channel.
    Spicevmc,
}

/// The name of the QEMU guest agent's channel.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// `<rng model='virtio'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    /// `<backend model='random'>` path, e.g. /dev/urandom.
    pub source: PathBuf,
    /// Where the device sits.
    pub address: Option<Address>,
}

/// `<watchdog model=... action=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watchdog {
    /// i6300esb, ib700 or itco.
    pub model: String,
    /// reset, shutdown, poweroff, pause, none, dump, inject-nmi.
    pub action: String,
    /// Where the device sits.
    pub address: Option<Address>,
}

/// `<sound model=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sound {
    /// ich9, ich6, ac97.
    pub model: String,
    /// `<audio id=...>` it plays to.
    pub audio_id: Option<u32>,
    /// Where the device sits.
    pub address: Option<Address>,
}

/// `<audio id=... type=...>`: where guest sound goes on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audio {
    /// `id=`.
    pub id: u32,
    /// none or spice.
    pub kind: String,
}

/// `<tpm model='tpm-crb'|'tpm-tis'><backend type='emulator' version='2.0'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tpm {
    /// tpm-crb or tpm-tis.
    pub model: String,
    /// `<backend version=...>`; only 2.0.
    pub version: String,
}

/// `<panic model='isa'|'pvpanic'>`: lets the guest report a crash, so
/// `<on_crash>` can act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Panic {
    /// isa or pvpanic (PCI).
    pub model: String,
    /// Where the device sits (PCI model only).
    pub address: Option<Address>,
}

/// `<redirdev bus='usb' type='spicevmc'>`: USB redirection through SPICE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirDev {
    /// Where the device sits.
    pub address: Option<Address>,
}

/// `<graphics type='spice'>` settings beyond VNC's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SpiceOptions {
    /// `<image compression=...>`.
    pub image_compression: Option<String>,
}

/// `<sysinfo type='smbios'>`: the SMBIOS strings the guest reads (cloud-init
/// recognises OpenStack by them). Only guest-visible with
/// `<os><smbios mode='sysinfo'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Sysinfo {
    /// `<bios><entry name=...>` (SMBIOS type 0): vendor, version, date, release.
    pub bios: Vec<(String, String)>,
    /// `<system><entry name=...>` (SMBIOS type 1): manufacturer, product,
    /// version, serial, uuid, sku, family.
    pub system: Vec<(String, String)>,
}
