//! A real LVM volume group for a test: loop devices on sparse files in a
//! temporary directory, and a group of a unique name on them. Every LVM
//! command names the test's own devices (`--devices`), so LVM never scans
//! or touches another device of the host (another test's, or the host's
//! disks). Dropping it removes the group, the physical-volume labels and
//! the loop devices.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether this kernel has device-mapper, which activating (opening) a
/// logical volume needs.
pub fn has_device_mapper() -> bool {
    std::fs::read_to_string("/proc/misc")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
        })
        .unwrap_or(false)
}

/// Loop devices for physical volumes, and the group name to use on them.
#[derive(Debug)]
pub struct LoopVg {
    /// The volume group's name (unique per test run).
    pub vg: String,
    /// The loop devices (`/dev/loopN`).
    pub devices: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl LoopVg {
    /// `count` loop devices of `mib` MiB each (sparse files), for a group
    /// named `tern-<tag>-<random>`. The group itself is made by
    /// `pool-build` (or [`LoopVg::create_group`]).
    pub fn new(tag: &str, count: usize, mib: u64) -> LoopVg {
        let dir = tempfile::Builder::new()
            .prefix("tern-lvm-")
            .tempdir()
            .expect("temp dir");
        // Unique across tests and runs: this process, the time, a counter.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let vg = format!("tern-{tag}-{}-{n}-{nanos:x}", std::process::id());
        let mut lv = LoopVg {
            vg,
            devices: Vec::new(),
            _dir: dir,
        };
        for i in 0..count {
            let file = lv._dir.path().join(format!("pv{i}.img"));
            let f = std::fs::File::create(&file).expect("create backing file");
            f.set_len(mib << 20).expect("size backing file");
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&file)
                .output()
                .expect("run losetup");
            assert!(
                out.status.success(),
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
            lv.devices.push(PathBuf::from(dev));
        }
        lv
    }

    /// The devices as `--devices` takes them.
    pub fn device_list(&self) -> String {
        self.devices
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `lvm SUB --devices OURS ARGS`.
    pub fn lvm(&self, sub: &str, args: &[&str]) -> Output {
        Command::new("lvm")
            .arg(sub)
            .args(["--devices", &self.device_list()])
            .args(args)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .expect("run lvm")
    }

    /// Runs `lvm SUB ...`, panicking with its stderr on failure; stdout.
    pub fn lvm_ok(&self, sub: &str, args: &[&str]) -> String {
        let o = self.lvm(sub, args);
        assert!(
            o.status.success(),
            "lvm {sub} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Makes the group on the devices directly (as an operator would
    /// before defining a pool over an existing group).
    pub fn create_group(&self) {
        let devs: Vec<String> = self
            .devices
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let mut args: Vec<&str> = vec!["--yes"];
        args.extend(devs.iter().map(String::as_str));
        self.lvm_ok("pvcreate", &args);
        let mut args: Vec<&str> = vec![&self.vg];
        args.extend(devs.iter().map(String::as_str));
        self.lvm_ok("vgcreate", &args);
    }

    /// (size, free) of the group in bytes, as LVM reports them; `None`
    /// when the group does not exist.
    pub fn space(&self) -> Option<(u64, u64)> {
        let o = self.lvm(
            "vgs",
            &[
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "vg_size,vg_free",
                &self.vg,
            ],
        );
        if !o.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let mut it = text.split_whitespace().filter_map(|v| v.parse().ok());
        Some((it.next()?, it.next()?))
    }

    /// Size in bytes of logical volume `lv`; `None` when absent.
    pub fn lv_size(&self, lv: &str) -> Option<u64> {
        let spec = format!("{}/{lv}", self.vg);
        let o = self.lvm(
            "lvs",
            &[
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "lv_size",
                &spec,
            ],
        );
        if !o.status.success() {
            return None;
        }
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    }

    /// `/dev/VG`, where the group's volumes appear once active.
    pub fn dir(&self) -> PathBuf {
        Path::new("/dev").join(&self.vg)
    }
}

impl Drop for LoopVg {
    fn drop(&mut self) {
        // Deactivate and remove the group (its volumes with it), then the
        // labels, then the loop devices; each step best effort.
        let _ = self.lvm("vgchange", &["--activate", "n", &self.vg]);
        let _ = self.lvm("vgremove", &["--yes", "--force", &self.vg]);
        let devs: Vec<String> = self
            .devices
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let mut args: Vec<&str> = vec!["--yes", "--force"];
        args.extend(devs.iter().map(String::as_str));
        let _ = self.lvm("pvremove", &args);
        for d in &self.devices {
            let _ = Command::new("losetup").arg("-d").arg(d).status();
        }
    }
}
