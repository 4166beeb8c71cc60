//! The fence process (`tern-fence --state-dir STATE`): renews this host's
//! lease on every shared pool and, when it is armed and cannot renew
//! before its promise falls due, kills every guest of the host. It is a
//! separate process from `ternd`, in its own session, so it lives on when
//! the agent dies or restarts; one runs per state directory (a lock).

use super::config::{FenceConfig, FenceDir, FenceStatus, FencedRecord};
use super::policy::{may_feed, turn, Turn};
use super::watchdog::{Feeder, WatchdogSpec};
use super::{kill, lease};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tern_api::fence::{LeaseRecord, LEASE_MAGIC, LEASE_VERSION};

/// Why the fence process could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Its directory or lock could not be made.
    #[error("fence directory {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How often a fenced host looks for a guest QEMU that lives on.
const SWEEP: Duration = Duration::from_millis(100);

/// Lease writes still running, by pool: a pool whose last write has not
/// returned gets no second one, and does not count as renewed.
type Pending = HashMap<String, mpsc::Receiver<std::io::Result<()>>>;

/// Where one lease is written.
enum Target {
    Dir(PathBuf),
    Nfs(tern_model::NetfsSource),
}

/// The fence's life in one process.
struct Fence {
    dir: FenceDir,
    runs: PathBuf,
    instance: String,
    counter: u64,
    last_ok: Instant,
    armed: bool,
    fenced: bool,
    pending: Pending,
    /// The watchdog it feeds after each counted renewal, when armed.
    dog: Feeder,
    /// What it did, for the agent's metrics.
    status: FenceStatus,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Takes the fence lock of `state_dir`: `None` if another fence holds it.
fn lock(dir: &FenceDir) -> Result<Option<std::fs::File>, DaemonError> {
    hold(dir.root(), &dir.lock(), &dir.pid())
}

/// Takes the lock file `lock` (creating `root` first) and writes this
/// process's pid to `pid`: `None` if another process holds the lock.
pub(crate) fn hold(
    root: &Path,
    lock: &Path,
    pid: &Path,
) -> Result<Option<std::fs::File>, DaemonError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| DaemonError::Io { path, source }
    };
    std::fs::create_dir_all(root).map_err(io(root))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock)
        .map_err(io(lock))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    std::fs::write(pid, std::process::id().to_string()).map_err(io(pid))?;
    Ok(Some(f))
}

/// Whether a fence process holds `state_dir`'s lock now.
pub fn running(state_dir: &Path) -> bool {
    held(&FenceDir::of(state_dir).lock())
}

/// Whether some process holds the lock file `lock` now.
pub(crate) fn held(lock: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().read(true).open(lock) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when it closes.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    !free
}

/// Runs the fence until killed. Returns at once if another fence runs.
pub fn run(state_dir: &Path) -> Result<(), DaemonError> {
    let dir = FenceDir::of(state_dir);
    let Some(_lock) = lock(&dir)? else {
        tracing::info!("another fence process holds this state directory; exiting");
        return Ok(());
    };
    let mut f = Fence {
        fenced: dir.fenced().exists(),
        dir,
        runs: state_dir.join("run"),
        instance: uuid::Uuid::new_v4().simple().to_string(),
        counter: 0,
        last_ok: Instant::now(),
        armed: false,
        pending: HashMap::new(),
        dog: Feeder::new(state_dir),
        status: FenceStatus::default(),
    };
    tracing::info!(fenced = f.fenced, "fence process running");
    loop {
        let wait = match f.dir.load_config() {
            Some(cfg) => {
                let wait = f.turn(&cfg);
                f.report(&cfg);
                wait
            }
            None => Duration::from_millis(500),
        };
        std::thread::sleep(wait);
    }
}

impl Fence {
    /// One turn; how long to sleep before the next.
    fn turn(&mut self, cfg: &FenceConfig) -> Duration {
        let s = &cfg.settings;
        let fenced_now = self.dir.fenced().exists();
        if self.fenced && !fenced_now {
            tracing::warn!("fenced state cleared by the agent: renewing again");
            self.instance = uuid::Uuid::new_v4().simple().to_string();
            self.last_ok = Instant::now();
        }
        if !self.fenced && fenced_now {
            // The watchdog (tern-watchdog) got there first: count it too.
            tracing::warn!("the guests were fenced by the watchdog");
            self.status.fencings += 1;
        }
        self.fenced = fenced_now;
        if cfg.armed != self.armed {
            tracing::info!(armed = cfg.armed, pools = ?cfg.pools, "fence armed state changed");
            // Nothing was promised before arming: the clock starts now.
            self.last_ok = Instant::now();
            self.armed = cfg.armed;
        }
        if !cfg.armed || cfg.watchdog == WatchdogSpec::None {
            // No promise, no watchdog: disarmed on purpose (a no-op when
            // none is open).
            self.dog.disarm();
        }
        let due = Duration::from_millis(s.fence_after_ms.saturating_sub(s.kill_budget_ms));
        match turn(cfg.armed, self.fenced, self.last_ok.elapsed(), s) {
            Turn::Stay => {
                self.sweep();
                s.renew().min(SWEEP)
            }
            Turn::Kill => {
                self.kill(cfg);
                s.renew()
            }
            Turn::Renew => {
                let left = due.saturating_sub(self.last_ok.elapsed());
                let wait = left.min(Duration::from_millis(s.io_timeout_ms));
                let start = Instant::now();
                let started_ms = now_ms();
                if self.renew(cfg, wait) {
                    self.last_ok = start;
                    self.status.renewals += 1;
                    self.status.last_renewal_ms = Some(started_ms);
                    // Checked again now: a fence frozen in the middle of the
                    // renewal, or fenced meanwhile, feeds nothing.
                    let fenced = self.dir.fenced().exists();
                    if may_feed(cfg.armed, fenced, start.elapsed(), s) {
                        self.dog.feed(&cfg.watchdog, s);
                    }
                } else {
                    self.status.renewal_failures += 1;
                }
                let left = due.saturating_sub(self.last_ok.elapsed());
                s.renew().saturating_sub(start.elapsed()).min(left)
            }
        }
    }

