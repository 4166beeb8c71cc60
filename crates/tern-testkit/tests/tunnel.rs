//! Migration transports with real parts: `--tunnelled` (QEMU's connections
//! carried by the agents over mutual TLS: plain, `--parallel 4`,
//! `--copy-storage-all`) and `--tls` (QEMU's own TLS with the hosts'
//! certificates), each with a guest that keeps dirtying and verifying its
//! memory (and disk), believed only through its console.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tern_testkit::pki::TestPki;
use tern_testkit::{
    build_or_reuse, free_port, BuildOptions, ConsoleWatcher, GuestSpec, HostOptions, SerialLog,
    TernHost, TestDisk,
};

/// Two agents with mutual-TLS listeners on loopback, certificates from one
/// CA, and each a local pool "images".
struct Pair {
    a: TernHost,
    b: TernHost,
    ia: PathBuf,
    ib: PathBuf,
    pki: TestPki,
    _dirs: Vec<tempfile::TempDir>,
}

fn host(pki: &TestPki, name: &str) -> (TernHost, tempfile::TempDir) {
    let dir = pki.agent(name, "127.0.0.1", &format!("host-{name}"));
    let h = TernHost::start_with(HostOptions {
        name: name.into(),
        listen_tls: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
        pki_dir: Some(dir),
        ..Default::default()
    });
    let pool = tempfile::Builder::new()
        .prefix(&format!("tern-{name}-images-"))
        .tempdir()
        .unwrap();
    h.add_pool("images", pool.path(), false);
    (h, pool)
}

fn pair(name: &str) -> Pair {
    let pki = TestPki::new();
    let (a, da) = host(&pki, &format!("{name}a"));
    let (b, db) = host(&pki, &format!("{name}b"));
    Pair {
        ia: da.path().to_path_buf(),
        ib: db.path().to_path_buf(),
        a,
        b,
        pki,
        _dirs: vec![da, db],
    }
}

impl Pair {
    /// The destination as the source agent dials it.
    fn dest(&self) -> String {
        format!(
            "tern+tls://127.0.0.1:{}/system",
            self.b.opts.listen_tls.unwrap().port()
        )
    }

    fn boot(&self, spec: GuestSpec) {
        let name = spec.name.clone();
        self.a.define_guest(&spec);
        self.a.ok(&["start", &name]);
        self.a
            .wait_console(&name, Duration::from_secs(120), "TERN-READY", |t| {
                let l = SerialLog::parse(t);
                l.ready() && l.last_seq().is_some_and(|s| s > 3)
            });
    }

    /// Migrates `name` with `flags`, watching both consoles; then checks the
    /// guest runs on B with heartbeats that never went back and memory that
    /// keeps verifying. Returns B's job events.
    fn migrate_and_verify(&self, name: &str, flags: &[&str], disk: bool) -> String {
        self.migrate_to(name, flags, disk, &self.dest())
    }

    /// As [`Pair::migrate_and_verify`], to the destination URI `dest`.
    fn migrate_to(&self, name: &str, flags: &[&str], disk: bool, dest: &str) -> String {
        let w = ConsoleWatcher::start();
        w.add(self.a.console_log(name), false);
        w.add(self.b.console_log(name), true);
        let mut args = vec!["migrate"];
        args.extend_from_slice(flags);
        args.extend([name, dest]);
        let out = self.a.tern(&args);
        assert!(
            out.status.success(),
            "tern {}: {}\nsource events:\n{}\ndestination events:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.a.ok(&["domjobevents", name]),
            String::from_utf8_lossy(&self.b.tern(&["domjobevents", name]).stdout),
        );
        assert_eq!(
            self.b.ok(&["domstate", name, "--reason"]).trim(),
            "running (migrated)"
        );
        let text = self
            .b
            .wait_console(name, Duration::from_secs(90), "memory verified", |t| {
                let l = SerialLog::parse(t);
                let disk_ok = !disk || l.count("TERN-DISK ok") >= 2;
                (l.count("TERN-MEM ok") >= 2 && disk_ok) || !l.failures.is_empty()
            });
        let report = w.finish();
        let log = SerialLog::parse(&text);
        assert!(log.failures.is_empty(), "{:?}", log.failures);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(
            !report.went_backwards,
            "heartbeat counter reset or duplicated"
        );
        self.b.ok(&["domjobevents", name])
    }
}

fn dirtying(name: &str) -> GuestSpec {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    GuestSpec::new(name, &img).workload("tern.mem=64 tern.dirty=20 tern.verify_rate=32")
}

