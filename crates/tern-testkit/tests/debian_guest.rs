//! A real distribution guest (issue 16): Debian 12 with systemd and
//! qemu-guest-agent (scripts/debian-guest.sh, cached), defined from the XML
//! virt-install writes for it, booted under OVMF, live-migrated with its
//! storage; on the destination it keeps beating and its guest agent
//! answers for its interfaces and uptime. Real `ternd`, `tern` and QEMU.

use std::time::Duration;
use tern_testkit::debian::{base64_decode, debian_guest, virt_install_xml};
use tern_testkit::{SerialLog, TernHost};

/// The last `TERN-HB seq=` the guest printed.
fn last_seq(text: &str) -> u64 {
    SerialLog::parse(text).last_seq().unwrap_or(0)
}

/// `cat /proc/uptime` in the guest, through its agent: seconds.
fn agent_uptime(host: &TernHost, name: &str) -> f64 {
    let started: serde_json::Value = serde_json::from_str(&host.ok(&[
        "qemu-agent-command",
        name,
        r#"{"execute":"guest-exec","arguments":{"path":"/bin/cat","arg":["/proc/uptime"],"capture-output":true}}"#,
    ]))
    .unwrap();
    let pid = started["return"]["pid"].as_u64().expect("guest-exec pid");
    let status_cmd = format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#);
    for _ in 0..100 {
        let st: serde_json::Value =
            serde_json::from_str(&host.ok(&["qemu-agent-command", name, &status_cmd])).unwrap();
        if st["return"]["exited"] == true {
            let out = base64_decode(st["return"]["out-data"].as_str().unwrap_or_default())
                .expect("base64 output");
            let text = String::from_utf8_lossy(&out).to_string();
            return text
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("uptime from the agent: {text:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("guest-exec of cat /proc/uptime never exited");
}

#[test]
fn debian_guest_from_virt_install_xml_live_migrates_with_storage_and_its_agent_answers() {
    let g = debian_guest();
    let a = TernHost::start("deb-a");
    let b = TernHost::start("deb-b");
    let (ia, ib) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    a.add_pool("images", ia.path(), false);
    b.add_pool("images", ib.path(), false);
    // The built root is the golden image both hosts read from a pool.
    a.add_pool("golden", &g.dir, false);
    b.add_pool("golden", &g.dir, false);
    // The guest's disk: an overlay on the golden image, in A's own pool.
    let top = ia.path().join("debian12.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&g.root)
        .arg(&top)
        .status()
        .unwrap();
    assert!(made.success(), "qemu-img create {}", top.display());
    let xml = virt_install_xml("debian12", &top, &g);
    let path = a.root.join("debian12.xml");
    std::fs::write(&path, &xml).unwrap();
    a.ok(&["define", path.to_str().unwrap()]);
    a.ok(&["start", "debian12"]);
    let text = a.wait_console("debian12", Duration::from_secs(600), "systemd up", |t| {
        t.contains("TERN-READY") && last_seq(t) >= 2
    });
    let ready = text.lines().find(|l| l.contains("TERN-READY")).unwrap();
    assert!(
        ready.contains("target=active"),
        "multi-user.target is not active: {ready}"
    );
    let before = last_seq(&text);
    let up_before = agent_uptime(&a, "debian12");

    let out = a.tern(&[
        "migrate",
        "--live",
        "--persistent",
        "--undefinesource",
        "--copy-storage-inc",
        "debian12",
        &b.uri(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same boot goes on beating on the destination.
    let text = b.wait_console("debian12", Duration::from_secs(120), "heartbeats", |t| {
        last_seq(t) > before + 2
    });
    assert!(
        !text.contains("TERN-READY"),
        "the guest booted again:\n{text}"
    );
    // Its agent answers there: interfaces, and an uptime that went on.
    let ifaddr = b.ok(&["domifaddr", "debian12", "--source", "agent"]);
    assert!(ifaddr.contains("127.0.0.1/8"), "{ifaddr}");
    // The NIC, with the address QEMU's user network leased to it.
    assert!(
        ifaddr
            .lines()
            .any(|l| l.contains("52:54:00:4e:16:01") && l.contains("10.0.2.15/24")),
        "{ifaddr}"
    );
    let up_after = agent_uptime(&b, "debian12");
    assert!(
        up_after > up_before,
        "uptime {up_before} s, then {up_after} s"
    );
    // The real agent freezes and thaws the guest's root filesystem there.
    let froze = b.ok(&["domfsfreeze", "debian12"]);
    let thawed = b.ok(&["domfsthaw", "debian12"]);
    assert!(
        froze.contains("Froze 1 filesystem(s)") && thawed.contains("Thawed 1 filesystem(s)"),
        "{froze}{thawed}"
    );
    let seq = last_seq(&b.ok(&["console", "debian12"]));
    b.wait_console(
        "debian12",
        Duration::from_secs(60),
        "heartbeats after the thaw",
        |t| last_seq(t) > seq + 1,
    );
    b.ok(&["destroy", "debian12"]);
    b.ok(&["undefine", "debian12", "--nvram"]);
}
