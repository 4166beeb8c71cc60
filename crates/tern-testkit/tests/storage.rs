//! Pool and volume life cycle, and domain XML through the agent.

use tern_testkit::TernHost;

fn json(host: &TernHost, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&host.ok(args)).expect("valid JSON")
}

#[test]
fn pool_and_volume_life_cycle() {
    let mut host = TernHost::start("pools");
    let dir = host.root.join("images");
    let d = dir.to_str().unwrap();
    assert!(host
        .ok(&["pool-define-as", "img", "dir", "--target", d])
        .contains("Pool img defined"));
    let e = host.fails(&["pool-start", "img"]);
    assert!(e.contains("pool-build"), "{e}");
    host.ok(&["pool-build", "img"]);
    host.ok(&["pool-start", "img"]);
    host.ok(&["pool-autostart", "img"]);
    let list = host.ok(&["pool-list", "--all"]);
    assert!(
        list.contains("img") && list.contains("active") && list.contains("yes"),
        "{list}"
    );
    let info = json(&host, &["pool-info", "img", "--json"]);
    assert_eq!(info["active"], true);
    assert!(info["capacity"].as_u64().unwrap() > 0);

    host.ok(&[
        "vol-create-as",
        "img",
        "base.qcow2",
        "64M",
        "--format",
        "qcow2",
    ]);
    host.ok(&[
        "vol-create-as",
        "img",
        "top.qcow2",
        "--format",
        "qcow2",
        "--backing-vol",
        "base.qcow2",
    ]);
    host.ok(&["vol-create-as", "img", "raw.img", "32M"]);
    let vols = json(&host, &["vol-list", "img", "--json"]);
    let names: Vec<&str> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["base.qcow2", "raw.img", "top.qcow2"]);
    let top = json(&host, &["vol-info", "top.qcow2", "--pool", "img", "--json"]);
    assert_eq!(top["format"], "qcow2");
    assert_eq!(top["capacity"], 64 << 20);
    assert_eq!(top["backing"], dir.join("base.qcow2").to_str().unwrap());
    let raw = json(&host, &["vol-info", "raw.img", "--pool", "img", "--json"]);
    assert_eq!(raw["format"], "raw");
    assert_eq!(
        host.ok(&["vol-path", "raw.img", "--pool", "img"]).trim(),
        dir.join("raw.img").to_str().unwrap()
    );
    let e = host.fails(&["vol-create-as", "img", "raw.img", "1M"]);
    assert!(e.contains("already exists"), "{e}");

    // Autostart survives an agent restart.
    host.restart();
    assert_eq!(json(&host, &["pool-info", "img", "--json"])["active"], true);

    host.ok(&["vol-delete", "raw.img", "--pool", "img"]);
    assert!(!dir.join("raw.img").exists());
    let e = host.fails(&["pool-undefine", "img"]);
    assert!(e.contains("pool-destroy"), "{e}");
    host.ok(&["pool-destroy", "img"]);
    let e = host.fails(&["vol-list", "img"]);
    assert!(e.contains("not active"), "{e}");
    host.ok(&["pool-undefine", "img"]);
    assert!(!host.ok(&["pool-list", "--all"]).contains("img"));
    // Files stay, as with virsh.
    assert!(dir.join("base.qcow2").exists());
}

#[test]
fn seed_xml_defines_round_trips_and_fails_clearly_without_its_bridge() {
    let host = TernHost::start("seed");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tern-model/tests/fixtures/seed004.xml"
    );
    let disk = host.root.join("ubuntu-14.04.img");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let xml = std::fs::read_to_string(fixture).unwrap().replace(
        "/var/lib/tern/images/ubuntu-14.04.img",
        disk.to_str().unwrap(),
    );
    let f = host.root.join("seed.xml");
    std::fs::write(&f, &xml).unwrap();
    host.ok(&["define", f.to_str().unwrap()]);
    let dumped = host.ok(&["dumpxml", "ubuntu-14.04"]);
    // Define what we printed: same domain, printed the same way.
    let f2 = host.root.join("seed2.xml");
    std::fs::write(&f2, &dumped).unwrap();
    host.ok(&["define", f2.to_str().unwrap()]);
    assert_eq!(host.ok(&["dumpxml", "ubuntu-14.04"]), dumped);
    assert!(dumped.contains("ubuntu_br") && dumped.contains("openvswitch"));
    let blk = host.ok(&["domblklist", "ubuntu-14.04"]);
    assert!(
        blk.contains("vda") && blk.contains(disk.to_str().unwrap()),
        "{blk}"
    );
    let e = host.fails(&["start", "ubuntu-14.04"]);
    assert!(e.contains("bridge 'ubuntu_br' does not exist"), "{e}");
    assert_eq!(e.trim().lines().count(), 1);
    assert!(host.qemu_pids().is_empty());
    assert_eq!(host.ok(&["domstate", "ubuntu-14.04"]).trim(), "shut off");
    let uuid = host.ok(&["domuuid", "ubuntu-14.04"]);
    assert!(xml.contains(uuid.trim()));
}

#[test]
fn tcp_transport_serves_the_same_api() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let host = TernHost::start_with(tern_testkit::HostOptions {
        name: "tcp".into(),
        listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        ..Default::default()
    });
    let o = std::process::Command::new(tern_testkit::bin("tern"))
        .args([
            "-c",
            &format!("tern+tcp://127.0.0.1:{port}/system"),
            "nodeinfo",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!f["qemu_version"].as_str().unwrap().is_empty());
    assert!(f["page_size"].as_u64().unwrap() >= 4096);
    drop(host);
}
