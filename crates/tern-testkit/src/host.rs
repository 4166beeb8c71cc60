//! Test hosts: a `ternd` on a private state directory and socket, driven
//! through the real `tern` binary. Dropping a [`TernHost`] kills the agent
//! and every QEMU it started, and removes its files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where the workspace's binaries are: next to the running test's `deps`
/// directory (cargo builds every workspace binary before running tests).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TERN_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, panicking with advice if it is not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Options for a test host.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// A name for logs.
    pub name: String,
    /// Also listen on plain TCP (`--listen-tcp ADDR --auth none`).
    pub listen: Option<SocketAddr>,
    /// Also listen on mutual TLS (`--listen-tls ADDR`).
    pub listen_tls: Option<SocketAddr>,
    /// `--pki-dir` (server and client certificates of this agent).
    pub pki_dir: Option<PathBuf>,
    /// Contents of a `--config` file (TOML).
    pub config: Option<String>,
    /// Extra `ternd` arguments.
    pub extra_args: Vec<String>,
    /// Run `ternd` inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// `--accel` value; "tcg" when `None` (this machine's KVM cannot boot Linux).
    pub accel: Option<String>,
    /// Extra environment of `ternd` (and so of its QEMUs), e.g. `TZ`.
    pub env: Vec<(String, String)>,
    /// Body of the config file's `[qemu]` table; `None` gives
    /// [`default_qemu_table`] (test files live in temp and target dirs)
    /// and a `uid_range` of the host's own ([`crate::creds::test_uid_range`]).
    pub qemu: Option<String>,
}

/// The `[qemu]` table test hosts get by default: definitions may name
/// files under the temp directory, the workspace's target directory (the
/// test guest's kernel and initrd) and /boot (the host kernel the UEFI
/// tests boot), besides the pools. The temp directory is also declared a
/// shared filesystem: every test host runs on this one machine, so a
/// `--shared` dir pool there is seen by all of them (see
/// [`local_qemu_table`] for hosts that must not assume it).
pub fn default_qemu_table() -> String {
    format!(
        "{}shared_filesystems = [{:?}]\n",
        local_qemu_table(),
        std::env::temp_dir().display().to_string()
    )
}

/// [`default_qemu_table`] that also lets definitions name `extra` (block
/// devices a test made, say).
pub fn qemu_table_allowing(extra: &[PathBuf]) -> String {
    let target = crate::guest::workspace_root().join("target");
    let mut allowed = vec![
        std::env::temp_dir().display().to_string(),
        target.display().to_string(),
        "/boot".to_string(),
    ];
    allowed.extend(extra.iter().map(|p| p.display().to_string()));
    format!(
        "allowed_paths = {allowed:?}\nshared_filesystems = [{:?}]\n",
        std::env::temp_dir().display().to_string()
    )
}

/// [`default_qemu_table`] without `shared_filesystems`: a host that trusts
/// a `--shared` dir pool only when its filesystem type is a shared one.
pub fn local_qemu_table() -> String {
    let target = crate::guest::workspace_root().join("target");
    format!(
        "allowed_paths = [{:?}, {:?}, \"/boot\"]\n",
        std::env::temp_dir().display().to_string(),
        target.display().to_string()
    )
}

/// A running `ternd` for tests.
#[derive(Debug)]
pub struct TernHost {
    /// Options it was started with.
    pub opts: HostOptions,
    /// Root of its private files (state dir, socket, logs).
    pub root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl TernHost {
    /// Starts a host with default options.
    pub fn start(name: &str) -> TernHost {
        Self::start_with(HostOptions {
            name: name.into(),
            ..Default::default()
        })
    }

    /// Starts a host and waits until its socket answers.
    pub fn start_with(opts: HostOptions) -> TernHost {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("tern-{}-", opts.name))
            .tempdir()
            .expect("create temp dir");
        let root = tmp.path().to_path_buf();
        // QEMU runs as its own user and must pass through to the one
        // directory the agent hands it (see tern_agent::confine::user).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
            .expect("open the host's root for search");
        let mut opts = opts;
        if opts.qemu.is_none() {
            // Each test host its own guest uids (kept across restarts).
            let (first, last) = crate::creds::test_uid_range(&root);
            opts.qemu = Some(format!(
                "{}uid_range = \"{first}-{last}\"\n",
                default_qemu_table()
            ));
        }
        let mut h = TernHost {
            opts,
            root,
            _tmp: Some(tmp),
            child: None,
        };
        h.spawn();
        h
    }

