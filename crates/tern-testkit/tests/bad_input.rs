//! Bad input: each case gives one clear line and changes nothing.

use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, TernHost, TestDisk};

fn one_line(err: &str) -> &str {
    let t = err.trim();
    assert_eq!(t.lines().count(), 1, "error is not one line: {err}");
    assert!(t.starts_with("error: "), "{err}");
    assert!(!t.contains("panicked"), "{err}");
    t
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let host = TernHost::start("bad");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let write = |name: &str, text: &str| {
        let p = host.root.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let listing = || host.ok(&["list", "--all", "--name"]);

    // Malformed XML.
    let f = write("bad.xml", "<domain type='kvm'><name>x</name><memory>1");
    let e = host.fails(&["define", &f]);
    assert!(one_line(&e).contains("XML"), "{e}");
    assert_eq!(listing().trim(), "");

    // An unsupported device.
    let mut xml = GuestSpec::new("pass", &img).to_xml();
    xml = xml.replace(
        "  </devices>",
        "    <hostdev mode='subsystem' type='pci'><source><address bus='0x01' slot='0x00' function='0x0'/></source></hostdev>\n  </devices>",
    );
    let e = host.fails(&["define", &write("hostdev.xml", &xml)]);
    assert!(one_line(&e).contains("hostdev"), "{e}");
    assert_eq!(listing().trim(), "");

    // A missing disk file: defining is fine (as virsh), starting is not.
    let mut spec = GuestSpec::new("nodisk", &img);
    spec.disks.push(TestDisk {
        path: host.root.join("missing.raw"),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    host.ok(&["define", &write("nodisk.xml", &spec.to_xml())]);
    let e = host.fails(&["start", "nodisk"]);
    assert!(one_line(&e).contains("missing.raw"), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    assert_eq!(host.ok(&["domstate", "nodisk"]).trim(), "shut off");
    assert!(host.qemu_pids().is_empty());
    // `create` of the same leaves no transient domain behind.
    let e = host.fails(&[
        "create",
        &write("nodisk2.xml", &spec.to_xml().replace("nodisk", "nodisk2")),
    ]);
    one_line(&e);
    assert!(!listing().contains("nodisk2"));

    // A duplicate name (different uuid).
    let a = GuestSpec::new("dup", &img).to_xml();
    host.ok(&["define", &write("dup1.xml", &a)]);
    let b = a.replace(
        "<name>dup</name>",
        "<name>dup</name>\n  <uuid>11111111-2222-3333-4444-555555555555</uuid>",
    );
    let e = host.fails(&["define", &write("dup2.xml", &b)]);
    assert!(one_line(&e).contains("already exists"), "{e}");

    // A volume name with '..' or a separator.
    let pool_dir = host.root.join("pool");
    host.ok(&[
        "pool-define-as",
        "p",
        "dir",
        "--target",
        pool_dir.to_str().unwrap(),
    ]);
    host.ok(&["pool-build", "p"]);
    host.ok(&["pool-start", "p"]);
    for bad in ["../evil", "a/b", ".."] {
        let e = host.fails(&["vol-create-as", "p", bad, "1M"]);
        assert!(one_line(&e).contains("name"), "{e}");
    }
    assert!(!host.root.join("evil").exists());
    assert_eq!(std::fs::read_dir(&pool_dir).unwrap().count(), 0);

    // Starting a running guest.
    host.ok(&[
        "define",
        &write("run.xml", &GuestSpec::new("run1", &img).to_xml()),
    ]);
    host.ok(&["start", "run1"]);
    let e = host.fails(&["start", "run1"]);
    assert!(one_line(&e).contains("already running"), "{e}");
    assert_eq!(host.qemu_pids().len(), 1);
    host.ok(&["destroy", "run1"]);

    // Unknown domain, pool.
    one_line(&host.fails(&["dominfo", "nope"]));
    one_line(&host.fails(&["pool-info", "nope"]));
}

#[test]
fn bad_uris_give_one_line() {
    let tern = tern_testkit::bin("tern");
    for (uri, needle) in [
        ("tern+tcp://127.0.0.1:1/system", "cannot connect"),
        ("tern+bogus:///system", "transport"),
        ("xen:///system", "driver"),
        ("not a uri", "not a uri"),
        (
            "tern+unix:///system?socket=/nonexistent/x.sock",
            "cannot connect",
        ),
    ] {
        let o = std::process::Command::new(&tern)
            .args(["-c", uri, "list"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(one_line(&e).contains(needle), "{uri}: {e}");
    }
    // TERN_DEFAULT_URI is honoured like LIBVIRT_DEFAULT_URI.
    let o = std::process::Command::new(&tern)
        .arg("list")
        .env("TERN_DEFAULT_URI", "tern+tcp://127.0.0.1:1/system")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("127.0.0.1:1"));
}
