//! Choosing the accelerator: `kvm`, `tcg`, or `auto` — which proves KVM
//! boots a real kernel before trusting it, and remembers the answer.

use crate::config::{write_atomic, AccelSetting};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tern_qemu::cmdline::Accel;
use tern_qemu::probe::{self, KvmProbe};

/// How long a KVM guest may take to reach the kernel's root-mount panic.
/// A working KVM gets there in one or two seconds.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(12);

/// The remembered answer of an `auto` probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccelChoice {
    /// "kvm" or "tcg".
    pub accel: String,
    /// Why.
    pub reason: String,
    /// QEMU version the probe ran with.
    pub qemu_version: String,
    /// Host kernel release the probe ran on.
    pub host_kernel: String,
}

impl AccelChoice {
    /// The accelerator.
    pub fn accel(&self) -> Accel {
        if self.accel == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// Resolves the setting to an accelerator. For `auto`, a cached answer is
/// reused when QEMU and the host kernel are unchanged.
pub async fn resolve(
    setting: AccelSetting,
    qemu: &Path,
    qemu_version: &str,
    host_kernel: &str,
    cache: &Path,
) -> AccelChoice {
    let choice = |accel: &str, reason: String| AccelChoice {
        accel: accel.into(),
        reason,
        qemu_version: qemu_version.into(),
        host_kernel: host_kernel.into(),
    };
    match setting {
        AccelSetting::Kvm => return choice("kvm", "set by configuration".into()),
        AccelSetting::Tcg => return choice("tcg", "set by configuration".into()),
        AccelSetting::Auto => {}
    }
    if let Ok(text) = std::fs::read_to_string(cache) {
        if let Ok(c) = serde_json::from_str::<AccelChoice>(&text) {
            if c.qemu_version == qemu_version && c.host_kernel == host_kernel {
                return c;
            }
        }
    }
    let kernel = probe::find_probe_kernel();
    tracing::info!(kernel = ?kernel, "probing KVM by booting a kernel");
    let result = probe::probe_kvm(qemu, kernel.as_deref(), PROBE_TIMEOUT).await;
    let c = match result {
        KvmProbe::Works => choice("kvm", "a probe kernel booted under KVM".into()),
        KvmProbe::NoDevice => choice("tcg", "/dev/kvm is not available".into()),
        KvmProbe::NoKernel => choice(
            "tcg",
            "no kernel under /boot to prove KVM with; set --accel kvm to force it".into(),
        ),
        KvmProbe::Hung => choice(
            "tcg",
            format!(
                "a probe kernel did not boot under KVM within {} s",
                PROBE_TIMEOUT.as_secs()
            ),
        ),
        KvmProbe::Refused(m) => choice("tcg", format!("QEMU refused KVM: {m}")),
    };
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(text) = serde_json::to_vec_pretty(&c) {
        if let Err(e) = write_atomic(cache, &text) {
            tracing::warn!(path = %cache.display(), error = %e, "cannot remember accelerator choice");
        }
    }
    c
}
