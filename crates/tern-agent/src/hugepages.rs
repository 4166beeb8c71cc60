//! `<memoryBacking><hugepages/>`: which hugetlbfs directory guest RAM goes
//! in on this host, or why this host cannot give the guest huge pages.
//! Checked before QEMU starts (and so in a migration's Prepare), where
//! QEMU itself would only say "cannot allocate memory" after a while.

use crate::error::{AgentError, Result};
use std::path::{Path, PathBuf};
use tern_model::Domain;

/// What this host offers in huge pages of one size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostPages {
    /// Whether the kernel knows pages of that size at all.
    pub supported: bool,
    /// Pages reserved (`nr_hugepages`).
    pub total: u64,
    /// Pages reserved and not yet used or promised (`free - resv`).
    pub available: u64,
    /// hugetlbfs mounts serving that size.
    pub mounts: Vec<PathBuf>,
}

/// The policy: the directory for a guest of `memory_kib` in pages of
/// `page_kib`, or the one-line refusal.
pub fn pick(
    name: &str,
    memory_kib: u64,
    page_kib: u64,
    host: &HostPages,
) -> std::result::Result<PathBuf, String> {
    let what = format!("domain '{name}' has <memoryBacking><hugepages> ({page_kib} KiB pages)");
    if !host.supported {
        return Err(format!(
            "{what} but this host's kernel has no {page_kib} KiB huge pages; use the size /proc/meminfo shows as Hugepagesize, or remove <hugepages>"
        ));
    }
    if host.total == 0 {
        return Err(format!(
            "{what} but this host has no huge pages of that size configured; reserve them (echo COUNT > /sys/kernel/mm/hugepages/hugepages-{page_kib}kB/nr_hugepages, or vm.nr_hugepages) and mount hugetlbfs, or remove <hugepages>"
        ));
    }
    let Some(dir) = host.mounts.first() else {
        return Err(format!(
            "{what} but no hugetlbfs is mounted for that size; mount one (mount -t hugetlbfs -o pagesize={page_kib}K none /dev/hugepages), or remove <hugepages>"
        ));
    };
    let need = memory_kib.div_ceil(page_kib);
    if host.available < need {
        return Err(format!(
            "{what} and needs {need} free pages, but this host has {} of its {}; reserve more (nr_hugepages), stop another guest, or give this one less memory",
            host.available, host.total
        ));
    }
    Ok(dir.clone())
}

/// `Hugepagesize` of /proc/meminfo, in KiB.
fn default_page_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Hugepagesize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `pagesize=` of a hugetlbfs mount's options, in KiB (`2M`, `1G`,
/// `2048k`); `None` when absent (the default size).
pub fn mount_page_kib(options: &str) -> Option<u64> {
    let v = options
        .split(',')
        .find_map(|o| o.strip_prefix("pagesize="))?;
    let (num, mult) = match v.chars().last()?.to_ascii_uppercase() {
        'K' => (&v[..v.len() - 1], 1),
        'M' => (&v[..v.len() - 1], 1024),
        'G' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 0),
    };
    let n: u64 = num.parse().ok()?;
    Some(if mult == 0 { n / 1024 } else { n * mult })
}

/// hugetlbfs mounts of `/proc/self/mounts` text serving `page_kib`.
pub fn mounts_for(mounts: &str, page_kib: u64, default_kib: u64) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "hugetlbfs").then(|| (f[1], f[3]))
        })
        .filter(|(_, opts)| mount_page_kib(opts).unwrap_or(default_kib) == page_kib)
        // /proc/mounts escapes spaces as \040.
        .map(|(p, _)| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// This host's pages of `page_kib`.
fn host_pages(page_kib: u64, default_kib: u64) -> HostPages {
    let dir = PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{page_kib}kB"));
    let free = read_u64(&dir.join("free_hugepages"));
    let resv = read_u64(&dir.join("resv_hugepages"));
    HostPages {
        supported: dir.is_dir(),
        total: read_u64(&dir.join("nr_hugepages")),
        available: free.saturating_sub(resv),
        mounts: mounts_for(
            &std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
            page_kib,
            default_kib,
        ),
    }
}

/// The hugetlbfs directory for `d`'s RAM, `None` when it asks for no huge
/// pages; refuses by name when this host cannot give them.
pub fn mem_path(d: &Domain) -> Result<Option<PathBuf>> {
    let Some(h) = d.memory_backing.as_ref().and_then(|m| m.hugepages) else {
        return Ok(None);
    };
    let default_kib = default_page_kib().unwrap_or(2048);
    let page_kib = h.page_size_kib.unwrap_or(default_kib);
    let host = host_pages(page_kib, default_kib);
    pick(&d.name, d.memory_kib, page_kib, &host)
        .map(Some)
        .map_err(AgentError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(total: u64, available: u64, mounts: &[&str]) -> HostPages {
        HostPages {
            supported: true,
            total,
            available,
            mounts: mounts.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn a_host_without_pages_is_refused_by_name_with_what_to_do() {
        let e = pick("g", 262_144, 2048, &host(0, 0, &["/dev/hugepages"])).unwrap_err();
        assert!(
            e.contains("domain 'g' has <memoryBacking><hugepages> (2048 KiB pages)"),
            "{e}"
        );
        assert!(e.contains("no huge pages of that size configured"), "{e}");
        assert!(e.contains("hugepages-2048kB/nr_hugepages"), "{e}");
        assert!(!e.contains('\n'));
        let unsupported = HostPages::default();
        let e = pick("g", 1 << 20, 4096, &unsupported).unwrap_err();
        assert!(e.contains("no 4096 KiB huge pages"), "{e}");
    }

    #[test]
    fn pages_without_a_mount_or_too_few_are_refused() {
        let e = pick("g", 262_144, 2048, &host(200, 200, &[])).unwrap_err();
        assert!(e.contains("no hugetlbfs is mounted"), "{e}");
        let e = pick("g", 262_144, 2048, &host(200, 100, &["/h"])).unwrap_err();
        assert!(e.contains("needs 128 free pages"), "{e}");
        assert!(e.contains("100 of its 200"), "{e}");
    }

    #[test]
    fn enough_pages_give_the_first_mount() {
        let p = pick("g", 262_144, 2048, &host(200, 128, &["/a", "/b"])).unwrap();
        assert_eq!(p, PathBuf::from("/a"));
    }

    #[test]
    fn mount_options_name_their_page_size() {
        assert_eq!(mount_page_kib("rw,relatime,pagesize=2M"), Some(2048));
        assert_eq!(mount_page_kib("rw,pagesize=1G"), Some(1_048_576));
        assert_eq!(mount_page_kib("rw,pagesize=2048k"), Some(2048));
        assert_eq!(mount_page_kib("rw,relatime"), None);
        let mounts = "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n\
                      none /mnt/huge\\0401g hugetlbfs rw,pagesize=1024M 0 0\n\
                      none /tmp/h hugetlbfs rw,relatime 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n";
        assert_eq!(
            mounts_for(mounts, 2048, 2048),
            vec![PathBuf::from("/dev/hugepages"), PathBuf::from("/tmp/h")]
        );
        assert_eq!(
            mounts_for(mounts, 1_048_576, 2048),
            vec![PathBuf::from("/mnt/huge 1g")]
        );
    }
}
