//! A small L2 lab of network namespaces for migration tests (needs root).
//!
//! ```text
//!   ns A (tern-<id>-a)                      ns B (tern-<id>-b)
//!   br0 10.77.<n>.1/24 ── tl0 ═══ tl0 ── br0 10.77.<n>.2/24
//!    │   (the "link": cut_link / restore_link)
//!   tc0
//!    ║
//!   tc0 10.77.<n>.3/24
//!   ns C (tern-<id>-c): a client on A's bridge
//! ```
//!
//! A `ternd` started with [`Lab::host_options`] runs inside A or B (`ip
//! netns exec`), serves the API on `10.77.<n>.x:16709` and advertises that
//! address for incoming migrations, so QEMU-to-QEMU traffic crosses the
//! link. A bridged guest NIC on `br0` gets a tap in its agent's namespace;
//! the client namespace reaches the guest on A directly and, after a
//! migration, through the link.
//!
//! Dropping the [`Lab`] deletes the namespaces, which removes every veth,
//! bridge and tap in them. Drop the [`crate::TernHost`]s first (declare the
//! lab before them) so no QEMU keeps a namespace alive.

use crate::HostOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Bridge name in A and B.
pub const BRIDGE: &str = "br0";
/// The a–b veth, named the same at both ends.
pub const LINK_IF: &str = "tl0";
/// The a–c veth, named the same at both ends.
pub const CLIENT_IF: &str = "tc0";
/// TCP port the agents' API listens on inside the lab.
pub const API_PORT: u16 = 16709;
/// Prefix of every namespace a lab creates.
pub const PREFIX: &str = "tern-";

/// One namespace of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The source host.
    A,
    /// The destination host.
    B,
    /// A client on A's bridge.
    C,
}

impl Side {
    /// Namespace suffix and address host part.
    fn letter(self) -> char {
        match self {
            Side::A => 'a',
            Side::B => 'b',
            Side::C => 'c',
        }
    }

    /// Last octet of this side's address.
    pub fn host_octet(self) -> u8 {
        match self {
            Side::A => 1,
            Side::B => 2,
            Side::C => 3,
        }
    }
}

/// Whether the test runs as root (namespaces, veths and taps need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests: returns `true` (after printing why) when `test` must be
/// skipped because it does not run as root.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "skipping {test}: it builds network namespaces, bridges and taps, which needs root (run the tests as root, as CI does)"
    );
    true
}

/// Identity of a lab: namespace id and the third octet of its addresses.
/// Namespaces are `tern-<pid>-<k>-{a,b,c}`; `n` differs for every lab of a
/// process (up to 254 of them) so addresses never repeat inside one run.
pub fn lab_names(pid: u32, k: u32) -> (String, u8) {
    let id = format!("{pid}-{k}");
    let n = 1 + ((pid.wrapping_add(k)) % 254) as u8;
    (id, n)
}

/// The pid that created a lab namespace named `tern-<pid>-<k>-<x>`, if the
/// name has exactly that shape.
pub fn owner_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(PREFIX)?;
    let mut parts = rest.split('-');
    let (pid, k, side) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !matches!(side, "a" | "b" | "c")
        || k.is_empty()
        || !k.bytes().all(|b| b.is_ascii_digit())
        || pid.is_empty()
        || !pid.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    pid.parse().ok()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running lab; see the module documentation.
#[derive(Debug)]
pub struct Lab {
    id: String,
    n: u8,
    made: Vec<String>,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}; install iproute2"))
}

fn ip_ok(args: &[&str]) {
    let o = ip(args);
    assert!(
        o.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
}

/// Runs `ip -n NS -batch -` with one command a line.
fn ip_batch(ns: &str, cmds: &[String]) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}; install iproute2"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(cmds.join("\n").as_bytes())
        .expect("write ip batch");
    drop(stdin);
    let o = child.wait_with_output().expect("wait for ip");
    assert!(
        o.status.success(),
        "setting up namespace {ns} failed: {}\ncommands:\n{}",
        String::from_utf8_lossy(&o.stderr).trim(),
        cmds.join("\n")
    );
}

