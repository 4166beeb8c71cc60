//! `tern-watchdog --state-dir STATE`: a stand-in for a watchdog device,
//! for hosts that must not be reset (and for tests). The fence feeds it
//! through a pipe (`STATE/fence/watchdog`) exactly as it feeds
//! `/dev/watchdog`; when the feeds stop for the timeout the settings allow
//! ([`super::policy::watchdog_timeout`]), it does what a reset would do to
//! the guests: SIGKILLs every guest QEMU of the host at once (the fence's
//! own [`super::kill`]), records the fencing, and from then on kills any
//! guest QEMU that appears, until a fence feeds it again.
//!
//! It is a third process, in its own session, sharing nothing with the
//! fence but the pipe: a fence that is killed (`SIGKILL`) or frozen
//! (`SIGSTOP`) simply stops feeding it. Unlike the kernel, it can itself
//! be killed; the fence then starts it again at its next feed.

use super::config::{FenceDir, FenceSettings, FencedRecord};
use super::daemon::{held, hold, DaemonError};
use super::kill;
use super::policy::{watchdog_timeout, Dog, DogAct, DogEvent};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a fired watchdog looks for a guest QEMU that lives.
const SWEEP: Duration = Duration::from_millis(100);

/// The pipe the fence feeds.
pub fn fifo(state_dir: &Path) -> PathBuf {
    FenceDir::of(state_dir).root().join("watchdog")
}

fn lock_path(state_dir: &Path) -> PathBuf {
    FenceDir::of(state_dir).root().join("watchdog.lock")
}

/// The running stand-in's pid file.
pub fn pid_path(state_dir: &Path) -> PathBuf {
    FenceDir::of(state_dir).root().join("watchdog.pid")
}

/// Whether a stand-in holds `state_dir`'s watchdog now.
pub fn running(state_dir: &Path) -> bool {
    held(&lock_path(state_dir))
}

/// Starts `tern-watchdog` (next to this binary) in its own session,
/// unless one runs; why not, if it could not.
pub fn ensure_running(state_dir: &Path) -> Result<(), String> {
    if running(state_dir) {
        return Ok(());
    }
    let bin = std::env::current_exe()
        .map(|e| e.with_file_name("tern-watchdog"))
        .unwrap_or_else(|_| "tern-watchdog".into());
    let log = FenceDir::of(state_dir).root().join("watchdog.log");
    let spawned = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|out| {
            let err = out.try_clone()?;
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("--state-dir")
                .arg(state_dir)
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err);
            // SAFETY: setsid is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.spawn()
        });
    match spawned {
        Ok(mut c) => {
            tracing::info!(pid = c.id(), "guest watchdog started");
            // Reaped here if it ends while this process lives.
            std::thread::spawn(move || c.wait());
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot start the guest watchdog {}: {e}",
            bin.display()
        )),
    }
}

/// The timeout for the settings the agent last gave the fence (the fence
/// derives its own from the same file); `fallback` if there are none.
fn current_timeout(dir: &FenceDir, fallback: Duration) -> Duration {
    dir.load_config()
        .and_then(|c| watchdog_timeout(&c.settings).ok())
        .unwrap_or(fallback)
}

/// Creates the pipe (replacing anything else of that name) and opens it
/// for reading and writing, so that it never reads an end of file when a
/// fence closes it or dies.
fn open_fifo(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if !path.exists() {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Waits up to `wait` for the pipe to be readable, then reads what is
/// there: the events, in order.
fn next_events(f: &mut std::fs::File, wait: Duration) -> Vec<DogEvent> {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: waking before the deadline would only loop.
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
        return Vec::new();
    }
    let mut buf = [0u8; 256];
    let mut out = Vec::new();
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend(buf[..n].iter().map(|b| match b {
            b'V' => DogEvent::MagicClose,
            _ => DogEvent::Feed,
        }));
    }
    out
}

/// Runs the stand-in until killed. Returns at once if another runs.
pub fn run(state_dir: &Path) -> Result<(), DaemonError> {
    let dir = FenceDir::of(state_dir);
    let Some(_lock) = hold(dir.root(), &lock_path(state_dir), &pid_path(state_dir))? else {
        tracing::info!("another tern-watchdog holds this state directory; exiting");
        return Ok(());
    };
    let path = fifo(state_dir);
    let mut f = open_fifo(&path).map_err(|source| DaemonError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let runs = state_dir.join("run");
    let fallback = watchdog_timeout(&FenceSettings::default()).unwrap_or(Duration::from_secs(3));
    let mut timeout = current_timeout(&dir, fallback);
    let mut dog = Dog::Disarmed;
    tracing::info!(pipe = %path.display(), "guest watchdog running: disarmed until the fence feeds it");
    loop {
        let wait = match dog {
            Dog::Armed { deadline } => deadline.saturating_duration_since(Instant::now()),
            Dog::Fired => SWEEP,
            Dog::Disarmed => Duration::from_secs(1),
        };
        for ev in next_events(&mut f, wait) {
            if ev == DogEvent::Feed && !matches!(dog, Dog::Armed { .. }) {
                timeout = current_timeout(&dir, timeout);
                tracing::info!(timeout_ms = timeout.as_millis() as u64, "fed: armed");
            }
            if ev == DogEvent::MagicClose && dog != Dog::Disarmed {
                tracing::info!("disarmed by the fence (magic close)");
            }
            dog = dog.step(ev, Instant::now(), timeout).0;
        }
        let (next, act) = dog.step(DogEvent::Tick, Instant::now(), timeout);
        dog = next;
        match act {
            DogAct::Wait => {}
            DogAct::Fire => fire(&dir, &runs, timeout),
            DogAct::Sweep => {
                let late = kill::sweep(&runs);
                if !late.is_empty() {
                    tracing::error!(guests = ?late, "a guest QEMU ran while the fence is gone: killed it");
                }
            }
        }
    }
}

/// The timeout passed without a feed: kill every guest, as a reset would.
fn fire(dir: &FenceDir, runs: &Path, timeout: Duration) {
    tracing::error!(
        timeout_ms = timeout.as_millis() as u64,
        "the fence stopped feeding the watchdog: killing every guest"
    );
    let budget = dir
        .load_config()
        .map_or(FenceSettings::default().kill_budget_ms, |c| {
            c.settings.kill_budget_ms
        });
    let killed = kill::kill_all(runs, Duration::from_millis(budget));
    tracing::warn!(killed = ?killed, "guests fenced by the watchdog");
    if dir.fenced().exists() {
        return;
    }
    let rec = FencedRecord {
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        reason: format!(
            "watchdog: the fence process fed it nothing for {} ms (killed or frozen)",
            timeout.as_millis()
        ),
        killed,
    };
    if let Err(e) = dir.save_fenced(&rec) {
        tracing::error!(error = %e, "cannot record the fencing");
    }
}
