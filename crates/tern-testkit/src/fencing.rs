//! Host-down helpers: ending a host for real (its fence process, its
//! QEMUs and its agent), cutting one host's storage lease, and counting
//! the running copies of a guest on every host all along a test.

use crate::host::TernHost;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The pid of a host's fence process, if one runs (checked by its
/// command line, so a reused pid is never taken for it).
pub fn fence_pid(h: &TernHost) -> Option<u32> {
    daemon_pid(h, "fence/fence.pid", "tern-fence")
}

/// The pid of a host's guest watchdog (`tern-watchdog`, started by its
/// fence under `ternd --fence-watchdog guests`), if one runs.
pub fn watchdog_pid(h: &TernHost) -> Option<u32> {
    daemon_pid(h, "fence/watchdog.pid", "tern-watchdog")
}

/// The pid in `file` under the host's state directory, if that process
/// lives and its command line names `binary`.
fn daemon_pid(h: &TernHost, file: &str, binary: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(h.state_dir().join(file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let live = live_pid(pid);
    (live && String::from_utf8_lossy(&cmd).contains(binary)).then_some(pid)
}

/// Waits until the host's fence process runs; its pid.
pub fn wait_fence(h: &TernHost, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = fence_pid(h) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no fence process on {}",
            h.opts.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `sig` to the host's fence process, if it runs.
pub fn signal_fence(h: &TernHost, sig: i32) {
    if let Some(p) = fence_pid(h) {
        // SAFETY: kill with a pid checked to be the host's fence process.
        unsafe {
            libc::kill(p as i32, sig);
        }
    }
}

/// Sends `sig` to the host's guest watchdog, if it runs.
pub fn signal_watchdog(h: &TernHost, sig: i32) {
    if let Some(p) = watchdog_pid(h) {
        // SAFETY: kill with a pid checked to be the host's tern-watchdog.
        unsafe {
            libc::kill(p as i32, sig);
        }
    }
}

/// The double fault: the agent is killed (SIGKILL) and, at the same
/// moment, its fence process gets `sig` (SIGKILL, or SIGSTOP: frozen, it
/// holds its lock and renews nothing); the host's QEMUs are left alone.
/// Returns the fence's pid (a stopped one is killed when `h` is dropped).
pub fn fail_agent_and_fence(h: &mut TernHost, sig: i32) -> u32 {
    let fence = fence_pid(h).expect("the host's fence process runs");
    // SAFETY: kill with a pid checked to be the host's fence process.
    unsafe {
        libc::kill(fence as i32, sig);
    }
    h.kill9();
    fence
}

/// Whether process `pid` is stopped (`SIGSTOP`: state T).
pub fn pid_stopped(pid: u32) -> bool {
    proc_state(pid).as_deref() == Some("T")
}

/// The host dies: its fence process, every QEMU and the agent, SIGKILL.
pub fn kill_host(h: &mut TernHost) {
    signal_watchdog(h, libc::SIGKILL);
    signal_fence(h, libc::SIGKILL);
    for p in h.qemu_pids() {
        // SAFETY: pids from the test host's own state directory.
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
    h.kill9();
}

/// What the host's fence recorded when it killed the guests
/// (`STATE/fence/fenced.json`), if it did.
pub fn fenced_record(h: &TernHost) -> Option<serde_json::Value> {
    let b = std::fs::read(h.state_dir().join("fence/fenced.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// One host's storage lease made unwritable (`chattr +i` on its lease
/// file: renaming a new lease over it fails with EPERM), as when the host
/// loses its storage; other hosts' leases in the pool are untouched.
/// Dropping it makes the lease writable again.
#[derive(Debug)]
pub struct LeaseCut {
    path: PathBuf,
}

/// Cuts `host`'s lease in the pool directory `pool`, waiting (up to 30 s)
/// for the lease to exist first.
pub fn cut_lease(pool: &Path, host: &str) -> LeaseCut {
    let path = pool.join(".tern-fence").join(format!("{host}.lease"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no lease {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    chattr(&path, "+i");
    LeaseCut { path }
}

fn chattr(path: &Path, flag: &str) {
    let o = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .expect("run chattr (e2fsprogs)");
    assert!(
        o.status.success(),
        "chattr {flag} {}: {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Drop for LeaseCut {
    fn drop(&mut self) {
        chattr(&self.path, "-i");
    }
}

/// Whether process `pid` lives (a zombie does not: PID 1 reaps slowly).
pub fn pid_alive(pid: u32) -> bool {
    live_pid(pid)
}

/// Waits until process `pid` no longer lives.
pub fn wait_pid_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while live_pid(pid) {
        assert!(Instant::now() < deadline, "process {pid} never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn live_pid(pid: u32) -> bool {
    !matches!(proc_state(pid).as_deref(), Some("Z") | Some("X") | None)
}

/// The state letter of process `pid` (`/proc/PID/stat`), if it exists.
fn proc_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
}

/// Whether a live QEMU runs guest `name` from the state directory `state`.
pub fn runs_guest(state: &Path, name: &str) -> bool {
    let Ok(b) = std::fs::read(state.join("run").join(name).join("runtime.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
        return false;
    };
    v["pid"].as_u64().is_some_and(|p| live_pid(p as u32))
}

/// Samples, every 20 ms on a thread, how many hosts run a live QEMU of a
/// guest, and keeps the most seen at once.
#[derive(Debug)]
pub struct CopyCounter {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CopyCounter {
    /// Starts counting guest `name` over the hosts' state directories.
    pub fn start(hosts: &[&TernHost], name: &str) -> CopyCounter {
        let dirs: Vec<PathBuf> = hosts.iter().map(|h| h.state_dir()).collect();
        let name = name.to_string();
        let max = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let n = dirs.iter().filter(|d| runs_guest(d, &name)).count();
                m.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        CopyCounter {
            max,
            stop,
            thread: Some(thread),
        }
    }

    /// The most copies seen running at once so far.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for CopyCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Last-modified time of a file (e.g. the console log a QEMU writes).
pub fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("mtime of {}: {e}", path.display()))
}

/// Birth time of a file (the console log a QEMU creates when it starts).
pub fn birth(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.created())
        .unwrap_or_else(|e| panic!("birth time of {}: {e}", path.display()))
}

/// `host`'s lease in the pool directory `pool`, as JSON, if written.
pub fn lease(pool: &Path, host: &str) -> Option<serde_json::Value> {
    lease_file(&pool.join(".tern-fence").join(format!("{host}.lease")))
}

/// A lease file, as JSON, if written (a half-written one reads as none).
pub fn lease_file(path: &Path) -> Option<serde_json::Value> {
    let b = std::fs::read(path).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Waits until the lease file `path` holds a record for which `pred`
/// holds; that record.
pub fn wait_lease_file(
    path: &Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = lease_file(path).filter(|l| pred(l)) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} reads {:?}",
            path.display(),
            lease_file(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `host`'s lease in `pool` is armed (the agent heard the
/// host-down policy and told its fence); its counter then.
pub fn wait_armed(pool: &Path, host: &str, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = lease(pool, host) {
            if l["armed"] == true {
                return l["counter"].as_u64().unwrap_or(0);
            }
        }
        assert!(Instant::now() < deadline, "lease of {host} never armed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `host`'s lease in `pool` says its fence feeds a watchdog;
/// the watchdog's timeout then, ms.
pub fn wait_watchdog_fed(pool: &Path, host: &str, timeout: Duration) -> u64 {
    let path = pool.join(".tern-fence").join(format!("{host}.lease"));
    watchdog_ms(&wait_lease_file(&path, "a watchdog named", timeout, |l| {
        watchdog_ms(l) > 0
    }))
}

/// The watchdog timeout a lease record names, ms (0: none).
pub fn watchdog_ms(lease: &serde_json::Value) -> u64 {
    lease["watchdog_ms"].as_u64().unwrap_or(0)
}

/// Waits until the host's `tern-watchdog` processes, all told, were armed
/// (fed after being disarmed) `times` times (from their shared log).
pub fn wait_watchdog_armed(h: &TernHost, times: usize, timeout: Duration) {
    let log = h.state_dir().join("fence/watchdog.log");
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("fed: armed").count() >= times {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}'s watchdog was not armed {times} times: {}",
            h.opts.name,
            crate::tail(&text, 10)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Notes, through a pidfd, the wall-clock moment a process ended (taken
/// when the end is seen, so never before it).
#[derive(Debug)]
pub struct ExitWatch {
    pid: u32,
    ended: Arc<std::sync::Mutex<Option<std::time::SystemTime>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExitWatch {
    /// Starts watching `pid`, which must live now.
    pub fn start(pid: u32) -> ExitWatch {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: pidfd_open takes a pid and flags; returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let ended = Arc::new(std::sync::Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (ended.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            while !s.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 100) } > 0 {
                    *e.lock().unwrap() = Some(std::time::SystemTime::now());
                    return;
                }
            }
        });
        ExitWatch {
            pid,
            ended,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (up to `timeout`) for the process to end; when it was seen to.
    pub fn wait(&self, timeout: Duration) -> std::time::SystemTime {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = *self.ended.lock().unwrap() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "process {} never ended",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `host`'s lease counter in `pool` reaches `counter`.
pub fn wait_lease_counter(pool: &Path, host: &str, counter: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = lease(pool, host).and_then(|l| l["counter"].as_u64());
        if now.is_some_and(|c| c >= counter) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lease of {host} stuck at {now:?}, wanted {counter}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The start of most host-down tests: hosts `a` and `b` of a controller,
/// sharing the pool `shared`, the guest `vm` running on `a` from it, and
/// `a`'s host-down policy on with its lease armed.
#[derive(Debug)]
pub struct ArmedPair {
    /// The host whose death the test stages; `vm` runs here.
    pub a: TernHost,
    /// The other host.
    pub b: TernHost,
    /// The shared pool's directory (removed after both hosts ended).
    pub pool: crate::cluster::SharedDir,
}

/// Starts an [`ArmedPair`] under controller `c`, with extra `ternd`
/// arguments for each host.
pub fn armed_pair(c: &crate::TestController, a_args: &[&str], b_args: &[&str]) -> ArmedPair {
    use crate::cluster::{boot_on_pool, enable_host_down_policy, shared_pool, wait_server, LONG};
    let a = crate::TestController::host(&[c], "a", a_args);
    let b = crate::TestController::host(&[c], "b", b_args);
    let pool = shared_pool(&[&a, &b], "shared");
    boot_on_pool(&a, "vm", "shared");
    wait_server(c, "vm", "a", "running");
    c.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|h| h.len() == 2)
    });
    enable_host_down_policy(c, "a");
    wait_armed(pool.path(), "a", LONG);
    ArmedPair { a, b, pool }
}

/// Waits until host `h`'s agent holds at the fault point `point`
/// (`--fault-stop-at POINT`; see `tern-agent`'s `faults`).
pub fn wait_stop_point(h: &TernHost, point: &str, timeout: Duration) {
    let marker = h.state_dir().join(format!("fault-{point}"));
    let deadline = Instant::now() + timeout;
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never reached {point}",
            h.opts.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until no live QEMU of guest `name` runs from `h`'s state
/// directory (after a [`kill_host`], say).
pub fn wait_guest_gone(h: &TernHost, name: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while runs_guest(&h.state_dir(), name) {
        assert!(
            Instant::now() < deadline,
            "{name}'s QEMU on {} never ended",
            h.opts.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