/// Deletes lab namespaces left by test processes that died without
/// unwinding (SIGKILL); only names of our exact shape whose owner is gone.
fn remove_stale() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name) {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

impl Lab {
    /// Builds the lab. Panics with the failing command if anything cannot
    /// be created (call [`skip_unless_root`] first).
    pub fn start() -> Lab {
        remove_stale();
        let (id, n) = lab_names(std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab {
            id,
            n,
            made: Vec::new(),
        };
        for s in [Side::A, Side::B, Side::C] {
            let ns = lab.ns(s);
            // Same pid and counter as a dead process's leftovers: start clean.
            let _ = ip(&["netns", "del", &ns]);
            ip_ok(&["netns", "add", &ns]);
            lab.made.push(ns);
        }
        let (a, b, c) = (lab.ns(Side::A), lab.ns(Side::B), lab.ns(Side::C));
        let addr = |s: Side| format!("{}/24", lab.addr(s.host_octet()));
        // A fixed bridge MAC: a bridge otherwise takes the lowest port MAC,
        // which changes as taps come and go.
        let br_mac = |s: Side| format!("02:77:{:02x}:00:00:{:02x}", n, s.host_octet());
        ip_batch(
            &a,
            &[
                "link set lo up".into(),
                format!(
                    "link add {BRIDGE} address {} type bridge stp_state 0 forward_delay 0",
                    br_mac(Side::A)
                ),
                format!("link add {LINK_IF} type veth peer name {LINK_IF} netns {b}"),
                format!("link add {CLIENT_IF} type veth peer name {CLIENT_IF} netns {c}"),
                format!("link set {LINK_IF} master {BRIDGE}"),
                format!("link set {CLIENT_IF} master {BRIDGE}"),
                format!("addr add {} dev {BRIDGE}", addr(Side::A)),
                format!("link set {BRIDGE} up"),
                format!("link set {LINK_IF} up"),
                format!("link set {CLIENT_IF} up"),
            ],
        );
        ip_batch(
            &b,
            &[
                "link set lo up".into(),
                format!(
                    "link add {BRIDGE} address {} type bridge stp_state 0 forward_delay 0",
                    br_mac(Side::B)
                ),
                format!("link set {LINK_IF} master {BRIDGE}"),
                format!("addr add {} dev {BRIDGE}", addr(Side::B)),
                format!("link set {BRIDGE} up"),
                format!("link set {LINK_IF} up"),
            ],
        );
        ip_batch(
            &c,
            &[
                "link set lo up".into(),
                format!("addr add {} dev {CLIENT_IF}", addr(Side::C)),
                format!("link set {CLIENT_IF} up"),
            ],
        );
        lab
    }

    /// The lab's id (`<pid>-<k>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Namespace name of a side: `tern-<id>-a`.
    pub fn ns(&self, s: Side) -> String {
        format!("{PREFIX}{}-{}", self.id, s.letter())
    }

    /// Third octet of the lab's addresses.
    pub fn subnet(&self) -> u8 {
        self.n
    }

    /// `10.77.<n>.<host>`.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, host)
    }

    /// A side's own address (.1, .2, .3).
    pub fn host_addr(&self, s: Side) -> Ipv4Addr {
        self.addr(s.host_octet())
    }

    /// Where a side's agent serves the API.
    pub fn api_addr(&self, s: Side) -> SocketAddr {
        SocketAddr::from((self.host_addr(s), API_PORT))
    }

    /// `tern+tcp://10.77.<n>.x:16709/system` (reachable from inside the
    /// lab only, e.g. by the other agent with `--p2p`).
    pub fn tcp_uri(&self, s: Side) -> String {
        format!("tern+tcp://{}/system", self.api_addr(s))
    }

    /// Options for a `ternd` inside a side's namespace: API on
    /// [`Lab::api_addr`], incoming migrations advertised on its address.
    pub fn host_options(&self, s: Side, name: &str) -> HostOptions {
        HostOptions {
            name: name.into(),
            listen: Some(self.api_addr(s)),
            extra_args: vec!["--migration-address".into(), self.host_addr(s).to_string()],
            netns: Some(self.ns(s)),
            ..Default::default()
        }
    }

    /// A command that runs `prog` inside a side's namespace.
    pub fn cmd(&self, s: Side, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(s), prog]);
        c
    }

    /// Runs `args[0] args[1..]` inside a side's namespace and returns its output.
    pub fn exec(&self, s: Side, args: &[&str]) -> Output {
        let (prog, rest) = args.split_first().expect("a command");
        self.cmd(s, prog)
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec: {e}"))
    }

    /// Like [`Lab::exec`], panicking with stderr on failure; returns stdout.
    pub fn exec_ok(&self, s: Side, args: &[&str]) -> String {
        let o = self.exec(s, args);
        assert!(
            o.status.success(),
            "{} in {} failed: {}",
            args.join(" "),
            self.ns(s),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `f` on a thread that joined a side's network namespace: sockets
    /// it creates belong to that namespace for their whole life, so a
    /// `TcpStream` returned from here can be used from any thread.
    pub fn in_ns<T: Send>(&self, s: Side, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        in_netns(&self.ns(s), f)
    }

    /// Sets the a–b link down at both ends: nothing crosses it, and no
    /// reset is sent either (like a pulled cable).
    pub fn cut_link(&self) {
        ip_ok(&["-n", &self.ns(Side::A), "link", "set", LINK_IF, "down"]);
        ip_ok(&["-n", &self.ns(Side::B), "link", "set", LINK_IF, "down"]);
    }

    /// Sets the a–b link up again.
    pub fn restore_link(&self) {
        ip_ok(&["-n", &self.ns(Side::A), "link", "set", LINK_IF, "up"]);
        ip_ok(&["-n", &self.ns(Side::B), "link", "set", LINK_IF, "up"]);
    }

    /// Shapes the a–b link to `bytes_per_s` each way (a token bucket,
    /// `tc qdisc replace ... tbf`, at both ends), or removes the shaping
    /// (`None`). The queue holds 20 ms of traffic, as a switch port's
    /// buffer would: a link that is full makes every new packet wait
    /// behind what is queued, which is what post-copy's page requests meet
    /// on a real link and QEMU's own rate limit never shows.
    pub fn shape_link(&self, bytes_per_s: Option<u64>) {
        for s in [Side::A, Side::B] {
            let ns = self.ns(s);
            let o = match bytes_per_s {
                Some(r) => {
                    // A burst of at least one timer tick's worth at the rate
                    // (HZ 100 is the slowest kernel), never under 1 MiB.
                    let burst = (r / 100).max(1 << 20);
                    Command::new("tc")
                        .args(["-n", &ns, "qdisc", "replace", "dev", LINK_IF, "root", "tbf"])
                        .args(["rate", &format!("{}bit", r * 8)])
                        .args(["burst", &burst.to_string(), "latency", "20ms"])
                        .stdin(Stdio::null())
                        .output()
                }
                None => Command::new("tc")
                    .args(["-n", &ns, "qdisc", "del", "dev", LINK_IF, "root"])
                    .stdin(Stdio::null())
                    .output(),
            }
            .unwrap_or_else(|e| panic!("cannot run tc: {e}; install iproute2"));
            // Deleting a qdisc that is not there fails harmlessly.
            assert!(
                o.status.success() || bytes_per_s.is_none(),
                "tc in {ns} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }

    /// Cuts IP traffic between two sides only (a blackhole route each
    /// way); every other pair still talks, over the same bridges.
    pub fn cut_between(&self, x: Side, y: Side) {
        for (from, to) in [(x, y), (y, x)] {
            let dst = format!("{}/32", self.host_addr(to));
            ip_ok(&["-n", &self.ns(from), "route", "add", "blackhole", &dst]);
        }
    }

    /// Undoes [`Lab::cut_between`].
    pub fn restore_between(&self, x: Side, y: Side) {
        for (from, to) in [(x, y), (y, x)] {
            let dst = format!("{}/32", self.host_addr(to));
            ip_ok(&["-n", &self.ns(from), "route", "del", "blackhole", &dst]);
        }
    }

    /// Whether A's end of the link is administratively up.
    pub fn link_is_up(&self) -> bool {
        let o = ip(&["-n", &self.ns(Side::A), "-o", "link", "show", LINK_IF]);
        let text = String::from_utf8_lossy(&o.stdout);
        text.split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
    }

    /// Interfaces enslaved to a side's `br0` (the link, the client veth,
    /// and the taps of guests running there), sorted.
    pub fn bridge_ports(&self, s: Side) -> Vec<String> {
        let o = ip(&["-n", &self.ns(s), "-o", "link", "show", "master", BRIDGE]);
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect();
        v.sort();
        v
    }

    /// One ping from a side (busybox ping, 1 s wait); whether it answered.
    pub fn ping_once(&self, from: Side, to: Ipv4Addr) -> bool {
        self.exec(
            from,
            &["busybox", "ping", "-c", "1", "-W", "1", &to.to_string()],
        )
        .status
        .success()
    }

    /// Pings until an answer or `timeout`; whether it answered.
    pub fn wait_ping(&self, from: Side, to: Ipv4Addr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ping_once(from, to) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.made.drain(..).rev() {
            let o = ip(&["netns", "del", &ns]);
            if !o.status.success() {
                eprintln!(
                    "warning: cannot delete namespace {ns}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
    }
}

/// Runs `f` on a thread that joined network namespace `name`
/// (`/run/netns/<name>`); a panic in `f` is propagated.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    std::thread::scope(|sc| {
        let h = sc.spawn(move || {
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_unique_and_recognisable() {
        let (id, n) = lab_names(4_194_303, 7);
        assert_eq!(id, "4194303-7");
        assert!((1..=254).contains(&n));
        let lab = Lab {
            id,
            n,
            made: Vec::new(),
        };
        let names: Vec<String> = [Side::A, Side::B, Side::C]
            .iter()
            .map(|&s| lab.ns(s))
            .collect();
        assert_eq!(names[0], "tern-4194303-7-a");
        assert_eq!(names[2], "tern-4194303-7-c");
        for ns in &names {
            // Short enough to read in `ip netns list`, and ours to clean.
            assert!(ns.len() <= 20, "{ns}");
            assert_eq!(owner_pid(ns), Some(4_194_303));
        }
        for ifname in [BRIDGE, LINK_IF, CLIENT_IF] {
            assert!(ifname.len() <= 15);
        }
        assert_eq!(lab.host_addr(Side::B), Ipv4Addr::new(10, 77, n, 2));
        assert_eq!(
            lab.tcp_uri(Side::A),
            format!("tern+tcp://10.77.{n}.1:16709/system")
        );
        let o = lab.host_options(Side::B, "dst");
        assert_eq!(o.netns.as_deref(), Some("tern-4194303-7-b"));
        assert_eq!(o.listen, Some(lab.api_addr(Side::B)));
        assert_eq!(
            o.extra_args,
            vec!["--migration-address".to_string(), format!("10.77.{n}.2")]
        );
        // Nothing was created, so nothing is deleted.
        drop(lab);
    }

    #[test]
    fn subnets_differ_for_every_lab_of_a_process() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..254 {
            let (id, n) = lab_names(12345, k);
            assert!(n >= 1, "{id}");
            assert!(seen.insert(n), "subnet {n} reused at lab {k}");
        }
        let (a, _) = lab_names(12345, 0);
        let (b, _) = lab_names(12346, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn only_exact_lab_names_are_considered_stale() {
        assert_eq!(owner_pid("tern-99-0-b"), Some(99));
        for other in [
            "tern-99-0-d",
            "tern-99-b",
            "tern-x9-0-a",
            "tern-99-0-a-x",
            "tern-99--a",
            "ternd-99-0-a",
            "blue",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }
}
