//! logical pools: an LVM volume group whose volumes are logical volumes,
//! block devices at `/dev/VG/LV` (the pool's target is `/dev/VG`), raw by
//! nature, as libvirt's `<pool type='logical'>`.
//!
//! Every LVM command runs as `lvm SUBCOMMAND`. A pool defined with its
//! physical volumes (`--source-dev`) passes them as `--devices`, so LVM
//! scans and touches only those, never another disk of the host; a pool
//! over an existing group without them uses the host's own LVM filter.
//! Opening a logical volume needs the kernel's device-mapper: a pool on a
//! host without it is refused at `pool-start`, by name.

use crate::error::{AgentError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tern_model::{LogicalSource, VolumeInfo};
use tokio::process::Command;

/// How long one LVM command may take (a hung device otherwise hangs it).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether this kernel has device-mapper (LVM activates volumes with it).
pub fn has_device_mapper() -> bool {
    std::fs::read_to_string("/proc/misc")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
        })
        .unwrap_or(false)
}

/// Whether device-mapper is there, after loading its module when this
/// kernel has it as one not loaded yet (Debian's kernel does; its boot
/// usually loads it, but a host that unloaded it, or booted without
/// lvm2's services, has none listed until something loads it, which LVM's
/// own tools would do on first use).
async fn ensure_device_mapper() -> bool {
    if has_device_mapper() {
        return true;
    }
    let mut cmd = Command::new("modprobe");
    cmd.arg("dm_mod")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let _ = tokio::time::timeout(CALL_TIMEOUT, cmd.status()).await;
    has_device_mapper()
}

/// The arguments every command of `src` starts with: its devices only.
pub fn device_args(src: &LogicalSource) -> Vec<String> {
    if src.devices.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = src
        .devices
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    vec!["--devices".into(), list.join(",")]
}

/// The last meaningful line of LVM's stderr (it warns about leaked file
/// descriptors and disabled activation on the way).
pub fn last_error(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains("leaked on") && !l.starts_with("WARNING:"))
        .unwrap_or("")
        .to_string()
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Deserialize)]
struct LvReport {
    #[serde(default)]
    lv: Vec<Lv>,
}

#[derive(Deserialize)]
struct VgReport {
    #[serde(default)]
    vg: Vec<VgRow>,
}

/// One row of `lvs --units b --nosuffix --reportformat json`.
#[derive(Deserialize, Debug, PartialEq)]
pub struct Lv {
    /// The volume's name.
    pub lv_name: String,
    /// Its size in bytes.
    pub lv_size: String,
}

#[derive(Deserialize)]
struct VgRow {
    vg_size: String,
    vg_free: String,
}

/// The logical volumes of an `lvs` JSON report.
pub fn parse_lvs(json: &[u8]) -> Result<Vec<Lv>> {
    let r: Report<LvReport> = serde_json::from_slice(json)
        .map_err(|e| AgentError::Failed(format!("cannot read the lvs report: {e}")))?;
    Ok(r.report.into_iter().flat_map(|r| r.lv).collect())
}

/// (size, free) in bytes of a `vgs` JSON report's first group.
pub fn parse_vgs(json: &[u8]) -> Option<(u64, u64)> {
    let r: Report<VgReport> = serde_json::from_slice(json).ok()?;
    let row = r.report.into_iter().flat_map(|r| r.vg).next()?;
    Some((row.vg_size.parse().ok()?, row.vg_free.parse().ok()?))
}

/// One logical pool's volume group.
pub(super) struct Vg<'a> {
    pool: &'a str,
    src: &'a LogicalSource,
    target: &'a Path,
}

impl<'a> Vg<'a> {
    /// The group of pool `pool`, its volumes under `target`.
    pub(super) fn new(pool: &'a str, src: &'a LogicalSource, target: &'a Path) -> Self {
        Vg { pool, src, target }
    }

