//! The watchdog the fence feeds, so that a fence that is killed or frozen
//! while `ternd` is dead still stops the host's guests before the
//! controller may rescue them (see `docs/FENCING.md`, "The watchdog").
//!
//! The fence writes to a watchdog the way Linux's watchdog API wants: one
//! byte feeds it, `V` before the close disarms it, and a close without `V`
//! (the fence died) leaves it counting. What acts when it is not fed is
//! pluggable ([`WatchdogSpec`]): a watchdog device (`/dev/watchdog`, the
//! kernel's `softdog` or a hardware one) resets the host; the stand-in
//! `tern-watchdog` ([`super::standin`]), which the fence feeds through a
//! pipe, kills the host's guests instead, for hosts (and tests) that must
//! not be reset.

use super::config::FenceSettings;
use super::policy::watchdog_timeout;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which watchdog the fence feeds (`ternd --fence-watchdog`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchdogSpec {
    /// None: a fence killed or frozen while the agent is dead leaves the
    /// guests running, and the controller cannot tell.
    #[default]
    None,
    /// A watchdog device (softdog or hardware): the kernel resets the host.
    Device(PathBuf),
    /// The stand-in process `tern-watchdog`: it kills the host's guests.
    Guests,
}

impl std::str::FromStr for WatchdogSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "" => Ok(WatchdogSpec::None),
            "guests" => Ok(WatchdogSpec::Guests),
            p if p.starts_with('/') => Ok(WatchdogSpec::Device(PathBuf::from(p))),
            _ => Err(format!(
                "'{s}' is not a watchdog: give none, guests (the tern-watchdog process kills the guests) or the path of a watchdog device such as /dev/watchdog"
            )),
        }
    }
}

impl std::fmt::Display for WatchdogSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchdogSpec::None => f.write_str("none"),
            WatchdogSpec::Guests => f.write_str("guests"),
            WatchdogSpec::Device(p) => write!(f, "{}", p.display()),
        }
    }
}

impl WatchdogSpec {
    /// Checks, at `ternd`'s start, that this watchdog can keep the lease's
    /// promise with `s` and that a device exists: a one-line reason if not.
    /// (A device is not opened here: opening one starts its timer.)
    pub fn check(&self, s: &FenceSettings) -> Result<(), String> {
        match self {
            WatchdogSpec::None => return Ok(()),
            WatchdogSpec::Guests => {}
            WatchdogSpec::Device(p) => match std::fs::metadata(p) {
                Ok(m) if m.file_type().is_char_device() => {}
                Ok(_) => {
                    return Err(format!(
                        "--fence-watchdog {}: not a character device; give a watchdog device such as /dev/watchdog",
                        p.display()
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "--fence-watchdog {}: {e}; load a watchdog driver (modprobe softdog, or the board's), or give 'guests' or 'none'",
                        p.display()
                    ))
                }
            },
        }
        watchdog_timeout(s).map(|_| ())
    }
}

/// `WDIOC_SETTIMEOUT` (`_IOWR('W', 6, int)`, linux/watchdog.h).
const WDIOC_SETTIMEOUT: u32 = 0xC004_5706;
/// `WDIOC_GETTIMEOUT` (`_IOR('W', 7, int)`).
const WDIOC_GETTIMEOUT: u32 = 0x8004_5707;

/// An open watchdog being fed.
#[derive(Debug)]
struct Open {
    spec: WatchdogSpec,
    file: File,
    timeout: Duration,
}

/// Feeds the watchdog for the fence process: opened at the first feed,
/// fed after each counted renewal, disarmed with `V` when the fence is
/// not armed. Dropping it (the fence dying) does not disarm it.
#[derive(Debug)]
pub struct Feeder {
    state_dir: PathBuf,
    open: Option<Open>,
    last_error: Option<String>,
}

impl Feeder {
    /// A feeder for the fence of `state_dir`, nothing open yet.
    pub fn new(state_dir: &Path) -> Feeder {
        Feeder {
            state_dir: state_dir.to_path_buf(),
            open: None,
            last_error: None,
        }
    }

    /// The timeout of the watchdog it feeds, if one is armed.
    pub fn armed(&self) -> Option<Duration> {
        self.open.as_ref().map(|o| o.timeout)
    }

    /// Feeds `spec` (opening it first if needed); whether it was fed.
    pub fn feed(&mut self, spec: &WatchdogSpec, s: &FenceSettings) -> bool {
        let want = watchdog_timeout(s).ok();
        if self
            .open
            .as_ref()
            .is_some_and(|o| &o.spec != spec || Some(o.timeout) != want)
        {
            self.disarm();
        }
        if *spec == WatchdogSpec::None {
            return false;
        }
        if self.open.is_none() {
            match open(spec, &self.state_dir, s) {
                Ok(o) => {
                    tracing::info!(watchdog = %spec, timeout_ms = o.timeout.as_millis() as u64, "watchdog armed: the fence feeds it after every counted renewal");
                    self.open = Some(o);
                }
                Err(e) => {
                    self.failed(e);
                    return false;
                }
            }
        }
        let Some(o) = self.open.as_mut() else {
            return false;
        };
        match (&o.file).write_all(b"1") {
            Ok(_) => {
                self.last_error = None;
                true
            }
            Err(e) => {
                // Closed without `V`: a device keeps counting, as it must
                // for a feed that failed.
                self.open = None;
                self.failed(format!("cannot feed the watchdog {spec}: {e}"));
                false
            }
        }
    }