    /// Fenced: a guest QEMU must not live on. One whose launch raced
    /// the kill (spawned before, its pid file written after) is killed
    /// on sight, well before any rescue may start.
    fn sweep(&self) {
        let late = kill::sweep(&self.runs);
        if !late.is_empty() {
            tracing::error!(guests = ?late, "a guest QEMU lived on after fencing: killed it");
        }
    }

    /// Writes what it did for the agent's metrics (a failure costs only
    /// the metrics, never a renewal).
    fn report(&mut self, cfg: &FenceConfig) {
        self.status.armed = self.armed;
        self.status.fenced = self.fenced;
        self.status.pools = (cfg.pools.len() + cfg.nfs.len()) as u64;
        self.status.watchdog_ms = self.dog.armed().map_or(0, |t| t.as_millis() as u64);
        if let Err(e) = self.dir.save_status(&self.status) {
            tracing::debug!(error = %e, "cannot write the fence status");
        }
    }

    fn kill(&mut self, cfg: &FenceConfig) {
        self.status.fencings += 1;
        let since = self.last_ok.elapsed();
        tracing::error!(
            since_ms = since.as_millis() as u64,
            "cannot renew the storage lease: killing every guest (fencing)"
        );
        let budget = Duration::from_millis(cfg.settings.kill_budget_ms);
        let killed = kill::kill_all(&self.runs, budget);
        let unseen: Vec<&String> = killed.iter().filter(|k| !k.1).map(|k| &k.0).collect();
        if !unseen.is_empty() {
            tracing::error!(guests = ?unseen, "SIGKILLed guests did not end within the kill budget");
        }
        let rec = FencedRecord {
            at_ms: now_ms(),
            reason: format!(
                "no lease renewal for {} ms (promised {} ms)",
                since.as_millis(),
                cfg.settings.fence_after_ms
            ),
            killed,
        };
        tracing::warn!(killed = ?rec.killed, "guests fenced");
        if let Err(e) = self.dir.save_fenced(&rec) {
            tracing::error!(error = %e, "cannot record the fencing");
        }
        self.fenced = true;
    }

    /// Writes every pool's lease, waiting up to `wait`; whether all landed.
    fn renew(&mut self, cfg: &FenceConfig, wait: Duration) -> bool {
        let rec = LeaseRecord {
            magic: LEASE_MAGIC.into(),
            version: LEASE_VERSION,
            host: cfg.host.clone(),
            instance: self.instance.clone(),
            counter: self.counter + 1,
            armed: cfg.armed,
            fence_after_ms: cfg.settings.fence_after_ms,
            io_timeout_ms: cfg.settings.io_timeout_ms,
            written_ms: now_ms(),
            watchdog_ms: self.dog.armed().map_or(0, |t| t.as_millis() as u64),
        };
        let mut ok = true;
        let mut started = Vec::new();
        let dirs = cfg
            .pools
            .iter()
            .map(|p| (p.display().to_string(), Target::Dir(p.clone())));
        let nfs = cfg.nfs.iter().map(|n| {
            (
                format!("nfs://{}{}", n.host, n.path),
                Target::Nfs(n.clone()),
            )
        });
        for (key, target) in dirs.chain(nfs) {
            if let Some(rx) = self.pending.remove(&key) {
                if let Err(mpsc::TryRecvError::Empty) = rx.try_recv() {
                    self.pending.insert(key, rx);
                    ok = false;
                    continue;
                }
            }
            let (tx, rx) = mpsc::channel();
            let r = rec.clone();
            std::thread::spawn(move || {
                let res = match target {
                    Target::Dir(p) => lease::write(&p, &r),
                    Target::Nfs(n) => lease::write_nfs(&n, &r),
                };
                let _ = tx.send(res);
            });
            started.push((key, rx));
        }
        let deadline = Instant::now() + wait;
        for (pool, rx) in started {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%pool, error = %e, "lease renewal failed");
                    ok = false;
                }
                Err(_) => {
                    tracing::warn!(%pool, "lease renewal too slow");
                    self.pending.insert(pool, rx);
                    ok = false;
                }
            }
        }
        if ok {
            self.counter += 1;
        }
        ok
    }
}
