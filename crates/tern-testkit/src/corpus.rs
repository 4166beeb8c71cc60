//! The domain XML corpus of tern-model's tests (virt-install, virt-manager,
//! OpenStack Nova, Proxmox), made startable on a test host: the same XML
//! with only host-local things swapped — disk images for scratch files,
//! host bridges for user networking, and the NVRAM path into the host's
//! directory. Everything guest-visible stays as the tools wrote it.

use std::path::{Path, PathBuf};

/// Names of the corpus documents.
pub const CORPUS: &[&str] = &[
    "virt-install-q35-bios.xml",
    "virt-install-q35-uefi.xml",
    "virt-manager-i440fx.xml",
    "openstack-nova.xml",
    "proxmox-converted.xml",
];

/// The documents virt-install wrote itself (scripts/virt-install-corpus.sh):
/// they name libvirt's network `default` and disks under
/// /var/lib/libvirt/images.
pub const VIRT_INSTALL: &[&str] = &[
    "virt-install/debian12-defaults.xml",
    "virt-install/debian12-q35-bios.xml",
    "virt-install/debian12-q35-uefi.xml",
    "virt-install/debian12-i440fx-vnc.xml",
];

/// The corpus document `name`, as written.
pub fn corpus_xml(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tern-model/tests/fixtures/corpus")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `name`'s XML with its disks, bridges and NVRAM moved into `dir` (the
/// images are created there, 64 MiB, in the format the XML names).
pub fn corpus_for_host(name: &str, dir: &Path) -> String {
    let mut xml = corpus_xml(name);
    let mut n = 0;
    for attr in ["file='", "dev='", "file=\"", "dev=\""] {
        let quote = &attr[attr.len() - 1..];
        let mut from = 0;
        while let Some(at) = xml[from..].find(&format!("<source {attr}")) {
            let start = from + at + "<source ".len() + attr.len();
            let end = start + xml[start..].find(quote).expect("closing quote");
            n += 1;
            let image = dir.join(format!("{}-{n}.img", name.replace('/', "_")));
            create_image(&image, format_before(&xml, start));
            let image = image.display().to_string();
            xml.replace_range(start..end, &image);
            from = start + image.len();
        }
    }
    // A host block device becomes a file with the same contents' role.
    xml = xml
        .replace("<disk type='block'", "<disk type='file'")
        .replace("<source dev='", "<source file='")
        .replace("<disk type=\"block\"", "<disk type=\"file\"")
        .replace("<source dev=\"", "<source file=\"");
    xml = swap_bridges(&xml);
    if let (Some(s), Some(e)) = (xml.find("</nvram>"), xml.find("<nvram")) {
        let open_end = e + xml[e..].find('>').expect("nvram tag") + 1;
        let vars: PathBuf = dir.join(format!("{}_VARS.fd", name.replace('/', "_")));
        xml.replace_range(open_end..s, &vars.display().to_string());
    }
    xml
}

/// The `type=` of the `<driver>` nearest before `at`.
fn format_before(xml: &str, at: usize) -> &str {
    let disk = xml[..at].rfind("<disk").unwrap_or(0);
    let driver = &xml[disk..at];
    if driver.contains("type='qcow2'") || driver.contains("type=\"qcow2\"") {
        "qcow2"
    } else {
        "raw"
    }
}

fn create_image(path: &Path, format: &str) {
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(status.success(), "qemu-img create {}", path.display());
}

/// `<interface type='bridge'>` with `<source bridge=...>` becomes user
/// networking (no bridge exists on a test host); MAC and model stay.
fn swap_bridges(xml: &str) -> String {
    let mut out = String::new();
    for line in xml.lines() {
        let t = line.trim_start();
        if t.starts_with("<source bridge=") {
            continue;
        }
        out.push_str(
            &line
                .replace("<interface type='bridge'>", "<interface type='user'>")
                .replace("<interface type=\"bridge\">", "<interface type=\"user\">"),
        );
        out.push('\n');
    }
    out
}

/// The distribution kernel (a bzImage with an EFI stub) the test guest's
/// `vmlinux` and modules come from: what UEFI firmware can load, where the
/// test guest's own ELF `vmlinux` only boots through PVH.
pub fn efi_stub_kernel() -> PathBuf {
    crate::kernel::newest_kernel(Path::new("/boot")).expect("a /boot/vmlinuz-* kernel")
}

/// The `<name>` of a domain document.
pub fn domain_name(xml: &str) -> String {
    let s = xml.find("<name>").expect("<name>") + "<name>".len();
    xml[s..s + xml[s..].find("</name>").expect("</name>")].to_string()
}
