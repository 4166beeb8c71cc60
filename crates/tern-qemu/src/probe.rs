//! Facts about the local QEMU and whether KVM really works.
//!
//! `/dev/kvm` existing is not proof: on some hosts (nested or paravirtual
//! KVM) a guest hangs before printing anything. So `auto` boots a real
//! Linux kernel under KVM, without a root file system, and waits for the
//! kernel's own "cannot mount root" panic on the serial port — that line is
//! only printed after the kernel has fully initialised. A timeout means KVM
//! is unusable and TCG is used instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Probe failures.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// QEMU could not be run at all.
    #[error("cannot run {binary} (install qemu-system-x86): {source}")]
    Spawn {
        /// Binary tried.
        binary: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU ran but could not answer.
    #[error("probing QEMU failed: {0}")]
    Failed(String),
}

/// Outcome of a KVM probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    /// A kernel booted under KVM.
    Works,
    /// `/dev/kvm` is missing or not accessible.
    NoDevice,
    /// No kernel image was available to prove KVM with.
    NoKernel,
    /// The kernel did not finish booting within the timeout.
    Hung,
    /// QEMU refused to start with KVM (message from QEMU).
    Refused(String),
}

/// `qemu-system-x86_64 --version` → "7.2.22".
pub async fn qemu_version(binary: &Path) -> Result<String, ProbeError> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .await
        .map_err(|source| ProbeError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_version(&text).unwrap_or_else(|| "unknown".into()))
}

/// Extracts "7.2.22" from "QEMU emulator version 7.2.22 (Debian ...)".
pub fn parse_version(text: &str) -> Option<String> {
    let rest = text.split("version ").nth(1)?;
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// Machine types QEMU knows, with the canonical name of each alias
/// (e.g. "pc" → "pc-i440fx-7.2").
pub async fn machine_types(binary: &Path) -> Result<Vec<(String, Option<String>)>, ProbeError> {
    let out = Command::new(binary)
        .args(["-machine", "help"])
        .output()
        .await
        .map_err(|source| ProbeError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    Ok(parse_machine_help(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `-machine help` output.
pub fn parse_machine_help(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .skip_while(|l| !l.starts_with("Supported machines"))
        .skip(1)
        .filter_map(|l| {
            let name = l.split_whitespace().next()?.to_string();
            let alias = l
                .split("(alias of ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .map(str::to_string);
            Some((name, alias))
        })
        .collect()
}

/// Newest kernel image under /boot, used to prove KVM.
pub fn find_probe_kernel() -> Option<PathBuf> {
    let mut ks: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz"))
        })
        .collect();
    ks.sort();
    ks.pop()
}

/// Boots `kernel` under KVM and waits up to `timeout` for proof of life.
pub async fn probe_kvm(binary: &Path, kernel: Option<&Path>, timeout: Duration) -> KvmProbe {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return KvmProbe::NoDevice;
    };
    drop(f);
    let Some(kernel) = kernel else {
        return KvmProbe::NoKernel;
    };
    let child = Command::new(binary)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256M",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return KvmProbe::Refused(e.to_string()),
    };
    let Some(stdout) = child.stdout.take() else {
        return KvmProbe::Refused("no stdout".into());
    };
    let mut lines = BufReader::new(stdout).lines();
    let watch = async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("Kernel panic") || l.contains("VFS:") || l.contains("Run /init") {
                return true;
            }
        }
        false
    };
    let result = match tokio::time::timeout(timeout, watch).await {
        Ok(true) => KvmProbe::Works,
        Ok(false) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            KvmProbe::Refused(err.lines().last().unwrap_or("QEMU exited").to_string())
        }
        Err(_) => KvmProbe::Hung,
    };
    let _ = child.kill().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_and_machines() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg)\n").as_deref(),
            Some("7.2.22")
        );
        let m = parse_machine_help(
            "Supported machines are:\npc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\npc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\n",
        );
        assert_eq!(m[0], ("pc".into(), Some("pc-i440fx-7.2".into())));
        assert_eq!(m[1], ("pc-i440fx-7.2".into(), None));
    }
}
