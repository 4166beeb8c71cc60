//! `<interface type='network'>`, as virt-install writes it for libvirt's
//! networks: each host names its bridge (`net-define-as`), the guest joins
//! the network by name, answers ping through it, and live-migrates to a
//! host that defines the same network; a host that does not is refused
//! with the network named. Needs root (network namespaces).

use std::time::Duration;
use tern_testkit::netns::skip_unless_root;
use tern_testkit::pair::{wait_ready, LabPair};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, Side};

#[test]
fn a_guest_on_a_named_network_migrates_where_the_network_is_defined() {
    if skip_unless_root("a_guest_on_a_named_network_migrates_where_the_network_is_defined") {
        return;
    }
    let p = LabPair::start("tnet", &[]);
    let name = "tnet";
    let ip = p.lab.addr(52);
    let mac = format!("52:54:00:79:{:02x}:34", p.lab.subnet());
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img).workload(&format!("tern.mem=32 tern.ip={ip}/24"));
    spec.bridge = Some(("br0".into(), mac.clone()));
    let xml = spec
        .to_xml()
        .replace("<interface type='bridge'>", "<interface type='network'>")
        .replace("<source bridge='br0'/>", "<source network='labnet'/>");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tnet.xml");
    std::fs::write(&file, &xml).unwrap();

    // Not defined here yet: start names the network and what to do.
    p.a.ok(&["define", file.to_str().unwrap()]);
    let err = p.a.fails(&["start", name]);
    assert!(
        err.contains("network 'labnet'") && err.contains("net-define-as labnet"),
        "{err}"
    );
    let out = p.a.ok(&["net-define-as", "labnet", "--bridge", "br0"]);
    assert!(out.contains("labnet"), "{out}");
    assert!(p.a.ok(&["net-list"]).contains("labnet"));
    p.a.ok(&["start", name]);
    wait_ready(&p.a, name, 3);
    assert!(
        p.lab.wait_ping(Side::C, ip, Duration::from_secs(20)),
        "no ping on A"
    );
    // dumpxml keeps the network, not the bridge it stands for here.
    let dumped = p.a.ok(&["dumpxml", name]);
    assert!(dumped.contains("<source network='labnet'/>"), "{dumped}");

    // B lacks the network: refused, naming it; the guest stays on A.
    let refused = p.a.tern(&["migrate", "--live", name, &p.b.uri()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "migrated to a host without the network"
    );
    assert!(err.contains("labnet"), "{err}");
    assert!(p.a.ok(&["domstate", name]).starts_with("running"));

    p.b.ok(&["net-define-as", "labnet", "--bridge", "br0"]);
    let m = p.a.tern(&["migrate", "--live", name, &p.b.uri()]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    assert!(
        p.lab.wait_ping(Side::C, ip, Duration::from_secs(20)),
        "no ping on B"
    );
    let text = p.b.ok(&["console", name]);
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
    assert!(p
        .b
        .ok(&["dumpxml", name])
        .contains("<source network='labnet'/>"));
}
