//! Boots the test guest under plain QEMU (TCG) and checks what it prints:
//! heartbeats, memory and disk verification, a clean ACPI power-off, and a
//! second boot on the same disk that finds its blocks intact.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tern_testkit::{build_or_reuse, default_cmdline, BuildOptions, GuestImage, SerialLog};

/// QEMU tests take this lock so only one guest runs at a time (2-core CI).
static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

const BOOT_TIMEOUT: Duration = Duration::from_secs(40);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(20);
const GUEST_PARAMS: &str = "tern.mem=64 tern.dirty=20 tern.disk=/dev/vda tern.disk_mb=8";

/// A running QEMU; killed (and reaped) when dropped.
struct Qemu {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
    log: PathBuf,
    started: Instant,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// Start QEMU on `image` with `disk` as a virtio-blk disk (cache=none).
    fn boot(image: &GuestImage, disk: &Path, dir: &Path, sock_dir: &Path, name: &str) -> Qemu {
        let drive = format!("file={},format=raw,if=virtio,cache=none", disk.display());
        let args = ["-nic", "none", "-drive", drive.as_str()];
        Qemu::boot_with(image, &args, GUEST_PARAMS, dir, sock_dir, name)
    }

    /// Start QEMU on `image` with extra QEMU `args` and guest `params`.
    fn boot_with(
        image: &GuestImage,
        args: &[&str],
        params: &str,
        dir: &Path,
        sock_dir: &Path,
        name: &str,
    ) -> Qemu {
        let serial = dir.join(format!("{name}-serial.txt"));
        let log = dir.join(format!("{name}-qemu.log"));
        let qmp = sock_dir.join(format!("{name}.qmp"));
        let log_file = std::fs::File::create(&log).expect("create the QEMU log file");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(args)
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .arg("-append")
        .arg(default_cmdline(params))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup the log file"))
        .stderr(log_file);
        let child = cmd.spawn().expect(
            "cannot start qemu-system-x86_64: install it with `apt-get install qemu-system-x86`",
        );
        Qemu {
            child,
            serial,
            qmp,
            log,
            started: Instant::now(),
        }
    }

    fn console(&self) -> SerialLog {
        SerialLog::read(&self.serial).unwrap_or_default()
    }

    /// Everything useful for a failure message.
    fn diagnostics(&self) -> String {
        let serial = std::fs::read(&self.serial).unwrap_or_default();
        let serial = String::from_utf8_lossy(&serial);
        let tail: Vec<&str> = serial.lines().rev().take(40).collect();
        let qemu_log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "--- last console lines (newest first) ---\n{}\n--- qemu output ---\n{qemu_log}",
            tail.join("\n")
        )
    }

    /// Wait until `done` holds for the console, failing on any `TERN-FAIL`
    /// line, on QEMU exiting, or after `timeout`.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&SerialLog) -> bool,
    ) -> SerialLog {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.console();
            assert!(
                log.failures.is_empty(),
                "guest reported failures: {:?}\n{}",
                log.failures,
                self.diagnostics()
            );
            if done(&log) {
                return log;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}) while waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Press the ACPI power button and wait for QEMU to exit by itself.
    fn power_down(&mut self) -> SerialLog {
        qmp_command(&self.qmp, "system_powerdown")
            .unwrap_or_else(|e| panic!("QMP failed: {e}\n{}", self.diagnostics()));
        let pressed = Instant::now();
        let deadline = pressed + POWEROFF_TIMEOUT;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU still running {POWEROFF_TIMEOUT:?} after system_powerdown\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("QEMU exited {:?} after system_powerdown", pressed.elapsed());
        assert!(
            status.success(),
            "QEMU exited with {status}\n{}",
            self.diagnostics()
        );
        let log = self.console();
        assert!(
            log.has("TERN-POWEROFF"),
            "no TERN-POWEROFF\n{}",
            self.diagnostics()
        );
        assert!(
            log.failures.is_empty(),
            "guest reported failures: {:?}",
            log.failures
        );
        log
    }
}

/// Send one QMP command (after the capabilities handshake) and wait for its reply.
fn qmp_command(sock: &Path, command: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("connect {}: {e}", sock.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut next = || -> Result<serde_json::Value, String> {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("bad QMP line {line:?}: {e}"))
    };
    let greeting = next()?;
    if greeting.get("QMP").is_none() {
        return Err(format!("unexpected greeting {greeting}"));
    }
    for cmd in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}").map_err(|e| format!("write: {e}"))?;
        loop {
            let reply = next()?;
            if reply.get("return").is_some() {
                break;
            }
            if let Some(err) = reply.get("error") {
                return Err(format!("{cmd} failed: {err}"));
            }
            // An asynchronous event: keep reading.
        }
    }
    Ok(())
}

