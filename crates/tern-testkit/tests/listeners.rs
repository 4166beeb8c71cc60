//! The controller's API listener under silent connections (issue 15,
//! "idle and header timeouts on every listener"): a connection that never
//! handshakes is closed, an authenticated one that never sends a request
//! is closed after `--idle-timeout`, and a flood of silent connections
//! neither stops listing nor a live migration the controller runs.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use tern_testkit::cluster::{boot_on_pool, more_heartbeats, shared_pool, wait_server, LONG};
use tern_testkit::flood::{wait_closed_by_server, Flood};
use tern_testkit::TestController;
use tokio::io::AsyncReadExt;

fn api_addr(c: &TestController) -> SocketAddr {
    c.url.trim_start_matches("https://").parse().unwrap()
}

/// Completes a TLS handshake with the operator certificate, then says
/// nothing; returns once the controller has closed the connection.
fn idle_after_handshake(c: &TestController) {
    let pki = tern_pki::PkiDir::new(c.pki.dir("admin"));
    let config = tern_pki::tls::client_config(&pki).expect("client config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(api_addr(c)).await.unwrap();
        let name = tern_pki::tls::server_name("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(name, tcp)
            .await
            .expect("the operator's handshake");
        let mut buf = [0u8; 64];
        // Bounded only so a broken server fails the test instead of hanging it.
        let r = tokio::time::timeout(LONG, tls.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "the controller kept an idle authenticated connection open: {r:?}"
        );
    });
}

#[test]
fn silent_connections_are_closed_and_a_flood_stops_neither_listing_nor_migration() {
    let c = TestController::file(&["--idle-timeout", "3", "--max-anonymous-clients", "20"]);
    // No handshake at all: closed by the handshake limit.
    wait_closed_by_server(TcpStream::connect(api_addr(&c)).unwrap(), LONG);
    // Handshake, then silence: closed by the idle timeout.
    idle_after_handshake(&c);

    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    boot_on_pool(&a, "vm1", "shared");
    wait_server(&c, "vm1", "a", "running");

    // Silent connections keep coming while the agents heartbeat, an
    // operator lists, and the controller migrates.
    let flood = Flood::start(api_addr(&c), 64);
    let log = std::fs::read_to_string(&c.log).unwrap_or_default().len();
    tern_testkit::cluster::wait_log(&c.log, log, "dropping the oldest");
    let hosts = c.json(&["host-list"]);
    assert_eq!(hosts.as_array().map(|h| h.len()), Some(2), "{hosts}");
    c.ok(&["server-live-migrate", "vm1", "--wait"]);
    let s = wait_server(&c, "vm1", "b", "running");
    assert_eq!(s["error"], serde_json::Value::Null);
    more_heartbeats(&b, "vm1", 3);
    assert!(flood.opened() > 20, "the flood opened {}", flood.opened());
    // Both hosts stayed online through it (their heartbeats got in).
    let hosts = c.json(&["host-list"]);
    for h in hosts.as_array().unwrap() {
        assert_eq!(h["status"], "online", "{hosts}");
    }
    drop(flood);
}