    /// The `ternd` process's pid, while it runs (a benchmark moves it into
    /// a cgroup to account its CPU time and its QEMUs').
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// State directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// API socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("ternd.sock")
    }

    /// Connection URI for the CLI.
    pub fn uri(&self) -> String {
        format!("tern+unix:///system?socket={}", self.socket().display())
    }

    /// The read-only API socket.
    pub fn socket_ro(&self) -> PathBuf {
        self.root.join("ternd.sock-ro")
    }

    /// Connection URI of the read-only socket.
    pub fn uri_ro(&self) -> String {
        format!("tern+unix:///system?socket={}", self.socket_ro().display())
    }

    /// Connection URI of the TLS listener, with client certificates from `pki`.
    pub fn tls_uri(&self, pki: &Path) -> String {
        let addr = self
            .opts
            .listen_tls
            .expect("host started without listen_tls");
        format!(
            "tern+tls://{}:{}/system?pkipath={}",
            addr.ip(),
            addr.port(),
            pki.display()
        )
    }

    /// The agent's log file.
    pub fn log(&self) -> PathBuf {
        self.root.join("ternd.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open agent log");
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("ternd"));
                c
            }
            None => Command::new(bin("ternd")),
        };
        cmd.arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .arg("--accel")
            .arg(self.opts.accel.as_deref().unwrap_or("tcg"))
            .args(&self.opts.extra_args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .env("TERND_LOG", "info,tern_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if let Some(l) = self.opts.listen {
            cmd.arg("--listen-tcp")
                .arg(l.to_string())
                .args(["--auth", "none"]);
        }
        if let Some(l) = self.opts.listen_tls {
            cmd.arg("--listen-tls").arg(l.to_string());
        }
        if let Some(d) = &self.opts.pki_dir {
            cmd.arg("--pki-dir").arg(d);
        }
        let qemu = self.opts.qemu.clone().unwrap_or_else(default_qemu_table);
        let text = format!(
            "{}\n[qemu]\n{qemu}",
            self.opts.config.as_deref().unwrap_or_default()
        );
        let path = self.root.join("ternd.toml");
        std::fs::write(&path, text).expect("write ternd.toml");
        cmd.arg("--config").arg(path);
        let child = cmd.spawn().expect("spawn ternd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "ternd exited ({st}) at start: {}",
                        std::fs::read_to_string(self.log()).unwrap_or_default()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ternd did not open its socket within 30 s");
    }

    /// Runs `tern -c <this host> ARGS...`.
    pub fn tern(&self, args: &[&str]) -> Output {
        tern_at(&self.uri(), args)
    }

    /// Runs `tern` and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tern(args);
        assert!(
            o.status.success(),
            "tern {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `tern`, expects failure, and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.tern(args);
        assert!(
            !o.status.success(),
            "tern {} should have failed but printed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The console log a domain's serial port 0 (pty) is kept in.
    pub fn console_log(&self, domain: &str) -> PathBuf {
        self.state_dir()
            .join("run")
            .join(domain)
            .join("console.log")
    }

    /// Defines, builds and starts a directory pool.
    pub fn add_pool(&self, name: &str, dir: &Path, shared: bool) {
        let d = dir.to_str().expect("utf-8 path");
        let mut args = vec!["pool-define-as", name, "dir", "--target", d];
        if shared {
            args.push("--shared");
        }
        self.ok(&args);
        self.ok(&["pool-build", name]);
        self.ok(&["pool-start", name]);
    }

    /// Writes a guest's XML into this host's directory and defines it.
    pub fn define_guest(&self, spec: &crate::GuestSpec) {
        let path = self.root.join(format!("{}.xml", spec.name));
        std::fs::write(&path, spec.to_xml()).expect("write XML");
        self.ok(&["define", path.to_str().expect("utf-8 path")]);
    }

    /// Pids of every QEMU this host's state directory records.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.state_dir().join("run")) else {
            return out;
        };
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("qemu.pid")) {
                if let Ok(p) = s.trim().parse() {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Kills the agent with SIGKILL (guests keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits up to `timeout` for it to
    /// exit (then kills it); its exit status, if it exited by itself.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: our own child, not yet reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if std::time::Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the agent again on the same state directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Polls the console until `pred` holds for its text, or panics after
    /// `timeout` with the console shown. A console silent for
    /// [`CONSOLE_STALL`] ends the wait early, with what the guest's QEMU
    /// was doing (see [`crate::stall`]).
    pub fn wait_console(
        &self,
        domain: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.try_wait_console(domain, timeout, what, pred)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::wait_console`] that returns why it gave up, so that a test
    /// can say what to do about a guest that froze (see `virt_install`'s
    /// GRUB boots).
    pub fn try_wait_console(
        &self,
        domain: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, ConsoleGaveUp> {
        let start = Instant::now();
        let mut last_change = start;
        let mut last_len = 0;
        loop {
            let o = self.tern(&["console", domain]);
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            if pred(&text) {
                return Ok(text);
            }
            if text.len() != last_len {
                last_len = text.len();
                last_change = Instant::now();
            }
            let stalled = last_change.elapsed() > CONSOLE_STALL;
            if stalled || start.elapsed() > timeout {
                let run_dir = self.state_dir().join("run").join(domain);
                return Err(ConsoleGaveUp {
                    stalled,
                    message: format!(
                        "{} after {:?} waiting for {what} on {domain}'s console; last output:\n{}\n{}",
                        if stalled { "silent for too long" } else { "timed out" },
                        start.elapsed(),
                        tail(&text, 20),
                        crate::stall::diagnose(&run_dir)
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How long a console may stay silent before a wait gives up on it. A
/// Debian guest under TCG prints nothing for about two minutes while
/// systemd waits for the network; five is a guest that stopped.
pub const CONSOLE_STALL: Duration = Duration::from_secs(300);

/// A console wait that gave up.
#[derive(Debug)]
pub struct ConsoleGaveUp {
    /// The console stopped growing for [`CONSOLE_STALL`] (rather than the
    /// whole wait running out).
    pub stalled: bool,
    /// What was waited for, the console's tail and the QEMU's state.
    pub message: String,
}

impl std::fmt::Display for ConsoleGaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs `tern -c URI ARGS...`.
pub fn tern_at(uri: &str, args: &[&str]) -> Output {
    Command::new(bin("tern"))
        .arg("-c")
        .arg(uri)
        .args(args)
        .env_remove("TERN_DEFAULT_URI")
        .env_remove("TERN_PKI_DIR")
        .output()
        .expect("run tern")
}

/// A free TCP port on 127.0.0.1 (bound and released; a tiny race remains),
/// outside the agents' default migration range: the test binds it later,
/// and an agent's QEMU could take a port of that range in between.
pub fn free_port() -> u16 {
    const MIGRATION_PORTS: std::ops::RangeInclusive<u16> = 49152..=49215;
    // Hold every unwanted pick until a good one comes, so the kernel moves on.
    let mut held = Vec::new();
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = l.local_addr().expect("a bound port").port();
        if !MIGRATION_PORTS.contains(&port) {
            return port;
        }
        held.push(l);
    }
}

/// Last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for TernHost {
    fn drop(&mut self) {
        // The fence process and its watchdog outlive the agent by design;
        // not the test. (The watchdog first: it would kill the guests.)
        crate::fencing::signal_watchdog(self, libc::SIGKILL);
        crate::fencing::signal_fence(self, libc::SIGKILL);
        for pid in self.qemu_pids() {
            // SAFETY: kill with a pid read from our own state directory.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        self.kill9();
        let (first, last) = crate::creds::test_uid_range(&self.root);
        crate::creds::forget_userfaultfd_entries(first, last);
        // Taps created for bridged guests are named tn<hosttag>...; the
        // agent removes them when it sees QEMU end, which it no longer can.
        // They are cleaned by the namespace helpers that created bridges.
    }
}
