//! Building (or reusing) the test guest image: kernel + initramfs.

use crate::error::BuildError;
use crate::initramfs::{self, Contents};
use crate::kernel;
use crate::{elf, vmlinux};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Target triple the workload is built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Bumped whenever the image layout changes, so old cache entries are not reused.
const FORMAT_VERSION: &str = "tern-testguest-1";
/// Whether the initramfs is gzip-compressed.
const GZIP_INITRD: bool = true;

/// A bootable test guest: pass `kernel` to `qemu-system-x86_64 -kernel` and
/// `initrd` to `-initrd`, with a command line from [`default_cmdline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The uncompressed ELF `vmlinux` (booted through PVH), or the original
    /// bzImage when it has no xz payload.
    pub kernel: PathBuf,
    /// The initramfs (gzip-compressed newc cpio).
    pub initrd: PathBuf,
}

/// Where the inputs come from and where the image goes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directory for the cached `vmlinux-*` and `initrd-*` files.
    /// Default: `$TERN_TESTGUEST_DIR`, else `<workspace>/target/testguest`.
    pub cache_dir: PathBuf,
    /// The Cargo workspace that contains `tern-workload`.
    pub workspace: PathBuf,
    /// Kernel (bzImage). Default: the newest `/boot/vmlinuz-*`.
    pub kernel: Option<PathBuf>,
    /// Kernel modules directory. Default: `/lib/modules/<version of the kernel>`.
    pub modules_dir: Option<PathBuf>,
    /// Static busybox binary. Default: `/bin/busybox` (package busybox-static).
    pub busybox: PathBuf,
    /// Print progress lines on stderr.
    pub progress: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        let workspace = workspace_root();
        let cache_dir = std::env::var_os("TERN_TESTGUEST_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target").join("testguest"));
        BuildOptions {
            cache_dir,
            workspace,
            kernel: None,
            modules_dir: None,
            busybox: PathBuf::from("/bin/busybox"),
            progress: false,
        }
    }
}

/// The workspace root, found from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    p.canonicalize().unwrap_or(p)
}

/// The kernel command line for the test guest: serial console, quiet,
/// reboot (and so, with `-no-reboot`, exit QEMU) on panic, then `extra`
/// (the `tern.*` parameters).
pub fn default_cmdline(extra: &str) -> String {
    format!("console=ttyS0 quiet panic=-1 {}", extra.trim())
        .trim_end()
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `data` to `path` through a temporary file and a rename, so other
/// processes see either nothing or the whole file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, data).map_err(BuildError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        BuildError::io(path)(e)
    })
}

