//! The closed data plane with real parts: two agents in network
//! namespaces A and B on mutual TLS, a third namespace C on the same link
//! playing an intruder, and a `--tls` live migration with storage whose
//! guest keeps writing and verifying its disk. While the disk is mirrored,
//! B's incoming-migration and NBD listeners are bound to B's migration
//! address only, and C is refused on both: without TLS, and with a
//! certificate of the same CA that is not the source host's (tls-authz).
//! The migration then completes and the guest verifies its disk on B.
//! Needs root (namespaces); skips otherwise.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern_testkit::capture::Capture;
use tern_testkit::flood::wait_closed_by_server;
use tern_testkit::netns::{skip_unless_root, Lab, Side, LINK_IF};
use tern_testkit::pki::TestPki;
use tern_testkit::{bin, build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost, TestDisk};

const LONG: Duration = Duration::from_secs(120);

/// An agent in `side`'s namespace with a TLS API at its lab address,
/// certificates from `pki` (server for its address, host certificate
/// `name`), and a local pool "images".
fn agent(lab: &Lab, pki: &TestPki, side: Side, name: &str) -> (TernHost, tempfile::TempDir) {
    let mut o = lab.host_options(side, name);
    let addr = lab.host_addr(side);
    o.listen = None;
    o.listen_tls = Some((addr, 16714).into());
    o.pki_dir = Some(pki.cluster_agent(name, &addr.to_string(), name));
    let h = TernHost::start_with(o);
    let pool = tempfile::Builder::new()
        .prefix(&format!("tern-{name}-images-"))
        .tempdir()
        .unwrap();
    h.add_pool("images", pool.path(), false);
    (h, pool)
}

