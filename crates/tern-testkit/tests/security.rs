//! Security of the host API with real parts: mutual TLS between real
//! `tern` and `ternd` processes, read-only identities, libvirtd-style
//! limits under a flood of connections that never handshake, and the
//! `tern+ssh://` transport through a real sshd on loopback.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tern_testkit::pki::TestPki;
use tern_testkit::sshd::Sshd;
use tern_testkit::{
    build_or_reuse, free_port, tern_at, BuildOptions, GuestSpec, HostOptions, SerialLog, TernHost,
};

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: Output, what: &str) -> String {
    assert!(
        !o.status.success(),
        "{what} should have failed but printed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tls_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A host serving TLS with its own server and client certificates.
fn tls_host(pki: &TestPki, name: &str, config: &str) -> TernHost {
    let dir = pki.agent(name, "127.0.0.1", &format!("host-{name}"));
    TernHost::start_with(HostOptions {
        name: name.into(),
        listen_tls: Some(tls_addr()),
        pki_dir: Some(dir),
        config: Some(config.into()),
        ..Default::default()
    })
}

fn srv_info(uri: &str) -> serde_json::Value {
    serde_json::from_str(&ok(tern_at(uri, &["srv-info", "--json"]), "srv-info")).unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn boot(host: &TernHost, name: &str, workload: &str) {
    let img = build_or_reuse(&BuildOptions::default()).expect("build the test guest");
    host.define_guest(&GuestSpec::new(name, &img).workload(workload));
    host.ok(&["start", name]);
    host.wait_console(name, Duration::from_secs(90), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
}

#[test]
fn tls_refuses_missing_foreign_and_expired_certificates() {
    let pki = TestPki::new();
    let host = tls_host(&pki, "tlsref", "");
    let admin = pki.client("admin", "admin");

    // A good certificate gets in, and the agent knows it by its CN.
    let info = srv_info(&host.tls_uri(&admin));
    assert_eq!(info["identity"], "admin");
    assert_eq!(info["read_only"], false);
    ok(tern_at(&host.tls_uri(&admin), &["list", "--all"]), "list");
    // Without ?pkipath=, TERN_PKI_DIR names the certificates.
    let addr = host.opts.listen_tls.unwrap();
    let o = Command::new(tern_testkit::bin("tern"))
        .args(["-c", &format!("tern+tls://{addr}/system"), "srv-info"])
        .env("TERN_PKI_DIR", &admin)
        .output()
        .unwrap();
    assert!(ok(o, "srv-info with TERN_PKI_DIR").contains("admin"));

    // No certificate: the client cannot even offer one, and says so.
    let bare = pki.dir("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(admin.join("cacert.pem"), bare.join("cacert.pem")).unwrap();
    let e = fails(
        tern_at(&host.tls_uri(&bare), &["list"]),
        "list without a cert",
    );
    assert!(
        e.contains("clientcert.pem") && e.contains("tern pki"),
        "{e}"
    );
    // ...and a TLS client that connects without one is refused by the server.
    let e = handshake_without_certificate(&admin, host.opts.listen_tls.unwrap());
    assert!(e.contains("requires a client certificate"), "{e}");

    // A certificate from another CA.
    let other = TestPki::new();
    let mallory = other.client("mallory", "mallory");
    std::fs::copy(admin.join("cacert.pem"), mallory.join("cacert.pem")).unwrap();
    let e = fails(
        tern_at(&host.tls_uri(&mallory), &["list"]),
        "list, other CA",
    );
    assert!(e.contains("not signed by the server's CA"), "{e}");

    // An expired certificate from the right CA.
    let old = pki.dir("old");
    tern_pki::issue_client(
        &tern_pki::PkiDir::new(pki.ca()),
        &tern_pki::PkiDir::new(&old),
        "admin",
        tern_pki::Validity::expired(3),
    )
    .unwrap();
    let e = fails(tern_at(&host.tls_uri(&old), &["list"]), "list, expired");
    assert!(e.contains("has expired"), "{e}");

    // The server's certificate is checked too: dialled by another name.
    let uri = host.tls_uri(&admin).replace("127.0.0.1", "localhost");
    let e = fails(tern_at(&uri, &["list"]), "list via a name not in the cert");
    assert!(e.contains("not valid for the host name"), "{e}");

    let log = std::fs::read_to_string(host.log()).unwrap();
    for reason in [
        "the client presented no certificate",
        "the client's certificate is not signed by the trusted CA",
        "the client's certificate has expired",
    ] {
        assert!(log.contains(reason), "agent log lacks '{reason}':\n{log}");
    }
}

/// Handshakes without a client certificate and returns the client-side
/// explanation of the refusal.
fn handshake_without_certificate(pki: &Path, addr: SocketAddr) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tern_pki::PkiDir::new(pki);
        let cfg = std::sync::Arc::new(
            tern_pki::tls::client_builder(&dir)
                .unwrap()
                .with_no_client_auth(),
        );
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = tern_pki::tls::server_name("127.0.0.1").unwrap();
        let why = |e: std::io::Error| {
            tern_pki::explain_tls_failure(&e, tern_pki::tls::Side::Client)
                .unwrap_or_else(|| e.to_string())
        };
        let mut s = match tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
        {
            Ok(s) => s,
            Err(e) => return why(e),
        };
        if let Err(e) = s.write_all(b"POST /api/v1/call HTTP/1.1\r\n\r\n").await {
            return why(e);
        }
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf).await {
            Ok(_) => format!("not refused: {}", String::from_utf8_lossy(&buf)),
            Err(e) => why(e),
        }
    })
}

#[test]
fn read_only_identities_list_but_cannot_start_destroy_or_migrate() {
    let pki = TestPki::new();
    let host = tls_host(
        &pki,
        "ro",
        "tls_allowed_dn_list = [\"admin\"]\ntls_readonly_dn_list = [\"monitor\"]\n",
    );
    let admin = pki.client("admin", "admin");
    let monitor = pki.client("monitor", "monitor");
    let stranger = pki.client("stranger", "stranger");
    boot(&host, "ro1", "tern.mem=16 tern.dirty=0");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    host.define_guest(&GuestSpec::new("ro2", &img));

    for uri in [host.tls_uri(&monitor), host.uri_ro()] {
        let list = ok(tern_at(&uri, &["list", "--all"]), "read-only list");
        assert!(list.contains("ro1") && list.contains("ro2"), "{list}");
        ok(tern_at(&uri, &["dominfo", "ro1"]), "read-only dominfo");
        ok(tern_at(&uri, &["dumpxml", "ro1"]), "read-only dumpxml");
        ok(
            tern_at(&uri, &["domjobinfo", "ro1"]),
            "read-only domjobinfo",
        );
        ok(tern_at(&uri, &["nodeinfo"]), "read-only nodeinfo");
        ok(
            tern_at(&uri, &["pool-list", "--all"]),
            "read-only pool-list",
        );
        for args in [
            vec!["start", "ro2"],
            vec!["destroy", "ro1"],
            vec!["suspend", "ro1"],
            vec!["undefine", "ro2"],
            vec![
                "migrate",
                "--live",
                "ro1",
                "tern+unix:///system?socket=/nonexistent",
            ],
            vec![
                "migrate",
                "--live",
                "--p2p",
                "ro1",
                "tern+tcp://127.0.0.1:1/system",
            ],
        ] {
            let e = fails(tern_at(&uri, &args), &args.join(" "));
            assert!(
                e.contains("operation forbidden: read-only connection"),
                "{}: {e}",
                args.join(" ")
            );
        }
        let info = srv_info(&uri);
        assert_eq!(info["read_only"], true, "{info}");
    }
    // Nothing changed.
    assert_eq!(host.ok(&["domstate", "ro1"]).trim(), "running");
    assert_eq!(host.ok(&["domstate", "ro2"]).trim(), "shut off");

    // A name outside the allowed list gets nothing, with the reason.
    let e = fails(
        tern_at(&host.tls_uri(&stranger), &["list"]),
        "stranger list",
    );
    assert!(
        e.contains("'stranger'") && e.contains("tls_allowed_dn_list"),
        "{e}"
    );
    // The read-write identity may.
    ok(
        tern_at(&host.tls_uri(&admin), &["destroy", "ro1"]),
        "admin destroy",
    );
}

#[test]
fn unauthenticated_flood_does_not_stop_listing_or_p2p_migration() {
    let pki = TestPki::new();
    let limits = "max_clients = 40\nmax_anonymous_clients = 4\nauth_timeout = 600\n\
                  tls_allowed_dn_list = [\"admin\", \"host-*\"]\n";
    let a = tls_host(&pki, "flooda", limits);
    let b = tls_host(&pki, "floodb", limits);
    let admin = pki.client("admin", "admin");
    boot(&a, "fl1", "tern.mem=32 tern.dirty=2");

    // 60 connections to each TLS port that never say a word.
    let flood: Vec<TcpStream> = [&a, &b]
        .iter()
        .flat_map(|h| {
            let addr = h.opts.listen_tls.unwrap();
            (0..60).map(move |_| TcpStream::connect(addr).expect("flood connect"))
        })
        .collect();
    for h in [&a, &b] {
        wait_until(
            "the anonymous pool to fill",
            Duration::from_secs(30),
            || srv_info(&h.uri())["anonymous_clients"] == 4,
        );
    }
    // The oldest flooders were pushed out; the newest 4 per host hold the slots.
    let mut first = &flood[0];
    let mut buf = [0u8; 1];
    assert_eq!(
        first.read(&mut buf).unwrap_or(0),
        0,
        "displaced flooder still open"
    );

    // An authenticated client still lists, on both hosts...
    for h in [&a, &b] {
        let list = ok(
            tern_at(&h.tls_uri(&admin), &["list", "--all"]),
            "list under flood",
        );
        assert!(list.contains("Name"), "{list}");
    }
    // ...and migrates peer to peer over mutual TLS: the source agent
    // presents its own client certificate (host-flooda) to the destination.
    let dest = format!(
        "tern+tls://127.0.0.1:{}/system",
        b.opts.listen_tls.unwrap().port()
    );
    ok(
        tern_at(
            &a.tls_uri(&admin),
            &["migrate", "--live", "--p2p", "fl1", &dest],
        ),
        "p2p migration over TLS under flood",
    );
    wait_until(
        "the guest to run on the destination",
        Duration::from_secs(90),
        || b.ok(&["domstate", "fl1", "--reason"]).trim() == "running (migrated)",
    );
    let text = b.wait_console("fl1", Duration::from_secs(60), "heartbeats", |t| {
        SerialLog::parse(t).heartbeats.len() >= 3
    });
    assert!(SerialLog::parse(&text).failures.is_empty());
    let blog = std::fs::read_to_string(b.log()).unwrap();
    assert!(
        blog.contains("identity=host-flooda"),
        "destination never saw the source's certificate"
    );
    drop(flood);
}

#[test]
fn priority_workers_serve_destroy_and_domjobabort_when_workers_are_busy() {
    let host = TernHost::start_with(HostOptions {
        name: "prio".into(),
        config: Some("max_workers = 1\nprio_workers = 1\n".into()),
        ..Default::default()
    });
    boot(&host, "pr1", "tern.mem=16 tern.dirty=0 tern.ignore_acpi=1");
    // The guest ignores the power button: this shutdown holds the only
    // ordinary worker until it times out or the guest goes away.
    let shutdown = Command::new(tern_testkit::bin("tern"))
        .args(["-c", &host.uri(), "shutdown", "pr1", "--timeout", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "the only worker to be busy",
        Duration::from_secs(30),
        || srv_info(&host.uri())["workers_busy"] == 1,
    );
    let e = host.fails(&["domjobabort", "pr1"]);
    assert!(e.contains("no migration job"), "{e}");
    host.ok(&["destroy", "pr1"]);
    let out = shutdown.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.ok(&["domstate", "pr1"]).trim(), "shut off");
}

#[test]
fn ssh_transport_lists_and_starts_a_domain() {
    let sshd = Sshd::start();
    let host = TernHost::start("ssh");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    host.define_guest(&GuestSpec::new("ssh1", &img).workload("tern.mem=16 tern.dirty=0"));
    let uri = sshd.uri(&host.socket());
    let list = tern_at(&uri, &["list", "--all"]);
    let list = ok(list, &format!("list over ssh (sshd log: {})", sshd.log()));
    assert!(list.contains("ssh1") && list.contains("shut off"), "{list}");
    ok(tern_at(&uri, &["start", "ssh1"]), "start over ssh");
    host.wait_console("ssh1", Duration::from_secs(90), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    assert_eq!(
        ok(tern_at(&uri, &["domstate", "ssh1"]), "domstate").trim(),
        "running"
    );
    // Through the read-only socket, the same user may only read.
    let ro = sshd.uri(&host.socket_ro());
    let e = fails(tern_at(&ro, &["destroy", "ssh1"]), "destroy via -ro");
    assert!(e.contains("read-only connection"), "{e}");
    // A wrong key is refused with ssh's own words.
    let bad = uri.replace(&sshd.client_key().display().to_string(), "/nonexistent/key");
    let e = fails(tern_at(&bad, &["list"]), "list with a wrong key");
    assert!(e.contains("ssh connection to"), "{e}");
    ok(tern_at(&uri, &["destroy", "ssh1"]), "destroy over ssh");
}
