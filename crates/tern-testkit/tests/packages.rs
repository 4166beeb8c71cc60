//! The Debian packages on a clean root: `dpkg -i` of ternd, tern and
//! tern-controller into a copy of a minimal Debian (with only the packages
//! they depend on), what the maintainer scripts create, the units
//! (`systemd-analyze verify`), and each daemon started from its unit's
//! ExecStart line until it tells systemd READY=1.
//!
//! Needs `scripts/package.sh --dev` and `scripts/pkgtest-root.sh` first
//! (scripts/test.sh runs both).

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};
use tern_testkit::pkgroot::{built_packages, exec_start, unit_key, PackageRoot};
use tern_testkit::{build_or_reuse, BuildOptions, GuestImage, GuestSpec, SerialLog};

const LONG: Duration = Duration::from_secs(60);

fn ok(out: std::process::Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn packages_install_on_a_clean_root_and_ternd_starts_from_its_unit() {
    let root = PackageRoot::new();
    ok(root.install(&built_packages()), "dpkg -i");
    // The maintainer scripts made the user, group and directories.
    let pw = ok(
        root.run(&["getent", "passwd", "tern"]),
        "getent passwd tern",
    );
    let uid: u32 = pw
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("uid");
    ok(root.run(&["getent", "group", "tern"]), "getent group tern");
    for d in ["var/lib/tern", "var/cache/tern", "etc/tern"] {
        assert!(root.join(d).is_dir(), "{d} missing");
    }
    let ctl_dir =
        std::fs::metadata(root.join("var/lib/tern-controller")).expect("controller state");
    assert_eq!(
        ctl_dir.uid(),
        uid,
        "/var/lib/tern-controller belongs to tern"
    );
    // Man pages and completions from the clap definitions.
    for f in [
        "usr/share/man/man8/ternd.8.gz",
        "usr/share/man/man8/tern-controller.8.gz",
        "usr/share/man/man1/tern.1.gz",
        "usr/share/man/man1/tern-migrate.1.gz",
        "usr/share/man/man1/tern-event.1.gz",
        "usr/share/bash-completion/completions/tern",
        "usr/share/zsh/vendor-completions/_tern",
        "usr/share/fish/vendor_completions.d/tern.fish",
        "usr/share/bash-completion/completions/ternd",
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    // The units: what the agent's guests need from systemd, and verify.
    let unit_dir = root.join("usr/lib/systemd/system");
    let ternd = std::fs::read_to_string(unit_dir.join("ternd.service")).expect("ternd.service");
    assert_eq!(unit_key(&ternd, "KillMode").as_deref(), Some("process"));
    assert_eq!(unit_key(&ternd, "Type").as_deref(), Some("notify"));
    let argv = exec_start(&ternd, |_| None);
    let shutdown: u64 = argv
        .iter()
        .position(|a| a == "--shutdown-timeout")
        .and_then(|i| argv.get(i + 1)?.parse().ok())
        .expect("--shutdown-timeout in ExecStart");
    let stop: u64 = unit_key(&ternd, "TimeoutStopSec")
        .and_then(|s| s.parse().ok())
        .expect("TimeoutStopSec");
    assert!(
        stop > shutdown,
        "TimeoutStopSec={stop} must exceed --shutdown-timeout {shutdown}"
    );
    assert!(
        argv.windows(2).any(|w| w == ["--on-stop", "auto"]),
        "{argv:?}"
    );
    // With the documented etcd drop-in for three controllers.
    let dropin = root.join("etc/systemd/system/tern-controller.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    let example =
        tern_testkit::workspace_root().join("packaging/examples/tern-controller-etcd.conf");
    std::fs::copy(example, dropin.join("etcd.conf")).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .args([
            "/usr/lib/systemd/system/ternd.service",
            "/usr/lib/systemd/system/tern-controller.service",
        ])
        .output()
        .expect("systemd-analyze");
    ok(verify, "systemd-analyze verify");

    // ternd from its ExecStart line: READY=1 once the API is served.
    let mut agent = root.start_service("ternd.service");
    let said = agent.wait_ready(LONG);
    assert!(said.contains("READY=1"), "{said}");
    let info = ok(root.run(&["tern", "nodeinfo"]), "tern nodeinfo in the root");
    assert!(info.contains("QEMU") || info.contains("qemu"), "{info}");
    ok(root.run(&["tern", "list", "--all"]), "tern list");
    // tern-controller from its ExecStart line, as the tern user, with the
    // certificates its mutual TLS needs (made with the packaged `tern pki`).
    let pki = [
        "tern pki init --dir /etc/pki/tern-ca --cn 'Package test CA'",
        "tern pki issue-server 127.0.0.1 --dir /etc/pki/tern-ca --out /etc/pki/tern",
        "tern pki issue-client tern-controller --dir /etc/pki/tern-ca --out /etc/pki/tern",
        "chown -R tern:tern /etc/pki/tern",
    ];
    for step in pki {
        ok(root.run(&["sh", "-c", step]), step);
    }
    let mut ctl = root.start_service("tern-controller.service");
    ctl.wait_ready(LONG);
}

/// The ternd package with its version changed to `version`, repacked.
fn ternd_package_at(version: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let deb = built_packages()
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ternd_")
        })
        .expect("ternd deb");
    let tree = dir.join("tree");
    ok(
        Command::new("dpkg-deb")
            .arg("-R")
            .arg(&deb)
            .arg(&tree)
            .output()
            .unwrap(),
        "dpkg-deb -R",
    );
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.starts_with("Version:") {
            true => format!("Version: {version}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&control, text).unwrap();
    let out = dir.join(format!("ternd_{version}_amd64.deb"));
    ok(
        Command::new("dpkg-deb")
            .arg("-b")
            .arg(&tree)
            .arg(&out)
            .output()
            .unwrap(),
        "dpkg-deb -b",
    );
    out
}

/// Waits until the guest's console shows `n` more heartbeats than `after`.
fn heartbeats(root: &PackageRoot, name: &str, more_than: usize) -> SerialLog {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = root.run(&["tern", "console", name]);
        let log = SerialLog::parse(&String::from_utf8_lossy(&out.stdout));
        if log.heartbeats.len() > more_than + 2 {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeats from {name}: {:?}",
            log.heartbeats.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn upgrading_the_agent_package_leaves_a_running_guest_running() {
    let root = PackageRoot::new();
    ok(root.install(&built_packages()), "dpkg -i");
    let img = build_or_reuse(&BuildOptions::default()).expect("test guest");
    std::fs::create_dir_all(root.join("var/lib/tern/images")).unwrap();
    std::fs::copy(&img.kernel, root.join("var/lib/tern/images/vmlinux")).unwrap();
    std::fs::copy(&img.initrd, root.join("var/lib/tern/images/initrd")).unwrap();
    let inside = GuestImage {
        kernel: "/var/lib/tern/images/vmlinux".into(),
        initrd: "/var/lib/tern/images/initrd".into(),
    };
    let spec = GuestSpec::new("up1", &inside).workload("tern.mem=32 tern.dirty=0");
    std::fs::write(root.join("tmp/up1.xml"), spec.to_xml()).unwrap();
    // Under systemd's KillMode=process the guests are not the agent's to
    // lose: the service shares the host's PIDs here, as in a unit's cgroup.
    let mut agent = root.start_service_with("ternd.service", false);
    agent.wait_ready(LONG);
    // The kernel and initramfs live in a pool, as every guest file must.
    ok(
        root.run(&[
            "tern",
            "pool-define-as",
            "images",
            "dir",
            "--target",
            "/var/lib/tern/images",
        ]),
        "pool-define-as",
    );
    ok(root.run(&["tern", "pool-start", "images"]), "pool-start");
    ok(root.run(&["tern", "define", "/tmp/up1.xml"]), "define");
    ok(root.run(&["tern", "start", "up1"]), "start");
    let before = heartbeats(&root, "up1", 0);
    let qemu = root.processes_named("qemu-system");
    assert_eq!(qemu.len(), 1, "one QEMU: {qemu:?}");

    // The upgrade: the agent stops (SIGTERM to it alone), dpkg installs the
    // new version, the agent starts again from the unit.
    let st = agent.stop();
    assert!(st.success() || st.code().is_some(), "{st:?}");
    let tmp = tempfile::tempdir().unwrap();
    let newer = ternd_package_at("0.1.0-2", tmp.path());
    ok(root.install(&[newer]), "dpkg -i (upgrade)");
    let v = ok(
        root.run(&["dpkg-query", "-W", "-f", "${Version}", "ternd"]),
        "dpkg-query",
    );
    assert_eq!(v.trim(), "0.1.0-2");
    let mut agent = root.start_service_with("ternd.service", false);
    agent.wait_ready(LONG);

    assert_eq!(
        root.processes_named("qemu-system"),
        qemu,
        "the same QEMU runs"
    );
    let list = ok(root.run(&["tern", "list"]), "list");
    assert!(list.contains("up1") && list.contains("running"), "{list}");
    let after = heartbeats(&root, "up1", before.heartbeats.len());
    assert!(!after.seq_went_backwards(), "the guest was reset");
    assert!(after.failures.is_empty(), "{:?}", after.failures);
    ok(root.run(&["tern", "destroy", "up1"]), "destroy");
}