    /// Runs `lvm SUB` with the pool's devices and `args`; its stdout.
    async fn run(&self, sub: &str, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = Command::new("lvm");
        cmd.arg(sub)
            .args(device_args(self.src))
            .args(args)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CALL_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                AgentError::Timeout(format!(
                    "storage pool '{}': 'lvm {sub}' did not finish in {}s",
                    self.pool,
                    CALL_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| {
                AgentError::Failed(format!(
                    "cannot run 'lvm {sub}' for storage pool '{}': {e}; install lvm2",
                    self.pool
                ))
            })?;
        if !out.status.success() {
            return Err(AgentError::Failed(format!(
                "storage pool '{}': lvm {sub} failed: {}",
                self.pool,
                last_error(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        Ok(out.stdout)
    }

    /// `pool-build`: the physical volumes and the group on them.
    pub(super) async fn build(&self) -> Result<()> {
        if self.src.devices.is_empty() {
            return Err(AgentError::Invalid(format!(
                "storage pool '{}' names no devices to build volume group '{}' on; define it with --source-dev DEVICE, or create the group yourself and just start the pool",
                self.pool, self.src.vg
            )));
        }
        let devs: Vec<String> = self
            .src
            .devices
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let mut args: Vec<&str> = vec!["--yes"];
        args.extend(devs.iter().map(String::as_str));
        self.run("pvcreate", &args).await?;
        let mut args: Vec<&str> = vec![&self.src.vg];
        args.extend(devs.iter().map(String::as_str));
        self.run("vgcreate", &args).await.map(|_| ())
    }

    /// `pool-start`: the group exists and its volumes are activated.
    pub(super) async fn activate(&self) -> Result<()> {
        self.run("vgs", &["--noheadings", "-o", "vg_name", &self.src.vg])
            .await?;
        if !ensure_device_mapper().await {
            return Err(AgentError::Unsupported(format!(
                "storage pool '{}' is a logical pool, but this host's kernel has no device-mapper (modprobe dm_mod failed), so the logical volumes of '{}' cannot be opened; use a kernel with device-mapper, or a dir pool",
                self.pool, self.src.vg
            )));
        }
        self.run("vgchange", &["--activate", "ay", &self.src.vg])
            .await
            .map(|_| ())
    }

    /// `pool-destroy`: the group's volumes deactivated (as libvirt does).
    pub(super) async fn deactivate(&self) -> Result<()> {
        self.run("vgchange", &["--activate", "n", &self.src.vg])
            .await
            .map(|_| ())
    }

    /// (capacity, allocation, available) of the group; zeros when LVM
    /// does not say.
    pub(super) async fn space(&self) -> (u64, u64, u64) {
        let args = [
            "--units",
            "b",
            "--nosuffix",
            "--reportformat",
            "json",
            "-o",
            "vg_size,vg_free",
            &self.src.vg,
        ];
        match self
            .run("vgs", &args)
            .await
            .ok()
            .and_then(|o| parse_vgs(&o))
        {
            Some((size, free)) => (size, size.saturating_sub(free), free),
            None => (0, 0, 0),
        }
    }

    async fn lvs(&self) -> Result<Vec<Lv>> {
        let args = [
            "--units",
            "b",
            "--nosuffix",
            "--reportformat",
            "json",
            "-o",
            "lv_name,lv_size",
            &self.src.vg,
        ];
        parse_lvs(&self.run("lvs", &args).await?)
    }

    fn info_of(&self, lv: &Lv) -> VolumeInfo {
        let size = lv.lv_size.parse().unwrap_or(0);
        VolumeInfo {
            name: lv.lv_name.clone(),
            path: self.target.join(&lv.lv_name),
            format: "raw".into(),
            capacity: size,
            // Thick volumes: every extent is allocated.
            allocation: size,
            backing: None,
        }
    }

    /// `vol-list`.
    pub(super) async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let mut v: Vec<VolumeInfo> = self.lvs().await?.iter().map(|l| self.info_of(l)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// `vol-info`.
    pub(super) async fn info(&self, name: &str) -> Result<VolumeInfo> {
        self.lvs()
            .await?
            .iter()
            .find(|l| l.lv_name == name)
            .map(|l| self.info_of(l))
            .ok_or_else(|| AgentError::NoVolume {
                pool: self.pool.into(),
                name: name.into(),
            })
    }

    /// Whether the group holds a volume `name`.
    pub(super) async fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.lvs().await?.iter().any(|l| l.lv_name == name))
    }

    /// `vol-create-as`: a raw volume of at least `capacity` bytes (LVM
    /// rounds up to whole extents), its first bytes wiped.
    pub(super) async fn create(
        &self,
        name: &str,
        capacity: Option<u64>,
        format: &str,
        backing: Option<&str>,
    ) -> Result<VolumeInfo> {
        check_raw(self.pool, format, backing.is_some())?;
        let Some(bytes) = capacity.filter(|b| *b > 0) else {
            return Err(AgentError::Invalid(
                "volume size is missing; give a size such as 1G".into(),
            ));
        };
        if self.exists(name).await? {
            return Err(AgentError::Conflict(format!(
                "storage volume '{name}' already exists in pool '{}'",
                self.pool
            )));
        }
        let size = format!("{bytes}b");
        self.run(
            "lvcreate",
            &[
                "--yes",
                "--wipesignatures",
                "y",
                "-n",
                name,
                "-L",
                &size,
                &self.src.vg,
            ],
        )
        .await?;
        self.info(name).await
    }

    /// `vol-delete`.
    pub(super) async fn delete(&self, name: &str) -> Result<()> {
        if !self.exists(name).await? {
            return Err(AgentError::NoVolume {
                pool: self.pool.into(),
                name: name.into(),
            });
        }
        let lv = format!("{}/{name}", self.src.vg);
        self.run("lvremove", &["--yes", &lv]).await.map(|_| ())
    }

    /// `vol-resize`.
    pub(super) async fn resize(&self, name: &str, size: u64, shrink: bool) -> Result<()> {
        let lv = format!("{}/{name}", self.src.vg);
        let bytes = format!("{size}b");
        let mut args = vec!["--yes", "-L", &bytes, &lv];
        if shrink {
            args.insert(0, "--force");
        }
        self.run("lvresize", &args).await.map(|_| ())
    }
}

/// Refuses what a logical volume cannot hold: another format than raw, or
/// a backing volume (LVM has no qcow2 overlays; libvirt refuses them too).
pub fn check_raw(pool: &str, format: &str, backing: bool) -> Result<()> {
    if format != "raw" || backing {
        return Err(AgentError::Invalid(format!(
            "storage pool '{pool}' is a logical pool: its volumes are raw block devices, without backing volumes; use --format raw, or a dir pool for qcow2"
        )));
    }
    Ok(())
}

/// Zeroes `dev` from `from` to its end (at most one extent past a copy's
/// end, which a fresh volume may hold stale data in).
pub fn zero_tail(dev: &Path, from: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(dev)?;
    let end = f.seek(SeekFrom::End(0))?;
    if end <= from {
        return Ok(());
    }
    f.seek(SeekFrom::Start(from))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = end - from;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Whether `path` is a block device (a logical volume, once active).
pub fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// The device nodes the volumes under `target` (`/dev/VG`) resolve to
/// (`/dev/dm-N`): where a disk path of the pool really leads.
pub fn device_nodes(target: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(target)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                .filter(|p| is_block_device(p))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_of_a_pool_with_devices_see_only_them() {
        let src = LogicalSource {
            vg: "vg".into(),
            devices: vec!["/dev/loop3".into(), "/dev/loop4".into()],
        };
        assert_eq!(device_args(&src), ["--devices", "/dev/loop3,/dev/loop4"]);
        let host = LogicalSource {
            vg: "vg".into(),
            devices: vec![],
        };
        assert!(device_args(&host).is_empty());
    }

    #[test]
    fn reports_as_lvm_2_03_prints_them() {
        // Captured from lvm2 2.03.16 (Debian bookworm).
        let lvs = br#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"lv1", "lv_size":"12582912"},
                  {"lv_name":"data", "lv_size":"4194304"}
              ]
          }
      ]
  }"#;
        let v = parse_lvs(lvs).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            Lv {
                lv_name: "lv1".into(),
                lv_size: "12582912".into()
            }
        );
        let empty = br#"{"report":[{"lv":[]}]}"#;
        assert!(parse_lvs(empty).unwrap().is_empty());
        let vgs = br#"  {
      "report": [
          {
              "vg": [
                  {"vg_size":"205520896", "vg_free":"192937984"}
              ]
          }
      ]
  }"#;
        assert_eq!(parse_vgs(vgs), Some((205_520_896, 192_937_984)));
        assert_eq!(parse_vgs(b"{}"), None);
    }

    #[test]
    fn lvm_noise_is_not_the_error() {
        let err =
            "File descriptor 10 (/dev/null) leaked on lvcreate invocation. Parent PID 1: x\n  \
                   WARNING: Activation disabled.\n  Volume group \"nope\" not found\n  \
                   Cannot process volume group nope\n";
        assert_eq!(last_error(err), "Cannot process volume group nope");
    }

    #[test]
    fn logical_volumes_are_raw_without_backing() {
        assert!(check_raw("lvm", "raw", false).is_ok());
        let e = check_raw("lvm", "qcow2", false).unwrap_err().to_string();
        assert!(e.contains("pool 'lvm' is a logical pool"), "{e}");
        assert!(check_raw("lvm", "raw", true).is_err());
    }

    #[test]
    fn the_tail_past_a_copy_is_zeroed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("dev");
        std::fs::write(&f, vec![7u8; 3 << 20]).unwrap();
        zero_tail(&f, 1 << 20).unwrap();
        let b = std::fs::read(&f).unwrap();
        assert_eq!(b.len(), 3 << 20);
        assert!(b[..1 << 20].iter().all(|x| *x == 7));
        assert!(b[1 << 20..].iter().all(|x| *x == 0));
    }
}
