//! Migration across a real (virtual) network: two agents in their own
//! network namespaces joined by a veth "link" (see `tern_testkit::netns`),
//! real QEMU guests under TCG. These tests need root; they skip otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern_testkit::netns::{skip_unless_root, Lab, Side};
use tern_testkit::ping::Pinger;
use tern_testkit::{
    build_or_reuse, BuildOptions, ConsoleWatcher, GuestSpec, SerialLog, TernHost, TestDisk,
};

/// Two agents in namespaces A and B, a pool both see. Fields drop in
/// order: agents (and their QEMUs) first, the namespaces last.
struct NetPair {
    a: TernHost,
    b: TernHost,
    _pool: tempfile::TempDir,
    lab: Lab,
}

fn net_pair(name: &str, extra: &[&str]) -> NetPair {
    let lab = Lab::start();
    let pool = tempfile::Builder::new()
        .prefix("tern-shared-")
        .tempdir()
        .unwrap();
    let start = |side: Side, suffix: &str| {
        let mut o = lab.host_options(side, &format!("{name}-{suffix}"));
        o.extra_args.extend(extra.iter().map(|s| s.to_string()));
        TernHost::start_with(o)
    };
    let a = start(Side::A, "a");
    let b = start(Side::B, "b");
    a.add_pool("shared", pool.path(), true);
    b.add_pool("shared", pool.path(), true);
    NetPair {
        a,
        b,
        _pool: pool,
        lab,
    }
}

fn wait_ready(h: &TernHost, name: &str, above: u64) -> String {
    h.wait_console(name, Duration::from_secs(60), "TERN-READY", |t| {
        let l = SerialLog::parse(t);
        l.ready() && l.last_seq().is_some_and(|s| s > above)
    })
}

fn job(h: &TernHost, name: &str, completed: bool) -> serde_json::Value {
    let mut args = vec!["domjobinfo", name, "--json"];
    if completed {
        args.push("--completed");
    }
    serde_json::from_str(&h.ok(&args)).unwrap()
}

