//! The fence's persisted state under `STATE/fence/`: what the agent last
//! told it (`config.json`: armed or not, which pool directories carry a
//! lease, the timings), and what it did (`fenced.json`, written when it
//! killed the guests). Both survive restarts of the agent and of the fence
//! process, so an agent restarted during a partition still fences.
//! `status.json` counts what the running fence process did (renewals,
//! failures, fencings) for the agent's metrics; it is not durable.

use crate::config::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Timings of the fence, from `ternd --fence-*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceSettings {
    /// How often the lease is renewed, ms.
    pub renew_ms: u64,
    /// The promise: guests are dead this long after the start of the last
    /// renewal that counted, ms.
    pub fence_after_ms: u64,
    /// A renewal slower than this does not count, ms.
    pub io_timeout_ms: u64,
    /// Time kept for killing the guests before the promise falls due, ms.
    pub kill_budget_ms: u64,
}

impl Default for FenceSettings {
    fn default() -> Self {
        FenceSettings {
            renew_ms: 500,
            fence_after_ms: 5000,
            io_timeout_ms: 1000,
            kill_budget_ms: 1000,
        }
    }
}

impl FenceSettings {
    /// Checks the timings can keep the promise; a one-line reason if not.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_ms == 0 || self.io_timeout_ms == 0 {
            return Err("--fence-renew-ms and --fence-io-timeout-ms must be above 0".into());
        }
        let window = self.fence_after_ms.saturating_sub(self.kill_budget_ms);
        if window < 2 * self.renew_ms.max(self.io_timeout_ms) {
            return Err(format!(
                "--fence-after-ms {} leaves {window} ms to renew after the {} ms kill budget; it must allow two renewals of max(--fence-renew-ms, --fence-io-timeout-ms)",
                self.fence_after_ms, self.kill_budget_ms
            ));
        }
        Ok(())
    }

    /// Renewal interval.
    pub fn renew(&self) -> Duration {
        Duration::from_millis(self.renew_ms)
    }
}

/// What the agent last told the fence (`STATE/fence/config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceConfig {
    /// This host's cluster name (the lease file's name).
    pub host: String,
    /// Kill the guests when a lease cannot be renewed.
    pub armed: bool,
    /// Target directories of the shared pools that carry a lease.
    pub pools: Vec<PathBuf>,
    /// Exports of the shared pools QEMU reaches over `nfs://` (no mount):
    /// their lease is written with the agent's NFSv3 client.
    #[serde(default)]
    pub nfs: Vec<tern_model::NetfsSource>,
    /// Timings.
    pub settings: FenceSettings,
    /// The watchdog the fence feeds while armed (`ternd --fence-watchdog`).
    #[serde(default)]
    pub watchdog: super::watchdog::WatchdogSpec,
}

/// What the fence did (`STATE/fence/fenced.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedRecord {
    /// When the guests were killed, ms since the epoch.
    pub at_ms: u64,
    /// Why.
    pub reason: String,
    /// Domains killed, with whether their end was seen.
    pub killed: Vec<(String, bool)>,
}

/// What the running fence process did since it started
/// (`STATE/fence/status.json`), rewritten after each turn; the agent's
/// `/metrics` reads it at each scrape. Its counts start at 0 with each
/// fence process (Prometheus reads that as a counter reset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceStatus {
    /// Armed: it kills the guests when it cannot renew in time.
    pub armed: bool,
    /// It killed the guests and waits for the agent to clear that.
    pub fenced: bool,
    /// Pools whose lease it renews.
    pub pools: u64,
    /// Renewals that landed on every pool in time.
    pub renewals: u64,
    /// Renewals that did not (a pool refused the write or was too slow).
    pub renewal_failures: u64,
    /// Times it killed the guests.
    pub fencings: u64,
    /// When the last renewal that counted started, ms since the epoch.
    pub last_renewal_ms: Option<u64>,
    /// Timeout of the watchdog it feeds, ms (0: none armed).
    #[serde(default)]
    pub watchdog_ms: u64,
}

/// Paths of the fence's files.
#[derive(Debug, Clone)]
pub struct FenceDir {
    root: PathBuf,
}

impl FenceDir {
    /// The fence directory of an agent state directory.
    pub fn of(state_dir: &Path) -> FenceDir {
        FenceDir {
            root: state_dir.join("fence"),
        }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// `fenced.json`.
    pub fn fenced(&self) -> PathBuf {
        self.root.join("fenced.json")
    }
    /// `status.json`.
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }
    /// The lock the running fence process holds.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// The running fence process's pid.
    pub fn pid(&self) -> PathBuf {
        self.root.join("fence.pid")
    }
    /// Its log.
    pub fn log(&self) -> PathBuf {
        self.root.join("fence.log")
    }

    /// Reads the configuration, if any (a corrupt one reads as none: the
    /// agent rewrites it on its next heartbeat).
    pub fn load_config(&self) -> Option<FenceConfig> {
        let b = std::fs::read(self.config()).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Writes the configuration atomically.
    pub fn save_config(&self, c: &FenceConfig) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let data = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
        write_atomic(&self.config(), &data)
    }

    /// The running fence's counts, if one wrote them.
    pub fn load_status(&self) -> Option<FenceStatus> {
        let b = std::fs::read(self.status()).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Replaces the counts (renamed into place, so a reader never sees half
    /// a file; not synced: they only feed the metrics).
    pub fn save_status(&self, s: &FenceStatus) -> std::io::Result<()> {
        let data = serde_json::to_vec(s).map_err(std::io::Error::other)?;
        let tmp = self.root.join("status.json.tmp");
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, self.status())
    }

    /// The fence's record of killing the guests, if it did.
    pub fn load_fenced(&self) -> Option<FencedRecord> {
        let b = std::fs::read(self.fenced()).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Records that the guests were killed.
    pub fn save_fenced(&self, r: &FencedRecord) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let data = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
        write_atomic(&self.fenced(), &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timings_are_valid_and_tight_ones_are_refused() {
        assert!(FenceSettings::default().validate().is_ok());
        let tight = FenceSettings {
            fence_after_ms: 1500,
            ..Default::default()
        };
        assert!(tight
            .validate()
            .unwrap_err()
            .contains("--fence-after-ms 1500"));
    }

    #[test]
    fn config_round_trips_through_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let f = FenceDir::of(d.path());
        assert!(f.load_config().is_none());
        let c = FenceConfig {
            host: "a".into(),
            armed: true,
            pools: vec!["/p".into()],
            nfs: Vec::new(),
            settings: FenceSettings::default(),
            watchdog: super::super::watchdog::WatchdogSpec::Guests,
        };
        f.save_config(&c).unwrap();
        assert_eq!(f.load_config(), Some(c));
        assert!(f.load_status().is_none());
        let s = FenceStatus {
            renewals: 3,
            last_renewal_ms: Some(7),
            ..Default::default()
        };
        f.save_status(&s).unwrap();
        assert_eq!(f.load_status(), Some(s));
    }
}