#[test]
fn guest_boots_checks_memory_and_disk_powers_off_and_reboots_on_the_same_disk() {
    let _one = ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let image = build_or_reuse(&BuildOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir for the disk");
    let sock_dir = tempfile::tempdir().expect("tempdir for the QMP socket");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(32 << 20))
        .expect("create the 32 MiB disk image");

    // First boot: formats the disk region.
    let mut q = Qemu::boot(&image, &disk, dir.path(), sock_dir.path(), "boot1");
    let ready = q.wait_for("TERN-READY", BOOT_TIMEOUT, SerialLog::ready);
    let ready_after = q.started.elapsed();
    let log = q.wait_for(
        "heartbeats, TERN-MEM ok and TERN-DISK ok",
        BOOT_TIMEOUT,
        |l| l.has("TERN-MEM ok") && l.has("TERN-DISK ok") && l.heartbeats.len() >= 20,
    );
    eprintln!(
        "boot 1: {} after {ready_after:?} (QEMU start to TERN-READY); {} heartbeats, max gap {:?} ms",
        ready.find("TERN-READY").unwrap_or_default(),
        log.heartbeats.len(),
        log.max_gap_ms()
    );
    assert!(
        log.has("TERN-DISK formatted blocks=2048"),
        "{}",
        q.diagnostics()
    );
    assert!(
        !log.seq_went_backwards(),
        "heartbeat seq went backwards\n{}",
        q.diagnostics()
    );
    assert!(
        log.max_gap_ms().unwrap_or(0) < 5_000,
        "heartbeat starved\n{}",
        q.diagnostics()
    );
    let log = q.power_down();
    assert!(!log.seq_went_backwards());
    drop(q);

    // Second boot on the same disk: every block must verify.
    let mut q = Qemu::boot(&image, &disk, dir.path(), sock_dir.path(), "boot2");
    let log = q.wait_for(
        "TERN-READY, TERN-DISK verified and TERN-DISK ok",
        BOOT_TIMEOUT,
        |l| l.ready() && l.has("TERN-DISK ok") && l.has("TERN-MEM ok"),
    );
    assert_eq!(
        log.find("TERN-DISK verified"),
        Some("TERN-DISK verified blocks=2048 ok"),
        "{}",
        q.diagnostics()
    );
    assert!(!log.has("TERN-DISK formatted"));
    eprintln!("boot 2: {}", log.find("TERN-READY").unwrap_or_default());
    q.power_down();
}

/// A free TCP port on 127.0.0.1 (there is a small race until QEMU binds it).
fn free_local_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

#[test]
fn echo_server_answers_over_the_network_and_ignore_acpi_keeps_the_guest_up() {
    let _one = ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let image = build_or_reuse(&BuildOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let sock_dir = tempfile::tempdir().expect("tempdir for the QMP socket");
    let port = free_local_port();
    // QEMU user networking: the guest's 10.0.2.15:7777 is reachable on the
    // host only as 127.0.0.1:<port>; no traffic leaves the QEMU process.
    let nic = format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:7777");
    let params = "tern.ip=10.0.2.15/24 tern.gw=10.0.2.2 tern.ignore_acpi=1";
    let mut q = Qemu::boot_with(
        &image,
        &["-nic", &nic],
        params,
        dir.path(),
        sock_dir.path(),
        "net",
    );
    let log = q.wait_for("TERN-READY", BOOT_TIMEOUT, SerialLog::ready);
    assert_eq!(
        log.find("TERN-NET"),
        Some("TERN-NET listening 10.0.2.15:7777")
    );

    let conn =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the echo server");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = conn.try_clone().expect("clone");
    let mut reader = BufReader::new(conn);
    let mut line = || {
        let mut l = String::new();
        reader
            .read_line(&mut l)
            .expect("read a line from the guest");
        l
    };
    let hello = line();
    let hello_seq =
        tern_testkit::field(&hello, "seq").unwrap_or_else(|| panic!("bad hello {hello:?}"));
    writer.write_all(b"ping\n").expect("send");
    assert_eq!(line(), "ping\n");
    std::thread::sleep(Duration::from_millis(500));
    writer.write_all(b"seq\n").expect("send");
    let seq = line();
    assert!(seq.starts_with("TERN-SEQ seq="), "{seq:?}");
    assert!(
        tern_testkit::field(&seq, "seq").unwrap_or(0) > hello_seq,
        "{hello:?} then {seq:?}"
    );

    // The power button is ignored: QEMU must still be running after 5 s.
    qmp_command(&q.qmp, "system_powerdown").unwrap_or_else(|e| panic!("QMP failed: {e}"));
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        matches!(q.child.try_wait(), Ok(None)),
        "guest powered off\n{}",
        q.diagnostics()
    );
    let log = q.console();
    assert!(!log.has("TERN-POWEROFF"));
    assert!(log.failures.is_empty(), "{:?}", log.failures);
}

#[test]
fn image_is_reused_when_nothing_changed() {
    let opts = BuildOptions::default();
    let first = build_or_reuse(&opts).unwrap_or_else(|e| panic!("{e}"));
    let modified = std::fs::metadata(&first.initrd)
        .and_then(|m| m.modified())
        .expect("initrd mtime");
    let second = build_or_reuse(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&second.initrd)
            .and_then(|m| m.modified())
            .expect("initrd mtime"),
        modified
    );
    assert!(
        std::fs::read(&first.kernel)
            .expect("kernel")
            .starts_with(b"\x7fELF"),
        "kernel should be the extracted vmlinux"
    );
}
