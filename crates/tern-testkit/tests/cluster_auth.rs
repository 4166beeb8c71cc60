//! The cluster on mutual TLS with real processes: `tern-controller`,
//! `ternd` agents and `tern`, each with certificates from the cluster's
//! `tern pki` CA (see `TestController`). Who gets in, what each identity
//! may do, and that a host's certificate is its name.

use std::process::Output;
use std::time::{Duration, Instant};
use tern_testkit::pki::TestPki;
use tern_testkit::{HostOptions, TernHost, TestController};

const LONG: Duration = Duration::from_secs(60);

fn stderr_of_failure(o: Output, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what} should have been refused but printed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_log(c: &TestController, what: &str, needle: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let log = std::fs::read_to_string(&c.log).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; controller log:\n{}",
            tern_testkit::tail(&log, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clients_without_a_certificate_of_the_cluster_ca_are_refused() {
    let c = TestController::file(&[]);
    // The operator gets in.
    c.ok(&["host-list"]);
    // No certificate at all: the client cannot even load one.
    let empty = tempfile::tempdir().unwrap();
    let e = stderr_of_failure(c.tern_as(empty.path(), &["host-list"]), "no certificate");
    assert!(
        e.contains("cannot set up TLS") || e.contains("certificate"),
        "{e}"
    );
    // A certificate of another CA with the same names.
    let other = TestPki::new();
    let dir = other.client("admin", "admin");
    // Trust the cluster's CA for the server, present the foreign client cert.
    std::fs::copy(c.pki.ca().join("cacert.pem"), dir.join("cacert.pem")).unwrap();
    let e = stderr_of_failure(c.tern_as(&dir, &["host-list"]), "foreign CA");
    assert!(e.contains("not signed by the server's CA"), "{e}");
    // Plain HTTP to the TLS port gets nothing.
    let plain = c.url.replace("https://", "http://");
    let o = std::process::Command::new(tern_testkit::bin("tern"))
        .args(["--controller", &plain, "host-list"])
        .output()
        .unwrap();
    stderr_of_failure(o, "plain HTTP");
}

#[test]
fn read_only_and_host_identities_cannot_migrate_or_evacuate() {
    let c = TestController::file(&[]);
    let a = TestController::host(&[&c], "a", &[]);
    c.wait_json(&["host-list"], LONG, "host a", |v| {
        v.as_array().is_some_and(|h| h.len() == 1)
    });
    let viewer = c.pki.dir("viewer");
    let list = c.tern_as(&viewer, &["host-list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    for verb in [
        &["server-live-migrate", "vm"][..],
        &["server-migrate", "vm"][..],
        &["host-maintenance", "a"][..],
        &[
            "host-auto-migrate-on-host-down",
            "a",
            "--auto-migrate-on-host-down",
            "enable",
        ][..],
    ] {
        let e = stderr_of_failure(c.tern_as(&viewer, verb), verb[0]);
        assert!(e.contains("read-only identity"), "{verb:?}: {e}");
    }
    // A host's own certificate (the agent's) cannot act as an operator.
    let host_dir = a.opts.pki_dir.clone().unwrap();
    let e = stderr_of_failure(
        c.tern_as(&host_dir, &["host-maintenance", "a"]),
        "host-maintenance with a host certificate",
    );
    assert!(e.contains("host certificate"), "{e}");
    assert_eq!(c.json(&["host-show", "a"])["maintenance"], false);
    // On a peer's agent, a host certificate reads and receives migrations
    // only: it cannot make the peer send its guests away or stop them.
    let b_dir = c.pki.cluster_agent("peer-b", "127.0.0.1", "b");
    let uri = a.tls_uri(&b_dir);
    let o = tern_testkit::tern_at(&uri, &["list", "--all"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for verb in [
        &["destroy", "vm"][..],
        &[
            "migrate",
            "--p2p",
            "--live",
            "vm",
            "tern+tls://127.0.0.1:1/system",
        ][..],
    ] {
        let e = stderr_of_failure(tern_testkit::tern_at(&uri, verb), verb[0]);
        assert!(
            e.contains("may only read and receive migrations"),
            "{verb:?}: {e}"
        );
    }
}

#[test]
fn an_agent_with_host_as_certificate_cannot_report_as_b() {
    let c = TestController::file(&[]);
    let a = TestController::host(&[&c], "a", &[]);
    // An impostor: host a's certificate, claiming to be b.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", tern_testkit::free_port())
        .parse()
        .unwrap();
    let dir = c.pki.cluster_agent("impostor", "127.0.0.1", "a");
    let _b = TernHost::start_with(HostOptions {
        name: "impostor".into(),
        listen_tls: Some(addr),
        pki_dir: Some(dir),
        extra_args: vec![
            "--controller".into(),
            c.url.clone(),
            "--host-name".into(),
            "b".into(),
        ],
        ..Default::default()
    });
    wait_log(
        &c,
        "the impostor's refusal",
        "belongs to host 'a' and cannot speak for host 'b'",
    );
    let hosts = c.json(&["host-list"]);
    let names: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["report"]["name"].as_str())
        .collect();
    assert_eq!(names, ["a"], "{hosts:#}");
    drop(a);
}

/// `curl` against the console with the certificates of `pki_dir` (none
/// when `None`): POST `path` with `body`, cookies in `jar`; (status, body).
fn console_curl(
    c: &TestController,
    base: &str,
    pki_dir: Option<&std::path::Path>,
    jar: &std::path::Path,
    path: &str,
    body: &str,
) -> (u16, String) {
    let ca = c.pki.ca().join("cacert.pem");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .arg("-b")
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args([
            "-H",
            "X-Tern-Console: 1",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-X", "POST", "--data", body]);
    if let Some(d) = pki_dir {
        cmd.arg("--cert")
            .arg(d.join("clientcert.pem"))
            .arg("--key")
            .arg(d.join("private/clientkey.pem"));
    }
    let o = cmd.arg(format!("{base}{path}")).output().expect("run curl");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_console_logs_in_with_the_clusters_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users");
    tern_testkit::console_passwd(&users, "pw-user", "ro", "pw");
    let listen = format!("127.0.0.1:{}", tern_testkit::free_port());
    let c = TestController::file(&[
        "--console-listen",
        &listen,
        "--console-users",
        users.to_str().unwrap(),
        "--console-tls",
    ]);
    let base = format!("https://{listen}");
    let evacuate = "/v1/hosts/nowhere/maintenance";
    let jar = |n: &str| tmp.path().join(n);

    // An operator certificate opens a read-write session.
    let admin = c.pki.dir("admin");
    let (st, body) = console_curl(&c, &base, Some(&admin), &jar("a"), "/api/login-cert", "{}");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("read-write"), "{body}");
    let (st, body) = console_curl(&c, &base, Some(&admin), &jar("a"), evacuate, "");
    assert!(body.contains("no host 'nowhere'"), "{st} {body}");

    // A read-only one a read-only session: acting is refused.
    let viewer = c.pki.dir("viewer");
    let (st, body) = console_curl(&c, &base, Some(&viewer), &jar("v"), "/api/login-cert", "{}");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("read-only"), "{body}");
    let (st, body) = console_curl(&c, &base, Some(&viewer), &jar("v"), evacuate, "");
    assert_eq!(st, 403, "{body}");

    // A host certificate, or none, opens nothing.
    let host = c.pki.cluster_agent("console-host", "127.0.0.1", "h1");
    let (st, body) = console_curl(&c, &base, Some(&host), &jar("h"), "/api/login-cert", "{}");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("host certificate"), "{body}");
    let (st, body) = console_curl(&c, &base, None, &jar("n"), "/api/login-cert", "{}");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("no client certificate"), "{body}");
    // Passwords still work without a certificate.
    let (st, body) = console_curl(
        &c,
        &base,
        None,
        &jar("p"),
        "/api/login",
        r#"{"user":"pw-user","password":"pw"}"#,
    );
    assert_eq!(st, 200, "{body}");
}

/// `--migration-tls` covers cold copies: a stopped server whose disk is in
/// a local pool moves to b over TLS streams that only a's host certificate
/// may open, and the copy equals the disk.
#[test]
fn the_migration_tls_setting_sends_cold_copies_over_tls() {
    use tern_testkit::cluster::wait_server;
    use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, TestDisk};
    let c = TestController::file(&["--migration-tls"]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    a.add_pool("images", da.path(), false);
    b.add_pool("images", db.path(), false);
    let disk = da.path().join("cold.raw");
    tern_testkit::fixtures::write_random(&disk, 8, 15, None);
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new("cold", &img);
    spec.disks.push(TestDisk {
        path: disk.clone(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    a.define_guest(&spec);
    wait_server(&c, "cold", "a", "ready");
    // Both hosts have reported their pools running (the scheduler checks
    // room: a report taken between pool-define and pool-start says 0 free,
    // and a full run once migrated on that one).
    c.wait_json(&["host-list"], LONG, "two hosts with their pools", |v| {
        v.as_array().is_some_and(|h| {
            h.len() == 2
                && h.iter().all(|h| {
                    h["report"]["pools"].as_array().is_some_and(|p| {
                        !p.is_empty() && p.iter().all(|p| p["available"].as_u64() > Some(0))
                    })
                })
        })
    });
    let before = std::fs::read(&disk).unwrap();
    c.ok(&["server-migrate", "cold", "--wait"]);
    wait_server(&c, "cold", "b", "ready");
    assert!(
        std::fs::read(db.path().join("cold.raw")).unwrap() == before,
        "the copy differs from the disk"
    );
    let ev = b.ok(&["domjobevents", "cold"]);
    assert!(
        ev.contains("cold copy over TLS: only O=Tern,OU=Tern hosts,CN=a may send"),
        "{ev}"
    );
}
