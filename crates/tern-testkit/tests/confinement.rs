//! Confined QEMU and inputs that cannot reach the host (issue 15): option
//! smuggling through models and paths outside the pools are refused before
//! anything starts; a raw disk carrying a qcow2 header moves as raw bytes;
//! QEMU runs as the unprivileged user and still migrates with storage.

use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tern_testkit::creds::{pids_of, test_uid_range, Creds};
use tern_testkit::fixtures::{dir_contains, write_raw_with_qcow2_header, LocalPools};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost, TestDisk};

fn one_line_error(o: &Output, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what} should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{what}: {e}");
    e
}

fn guest(name: &str) -> GuestSpec {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    GuestSpec::new(name, &img)
}

fn raw_disk(path: &Path) -> TestDisk {
    TestDisk {
        path: path.to_path_buf(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    }
}

/// Defines `xml` and creates it; both must fail naming `expect`, and the
/// host must have no such domain and no QEMU afterwards.
fn refused(h: &TernHost, name: &str, xml: &str, expect: &str) {
    let f = h.root.join(format!("{name}.xml"));
    std::fs::write(&f, xml).unwrap();
    let f = f.to_str().unwrap();
    for verb in ["define", "create"] {
        let e = one_line_error(&h.tern(&[verb, f]), verb);
        assert!(e.contains(expect), "{verb}: {e}");
    }
    assert!(!h.ok(&["list", "--all", "--name"]).contains(name));
    assert!(h.qemu_pids().is_empty(), "a QEMU was started");
}

#[test]
fn smuggled_options_and_paths_outside_pools_are_refused_before_anything_starts() {
    let h = TernHost::start("confine");
    let pool = tempfile::tempdir().unwrap();
    h.add_pool("images", pool.path(), false);
    let base = guest("bad1").to_xml();
    let nic = base.replace(
        "  </devices>",
        "    <interface type='user'>\n      <model type='virtio-net-pci,romfile=/etc/shadow'/>\n    </interface>\n  </devices>",
    );
    refused(&h, "bad1", &nic, "virtio-net-pci,romfile=/etc/shadow");
    let video = base.replace(
        "  </devices>",
        "    <video>\n      <model type='VGA,romfile=/etc/shadow'/>\n    </video>\n  </devices>",
    );
    refused(&h, "bad1", &video, "VGA,romfile=/etc/shadow");
    let vnc = base.replace(
        "  </devices>",
        "    <graphics type='vnc' autoport='yes' listen='127.0.0.1,password=on'/>\n  </devices>",
    );
    refused(&h, "bad1", &vnc, "listen");
    let outside = "/etc/tern-confinement-test.log";
    let serial = |path: &str| {
        base.replace(
            "<serial type='pty'>\n      <target port='0'/>",
            &format!(
                "<serial type='file'>\n      <source path='{path}'/>\n      <target port='0'/>"
            ),
        )
    };
    let xml = serial(outside);
    assert!(xml.contains(outside));
    refused(
        &h,
        "bad1",
        &xml,
        &format!("serial file '{outside}' is outside every storage pool"),
    );
    assert!(!Path::new(outside).exists());
    // A qcow2 disk in the pool whose backing file is outside it.
    let top = pool.path().join("top.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/shadow",
        ])
        .arg(&top)
        .arg("1M")
        .status()
        .unwrap();
    assert!(st.success());
    let mut g = guest("bad1");
    g.disks.push(TestDisk {
        path: top.clone(),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    refused(
        &h,
        "bad1",
        &g.to_xml(),
        "backing file '/etc/shadow' is outside every storage pool",
    );
    std::fs::remove_file(&top).unwrap();
    // An overlay on a pool volume qemu-img takes for qcow2 (a raw guest
    // disk carrying a header) whose backing leaves the pools is refused.
    write_raw_with_qcow2_header(&pool.path().join("evil.raw"), 1, Path::new("/etc/shadow"));
    let e = one_line_error(
        &h.tern(&[
            "vol-create-as",
            "images",
            "o.qcow2",
            "--format",
            "qcow2",
            "--backing-vol",
            "evil.raw",
        ]),
        "vol-create-as",
    );
    assert!(
        e.contains("/etc/shadow") && e.contains("not in a storage pool"),
        "{e}"
    );
    assert!(!pool.path().join("o.qcow2").exists());
    std::fs::remove_file(pool.path().join("evil.raw")).unwrap();
    // A symlink inside the pool pointing out of it is judged by its target.
    let link = pool.path().join("console.log");
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    refused(
        &h,
        "bad1",
        &serial(link.to_str().unwrap()),
        "resolves to '/etc/shadow'",
    );
    std::fs::remove_file(&link).unwrap();
    // The same file inside the pool is fine, and QEMU writes the console there.
    let f = h.root.join("good.xml");
    std::fs::write(&f, serial(link.to_str().unwrap()).replace("bad1", "good1")).unwrap();
    h.ok(&["define", f.to_str().unwrap()]);
    h.ok(&["start", "good1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(&link)
        .unwrap_or_default()
        .contains("TERN-HB")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no console output in the pool file"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    h.ok(&["destroy", "good1"]);
}

/// The classic format-probing hole: the guest writes a qcow2 header naming
/// a host file as backing into its raw disk. A cold migration and a live
/// one with storage must move the disk's own bytes, and no byte of the
/// host file may reach the destination.
#[test]
fn a_raw_disk_with_a_qcow2_header_moves_as_raw_bytes() {
    let secret = std::fs::read("/etc/shadow").unwrap();
    let h = LocalPools::start("probe");
    for (name, flags) in [
        ("cold1", &["--cold", "--target-pool", "images"][..]),
        (
            "live1",
            &["--live", "--copy-storage-all", "--persistent"][..],
        ),
    ] {
        let disk = h.ia.join(format!("{name}.raw"));
        write_raw_with_qcow2_header(&disk, 16, Path::new("/etc/shadow"));
        let before = std::fs::read(&disk).unwrap();
        let mut g = guest(name);
        g.disks.push(raw_disk(&disk));
        h.a.define_guest(&g);
        if name == "live1" {
            h.a.ok(&["start", name]);
            h.a.wait_console(name, Duration::from_secs(90), "boot", |t| {
                t.contains("TERN-HB")
            });
        }
        let o = h.migrate(name, flags);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if let Some(p) = dir_contains(&h.ib, &secret) {
            panic!(
                "{name}: /etc/shadow reached the destination in {}",
                p.display()
            );
        }
        let files: Vec<_> = std::fs::read_dir(&h.ib)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!files.iter().any(|f| f.contains("shadow")), "{files:?}");
        let copied = std::fs::read(h.ib.join(format!("{name}.raw"))).unwrap();
        assert_eq!(copied.len(), before.len(), "{name}: size changed");
        assert!(copied == before, "{name}: the raw bytes differ");
        // Received copies are private to root (ternd's umask is 077).
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(h.ib.join(format!("{name}.raw")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o077, 0, "{name}: mode {m:o}");
        // Transfer session ids stay out of both agents' logs.
        for host in [&h.a, &h.b] {
            let log = std::fs::read_to_string(host.log()).unwrap();
            assert!(
                !log.contains("session:") && !log.contains("\"session\""),
                "a session id was logged"
            );
        }
        if name == "live1" {
            let l = SerialLog::parse(&h.b.wait_console(
                name,
                Duration::from_secs(60),
                "heartbeat",
                |t| t.contains("TERN-HB"),
            ));
            assert!(l.failures.is_empty(), "{:?}", l.failures);
            h.b.ok(&["destroy", name]);
        }
    }
}

/// Asserts that `pid` runs unprivileged: as a guest uid of `h`'s
/// `uid_range` with its own group of the same number (what `ps` shows: a
/// number, no group has it); returns the uid.
fn guest_user(h: &TernHost, pid: u32) -> u32 {
    let c = Creds::of_pid(pid);
    let (first, last) = test_uid_range(&h.root);
    assert!(
        (first..=last).contains(&c.uid),
        "pid {pid} runs as {}",
        c.uid
    );
    let o = std::process::Command::new("ps")
        .args(["-o", "group=", "-p", &pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), c.uid.to_string());
    assert_eq!(c.gid, c.uid);
    c.uid
}

fn disk_writes_ok(h: &TernHost, name: &str, what: &str) {
    let text = h.wait_console(name, Duration::from_secs(90), what, |t| {
        let l = SerialLog::parse(t);
        l.count("TERN-DISK ok") >= 2 || !l.failures.is_empty()
    });
    let l = SerialLog::parse(&text);
    assert!(l.failures.is_empty(), "{what}: {:?}", l.failures);
}

/// QEMU drops to a guest uid with its own group (the `tern-qemu` user,
/// installed by scripts/install-deps.sh, names the shared fallback) once it opened its files, under seccomp, and a
/// live migration with storage still keeps every disk write.
#[test]
fn qemu_runs_as_the_unprivileged_user_and_still_migrates_with_storage() {
    let h = LocalPools::start("unpriv");
    h.a.ok(&[
        "vol-create-as",
        "images",
        "u1.qcow2",
        "32M",
        "--format",
        "qcow2",
    ]);
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut g = GuestSpec::new("u1", &img).workload(
        "tern.mem=32 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_mb=8 tern.disk_rate=256",
    );
    g.disks.push(TestDisk {
        path: h.ia.join("u1.qcow2"),
        format: "qcow2".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    h.a.define_guest(&g);
    h.a.ok(&["start", "u1"]);
    let pids = h.a.qemu_pids();
    assert_eq!(pids.len(), 1);
    guest_user(&h.a, pids[0]);
    let cmd = std::fs::read_to_string(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert!(cmd.contains("-sandbox\0on,"), "{cmd}");
    // Its disk stays root's: QEMU opened it before dropping privileges.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(h.ia.join("u1.qcow2")).unwrap().uid(), 0);
    disk_writes_ok(&h.a, "u1", "disk writes on the source");
    let o = h.migrate("u1", &["--live", "--copy-storage-all", "--persistent"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pids = h.b.qemu_pids();
    assert_eq!(pids.len(), 1);
    guest_user(&h.b, pids[0]);
    disk_writes_ok(&h.b, "u1", "disk verification on the destination");
    h.b.ok(&["destroy", "u1"]);
}

/// swtpm, like QEMU, runs as the guest's uid: it is handed its state
/// directory and a socket directory, and the guest boots with its TPM.
#[test]
fn swtpm_runs_as_the_unprivileged_user() {
    let h = TernHost::start("swtpm");
    let xml = guest("t1").to_xml().replace(
        "  </devices>",
        "    <tpm model='tpm-tis'>\n      <backend type='emulator' version='2.0'/>\n    </tpm>\n  </devices>",
    );
    let f = h.root.join("t1.xml");
    std::fs::write(&f, xml).unwrap();
    h.ok(&["define", f.to_str().unwrap()]);
    h.ok(&["start", "t1"]);
    let state = h.state_dir().display().to_string();
    let swtpm = pids_of("swtpm", &state);
    assert_eq!(swtpm.len(), 1, "one swtpm for the guest");
    let qemu = h.qemu_pids();
    assert_eq!(guest_user(&h, swtpm[0]), guest_user(&h, qemu[0]));
    let cmd = std::fs::read_to_string(format!("/proc/{}/cmdline", qemu[0])).unwrap();
    assert!(cmd.contains("tpm-tis"), "{cmd}");
    // The guest itself reports that it runs.
    h.wait_console("t1", Duration::from_secs(90), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    h.ok(&["destroy", "t1"]);
}

/// Reads from `s` until the server closes it; panics if it stays open
/// for minutes (the idle timeout under test is five seconds).
fn closed_by_server(mut s: std::os::unix::net::UnixStream) {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server kept an idle connection open: {e}"),
        }
    }
}

/// Whether the server closed `s` already (a read finds the end at once).
fn closed_now(s: &std::os::unix::net::UnixStream) -> bool {
    use std::io::Read;
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 64];
    let closed = match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    closed
}

/// umask 077, socket modes, console on read-write only, the read-only
/// share of connections, idle and slow-header timeouts.
#[test]
fn private_files_console_read_write_only_and_read_only_share_with_timeouts() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let h = TernHost::start_with(tern_testkit::HostOptions {
        name: "hygiene".into(),
        // Long enough that the two idle readers still hold the share when
        // a third `tern` process starts on a loaded machine.
        config: Some("max_ro_clients = 2\nidle_timeout = 5\n".into()),
        ..Default::default()
    });
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&h.socket()), 0o700);
    assert_eq!(mode(&h.socket_ro()), 0o777);
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    h.define_guest(&GuestSpec::new("hy1", &img));
    let def = h.state_dir().join("domains/hy1.json");
    assert_eq!(mode(&def) & 0o077, 0, "{}", def.display());
    h.ok(&["start", "hy1"]);
    h.wait_console("hy1", Duration::from_secs(90), "heartbeat", |t| {
        t.contains("TERN-HB")
    });
    // The console is read-write only; listing still works read-only.
    let e = one_line_error(
        &tern_testkit::tern_at(&h.uri_ro(), &["console", "hy1"]),
        "console",
    );
    assert!(e.contains("read-only connection"), "{e}");
    let ro_list = || tern_testkit::tern_at(&h.uri_ro(), &["list"]);
    assert!(String::from_utf8_lossy(&ro_list().stdout).contains("hy1"));
    // Two idle readers fill the read-only share: the next reader is
    // turned away, an administrator is not.
    // A third reader that starts only after the idle ones were timed out
    // proves nothing (CI saw one get in on a loaded machine): such a try
    // is repeated with fresh idle readers; one that started in time must
    // have been refused.
    let idle_timeout = Duration::from_secs(5);
    let mut tries = 0;
    let idle = loop {
        let start = std::time::Instant::now();
        let idle = [
            UnixStream::connect(h.socket_ro()).unwrap(),
            UnixStream::connect(h.socket_ro()).unwrap(),
        ];
        let refused = !ro_list().status.success();
        if refused {
            break idle;
        }
        tries += 1;
        // An idle reader can itself be turned away, when the connection of
        // the `tern` run before it still held its place (the server frees
        // it when it sees the close, later on a loaded machine); the third
        // reader then takes the place that frees. That try proves nothing.
        let an_idle_one_was_refused = idle.iter().any(closed_now);
        assert!(
            (start.elapsed() >= idle_timeout || an_idle_one_was_refused) && tries < 5,
            "a third reader got in {:?} after the idle ones connected, both still open",
            start.elapsed()
        );
        for s in idle {
            closed_by_server(s);
        }
    };
    h.ok(&["list"]);
    // Idle readers are disconnected after idle_timeout, freeing their
    // places. The server frees a place just after closing the socket, so a
    // reader right then may still find the share full: a few tries.
    for s in idle {
        closed_by_server(s);
    }
    let served = (0..50).any(|_| {
        let ok = ro_list().status.success();
        if !ok {
            std::thread::sleep(Duration::from_millis(20));
        }
        ok
    });
    assert!(served, "no reader got in after the idle ones were closed");
    // A client that never finishes its headers is cut off too.
    let mut slow = UnixStream::connect(h.socket()).unwrap();
    std::io::Write::write_all(&mut slow, b"POST /call HTTP/1.1\r\nHost: x\r\n").unwrap();
    closed_by_server(slow);
    h.ok(&["destroy", "hy1"]);
    // Requests are logged by operation, not with their fields.
    let log = std::fs::read_to_string(h.log()).unwrap();
    assert!(log.contains("op=start"), "{}", tern_testkit::tail(&log, 20));
    assert!(!log.contains("xml:"), "a request's fields reached the log");
}