    /// Disarms the watchdog on purpose (`V`, then close), if one is open.
    pub fn disarm(&mut self) {
        if let Some(o) = self.open.take() {
            match (&o.file).write_all(b"V") {
                Ok(_) => tracing::info!(watchdog = %o.spec, "watchdog disarmed"),
                Err(e) => {
                    tracing::error!(watchdog = %o.spec, error = %e, "cannot disarm the watchdog: it will act")
                }
            }
        }
    }

    /// Logs a failure once per distinct reason.
    fn failed(&mut self, e: String) {
        if self.last_error.as_ref() != Some(&e) {
            tracing::error!(error = %e, "the watchdog is not fed: a fence that dies or freezes now does not stop the guests (the lease says so)");
            self.last_error = Some(e);
        }
    }
}

/// Opens `spec` and sets its timeout to what the settings allow.
fn open(spec: &WatchdogSpec, state_dir: &Path, s: &FenceSettings) -> Result<Open, String> {
    let timeout = watchdog_timeout(s)?;
    let path = match spec {
        WatchdogSpec::None => return Err("no watchdog configured".into()),
        WatchdogSpec::Device(p) => p.clone(),
        WatchdogSpec::Guests => super::standin::fifo(state_dir),
    };
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let file = match opened {
        Ok(f) => f,
        Err(e)
            if *spec == WatchdogSpec::Guests
                && (e.raw_os_error() == Some(libc::ENXIO)
                    || e.kind() == std::io::ErrorKind::NotFound) =>
        {
            super::standin::ensure_running(state_dir)?;
            return Err("the guest watchdog (tern-watchdog) was not running: started it".into());
        }
        Err(e) => return Err(format!("cannot open the watchdog {}: {e}", path.display())),
    };
    let kind = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .file_type();
    match spec {
        WatchdogSpec::Device(_) if kind.is_char_device() => {
            if let Err(e) = set_timeout(&file, timeout) {
                let _ = (&file).write_all(b"V");
                return Err(format!("watchdog {}: {e}", path.display()));
            }
        }
        // The stand-in reads the same settings and derives the same timeout.
        WatchdogSpec::Guests if kind.is_fifo() => {}
        _ => {
            return Err(format!(
                "{} is not a watchdog (a character device, or tern-watchdog's pipe)",
                path.display()
            ))
        }
    }
    Ok(Open {
        spec: spec.clone(),
        file,
        timeout,
    })
}

/// Sets a device's timeout and reads back what it took: drivers round, and
/// some cannot change it; accepted only if it is at most `timeout`.
fn set_timeout(f: &File, timeout: Duration) -> Result<(), String> {
    let want = timeout.as_secs() as libc::c_int;
    let mut secs = want;
    // SAFETY: WDIOC_SETTIMEOUT takes a pointer to an int, which lives here.
    unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut secs) };
    let mut got: libc::c_int = 0;
    // SAFETY: WDIOC_GETTIMEOUT writes one int through the pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_GETTIMEOUT as _, &mut got) } != 0 {
        return Err(format!(
            "the device does not tell its timeout: {}",
            std::io::Error::last_os_error()
        ));
    }
    if got < 1 || got > want {
        return Err(format!(
            "the device runs a {got} s timeout; the lease's promise allows at most {want} s"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_to_give() {
        assert_eq!("none".parse::<WatchdogSpec>(), Ok(WatchdogSpec::None));
        assert_eq!("guests".parse::<WatchdogSpec>(), Ok(WatchdogSpec::Guests));
        assert_eq!(
            "/dev/watchdog".parse::<WatchdogSpec>(),
            Ok(WatchdogSpec::Device("/dev/watchdog".into()))
        );
        assert!("softdog"
            .parse::<WatchdogSpec>()
            .unwrap_err()
            .contains("/dev/watchdog"));
        let s = FenceSettings::default();
        let missing = WatchdogSpec::Device("/nonexistent/watchdog".into());
        assert!(missing.check(&s).unwrap_err().contains("modprobe softdog"));
        let regular = WatchdogSpec::Device("/etc/hostname".into());
        assert!(regular
            .check(&s)
            .unwrap_err()
            .contains("not a character device"));
        assert!(WatchdogSpec::Guests.check(&s).is_ok());
    }

    #[test]
    fn a_pipe_nobody_reads_is_not_fed_and_a_file_is_not_a_watchdog() {
        let d = tempfile::tempdir().unwrap();
        let s = FenceSettings::default();
        let mut f = Feeder::new(d.path());
        // A regular file where a device is expected is refused.
        let file = d.path().join("wd");
        std::fs::write(&file, "").unwrap();
        assert!(!f.feed(&WatchdogSpec::Device(file), &s));
        assert_eq!(f.armed(), None);
        assert!(!f.feed(&WatchdogSpec::None, &s));
    }
}