#[test]
fn tunnelled_migration_of_a_dirtying_guest() {
    let p = pair("tun");
    p.boot(dirtying("tun1"));
    let ev = p.migrate_and_verify("tun1", &["--live", "--p2p", "--tunnelled"], false);
    assert!(ev.contains("tunnel carried 1 stream(s)"), "{ev}");
    let src = p.a.ok(&["domjobevents", "tun1"]);
    assert!(src.contains("through the TLS tunnel"), "{src}");
    // Nothing is left listening or lying around.
    assert!(!p.a.state_dir().join("run/tun1/tun-mem.sock").exists());
    let blog = std::fs::read_to_string(p.b.log()).unwrap();
    assert!(!blog.contains("tunnel: refused"), "{blog}");
}

#[test]
fn tunnelled_parallel_carries_one_stream_per_channel() {
    let p = pair("tpar");
    p.boot(dirtying("tpar1"));
    let ev = p.migrate_and_verify(
        "tpar1",
        &[
            "--live",
            "--p2p",
            "--tunnelled",
            "--parallel",
            "--parallel-connections",
            "4",
        ],
        false,
    );
    // The main channel and four multifd channels, each its own TLS stream.
    assert!(ev.contains("tunnel carried 5 stream(s)"), "{ev}");
}

#[test]
fn tunnelled_copy_storage_all_carries_the_disk_mirror_too() {
    let p = pair("tcsa");
    let spec = disk_guest(&p, "tcsa");
    p.boot(spec);
    p.a.wait_console("tcsa", Duration::from_secs(90), "disk writes", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") >= 2
    });
    let ev = p.migrate_and_verify(
        "tcsa",
        &["--live", "--p2p", "--tunnelled", "--copy-storage-all"],
        true,
    );
    // One memory stream and one NBD stream.
    assert!(ev.contains("tunnel carried 2 stream(s)"), "{ev}");
    assert!(p.ib.join("tcsa.qcow2").exists());
    let src = p.a.ok(&["domjobevents", "tcsa"]);
    assert!(src.contains("tunnelled)"), "{src}");
    assert!(src.contains("disk mirrors completed while paused"), "{src}");
}

/// A guest with a qcow2 disk in A's local pool, writing and re-reading
/// checksummed blocks.
fn disk_guest(p: &Pair, name: &str) -> GuestSpec {
    let vol = format!("{name}.qcow2");
    p.a.ok(&["vol-create-as", "images", &vol, "32M", "--format", "qcow2"]);
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img).workload(
        "tern.mem=32 tern.dirty=20 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_mb=8 tern.disk_rate=256",
    );
    spec.disks.push(TestDisk {
        path: p.ia.join(&vol),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    spec
}

#[test]
fn native_tls_copy_storage_all_wraps_nbd_too() {
    let p = pair("qtlsd");
    p.boot(disk_guest(&p, "qtlsd"));
    p.a.wait_console("qtlsd", Duration::from_secs(90), "disk writes", |t| {
        SerialLog::parse(t).count("TERN-DISK ok") >= 2
    });
    p.migrate_and_verify(
        "qtlsd",
        &["--live", "--p2p", "--tls", "--copy-storage-all"],
        true,
    );
    let src = p.a.ok(&["domjobevents", "qtlsd"]);
    assert!(src.contains(", TLS)"), "{src}");
    assert!(p.ib.join("qtlsd.qcow2").exists());
}

#[test]
fn native_tls_migration_of_a_dirtying_guest() {
    let p = pair("qtls");
    p.boot(dirtying("qtls1"));
    // Without --p2p: the CLI drives both agents (reaching B over TLS with
    // its own certificate); each agent gives its QEMU its own certificates.
    let admin = p.pki.client("admin", "admin");
    let ev = p.migrate_to("qtls1", &["--live", "--tls"], false, &p.b.tls_uri(&admin));
    assert!(ev.contains("QEMU's own TLS on"), "{ev}");
    let src = p.a.ok(&["domjobevents", "qtls1"]);
    assert!(src.contains("over QEMU's TLS"), "{src}");
    // The credentials QEMU read are gone from both hosts.
    for h in [&p.a, &p.b] {
        assert!(!h.state_dir().join("run/qtls1/migration-tls").exists());
    }
}

#[test]
fn tunnelled_without_p2p_is_refused_and_changes_nothing() {
    let p = pair("tnp");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    p.a.define_guest(&GuestSpec::new("tnp1", &img));
    let dest = p.dest();
    let e =
        p.a.fails(&["migrate", "--live", "--tunnelled", "tnp1", &dest]);
    assert!(e.contains("--tunnelled needs --p2p"), "{e}");
    let e = p.a.fails(&[
        "migrate",
        "--live",
        "--p2p",
        "--tunnelled",
        "--tls",
        "tnp1",
        &dest,
    ]);
    assert!(
        e.contains("--tunnelled and --tls cannot be used together"),
        "{e}"
    );
    assert_eq!(p.a.ok(&["domstate", "tnp1"]).trim(), "shut off");
    assert_eq!(p.b.ok(&["list", "--all", "--name"]).trim(), "");
}
