//! Two agents on this machine that see one shared pool, a guest booted on
//! the first, and the checks a migration test makes: where the guest runs
//! (counted as live QEMU processes on both hosts), that it kept counting
//! and verifying its memory, and that the other host kept nothing.
//!
//! In the style of Propolis's PHD `migrate_from`: a test says what it does
//! to the migration; the kit says whether the guest survived it.

use crate::{
    bin, build_or_reuse, BuildOptions, GuestSpec, HostOptions, SerialLog, TernHost, TestDisk,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Which of the two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The first host (`a`), where guests boot.
    A,
    /// The second host (`b`).
    B,
}

impl Which {
    /// The other one.
    pub fn other(self) -> Which {
        match self {
            Which::A => Which::B,
            Which::B => Which::A,
        }
    }
}

/// Two hosts sharing the pool `shared`: on loopback, or each in a network
/// namespace of a [`crate::Lab`] so that a test can cut the link between
/// them. Fields drop in order: agents (and their QEMUs) first, the
/// namespaces last.
pub struct HostPair {
    /// The first host.
    pub a: TernHost,
    /// The second host.
    pub b: TernHost,
    pool: tempfile::TempDir,
    /// The directories of the hosts' local pools, once added.
    local: Vec<tempfile::TempDir>,
    /// With [`HostPair::start_in_lab`]: the namespaces, where agents talk
    /// to each other and the driver runs in namespace C, all over TCP, so
    /// a cut link parts B from both.
    lab: Option<crate::Lab>,
}