/// Remove `initrd-*` files other than `keep` that are over an hour old
/// (leftovers of earlier workload versions). Errors are ignored.
fn prune_old_initrds(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        let is_initrd = e.file_name().to_string_lossy().starts_with("initrd-");
        if is_initrd && old && path != keep {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Build `tern-workload` statically with cargo (incremental: fast when
/// nothing changed) and return the binary's path.
pub fn build_workload(opts: &BuildOptions) -> Result<PathBuf, BuildError> {
    let target_dir = opts.workspace.join("target").join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&opts.workspace)
        .args([
            "build",
            "--release",
            "-p",
            "tern-workload",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // A smaller binary makes a smaller initramfs, which boots faster.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .map_err(|source| BuildError::CargoSpawn { source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        return Err(BuildError::CargoFailed {
            status: out.status,
            tail,
        });
    }
    Ok(target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("tern-workload"))
}

/// Return the cached `vmlinux` for `kernel`, extracting it if needed; or
/// `kernel` itself if it has no xz payload.
fn vmlinux_for(
    opts: &BuildOptions,
    kernel: &Path,
    kernel_bytes: &[u8],
    say: &dyn Fn(&str),
) -> Result<PathBuf, BuildError> {
    let path = opts.cache_dir.join(format!(
        "vmlinux-{}",
        &hex(&Sha256::digest(kernel_bytes))[..16]
    ));
    if path.is_file() {
        say(&format!("reusing {}", path.display()));
        return Ok(path);
    }
    say(&format!(
        "extracting vmlinux from {} (one-time, a few seconds)",
        kernel.display()
    ));
    match vmlinux::extract(kernel_bytes) {
        Ok(Some(elf)) => {
            write_atomic(&path, &elf)?;
            Ok(path)
        }
        Ok(None) => {
            say("no xz payload in the kernel: booting the bzImage (slower under TCG)");
            Ok(kernel.to_path_buf())
        }
        Err(reason) => Err(BuildError::Vmlinux {
            path: kernel.to_path_buf(),
            reason,
        }),
    }
}

/// Build the test guest, or reuse the cached one when no input changed.
///
/// Steps: build `tern-workload` statically (cargo, separate target dir
/// `<workspace>/target/guest`); check busybox is static; resolve and read
/// the kernel modules; extract `vmlinux` from the bzImage (cached per
/// kernel); write the initramfs named after a hash of all inputs. Files are
/// written atomically, so concurrent callers (other test processes) are safe.
pub fn build_or_reuse(opts: &BuildOptions) -> Result<GuestImage, BuildError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let say = |msg: &str| {
        if opts.progress {
            eprintln!("tern-testguest: {msg}");
        }
    };
    std::fs::create_dir_all(&opts.cache_dir).map_err(BuildError::io(&opts.cache_dir))?;

    let kernel = match &opts.kernel {
        Some(k) => k.clone(),
        None => kernel::newest_kernel(Path::new("/boot"))?,
    };
    let kernel_bytes = std::fs::read(&kernel).map_err(BuildError::io(&kernel))?;
    let modules_dir = match &opts.modules_dir {
        Some(d) => d.clone(),
        None => {
            let version =
                kernel::version_of(&kernel).ok_or_else(|| BuildError::UnknownKernelVersion {
                    path: kernel.clone(),
                })?;
            PathBuf::from("/lib/modules").join(version)
        }
    };
    say(&format!(
        "kernel {} modules {}",
        kernel.display(),
        modules_dir.display()
    ));
    let modules = kernel::load_modules(&modules_dir)?;

    let busybox = std::fs::read(&opts.busybox).map_err(|_| BuildError::BusyboxMissing {
        path: opts.busybox.clone(),
    })?;
    if elf::is_static(&busybox) != Ok(true) {
        return Err(BuildError::BusyboxNotStatic {
            path: opts.busybox.clone(),
        });
    }

    say("building tern-workload (static, release)");
    let workload_path = build_workload(opts)?;
    let workload = std::fs::read(&workload_path).map_err(BuildError::io(&workload_path))?;
    if elf::is_static(&workload) != Ok(true) {
        return Err(BuildError::WorkloadNotStatic {
            path: workload_path,
        });
    }

    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    let init = initramfs::init_script(&names);
    let mut key = Sha256::new();
    key.update(FORMAT_VERSION);
    key.update([u8::from(GZIP_INITRD)]);
    for part in [init.as_bytes(), &busybox, &workload] {
        key.update((part.len() as u64).to_le_bytes());
        key.update(part);
    }
    for m in &modules {
        key.update(m.name.as_bytes());
        key.update((m.data.len() as u64).to_le_bytes());
        key.update(&m.data);
    }
    let ext = if GZIP_INITRD { "cpio.gz" } else { "cpio" };
    let initrd = opts
        .cache_dir
        .join(format!("initrd-{}.{ext}", &hex(&key.finalize())[..16]));
    if initrd.is_file() {
        say(&format!("reusing {}", initrd.display()));
    } else {
        say(&format!(
            "writing {} ({} modules)",
            initrd.display(),
            modules.len()
        ));
        let contents = Contents {
            init: &init,
            busybox: &busybox,
            workload: &workload,
            modules: &modules,
        };
        let mut data = Vec::new();
        initramfs::write(&contents, &mut data, GZIP_INITRD).map_err(BuildError::io(&initrd))?;
        write_atomic(&initrd, &data)?;
        prune_old_initrds(&opts.cache_dir, &initrd);
    }

    let kernel = vmlinux_for(opts, &kernel, &kernel_bytes, &say)?;
    Ok(GuestImage { kernel, initrd })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_has_console_and_extra() {
        assert_eq!(default_cmdline(""), "console=ttyS0 quiet panic=-1");
        assert_eq!(
            default_cmdline(" tern.mem=64 "),
            "console=ttyS0 quiet panic=-1 tern.mem=64"
        );
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn workspace_root_has_the_workload() {
        assert!(workspace_root()
            .join("crates/tern-workload/Cargo.toml")
            .is_file());
    }
}
