//! Finding the host kernel and the guest's kernel modules.

use crate::error::BuildError;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Modules the guest loads, by name. Their dependencies are added and the
/// load order resolved from `modules.dep`; built-in ones are skipped.
pub const GUEST_MODULES: [&str; 10] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "e1000",
    "button",
    "evdev",
    // The ISA/ACPI panic notifier, so `<panic>` and `<on_crash>` see a
    // guest kernel panic.
    "pvpanic_mmio",
    // The i6300esb watchdog, for `<watchdog>` and `tern.watchdog_stall`.
    "i6300esb",
    // virtio-serial ports, for the guest-agent channel (`<channel>`).
    "virtio_console",
    // UEFI variables from a guest booted by OVMF (`tern.efivar`).
    "efivarfs",
];

/// Compare version strings naturally (`6.1.0-10` < `6.1.0-9` is false).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    for (x, y) in parts(a).iter().zip(parts(b).iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    parts(a).len().cmp(&parts(b).len())
}

/// The newest `vmlinuz-*` in `boot_dir`.
pub fn newest_kernel(boot_dir: &Path) -> Result<PathBuf, BuildError> {
    let not_found = || BuildError::KernelNotFound {
        searched: format!("{}/vmlinuz-*", boot_dir.display()),
    };
    let entries = std::fs::read_dir(boot_dir).map_err(|_| not_found())?;
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-")
                .filter(|v| !v.is_empty())
                .map(|v| (v.to_string(), e.path()))
        })
        .max_by(|a, b| compare_versions(&a.0, &b.0))
        .map(|(_, p)| p)
        .ok_or_else(not_found)
}

/// The kernel version in a `vmlinuz-<version>` file name.
pub fn version_of(kernel: &Path) -> Option<String> {
    let name = kernel.file_name()?.to_str()?;
    name.strip_prefix("vmlinuz-")
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Module name of a `modules.dep` path (`kernel/x/virtio-pci.ko.xz` -> `virtio_pci`).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// The modules to load, in load order (dependencies first), as paths
/// relative to the module directory. Names listed in `builtin_text`
/// (`modules.builtin`) are skipped; an unknown name is returned as `Err(name)`.
pub fn resolve_modules(
    dep_text: &str,
    builtin_text: &str,
    wanted: &[&str],
) -> Result<Vec<String>, String> {
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in dep_text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let module = module.trim();
        deps.insert(module, rest.split_whitespace().collect());
        by_name.insert(module_name(module), module);
    }
    let builtin: HashSet<String> = builtin_text.lines().map(module_name).collect();

    fn visit<'a>(
        m: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut HashSet<&'a str>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m) {
            return;
        }
        for d in deps.get(m).map(Vec::as_slice).unwrap_or_default() {
            visit(d, deps, seen, order);
        }
        order.push(m.to_string());
    }

    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for name in wanted {
        let name = name.replace('-', "_");
        match by_name.get(&name) {
            Some(m) => visit(m, &deps, &mut seen, &mut order),
            None if builtin.contains(&name) => {}
            None => return Err(name),
        }
    }
    Ok(order)
}

/// A kernel module ready to be put in the initramfs.
pub struct Module {
    /// Module name (`virtio_pci`).
    pub name: String,
    /// Uncompressed `.ko` contents.
    pub data: Vec<u8>,
}

/// Read the guest modules of `modules_dir` in load order, decompressing
/// `.ko.xz` / `.ko.gz` files.
pub fn load_modules(modules_dir: &Path) -> Result<Vec<Module>, BuildError> {
    if !modules_dir.join("modules.dep").is_file() {
        return Err(BuildError::ModulesDirMissing {
            path: modules_dir.to_path_buf(),
        });
    }
    let read = |name: &str| {
        let p = modules_dir.join(name);
        std::fs::read_to_string(&p).map_err(BuildError::io(p))
    };
    let dep = read("modules.dep")?;
    let builtin = read("modules.builtin").unwrap_or_default();
    let order = resolve_modules(&dep, &builtin, &GUEST_MODULES).map_err(|name| {
        BuildError::ModuleMissing {
            name,
            dir: modules_dir.to_path_buf(),
        }
    })?;
    let mut modules = Vec::new();
    for rel in order {
        let path = modules_dir.join(&rel);
        let raw = std::fs::read(&path).map_err(BuildError::io(&path))?;
        let data = if rel.ends_with(".ko") {
            raw
        } else if rel.ends_with(".ko.xz") {
            let mut out = Vec::new();
            lzma_rs::xz_decompress(&mut std::io::Cursor::new(&raw), &mut out)
                .map_err(|_| BuildError::ModuleFormat { path: path.clone() })?;
            out
        } else if rel.ends_with(".ko.gz") {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
                .map_err(|_| BuildError::ModuleFormat { path: path.clone() })?;
            out
        } else {
            return Err(BuildError::ModuleFormat { path });
        };
        modules.push(Module {
            name: module_name(&rel),
            data,
        });
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/acpi/button.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    #[test]
    fn dependencies_come_first() {
        let order = resolve_modules(
            DEP,
            "kernel/drivers/input/evdev.ko\n",
            &["virtio_pci", "virtio_blk", "virtio-net", "button", "evdev"],
        )
        .expect("resolves");
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "button"
            ]
        );
    }

    #[test]
    fn unknown_module_is_reported() {
        assert_eq!(
            resolve_modules(DEP, "", &["e1000"]),
            Err("e1000".to_string())
        );
    }

    #[test]
    fn natural_version_order() {
        assert_eq!(
            compare_versions("6.1.0-10-amd64", "6.1.0-9-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.1.0-28-amd64", "6.12.0-1-amd64"),
            Ordering::Less
        );
        assert_eq!(compare_versions("6.1.0", "6.1.0"), Ordering::Equal);
    }

    #[test]
    fn version_from_file_name() {
        assert_eq!(
            version_of(Path::new("/boot/vmlinuz-6.1.0-56-amd64")).as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(version_of(Path::new("/tmp/bzImage")), None);
        assert_eq!(
            module_name("kernel/drivers/net/virtio-net.ko.zst"),
            "virtio_net"
        );
    }
}