impl HostPair {
    /// Starts both agents with extra `ternd` arguments each.
    pub fn start(name: &str, a_args: &[&str], b_args: &[&str]) -> HostPair {
        let pool = tempfile::Builder::new()
            .prefix("tern-shared-")
            .tempdir()
            .expect("shared pool dir");
        let opts = |side: &str, args: &[&str]| HostOptions {
            name: format!("{name}-{side}"),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let a = TernHost::start_with(opts("a", a_args));
        let b = TernHost::start_with(opts("b", b_args));
        a.add_pool("shared", pool.path(), true);
        b.add_pool("shared", pool.path(), true);
        HostPair {
            a,
            b,
            pool,
            local: Vec::new(),
            lab: None,
        }
    }

    /// Starts both agents in the namespaces of a new lab (needs root):
    /// the API on each one's lab address, migrations on the a–b link.
    pub fn start_in_lab(name: &str, a_args: &[&str], b_args: &[&str]) -> HostPair {
        let lab = crate::Lab::start();
        let pool = tempfile::Builder::new()
            .prefix("tern-shared-")
            .tempdir()
            .expect("shared pool dir");
        let start = |side: crate::Side, suffix: &str, args: &[&str]| {
            let mut o = lab.host_options(side, &format!("{name}-{suffix}"));
            o.extra_args.extend(args.iter().map(|s| s.to_string()));
            TernHost::start_with(o)
        };
        let a = start(crate::Side::A, "a", a_args);
        let b = start(crate::Side::B, "b", b_args);
        a.add_pool("shared", pool.path(), true);
        b.add_pool("shared", pool.path(), true);
        HostPair {
            a,
            b,
            pool,
            local: Vec::new(),
            lab: Some(lab),
        }
    }

    /// The lab, for a pair started with [`HostPair::start_in_lab`].
    pub fn lab(&self) -> &crate::Lab {
        self.lab
            .as_ref()
            .expect("this pair runs on loopback; start it with start_in_lab")
    }

    /// The shared pool's directory.
    pub fn pool_dir(&self) -> &Path {
        self.pool.path()
    }

    /// Gives each host a local (not shared) pool "images" of its own, for
    /// migrations that copy storage; returns their directories (A, B).
    pub fn add_local_pools(&mut self) -> (PathBuf, PathBuf) {
        let mk = |side: &str| {
            tempfile::Builder::new()
                .prefix(&format!("tern-i{side}-"))
                .tempdir()
                .expect("local pool dir")
        };
        let (da, db) = (mk("a"), mk("b"));
        self.a.add_pool("images", da.path(), false);
        self.b.add_pool("images", db.path(), false);
        let dirs = (da.path().to_path_buf(), db.path().to_path_buf());
        self.local.extend([da, db]);
        dirs
    }

    /// Boots a guest on A whose disk is a volume of A's local pool
    /// "images" (see [`HostPair::add_local_pools`]), `disk_mb` MiB of which
    /// the guest keeps writing and verifying.
    pub fn boot_local(&self, name: &str, workload: &str, disk_mb: u64) -> GuestSpec {
        boot_guest_in(&self.a, "images", name, workload, disk_mb, None)
    }

    /// One of the hosts.
    pub fn host(&self, w: Which) -> &TernHost {
        match w {
            Which::A => &self.a,
            Which::B => &self.b,
        }
    }

    /// One of the hosts, to kill or restart it.
    pub fn host_mut(&mut self, w: Which) -> &mut TernHost {
        match w {
            Which::A => &mut self.a,
            Which::B => &mut self.b,
        }
    }

    /// Defines a guest with a 16 MiB disk in the shared pool on A, starts
    /// it with `workload` (the test guest's kernel arguments) and waits
    /// until it reports ready.
    pub fn boot(&self, name: &str, workload: &str) -> GuestSpec {
        boot_guest(&self.a, name, workload)
    }

    /// `tern -c FROM migrate FLAGS NAME TO`, as a command to run: on
    /// this machine with the agents' local sockets, or, in a lab, from
    /// namespace C with their TCP addresses.
    pub fn migrate_cmd(&self, from: Which, name: &str, flags: &[&str]) -> Command {
        let (mut c, src, dst) = match &self.lab {
            None => (
                Command::new(bin("tern")),
                self.host(from).uri(),
                self.host(from.other()).uri(),
            ),
            Some(lab) => (
                lab.cmd(crate::Side::C, &bin("tern").to_string_lossy()),
                lab.tcp_uri(side(from)),
                lab.tcp_uri(side(from.other())),
            ),
        };
        c.arg("-c")
            .arg(src)
            .arg("migrate")
            .args(flags)
            .arg(name)
            .arg(dst);
        c
    }

    /// Runs a migration to the end.
    pub fn migrate(&self, from: Which, name: &str, flags: &[&str]) -> Output {
        self.migrate_cmd(from, name, flags)
            .output()
            .expect("run tern migrate")
    }

    /// Starts a migration in the background.
    pub fn migrate_bg(&self, from: Which, name: &str, flags: &[&str]) -> Child {
        self.migrate_cmd(from, name, flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tern migrate")
    }

    /// Kills a host's agent with SIGKILL and starts it again on the same
    /// state directory, without any `--fault-stop-at` (the point would hold
    /// the recovery too).
    pub fn kill9_and_restart(&mut self, w: Which) {
        let h = self.host_mut(w);
        h.kill9();
        let args = std::mem::take(&mut h.opts.extra_args);
        let mut keep = Vec::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--fault-stop-at" {
                it.next();
            } else {
                keep.push(a);
            }
        }
        h.opts.extra_args = keep;
        for f in std::fs::read_dir(h.state_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.file_name().to_string_lossy().starts_with("fault-") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        h.restart();
    }

    /// Live QEMU processes of both hosts: (on A, on B).
    pub fn qemu_counts(&self) -> (usize, usize) {
        (live_qemus(&self.a), live_qemus(&self.b))
    }

    /// Waits until the guest runs on `side` alone and nothing of the
    /// migration is left anywhere: one live QEMU in all, on `side`; the
    /// other host has no QEMU, no transient domain and no unfinished
    /// migration record. Panics with both hosts' job events otherwise.
    pub fn wait_settled_on(&self, side: Which, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let why = self.unsettled(side, name);
            let Some(why) = why else { return };
            if Instant::now() > deadline {
                panic!(
                    "the guest did not settle on {side:?} within {timeout:?}: {why}\n{}",
                    self.events(name)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Why the guest is not (yet) settled on `side` alone, or `None` when
    /// it is: the check [`HostPair::wait_settled_on`] repeats, looked at
    /// once and never panicking, for callers that count failures (the soak
    /// benchmark) instead of stopping at the first.
    pub fn unsettled(&self, side: Which, name: &str) -> Option<String> {
        let here = self.host(side);
        let there = self.host(side.other());
        let counts = (live_qemus(here), live_qemus(there));
        if counts != (1, 0) {
            return Some(format!(
                "{counts:?} live QEMUs on ({side:?}, the other host)"
            ));
        }
        let st = match try_state(here, name) {
            Ok(st) => st,
            Err(e) => return Some(format!("domstate on {side:?} failed: {e}")),
        };
        if !st.starts_with("running") {
            return Some(format!("state on {side:?} is '{st}'"));
        }
        for (h, w) in [(here, side), (there, side.other())] {
            let rec = h.state_dir().join("jobs").join(format!("{name}.json"));
            if rec.exists() {
                return Some(format!("{w:?} still has an unfinished migration record"));
            }
        }
        let listed = there.tern(&["list", "--all", "--name"]);
        if !listed.status.success() {
            return Some(format!(
                "list on {:?} failed: {}",
                side.other(),
                String::from_utf8_lossy(&listed.stderr).trim()
            ));
        }
        let listed = String::from_utf8_lossy(&listed.stdout);
        let persistent_copy = there
            .state_dir()
            .join("domains")
            .join(format!("{name}.json"))
            .exists();
        if listed.lines().any(|l| l.trim() == name) && !persistent_copy {
            return Some(format!(
                "{:?} still lists a transient '{name}'",
                side.other()
            ));
        }
        None
    }

    /// Both hosts' job events and completed jobs, for failure messages.
    pub fn events(&self, name: &str) -> String {
        let mut out = String::new();
        for (w, h) in [("A", &self.a), ("B", &self.b)] {
            let ev = h.tern(&["domjobevents", name]);
            out.push_str(&format!(
                "--- {w} events ---\n{}{}\n",
                String::from_utf8_lossy(&ev.stdout),
                String::from_utf8_lossy(&ev.stderr)
            ));
        }
        out
    }

    /// The guest, through itself, on `side`: new heartbeats and a new
    /// full memory pass that verifies, no counter reset, no failure.
    pub fn assert_guest_whole_on(&self, side: Which, name: &str) {
        let h = self.host(side);
        let text = h.ok(&["console", name]);
        let passes = SerialLog::parse(&text).count("TERN-MEM ok");
        let text = h.wait_console(name, Duration::from_secs(120), "a new memory pass", |t| {
            SerialLog::parse(t).count("TERN-MEM ok") > passes
        });
        let log = SerialLog::parse(&text);
        assert!(
            !log.seq_went_backwards(),
            "heartbeat counter reset on {side:?}"
        );
        assert!(
            log.failures.is_empty(),
            "guest failures: {:?}",
            log.failures
        );
        assert!(!log.has("TERN-READY") || log.ready(), "guest rebooted");
    }
}

/// The lab side of a host.
fn side(w: Which) -> crate::Side {
    match w {
        Which::A => crate::Side::A,
        Which::B => crate::Side::B,
    }
}

/// Defines a guest with a 16 MiB disk in `h`'s pool `shared`, starts it
/// with `workload` (the test guest's kernel arguments) and waits until it
/// reports ready.
pub fn boot_guest(h: &TernHost, name: &str, workload: &str) -> GuestSpec {
    boot_guest_sized(h, name, workload, None)
}

/// [`boot_guest`] with `memory_mib` of RAM instead of the spec's default;
/// a bigger guest gets longer to fill its memory and report ready (a
/// minute more per GiB under TCG).
pub fn boot_guest_sized(
    h: &TernHost,
    name: &str,
    workload: &str,
    memory_mib: Option<u64>,
) -> GuestSpec {
    boot_guest_in(h, "shared", name, workload, 4, memory_mib)
}

/// Defines a guest with a raw disk in pool `pool` of `h` (`disk_mb` MiB
/// of it written and verified by the guest), starts it and waits until
/// it reports ready.
pub fn boot_guest_in(
    h: &TernHost,
    pool: &str,
    name: &str,
    workload: &str,
    disk_mb: u64,
    memory_mib: Option<u64>,
) -> GuestSpec {
    let img = build_or_reuse(&BuildOptions::default()).expect("test guest");
    let vol = format!("{name}.raw");
    let size = format!("{}M", (disk_mb * 2).max(16));
    h.ok(&["vol-create-as", pool, &vol, &size]);
    let path = h.ok(&["vol-path", &vol, "--pool", pool]);
    // The verifier reads 32 MiB/s unless the caller chose a rate.
    let verify = if workload.contains("tern.verify_rate=") {
        ""
    } else {
        " tern.verify_rate=32"
    };
    let mut spec = GuestSpec::new(name, &img).workload(&format!(
        "{workload} tern.disk=/dev/vda tern.disk_mb={disk_mb}{verify}"
    ));
    spec.disks.push(TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    if let Some(m) = memory_mib {
        spec.memory_mib = m;
    }
    h.define_guest(&spec);
    h.ok(&["start", name]);
    let extra = Duration::from_secs(60 * spec.memory_mib.saturating_sub(256) / 1024);
    wait_ready_within(h, name, 3, Duration::from_secs(90) + extra);
    spec
}

/// Two agents in the network namespaces of a [`Lab`], joined by its veth
/// link, sharing the pool `shared`. Fields drop in order: agents (and
/// their QEMUs) first, the namespaces last.
pub struct LabPair {
    /// The agent in namespace A.
    pub a: TernHost,
    /// The agent in namespace B.
    pub b: TernHost,
    _pool: tempfile::TempDir,
    /// The namespaces and their link (cut and restore it).
    pub lab: crate::Lab,
}

impl LabPair {
    /// Starts both agents in their namespaces with extra arguments.
    pub fn start(name: &str, extra: &[&str]) -> LabPair {
        let lab = crate::Lab::start();
        let pool = tempfile::Builder::new()
            .prefix("tern-shared-")
            .tempdir()
            .expect("shared pool dir");
        let start = |side: crate::Side, suffix: &str| {
            let mut o = lab.host_options(side, &format!("{name}-{suffix}"));
            o.extra_args.extend(extra.iter().map(|s| s.to_string()));
            TernHost::start_with(o)
        };
        let a = start(crate::Side::A, "a");
        let b = start(crate::Side::B, "b");
        a.add_pool("shared", pool.path(), true);
        b.add_pool("shared", pool.path(), true);
        LabPair {
            a,
            b,
            _pool: pool,
            lab,
        }
    }
}

/// Live QEMU processes a host's state directory records (zombies, which
/// this machine's init reaps slowly, do not count).
pub fn live_qemus(h: &TernHost) -> usize {
    h.qemu_pids().into_iter().filter(|p| is_live(*p)).count()
}

fn is_live(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name in parentheses.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// `domstate NAME --reason`.
pub fn state(h: &TernHost, name: &str) -> String {
    h.ok(&["domstate", name, "--reason"]).trim().to_string()
}

/// `domstate NAME --reason`, or the CLI's error (never panics).
pub fn try_state(h: &TernHost, name: &str) -> Result<String, String> {
    let o = h.tern(&["domstate", name, "--reason"]);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

/// Waits for the test guest's TERN-READY and a heartbeat above `above`.
pub fn wait_ready(h: &TernHost, name: &str, above: u64) -> String {
    wait_ready_within(h, name, above, Duration::from_secs(90))
}

/// [`wait_ready`] with its own time limit.
pub fn wait_ready_within(h: &TernHost, name: &str, above: u64, timeout: Duration) -> String {
    h.wait_console(name, timeout, "TERN-READY", |t| {
        let l = SerialLog::parse(t);
        l.ready() && l.last_seq().is_some_and(|s| s > above)
    })
}

/// Waits until `h`'s job for `name` moved some memory.
pub fn wait_job_active(h: &TernHost, name: &str) {
    wait_memory_sent(h, name, 1);
}

/// Waits until the migration job of `name` on source `h` has sent at
/// least `bytes` of memory. More than the sockets between the two QEMUs
/// can buffer (a few MiB on loopback) means the destination QEMU itself
/// is reading the stream, not only its host's kernel.
pub fn wait_memory_sent(h: &TernHost, name: &str, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = h.tern(&["domjobinfo", name, "--json"]);
        if let Ok(j) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            if j["kind"] == "unbounded" && j["memory_processed"].as_u64().unwrap_or(0) >= bytes {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the job never sent {bytes} bytes of memory"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a migration's disk mirrors have copied something but not
/// everything: the moment to strike a `--copy-storage-all` migration.
pub fn wait_mirror_active(h: &TernHost, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = h.tern(&["domjobinfo", name, "--json"]);
        if let Ok(j) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            let done = j["disk_processed"].as_u64().unwrap_or(0);
            let total = j["disk_total"].as_u64().unwrap_or(0);
            if j["kind"] == "unbounded" && done > 0 && done < total {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the disk mirror never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fault point an agent was started with (`--fault-stop-at POINT`).
pub struct FaultPoint {
    marker: PathBuf,
}

impl FaultPoint {
    /// The point `name` of host `h`.
    pub fn of(h: &TernHost, name: &str) -> FaultPoint {
        FaultPoint {
            marker: h.state_dir().join(format!("fault-{name}")),
        }
    }

    /// Waits until the agent holds there.
    pub fn wait_reached(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.marker.exists() {
            assert!(
                Instant::now() < deadline,
                "fault point {} never reached",
                self.marker.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets the agent go on (if it still lives).
    pub fn release(&self) {
        let _ = std::fs::remove_file(&self.marker);
    }
}

/// Kills a process with SIGKILL (a QEMU of a host, say).
pub fn kill9(pid: u32) {
    // SAFETY: sending a signal has no memory effects here; the pid was read
    // from a state directory this test owns.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Sends SIGINT (Ctrl-C) to a child.
pub fn interrupt(c: &Child) {
    // SAFETY: as above; the pid is our own child's.
    unsafe {
        libc::kill(c.id() as i32, libc::SIGINT);
    }
}

/// A directory made full: a 64 KiB tmpfs mounted over it and filled, as a
/// disk that fills up. Unmounted on drop (what was written there goes with
/// it). Needs root, as the tests that use it.
pub struct FullDir {
    path: PathBuf,
}

impl FullDir {
    /// Mounts and fills; panics if that cannot be done.
    pub fn over(path: &Path) -> FullDir {
        let full = FullDir::small(path, 64);
        let path = &full.path;
        let filler = path.join("filler");
        let chunk = vec![0u8; 4096];
        let mut f = std::fs::File::create(&filler).expect("create filler");
        use std::io::Write;
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        full
    }

    /// Mounts an empty tmpfs of `kib` KiB over `path`: it fills as it is
    /// written (a pool that runs out of space half-way through a copy).
    pub fn small(path: &Path, kib: u64) -> FullDir {
        std::fs::create_dir_all(path).expect("create the directory to fill");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tern-full"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(st.success(), "cannot mount a tmpfs over {}", path.display());
        FullDir {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for FullDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
