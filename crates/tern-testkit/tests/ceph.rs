//! The test kit's single-node Ceph (issue 21): QEMU's own tools read and
//! write RBD images through it with cephx, and a blocklisted client's
//! writes are refused by the OSDs (the fence Tern relies on); Tern's rbd
//! pools, secrets and RBD disks on it, and a live migration that copies no
//! storage.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use tern_testkit::ceph::{skip_without_ceph, CephCluster, POOL, QEMU_ID};
use tern_testkit::rbd::{
    add_rbd_pool, define_guest_with_disk, define_secret, files_holding, guest_xml_with_disk,
    network_disk_xml, qemu_cmdlines, volume_disk_xml, wait_disk_ok, watchers, RBD_POOL,
    SECRET_USAGE, SECRET_UUID,
};
use tern_testkit::{HostPair, Which};

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `qemu-io` command in a fresh process; its combined output.
fn qemu_io_once(spec: &str, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, spec])
        .output()
        .expect("qemu-io");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn qemu_img_creates_and_reads_rbd_images_as_a_cephx_client() {
    if skip_without_ceph("qemu_img_creates_and_reads_rbd_images_as_a_cephx_client") {
        return;
    }
    let ceph = CephCluster::start();
    let spec = ceph.qemu_spec("disk1", QEMU_ID);
    qemu_img(&["create", "-f", "raw", &spec, "64M"]);
    let info = qemu_img(&["info", "--output=json", &spec]);
    let v: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info json");
    assert_eq!(v["virtual-size"], 64 << 20, "{info}");
    assert_eq!(v["format"], "raw", "{info}");
    let ls = ceph.rbd_ok("admin", &["ls", POOL]);
    assert!(ls.lines().any(|l| l == "disk1"), "rbd ls: {ls}");
    assert!(!ceph.key(QEMU_ID).is_empty());
    assert!(ceph.mon_addr().starts_with("127.0.0.1:"));
}

#[test]
fn a_blocklisted_client_cannot_write_and_another_takes_over() {
    if skip_without_ceph("a_blocklisted_client_cannot_write_and_another_takes_over") {
        return;
    }
    let ceph = CephCluster::start();
    let spec = ceph.qemu_spec("fenced", QEMU_ID);
    qemu_img(&["create", "-f", "raw", &spec, "16M"]);

    // The "old host": one long-lived librbd client that writes.
    let mut old = Command::new("qemu-io")
        .args(["-f", "raw", &spec])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let mut stdin = old.stdin.take().expect("stdin");
    let mut lines = BufReader::new(old.stdout.take().expect("stdout")).lines();
    let mut ask = |cmd: &str| -> String {
        writeln!(stdin, "{cmd}").expect("qemu-io command");
        stdin.flush().expect("flush");
        loop {
            let l = lines.next().expect("qemu-io output").expect("a line");
            if l.contains("wrote") || l.contains("failed") {
                return l;
            }
        }
    };
    let first = ask("write -P 0xaa 0 64k");
    assert!(first.contains("wrote"), "first write: {first}");

    // Its address, as the agent would learn it: the image's watcher.
    let status = ceph.rbd_ok("admin", &["status", &format!("{POOL}/fenced")]);
    let addr = status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("watcher="))
        .unwrap_or_else(|| panic!("no watcher in rbd status: {status}"))
        .to_string();
    ceph.admin_ok(&["osd", "blocklist", "add", &addr]);

    let fenced = ask("write -P 0xbb 65536 64k");
    assert!(
        fenced.contains("failed"),
        "a blocklisted client's write went through: {fenced}"
    );

    // The "rescue": a new client takes the lock and writes; the fenced
    // write never reached the image.
    let rescue = qemu_io_once(&spec, "write -P 0xcc 131072 64k");
    assert!(rescue.contains("wrote"), "rescue write: {rescue}");
    let kept = qemu_io_once(&spec, "read -P 0xaa 0 64k");
    assert!(
        kept.contains("read 65536/65536"),
        "first write lost: {kept}"
    );
    let hole = qemu_io_once(&spec, "read -P 0 65536 64k");
    assert!(
        hole.contains("read 65536/65536"),
        "the fenced write reached the image: {hole}"
    );
    let _ = old.kill();
    let _ = old.wait();
    ceph.admin_ok(&["osd", "blocklist", "rm", &addr]);
}