/// Polls `h`'s job events of `name` until a line contains `marker`;
/// returns the `host:port` that follows it.
fn wait_endpoint(h: &TernHost, name: &str, marker: &str, child: &mut Child) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let ev = String::from_utf8_lossy(&h.tern(&["domjobevents", name]).stdout).into_owned();
        if let Some(rest) = ev
            .lines()
            .find_map(|l| l.split_once(marker).map(|(_, r)| r.to_string()))
        {
            let ep: String = rest
                .trim_start_matches("tcp:")
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return ep.trim_end_matches(':').to_string();
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the migration ended ({st}) before '{marker}' appeared:\n{ev}");
        }
        assert!(Instant::now() < deadline, "no '{marker}' in events:\n{ev}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tls-creds-x509 client directory (QEMU's file names) from a `tern pki` one.
fn qemu_client_dir(from: &std::path::Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (src, dst) in [
        ("cacert.pem", "ca-cert.pem"),
        ("clientcert.pem", "client-cert.pem"),
        ("private/clientkey.pem", "client-key.pem"),
    ] {
        std::fs::copy(from.join(src), d.path().join(dst)).unwrap();
    }
    d
}

/// `qemu-img info` of an NBD export from namespace C; its stderr on failure.
fn nbd_from_c(
    lab: &Lab,
    endpoint: &str,
    export: &str,
    creds: Option<&std::path::Path>,
) -> Result<String, String> {
    let (host, port) = endpoint.rsplit_once(':').unwrap();
    let mut opts = format!("driver=nbd,host={host},port={port},export={export}");
    let mut args = vec!["qemu-img".to_string(), "info".into()];
    if let Some(dir) = creds {
        opts.push_str(",tls-creds=intruder");
        args.push("--object".into());
        args.push(format!(
            "tls-creds-x509,id=intruder,dir={},endpoint=client",
            dir.display()
        ));
    }
    args.extend(["--image-opts".into(), opts]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = lab.exec(Side::C, &a);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// The local addresses listening on `port` in `side`'s namespace.
fn listeners(lab: &Lab, side: Side, port: &str) -> Vec<String> {
    let filter = format!("sport = :{port}");
    let out = lab.exec(side, &["ss", "-Hltn", &filter]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// Starts guest `name` on `a` with a 24 MiB qcow2 disk in pool "images"
/// (at `pool`) that it keeps writing and verifying; waits for its first
/// disk check.
fn start_disk_guest(a: &TernHost, pool: &std::path::Path, name: &str) {
    let vol = format!("{name}.qcow2");
    a.ok(&["vol-create-as", "images", &vol, "24M", "--format", "qcow2"]);
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img).workload(
        "tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=16 tern.disk_rate=64 tern.verify_rate=8",
    );
    spec.disks.push(TestDisk {
        path: pool.join(&vol),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    a.define_guest(&spec);
    a.ok(&["start", name]);
    a.wait_console(name, LONG, "disk writes", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") >= 1
    });
}

/// A slow `--tls` live migration with storage of `name` from A to B,
/// driven by A (`--p2p`: only A reaches B's address): the disk mirror
/// takes seconds before memory flows, so both of B's ports wait a while.
fn slow_tls_migration(lab: &Lab, a: &TernHost, name: &str) -> Child {
    let dest = format!("tern+tls://{}:16714/system", lab.host_addr(Side::B));
    Command::new(bin("tern"))
        .args(["-c", &a.uri(), "migrate", "--live", "--p2p", "--tls"])
        .args(["--copy-storage-all", "--bandwidth", "2", name, &dest])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn tls_migration_listeners_refuse_other_namespaces_and_other_identities() {
    let test = "tls_migration_listeners_refuse_other_namespaces_and_other_identities";
    if skip_unless_root(test) {
        return;
    }
    let lab = Lab::start();
    let pki = TestPki::new();
    let (a, ia) = agent(&lab, &pki, Side::A, "dpa");
    let (b, _ib) = agent(&lab, &pki, Side::B, "dpb");
    let name = "dp1";
    start_disk_guest(&a, ia.path(), name);
    let mut child = slow_tls_migration(&lab, &a, name);
    let incoming = wait_endpoint(&b, name, "QEMU listening on ", &mut child);
    let nbd = wait_endpoint(&a, name, "to nbd://", &mut child);
    let b_addr = lab.host_addr(Side::B).to_string();
    for ep in [&incoming, &nbd] {
        let (host, port) = ep.rsplit_once(':').unwrap();
        assert_eq!(host, b_addr, "{ep}");
        // Bound to the migration address, not to every interface.
        assert_eq!(listeners(&lab, Side::B, port), vec![ep.to_string()], "{ep}");
    }

    // C with a certificate of the same CA on the incoming-migration port:
    // QEMU's TLS handshake completes, its tls-authz refuses the identity.
    let viewer_pki = pki.client("viewer", "viewer");
    let p = |f: &str| viewer_pki.join(f).display().to_string();
    let o = lab.exec(
        Side::C,
        &[
            "sh", "-c",
            &format!(
                "echo | timeout 10 openssl s_client -connect {incoming} -CAfile {} -cert {} -key {} -quiet",
                p("cacert.pem"),
                p("clientcert.pem"),
                p("private/clientkey.pem")
            ),
        ],
    );
    let _ = o;
    let denials = |log: &str| {
        log.matches("authz check for O=Tern,CN=viewer is denied")
            .count()
    };
    // B's guard closes it before QEMU sees it: C is not the source host.
    let c_addr = lab.host_addr(Side::C).to_string();
    let b_events = || String::from_utf8_lossy(&b.tern(&["domjobevents", name]).stdout).into_owned();
    let ev = b_events();
    assert!(
        ev.contains(&format!("guard closed a connection from {c_addr}:"))
            && ev.contains("not an address of the source host"),
        "{ev}"
    );
    let qemu_log_path = b.state_dir().join("run").join(name).join("qemu.log");
    let log = std::fs::read_to_string(&qemu_log_path).unwrap_or_default();
    assert_eq!(
        denials(&log),
        0,
        "incoming port: C reached B's QEMU:\n{log}"
    );

    // C without TLS: the NBD server insists on TLS.
    let e = nbd_from_c(&lab, &nbd, "drive-vda", None).unwrap_err();
    assert!(e.to_lowercase().contains("tls"), "{e}");
    // C with a certificate of the same CA that is not A's: tls-authz says no.
    let viewer = qemu_client_dir(&viewer_pki);
    nbd_from_c(&lab, &nbd, "drive-vda", Some(viewer.path())).unwrap_err();
    let log = std::fs::read_to_string(&qemu_log_path).unwrap_or_default();
    assert_eq!(
        denials(&log),
        1,
        "NBD: B's QEMU did not deny by tls-authz:\n{log}"
    );
    let b_events = b_events();
    assert!(
        b_events.contains("only O=Tern,OU=Tern hosts,CN=dpa may connect"),
        "{b_events}"
    );

    // The real migration is unharmed and completes.
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "migration failed: {}\nA events:\n{}\nB events:\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.ok(&["domjobevents", name]),
        b_events
    );
    assert_eq!(
        b.ok(&["domstate", name, "--reason"]).trim(),
        "running (migrated)"
    );
    let text = b.wait_console(name, LONG, "disk verified on B", |t| {
        let l = SerialLog::parse(t);
        l.count("TERN-DISK ok") >= 3 || !l.failures.is_empty()
    });
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
}

/// One silent TCP connection from C to B's incoming-migration port (and
/// one to its NBD port), opened while the migration waits and kept open:
/// QEMU does the incoming TLS handshake on its main loop with a blocking
/// socket, so with QEMU listening there itself the migration stayed in
/// `setup` for as long as the connection stayed open. The agent's guard
/// in front of the port closes the silent connection; the migration
/// completes and the guest verifies its disk on B.
#[test]
fn a_silent_connection_does_not_stall_a_tls_migration() {
    let test = "a_silent_connection_does_not_stall_a_tls_migration";
    if skip_unless_root(test) {
        return;
    }
    let lab = Lab::start();
    let pki = TestPki::new();
    let (a, ia) = agent(&lab, &pki, Side::A, "sga");
    let (b, _ib) = agent(&lab, &pki, Side::B, "sgb");
    let name = "sg1";
    start_disk_guest(&a, ia.path(), name);
    let mut child = slow_tls_migration(&lab, &a, name);
    let incoming = wait_endpoint(&b, name, "QEMU listening on ", &mut child);
    let nbd = wait_endpoint(&a, name, "to nbd://", &mut child);
    // From C, and from A itself (the source host's address: the guard
    // lets it in, then waits for its first bytes).
    let silent: Vec<TcpStream> = [(Side::A, &incoming), (Side::C, &incoming), (Side::C, &nbd)]
        .iter()
        .map(|(side, ep)| {
            let addr: std::net::SocketAddr = ep.parse().unwrap();
            lab.in_ns(*side, || TcpStream::connect(addr))
                .unwrap()
                .unwrap_or_else(|e| panic!("{side:?} cannot connect to {ep}: {e}"))
        })
        .collect();
    eprintln!("silent connections from A and C to {incoming} (incoming), from C to {nbd} (NBD)");

    // Bounds only a stalled migration (it would wait forever).
    let deadline = Instant::now() + 3 * LONG;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the migration stalled with a silent connection open\nA events:\n{}\nB events:\n{}",
                a.ok(&["domjobevents", name]),
                String::from_utf8_lossy(&b.tern(&["domjobevents", name]).stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "migration failed: {}\nB events:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&b.tern(&["domjobevents", name]).stdout)
    );
    let mut silent = silent.into_iter();
    wait_closed_by_server(silent.next().unwrap(), LONG);
    wait_closed_by_server(silent.next().unwrap(), LONG);
    drop(silent);
    let ev = String::from_utf8_lossy(&b.tern(&["domjobevents", name]).stdout).into_owned();
    for (side, why) in [
        (Side::A, "silent (or too slow) for the first bytes"),
        (Side::C, "not an address of the source host"),
    ] {
        let from = format!("guard closed a connection from {}:", lab.host_addr(side));
        assert!(
            ev.lines().any(|l| l.contains(&from) && l.contains(why)),
            "no '{from} ... {why}' in B's events:\n{ev}"
        );
    }
    assert!(ev.contains("guard passed 1 stream(s) to QEMU"), "{ev}");
    assert_eq!(
        b.ok(&["domstate", name, "--reason"]).trim(),
        "running (migrated)"
    );
    let text = b.wait_console(name, LONG, "disk verified on B", |t| {
        let l = SerialLog::parse(t);
        l.count("TERN-DISK ok") >= 3 || !l.failures.is_empty()
    });
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
}

/// `--tls --parallel`: the guard hands QEMU the main stream and each
/// multifd channel (each opens with its own ClientHello), then stops
/// listening; the guest goes on verifying its memory on B.
#[test]
fn a_tls_parallel_migration_passes_the_guard_with_every_channel() {
    let test = "a_tls_parallel_migration_passes_the_guard_with_every_channel";
    if skip_unless_root(test) {
        return;
    }
    let lab = Lab::start();
    let pki = TestPki::new();
    let (a, _ia) = agent(&lab, &pki, Side::A, "pga");
    let (b, _ib) = agent(&lab, &pki, Side::B, "pgb");
    let name = "pg1";
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    a.define_guest(&GuestSpec::new(name, &img).workload("tern.mem=16 tern.verify_rate=8"));
    a.ok(&["start", name]);
    a.wait_console(name, LONG, "TERN-READY", |t| SerialLog::parse(t).ready());
    let dest = format!("tern+tls://{}:16714/system", lab.host_addr(Side::B));
    let out = a.tern(&[
        "migrate",
        "--live",
        "--p2p",
        "--tls",
        "--parallel",
        "--parallel-connections",
        "3",
        name,
        &dest,
    ]);
    let ev = String::from_utf8_lossy(&b.tern(&["domjobevents", name]).stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nB events:\n{ev}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ev.contains("guard passed 4 stream(s) to QEMU"), "{ev}");
    let before = SerialLog::parse(&b.ok(&["console", name])).count("TERN-MEM ok");
    let text = b.wait_console(name, LONG, "memory verified on B", |t| {
        let l = SerialLog::parse(t);
        l.count("TERN-MEM ok") > before || !l.failures.is_empty()
    });
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
}

/// A raw disk of `mib` MiB whose every 4 KiB block starts with `marker`
/// (what an eavesdropper would look for), the rest pseudo-random.
fn marked_disk(path: &std::path::Path, marker: &str, mib: usize) {
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, block) in data.chunks_mut(4096).enumerate() {
        block[..marker.len()].copy_from_slice(marker.as_bytes());
        for b in block[marker.len()..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x as u8) ^ (i as u8);
        }
    }
    std::fs::write(path, data).unwrap();
}

/// `--tls --cold`: the transfer engine's streams cross the link inside
/// mutual TLS. An eavesdropper on B's end of the link sees the disk's
/// marker in a plain cold copy (proof that the capture works) and not in a
/// `--tls` one, which still arrives whole and verified.
#[test]
fn a_tls_cold_copy_cannot_be_read_on_the_link_and_arrives_whole() {
    let test = "a_tls_cold_copy_cannot_be_read_on_the_link_and_arrives_whole";
    if skip_unless_root(test) {
        return;
    }
    let lab = Lab::start();
    let pki = TestPki::new();
    let (a, ia) = agent(&lab, &pki, Side::A, "cta");
    let (b, ib) = agent(&lab, &pki, Side::B, "ctb");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let dest = format!("tern+tls://{}:16714/system", lab.host_addr(Side::B));
    for (name, tls) in [("plain1", false), ("tls1", true)] {
        let marker = format!("TERN-COLD-{name}-{}-NOT-FOR-THE-WIRE", std::process::id());
        let disk = ia.path().join(format!("{name}.raw"));
        marked_disk(&disk, &marker, 8);
        let mut spec = GuestSpec::new(name, &img);
        spec.disks.push(TestDisk {
            path: disk.clone(),
            format: "raw".into(),
            target: "vda".into(),
            cache: "none".into(),
        });
        a.define_guest(&spec);
        let cap = Capture::start(&lab, Side::B, LINK_IF, marker.as_bytes());
        let mut args = vec!["migrate", "--cold", "--p2p", "--verbose"];
        if tls {
            args.push("--tls");
        }
        args.extend([name, dest.as_str()]);
        let out = a.tern(&args);
        let (seen, bytes) = (cap.hits(), cap.bytes());
        drop(cap);
        eprintln!("{name}: {bytes} bytes on the link, {seen} frames with the marker");
        assert!(
            out.status.success(),
            "{name}: {}\nA events:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&a.tern(&["domjobevents", name]).stdout)
        );
        assert!(
            bytes > 8 << 20,
            "{name}: only {bytes} bytes crossed the link"
        );
        if tls {
            assert_eq!(
                seen, 0,
                "{name}: the disk's marker crossed the link in the clear"
            );
        } else {
            assert!(
                seen > 100,
                "{name}: the capture saw the plain copy only {seen} times"
            );
        }
        // The copy is the disk, and the guest is defined on B.
        assert!(
            std::fs::read(ib.path().join(format!("{name}.raw"))).unwrap()
                == std::fs::read(&disk).unwrap(),
            "{name}: the copy differs"
        );
        assert_eq!(b.ok(&["domstate", name]).trim(), "shut off");
    }
}
