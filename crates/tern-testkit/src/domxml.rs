//! libvirt domain XML for the test guest.

use crate::GuestImage;
use std::path::PathBuf;

/// One disk of a test guest.
#[derive(Debug, Clone)]
pub struct TestDisk {
    /// Image path.
    pub path: PathBuf,
    /// "raw" or "qcow2".
    pub format: String,
    /// Target device, e.g. "vda".
    pub target: String,
    /// libvirt cache mode.
    pub cache: String,
}

/// What a test guest looks like.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Domain name.
    pub name: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Kernel and initramfs.
    pub image: GuestImage,
    /// Workload parameters appended to the kernel command line
    /// (e.g. "tern.mem=64 tern.dirty=20").
    pub workload: String,
    /// Disks.
    pub disks: Vec<TestDisk>,
    /// A bridged NIC: (bridge, mac).
    pub bridge: Option<(String, String)>,
    /// A user-mode NIC.
    pub user_net: bool,
}

impl GuestSpec {
    /// A small idle guest.
    pub fn new(name: &str, image: &GuestImage) -> Self {
        GuestSpec {
            name: name.into(),
            memory_mib: 256,
            vcpus: 1,
            image: image.clone(),
            workload: "tern.mem=32 tern.dirty=0".into(),
            disks: Vec::new(),
            bridge: None,
            user_net: false,
        }
    }

    /// Sets the workload parameters.
    pub fn workload(mut self, w: &str) -> Self {
        self.workload = w.into();
        self
    }

    /// Renders the XML with every disk under `/dev` as libvirt writes a
    /// disk on a block device (an LVM volume, a loop device): `<disk
    /// type='block'>` with `<source dev=>`.
    pub fn to_xml_block_devices(&self) -> String {
        let mut xml = self.to_xml();
        for d in self.disks.iter().filter(|d| d.path.starts_with("/dev")) {
            let file = format!("<source file='{}'/>", d.path.display());
            let Some(at) = xml.find(&file) else { continue };
            let dev = format!("<source dev='{}'/>", d.path.display());
            xml.replace_range(at..at + file.len(), &dev);
            let open = "<disk type='file'";
            if let Some(start) = xml[..at].rfind(open) {
                xml.replace_range(start..start + open.len(), "<disk type='block'");
            }
        }
        xml
    }

    /// Renders the XML.
    pub fn to_xml(&self) -> String {
        let mut devs = String::new();
        for d in &self.disks {
            devs.push_str(&format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}' cache='{}'/>\n      <source file='{}'/>\n      <target dev='{}' bus='virtio'/>\n    </disk>\n",
                d.format,
                d.cache,
                d.path.display(),
                d.target
            ));
        }
        if let Some((br, mac)) = &self.bridge {
            devs.push_str(&format!(
                "    <interface type='bridge'>\n      <mac address='{mac}'/>\n      <source bridge='{br}'/>\n      <model type='virtio'/>\n    </interface>\n"
            ));
        }
        if self.user_net {
            devs.push_str(
                "    <interface type='user'>\n      <model type='virtio'/>\n    </interface>\n",
            );
        }
        format!(
            "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='MiB'>{mem}</memory>\n  <vcpu>{vcpus}</vcpu>\n  <os>\n    <type arch='x86_64'>hvm</type>\n    <kernel>{kernel}</kernel>\n    <initrd>{initrd}</initrd>\n    <cmdline>{cmdline}</cmdline>\n  </os>\n  <features><acpi/><apic/></features>\n  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n{devs}    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n  </devices>\n</domain>\n",
            name = self.name,
            mem = self.memory_mib,
            vcpus = self.vcpus,
            kernel = self.image.kernel.display(),
            initrd = self.image.initrd.display(),
            cmdline = crate::default_cmdline(&self.workload),
        )
    }
}