/// Issue 21: two hosts define the secret and the rbd pool as virsh users
/// do; a guest whose disk is a volume of that pool boots on A, verifies its
/// disk, and migrates live to B without copying storage (the image stays
/// where it is, one client at a time has it open); it keeps counting and
/// verifying on B, and nothing of it runs on A. The key is on no command
/// line and in no log, only in the agents' 0600 secret files.
#[test]
fn a_guest_on_an_rbd_volume_migrates_live_without_copying_storage() {
    if skip_without_ceph("a_guest_on_an_rbd_volume_migrates_live_without_copying_storage") {
        return;
    }
    let ceph = CephCluster::start();
    let key = ceph.key(QEMU_ID);
    let p = HostPair::start("rbd", &[], &[]);
    for h in [&p.a, &p.b] {
        add_rbd_pool(h, &ceph);
    }
    let list = p.a.ok(&["secret-list"]);
    assert!(
        list.contains(SECRET_UUID) && list.contains(SECRET_USAGE),
        "{list}"
    );
    assert!(!list.contains(&key), "secret-list printed the key: {list}");
    let got = p.a.fails(&["secret-get-value", SECRET_UUID]);
    assert!(got.contains("private") && !got.contains(&key), "{got}");
    let info = p.a.ok(&["pool-info", RBD_POOL]);
    assert!(info.contains("rbd") && info.contains("running"), "{info}");

    let name = "rbdg";
    p.a.ok(&["vol-create-as", RBD_POOL, "rbdg-disk", "16M"]);
    let vols = p.b.ok(&["vol-list", RBD_POOL]);
    assert!(
        vols.contains("rbdg-disk"),
        "B sees the volume A made: {vols}"
    );
    let path = p.a.ok(&["vol-path", "rbdg-disk", "--pool", RBD_POOL]);
    assert_eq!(path.trim(), format!("{POOL}/rbdg-disk"));
    define_guest_with_disk(
        &p.a,
        name,
        "tern.mem=32 tern.dirty=5",
        4,
        &volume_disk_xml("rbdg-disk", "vda"),
    );
    p.a.ok(&["start", name]);
    wait_disk_ok(&p.a, name, 2);

    let cmdlines = qemu_cmdlines(&p.a);
    assert_eq!(cmdlines.len(), 1, "{cmdlines:?}");
    assert!(
        cmdlines[0].contains("\"key-secret\":\"sec-vda\""),
        "{}",
        cmdlines[0]
    );
    assert!(
        cmdlines[0].contains("\"driver\":\"rbd\""),
        "{}",
        cmdlines[0]
    );
    assert!(
        !cmdlines[0].contains(&key),
        "the key is on QEMU's command line"
    );
    assert_eq!(watchers(&ceph, "rbdg-disk").len(), 1);

    let out = p.migrate(Which::A, name, &["--live", "--verbose"]);
    assert!(
        out.status.success(),
        "migration failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.events(name)
    );
    p.wait_settled_on(Which::B, name, std::time::Duration::from_secs(60));
    assert_eq!(p.qemu_counts(), (0, 1), "the guest runs on B only");
    p.assert_guest_whole_on(Which::B, name);
    wait_disk_ok(&p.b, name, 2);
    assert_eq!(
        watchers(&ceph, "rbdg-disk").len(),
        1,
        "one client has the image"
    );
    let running_a = p.a.ok(&["list"]);
    assert!(!running_a.contains(name), "A still runs it: {running_a}");
    let events = p.events(name);
    assert!(!events.contains("mirror"), "storage was copied: {events}");

    for h in [&p.a, &p.b] {
        let leaked = files_holding(&h.state_dir(), &key)
            .into_iter()
            .filter(|f| !f.ends_with(&format!("{SECRET_UUID}.base64")))
            .collect::<Vec<_>>();
        assert!(leaked.is_empty(), "the key is in {leaked:?}");
        let log = std::fs::read_to_string(h.log()).unwrap_or_default();
        assert!(!log.contains(&key), "the key is in the agent's log");
        let stored = h
            .state_dir()
            .join("secrets")
            .join(format!("{SECRET_UUID}.base64"));
        let mode = std::fs::metadata(&stored)
            .expect("stored value")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", stored.display());
    }

    // And back, peer to peer.
    let out = p.migrate(Which::B, name, &["--live", "--p2p", "--verbose"]);
    assert!(
        out.status.success(),
        "--p2p migration back failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.events(name)
    );
    p.wait_settled_on(Which::A, name, std::time::Duration::from_secs(60));
    assert_eq!(p.qemu_counts(), (1, 0), "the guest runs on A only");
    p.assert_guest_whole_on(Which::A, name);
    wait_disk_ok(&p.a, name, 2);
    assert_eq!(
        watchers(&ceph, "rbdg-disk").len(),
        1,
        "one client has the image"
    );

    // A volume a running guest has open is not deleted; once the guest
    // is gone it goes.
    let busy = p.b.fails(&["vol-delete", "rbdg-disk", "--pool", RBD_POOL]);
    eprintln!("busy volume: {busy}");
    assert!(busy.contains("is open by one client"), "{busy}");
    p.a.ok(&["destroy", name]);
    // vol-resize: growing is plain, shrinking needs --shrink.
    let e =
        p.b.fails(&["vol-resize", "rbdg-disk", "8M", "--pool", RBD_POOL]);
    assert!(e.contains("--shrink"), "{e}");
    p.b.ok(&[
        "vol-resize",
        "rbdg-disk",
        "16M",
        "--pool",
        RBD_POOL,
        "--delta",
    ]);
    let info =
        p.a.ok(&["vol-info", "rbdg-disk", "--pool", RBD_POOL, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["capacity"], 32 << 20, "{info}");
    p.a.ok(&[
        "vol-resize",
        "rbdg-disk",
        "24M",
        "--pool",
        RBD_POOL,
        "--shrink",
    ]);
    let info =
        p.b.ok(&["vol-info", "rbdg-disk", "--pool", RBD_POOL, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["capacity"], 24 << 20, "{info}");
    p.a.ok(&["vol-delete", "rbdg-disk", "--pool", RBD_POOL]);
    let vols = p.b.ok(&["vol-list", RBD_POOL]);
    assert!(!vols.contains("rbdg-disk"), "{vols}");
}

/// Issue 21: a `<disk type='network'>` on RBD with `<auth>` defines,
/// starts and prints back as written; a migration to a host that lacks the
/// secret is refused before anything starts there, naming the secret and
/// the commands that fix it, and the guest carries on on A; a wrong key is
/// refused at start with Ceph's answer.
#[test]
fn an_rbd_network_disk_needs_its_secret_on_both_hosts() {
    if skip_without_ceph("an_rbd_network_disk_needs_its_secret_on_both_hosts") {
        return;
    }
    let ceph = CephCluster::start();
    let p = HostPair::start("rbdsec", &[], &[]);
    define_secret(&p.a, &ceph.key(QEMU_ID));
    let name = "rbdnet";
    ceph.rbd_ok(
        "admin",
        &["create", "--size", "16", &format!("{POOL}/rbdnet-disk")],
    );
    define_guest_with_disk(
        &p.a,
        name,
        "tern.mem=32 tern.dirty=5",
        4,
        &network_disk_xml(&ceph, "rbdnet-disk", "vda"),
    );
    let dump = p.a.ok(&["dumpxml", name]);
    for needle in [
        format!("<source protocol='rbd' name='{POOL}/rbdnet-disk'>"),
        format!("<host name='127.0.0.1' port='{}'/>", ceph.mon_ports().v1),
        format!("<auth username='{QEMU_ID}'>"),
        format!("<secret type='ceph' usage='{SECRET_USAGE}'/>"),
    ] {
        assert!(dump.contains(&needle), "{needle} missing from\n{dump}");
    }
    p.a.ok(&["start", name]);
    wait_disk_ok(&p.a, name, 2);

    let out = p.migrate(Which::A, name, &["--live", "--verbose"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "migrated to a host without the secret"
    );
    eprintln!("refused as: {err}");
    for needle in [SECRET_USAGE, "tern secret-define", "tern secret-set-value"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert_eq!(p.qemu_counts(), (1, 0), "B started something");
    wait_disk_ok(&p.a, name, 1);

    // A wrong key: the guest does not start, and says why.
    p.a.ok(&["destroy", name]);
    define_secret(&p.a, "AQBzpXBnAAAAABAAp1Yp+eFmiQzLbdh4vDlzSg==");
    let err = p.a.fails(&["start", name]);
    eprintln!("wrong key: {err}");
    assert!(err.contains("vda") || err.contains("rbd"), "{err}");
    assert_eq!(p.qemu_counts(), (0, 0));
}

/// Issue 21: an RBD network disk with `<auth>` hot-plugged into a running
/// guest gets its key as a QEMU secret object (added over QMP from a file
/// QEMU reads once, never on a command line); the guest finds the disk and
/// writes and verifies it, and keeps doing so after a live migration to a
/// host that has the secret too.
#[test]
fn a_hot_plugged_rbd_disk_gets_its_key_and_migrates() {
    if skip_without_ceph("a_hot_plugged_rbd_disk_gets_its_key_and_migrates") {
        return;
    }
    let ceph = CephCluster::start();
    let key = ceph.key(QEMU_ID);
    let p = HostPair::start("rbdhp", &[], &[]);
    for h in [&p.a, &p.b] {
        define_secret(h, &key);
    }
    let name = "rbdhp";
    define_guest_with_disk(&p.a, name, "tern.mem=32 tern.disk_hotplug=1", 4, "");
    p.a.ok(&["start", name]);
    tern_testkit::pair::wait_ready(&p.a, name, 3);
    ceph.rbd_ok(
        "admin",
        &["create", "--size", "16", &format!("{POOL}/rbdhp-disk")],
    );
    let xml = p.a.state_dir().with_file_name("vda.xml");
    std::fs::write(&xml, network_disk_xml(&ceph, "rbdhp-disk", "vda")).unwrap();
    let out =
        p.a.ok(&["attach-device", name, xml.to_str().unwrap(), "--live"]);
    assert!(out.contains("attached successfully"), "{out}");
    wait_disk_ok(&p.a, name, 2);
    for c in qemu_cmdlines(&p.a) {
        assert!(!c.contains(&key), "the key is on QEMU's command line");
    }

    let m = p.migrate(Which::A, name, &["--live"]);
    assert!(
        m.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&m.stderr),
        p.events(name)
    );
    p.wait_settled_on(Which::B, name, std::time::Duration::from_secs(60));
    wait_disk_ok(&p.b, name, 2);
    p.assert_guest_whole_on(Which::B, name);
    assert_eq!(watchers(&ceph, "rbdhp-disk").len(), 1);
    let dump = p.b.ok(&["dumpxml", name]);
    assert!(
        dump.contains(&format!("<auth username='{QEMU_ID}'>")),
        "{dump}"
    );
}

/// Sends a Prepare request straight to `h`'s agent, as a source agent
/// would (the testkit library has no API client); the agent's answer, or its error as text.
pub fn raw_prepare(
    h: &tern_testkit::TernHost,
    req: tern_migrate::protocol::PrepareRequest,
) -> Result<tern_migrate::protocol::PrepareReply, String> {
    use tern_api::{Client, MigrationRequest, Request};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(Client::unix(h.socket()).call(&Request::Migration(
        MigrationRequest::MigratePrepare { req },
    )))
    .map_err(|e| e.to_string())
}

/// Issue 21: an RBD disk is identified by its cluster's fsid. A source
/// whose view of the guest's RBD disk is another Ceph cluster (another
/// fsid for the same monitors' pool and image names) is refused at
/// Prepare, naming the disk and both clusters, before anything starts.
#[test]
fn a_destination_whose_monitors_are_another_cluster_is_refused_by_fsid() {
    let test = "a_destination_whose_monitors_are_another_cluster_is_refused_by_fsid";
    if skip_without_ceph(test) {
        return;
    }
    let ceph = CephCluster::start();
    let h = tern_testkit::TernHost::start("rbdfsid");
    add_rbd_pool(&h, &ceph);
    h.ok(&["vol-create-as", RBD_POOL, "fsid-disk", "16M"]);
    // The pool reports its cluster's fsid (what the scheduler compares).
    let info: serde_json::Value =
        serde_json::from_str(&h.ok(&["pool-info", RBD_POOL, "--json"])).expect("pool-info json");
    assert_eq!(info["ceph_fsid"], ceph.fsid(), "{info}");
    let xml = guest_xml_with_disk(
        "fsidvm",
        "tern.mem=16",
        4,
        &volume_disk_xml("fsid-disk", "vda"),
    );
    let domain = tern_model::xml::parse_domain(&xml).expect("guest XML");
    let other = "0f0e0d0c-0b0a-4090-8070-605040302010";
    let req = tern_migrate::protocol::PrepareRequest {
        version: tern_migrate::protocol::PROTOCOL_VERSION,
        id: uuid::Uuid::new_v4(),
        domain,
        options: tern_migrate::MigrateOptions {
            live: true,
            ..Default::default()
        },
        source_host: "elsewhere".into(),
        disks: vec![],
        files: vec![],
        source_uri: None,
        source_name: None,
        source_tls_identity: None,
        source_nvram_dir: None,
        source_ceph_fsids: [("vda".to_string(), other.to_string())].into(),
        source_addresses: Vec::new(),
    };
    let e = raw_prepare(&h, req).expect_err("another cluster's disk was accepted");
    assert!(
        e.contains("disk 'vda'") && e.contains(other) && e.contains(ceph.fsid()),
        "{e}"
    );
    assert!(h.qemu_pids().is_empty(), "a QEMU started");
    assert!(!h.ok(&["list", "--all"]).contains("fsidvm"));
}