/// Pids of live QEMU processes started by `host` (their command lines
/// name its state directory), whether or not a pid file says so.
fn qemus_of(host: &TernHost) -> Vec<u32> {
    let needle = host.state_dir().display().to_string();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let is_qemu = std::fs::read_link(e.path().join("exe"))
            .is_ok_and(|x| x.to_string_lossy().contains("qemu"));
        if !is_qemu {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&c).contains(&needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// A child process that is killed if the test ends early.
struct Reaped(Option<Child>);

impl Reaped {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }

    /// Waits up to `timeout` for the process; returns (success, stdout,
    /// stderr), or `None` if it still runs.
    fn wait_for(&mut self, timeout: Duration) -> Option<(bool, String, String)> {
        let deadline = Instant::now() + timeout;
        let c = self.child();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                let mut out = String::new();
                let mut err = String::new();
                if let Some(mut o) = c.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                if let Some(mut e) = c.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                self.0 = None;
                return Some((st.success(), out, err));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`Reaped::wait_for`], panicking if `what` does not end in time.
    fn wait(&mut self, timeout: Duration, what: &str) -> (bool, String, String) {
        self.wait_for(timeout)
            .unwrap_or_else(|| panic!("{what} did not end within {timeout:?}"))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Boots a guest on A that dirties memory and disk, with a disk in the
/// shared pool, and waits for its steady state (memory filled and verified
/// once). The watcher follows A's console from the start.
fn boot_loaded_guest(p: &NetPair, name: &str) -> ConsoleWatcher {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let vol = format!("{name}.raw");
    p.a.ok(&["vol-create-as", "shared", &vol, "16M"]);
    let path = p.a.ok(&["vol-path", &vol, "--pool", "shared"]);
    let mut spec = GuestSpec::new(name, &img).workload(
        "tern.mem=128 tern.dirty=20 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_mb=4",
    );
    spec.disks.push(TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    p.a.define_guest(&spec);
    p.a.ok(&["start", name]);
    let w = ConsoleWatcher::start();
    w.add(p.a.console_log(name), true);
    wait_ready(&p.a, name, 3);
    p.a.wait_console(name, Duration::from_secs(30), "a memory pass", |t| {
        SerialLog::parse(t).has("TERN-MEM ok")
    });
    w
}

/// Starts `tern -c A migrate --live --bandwidth 5 FLAGS NAME DEST` as a
/// child, waits until the source job has sent over 1 MiB, and cuts the
/// link. Returns the CLI process and the bytes sent before the cut.
fn migrate_and_cut(p: &NetPair, name: &str, flags: &[&str], dest: &str) -> (Reaped, u64) {
    let mut cli = Reaped(Some(
        Command::new(tern_testkit::bin("tern"))
            .args(["-c", &p.a.uri(), "migrate", "--live", "--bandwidth", "5"])
            .args(flags)
            .args([name, dest])
            .env_remove("TERN_DEFAULT_URI")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let processed = loop {
        let j = job(&p.a, name, false);
        let done = j["data_processed"].as_u64().unwrap_or(0);
        if j["kind"] == "unbounded" && done > 1 << 20 {
            break done;
        }
        if let Some(st) = cli.child().try_wait().unwrap() {
            let (_, out, err) = cli.wait(Duration::from_secs(1), "tern migrate");
            panic!("migration ended ({st}) before the link was cut: {out}{err}");
        }
        assert!(Instant::now() < deadline, "job never became active: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    p.lab.cut_link();
    (cli, processed)
}

#[test]
fn lab_link_cut_and_restore() {
    if skip_unless_root("lab_link_cut_and_restore") {
        return;
    }
    let lab = Lab::start();
    let b = lab.host_addr(Side::B);
    assert!(
        lab.wait_ping(Side::A, b, Duration::from_secs(5)),
        "a cannot reach b"
    );
    assert!(
        lab.wait_ping(Side::C, b, Duration::from_secs(5)),
        "c cannot reach b"
    );
    lab.cut_link();
    assert!(!lab.link_is_up());
    assert!(!lab.ping_once(Side::C, b), "ping crossed a cut link");
    assert!(lab.ping_once(Side::C, lab.host_addr(Side::A)));
    lab.restore_link();
    assert!(lab.link_is_up());
    assert!(
        lab.wait_ping(Side::C, b, Duration::from_secs(5)),
        "link not restored"
    );
    // Sockets made inside C belong to C: its address is local there only.
    let c = SocketAddr::from((lab.host_addr(Side::C), 0));
    let l = lab
        .in_ns(Side::C, || std::net::TcpListener::bind(c))
        .unwrap();
    assert!(l.is_ok(), "cannot bind {c} in c: {l:?}");
    assert!(
        std::net::TcpListener::bind(c).is_err(),
        "{c} is local outside the lab"
    );
    let ns = lab.ns(Side::A);
    drop(lab);
    assert!(!std::path::Path::new("/run/netns").join(ns).exists());
}

#[test]
fn lab_link_shaped_to_a_rate() {
    if skip_unless_root("lab_link_shaped_to_a_rate") {
        return;
    }
    use std::io::{Read, Write};
    let lab = Lab::start();
    let b = SocketAddr::from((lab.host_addr(Side::B), 0));
    let l = lab
        .in_ns(Side::B, || std::net::TcpListener::bind(b))
        .unwrap()
        .unwrap();
    let to = l.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        while let Ok(k @ 1..) = s.read(&mut buf) {
            n += k as u64;
        }
        n
    });
    // 48 MiB through a link shaped to 32 MiB/s (a 1 MiB burst): at least
    // 1.4 s whatever the machine; unshaped, veth carries it in a blink.
    const MIB: usize = 1 << 20;
    lab.shape_link(Some(32 << 20));
    let mut s = lab
        .in_ns(Side::A, || std::net::TcpStream::connect(to))
        .unwrap()
        .unwrap();
    let t0 = std::time::Instant::now();
    let chunk = vec![0x5au8; MIB];
    for _ in 0..48 {
        s.write_all(&chunk).unwrap();
    }
    drop(s);
    assert_eq!(sink.join().unwrap(), 48 * MIB as u64);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1400), "not shaped: {took:?}");
    lab.shape_link(None);
    let shown = std::process::Command::new("tc")
        .args(["-n", &lab.ns(Side::A), "qdisc", "show", "dev", "tl0"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&shown.stdout).contains("tbf"),
        "the shaping stayed"
    );
}

#[test]
fn link_cut_during_perform_leaves_guest_on_source() {
    if skip_unless_root("link_cut_during_perform_leaves_guest_on_source") {
        return;
    }
    let t0 = Instant::now();
    let p = net_pair("cut", &["--stall-timeout", "3"]);
    let name = "cut1";
    let w = boot_loaded_guest(&p, name);
    let booted = t0.elapsed();
    let (mut cli, processed) = migrate_and_cut(&p, name, &[], &p.b.uri());
    let cut_at = Instant::now();
    let dest_qemus_at_cut = qemus_of(&p.b);

    let (ok, out, err) = cli.wait(Duration::from_secs(40), "tern migrate after the cut");
    let failed_after = cut_at.elapsed();
    println!("migrate after cut: stdout {out:?} stderr {err:?} ({failed_after:?} after the cut)");
    assert!(!ok, "migration succeeded over a cut link: {out}");
    let err = err.trim();
    assert_eq!(err.lines().count(), 1, "expected one error line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("no progress") || err.contains("link"),
        "error does not say the link looks down: {err}"
    );

    // The source keeps the guest running, and says why the job ended.
    assert_eq!(p.a.ok(&["domstate", name]).trim(), "running");
    let fin = job(&p.a, name, true);
    assert!(
        fin["kind"] == "cancelled" || fin["kind"] == "failed",
        "completed job: {fin}"
    );
    let events = p.a.ok(&["domjobevents", name]);
    assert!(events.contains("no progress for 3 s"), "{events}");
    println!("source job events:\n{events}");

    // The destination holds nothing: no domain, no QEMU.
    assert_eq!(
        p.b.ok(&["list", "--all", "--name"]).trim(),
        "",
        "B kept a domain"
    );
    assert!(p.b.qemu_pids().is_empty(), "B kept a QEMU pid file");
    let qemu_left = qemus_of(&p.b);
    assert!(qemu_left.is_empty(), "B's QEMU still runs: {qemu_left:?}");

    // The guest goes on: heartbeats without a reset, and memory verifies in
    // passes that started after the failure.
    let text = p.a.ok(&["console", name]);
    let at_fail = SerialLog::parse(&text);
    let seq_at_fail = at_fail.last_seq().unwrap_or(0);
    let passes_at_fail = at_fail.count("TERN-MEM ok");
    let text = p.a.wait_console(
        name,
        Duration::from_secs(45),
        "two more memory passes",
        |t| {
            let l = SerialLog::parse(t);
            l.count("TERN-MEM ok") >= passes_at_fail + 2
                && l.last_seq().unwrap_or(0) > seq_at_fail + 20
        },
    );
    let log = SerialLog::parse(&text);
    let report = w.finish();
    // Which heartbeat each clean memory pass ended at (20 a second).
    let mut hb = 0;
    let mut passes = Vec::new();
    for l in &log.lines {
        if let Some(h) = tern_testkit::parse_heartbeat(l) {
            hb = h.seq;
        } else if l.starts_with("TERN-MEM ok") {
            passes.push(format!(
                "{}@hb{hb}",
                tern_testkit::field(l, "passes").unwrap_or(0)
            ));
        }
    }
    println!(
        "memory passes (pass@heartbeat): {}; failure seen at hb{seq_at_fail}",
        passes.join(" ")
    );
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        !log.seq_went_backwards() && !report.went_backwards,
        "heartbeat reset on A"
    );
    assert_eq!(
        log.heartbeats.first().map(|h| h.seq),
        Some(1),
        "guest rebooted"
    );
    assert_eq!(p.a.ok(&["domstate", name]).trim(), "running");

    p.lab.restore_link();
    assert!(
        p.lab
            .wait_ping(Side::A, p.lab.host_addr(Side::B), Duration::from_secs(5)),
        "link did not come back"
    );
    println!(
        "link cut: booted in {booted:?}; cut after {:.1} MiB sent; CLI failed {failed_after:?} after the cut; \
         B had {} process(es) at the cut; longest heartbeat gap on A {} ms, {} heartbeats missed; total {:?}",
        processed as f64 / 1048576.0,
        dest_qemus_at_cut.len(),
        report.max_gap.as_millis(),
        report.missing,
        t0.elapsed()
    );
}

/// A line-oriented connection to the guest's echo server.
struct Echo {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Echo {
    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read from the guest");
        assert!(n > 0, "the guest closed the connection");
        l.trim_end().to_string()
    }

    /// Sends `seq` and returns the guest's heartbeat counter.
    fn seq(&mut self) -> u64 {
        self.w.write_all(b"seq\n").expect("write to the guest");
        let l = self.line();
        assert!(l.starts_with("TERN-SEQ "), "unexpected answer {l:?}");
        tern_testkit::field(&l, "seq").expect("seq=")
    }

    fn echo(&mut self, text: &str) {
        self.w
            .write_all(format!("{text}\n").as_bytes())
            .expect("write to the guest");
        assert_eq!(self.line(), text);
    }
}

#[test]
fn ping_and_tcp_survive_migration() {
    if skip_unless_root("ping_and_tcp_survive_migration") {
        return;
    }
    let t0 = Instant::now();
    let p = net_pair("net", &[]);
    let name = "net1";
    let n = p.lab.subnet();
    let guest_ip = p.lab.addr(50);
    let mac = format!("52:54:00:77:{n:02x}:32");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img).workload(&format!(
        "tern.mem=32 tern.dirty=5 tern.ip={guest_ip}/24 tern.port=7777"
    ));
    spec.bridge = Some(("br0".into(), mac));
    p.a.define_guest(&spec);
    p.a.ok(&["start", name]);
    let text = wait_ready(&p.a, name, 3);
    assert!(text.contains("TERN-NET listening"), "{text}");
    assert!(
        p.lab.wait_ping(Side::C, guest_ip, Duration::from_secs(20)),
        "the guest never answered ping from c"
    );
    let booted = t0.elapsed();

    // One connection from C, held across the migration.
    let stream = p
        .lab
        .in_ns(Side::C, || {
            TcpStream::connect_timeout(&SocketAddr::from((guest_ip, 7777)), Duration::from_secs(10))
        })
        .unwrap()
        .expect("connect to the guest's echo server from c");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let local = stream.local_addr().unwrap();
    let mut echo = Echo {
        r: BufReader::new(stream.try_clone().unwrap()),
        w: stream,
    };
    let hello = echo.line();
    assert!(hello.starts_with("TERN-HELLO "), "{hello:?}");
    let seq_before = echo.seq();
    echo.echo("before migration");
    let w = ConsoleWatcher::start();
    w.add(p.a.console_log(name), false);
    w.add(p.b.console_log(name), true);

    let pinger = Pinger::start(&p.lab, Side::C, guest_ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pinger.received() < 10 {
        assert!(Instant::now() < deadline, "ping -i 0.05 got no answers");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m0 = Instant::now();
    let out = p.a.tern(&["migrate", "--live", name, &p.b.uri()]);
    let migrate_wall = m0.elapsed();
    assert!(
        out.status.success(),
        "migration failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Let pings run on the destination for a moment.
    let after = pinger.received();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pinger.received() < after + 20 {
        assert!(
            Instant::now() < deadline,
            "pings stopped answering after the migration"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ping = pinger.stop();

    // The guest is now reached through the link, and A's tap is gone.
    assert_eq!(
        p.lab.bridge_ports(Side::A),
        ["tc0", "tl0"],
        "a tap left on A's bridge"
    );
    assert_eq!(p.lab.bridge_ports(Side::B).len(), 2, "no tap on B's bridge");
    p.lab.cut_link();
    assert!(
        !p.lab.ping_once(Side::C, guest_ip),
        "guest answered without the link"
    );
    p.lab.restore_link();

    // The same connection still works, and the guest's counter went on.
    let seq_after = echo.seq();
    echo.echo("after migration");
    assert!(
        seq_after > seq_before,
        "TERN-SEQ went from {seq_before} to {seq_after}"
    );
    assert_eq!(echo.w.local_addr().unwrap(), local);

    assert_eq!(
        p.b.ok(&["domstate", name, "--reason"]).trim(),
        "running (migrated)"
    );
    let a_state = p.a.tern(&["domstate", name]);
    let a_state = String::from_utf8_lossy(&a_state.stdout).trim().to_string();
    assert!(
        a_state.is_empty() || a_state.starts_with("shut off"),
        "guest still on A: {a_state}"
    );
    assert!(p.a.qemu_pids().is_empty(), "A kept a QEMU");
    let report = w.finish();
    assert!(
        !report.went_backwards,
        "heartbeat reset across the migration"
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let text = p.b.ok(&["console", name]);
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
    let job = job(&p.a, name, true);

    println!("{summary}");
    println!(
        "network migration: booted in {booted:?}; migrate took {migrate_wall:?}; QEMU downtime {} ms; \
         guest-observed heartbeat gap {} ms; TCP seq {seq_before} -> {seq_after}",
        job["downtime_ms"],
        report.max_gap.as_millis()
    );
    println!(
        "pings from c every 50 ms: {} sent, {} answered, {} lost {:?}; longest silence {} ms; total {:?}",
        ping.transmitted,
        ping.received,
        ping.lost.len(),
        ping.lost,
        ping.longest_silence.as_millis(),
        t0.elapsed()
    );
}

/// The same cut with `--p2p`: the source agent drives the migration and
/// reaches B over the lab network (the cut link). Its calls to B give up
/// within the client's connect timeout, so the job ends promptly on A; B,
/// unreachable meanwhile, drops its paused incoming QEMU once the link is
/// back and the failed stream reaches it.
#[test]
fn p2p_link_cut_fails_promptly_and_destination_cleans_up() {
    if skip_unless_root("p2p_link_cut_fails_promptly_and_destination_cleans_up") {
        return;
    }
    let p = net_pair("p2pcut", &["--stall-timeout", "3"]);
    let name = "pcut1";
    let w = boot_loaded_guest(&p, name);
    let dest = p.lab.tcp_uri(Side::B);
    let (mut cli, _) = migrate_and_cut(&p, name, &["--p2p"], &dest);
    let cut_at = Instant::now();
    let Some((ok, out, err)) = cli.wait_for(Duration::from_secs(20)) else {
        panic!(
            "tern migrate --p2p still runs 20 s after the cut; A's job: {}; B holds {:?} with QEMU {:?}",
            job(&p.a, name, false),
            p.b.ok(&["list", "--all", "--name"]).trim(),
            qemus_of(&p.b)
        );
    };
    println!(
        "p2p migrate failed {:?} after the cut: {err}",
        cut_at.elapsed()
    );
    assert!(!ok, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(p.a.ok(&["domstate", name]).trim(), "running");
    assert_eq!(
        job(&p.a, name, false)["kind"],
        "none",
        "job still open on A"
    );
    // B cannot be told while the link is down; once it is back, B must not
    // keep a paused copy.
    p.lab.restore_link();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(p.b.ok(&["list", "--all", "--name"]).trim().is_empty() && qemus_of(&p.b).is_empty()) {
        assert!(Instant::now() < deadline, "B kept the incoming guest");
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = w.finish();
    assert!(
        !report.went_backwards && report.failures.is_empty(),
        "{report:?}"
    );
}
