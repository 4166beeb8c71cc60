//! The tunnel end to end on loopback: real TLS, real unix sockets, a
//! stand-in for the destination QEMU that checks what arrives.

use super::*;
use std::sync::Mutex;
use tern_migrate::protocol::StreamKind;
use tern_pki::{init_ca, issue_client, issue_server, PkiDir, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use uuid::Uuid;

struct Fixture {
    tmp: tempfile::TempDir,
    ca: PkiDir,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let ca = PkiDir::new(tmp.path().join("ca"));
    let v = Validity::days(1).unwrap();
    init_ca(&ca, "Tern test CA", v).unwrap();
    issue_server(&ca, &ca, "127.0.0.1", v).unwrap();
    issue_client(&ca, &ca, "host-a", v).unwrap();
    Fixture { tmp, ca }
}

fn recorder() -> (EventSink, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (Arc::new(move |m| l.lock().unwrap().push(m)), log)
}

/// A stand-in destination QEMU: for every connection, reads until EOF and
/// answers with the byte count and a sum of the bytes.
fn sink(path: &std::path::Path) {
    let l = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let (mut n, mut sum) = (0u64, 0u64);
                loop {
                    let r = s.read(&mut buf).await.unwrap();
                    if r == 0 {
                        break;
                    }
                    n += r as u64;
                    sum = buf[..r]
                        .iter()
                        .fold(sum, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
                }
                s.write_all(format!("{n} {sum}").as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(i as u8 >> 3))
        .collect()
}

fn expected(d: &[u8]) -> String {
    let sum = d
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    format!("{} {sum}", d.len())
}

/// Sends `d` through the source socket and returns the sink's answer.
async fn send(path: &std::path::Path, d: &[u8]) -> String {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(d).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

struct Ends {
    inbound: Inbound,
    remote: Remote,
    src_sock: std::path::PathBuf,
    client: Arc<rustls::ClientConfig>,
}

async fn ends(f: &Fixture, id: Uuid, gate: Gate, events: EventSink) -> Ends {
    let qemu = f
        .tmp
        .path()
        .join(format!("dst-{}.sock", Uuid::new_v4().simple()));
    sink(&qemu);
    let inbound = Inbound::bind(
        "127.0.0.1",
        [0u16],
        tern_pki::server_config(&f.ca).unwrap(),
        id,
        Routes {
            memory: Some(qemu),
            nbd: None,
        },
        gate,
        events,
    )
    .await
    .unwrap();
    Ends {
        remote: Remote {
            host: "127.0.0.1".into(),
            port: inbound.port(),
            server_name: "127.0.0.1".into(),
        },
        inbound,
        src_sock: f.tmp.path().join("src.sock"),
        client: tern_pki::client_config(&f.ca).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_every_byte_both_ways_in_parallel() {
    let f = fixture();
    let id = Uuid::new_v4();
    let (ev, log) = recorder();
    let e = ends(&f, id, Arc::new(|cn| cn == Some("host-a")), ev.clone()).await;
    let out =
        Outbound::listen(&e.src_sock, StreamKind::Memory, &e.remote, e.client, id, ev).unwrap();
    // Five streams at once, as QEMU opens with --parallel 4.
    let tasks: Vec<_> = (0..5u8)
        .map(|i| {
            let p = e.src_sock.clone();
            tokio::spawn(async move {
                let d = data((3 << 20) + i as usize * 4099, i + 1);
                assert_eq!(send(&p, &d).await, expected(&d));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // An empty stream ends cleanly too.
    assert_eq!(send(&e.src_sock, &[]).await, "0 0");
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    // Counters settle when both ends of every stream have closed.
    for stats in [out.stats(), e.inbound.stats()] {
        while stats.open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let (streams, up, _) = out.stats().totals();
    assert_eq!(streams, 6);
    assert!(up > 15 << 20);
    let (_, _, down) = e.inbound.stats().totals();
    assert_eq!(down, up);
    let path = out.path().to_path_buf();
    drop(out);
    assert!(!path.exists(), "the source socket was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_for_another_migration_or_kind_or_identity_are_refused() {
    let f = fixture();
    let id = Uuid::new_v4();
    let (ev, log) = recorder();
    let e = ends(&f, id, Arc::new(|cn| cn == Some("host-a")), ev.clone()).await;
    let refused = |p: std::path::PathBuf| async move {
        let mut s = UnixStream::connect(&p).await.unwrap();
        let _ = s.write_all(b"hello").await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    // Another migration id.
    let other = Outbound::listen(
        &e.src_sock,
        StreamKind::Memory,
        &e.remote,
        e.client.clone(),
        Uuid::new_v4(),
        ev.clone(),
    )
    .unwrap();
    assert!(refused(e.src_sock.clone()).await.is_empty());
    drop(other);
    // A kind this destination has no socket for.
    let nbd = Outbound::listen(
        &e.src_sock,
        StreamKind::Nbd,
        &e.remote,
        e.client.clone(),
        id,
        ev.clone(),
    )
    .unwrap();
    assert!(refused(e.src_sock.clone()).await.is_empty());
    drop(nbd);
    let msgs = log.lock().unwrap().clone();
    assert!(
        msgs.iter()
            .any(|m| m.contains("expects no tunnelled migration")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("no socket for this kind")),
        "{msgs:?}"
    );
    // An identity the gate refuses.
    let (ev2, log2) = recorder();
    let e2 = ends(&f, id, Arc::new(|_| false), ev2.clone()).await;
    let path = f.tmp.path().join("src2.sock");
    let _o = Outbound::listen(&path, StreamKind::Memory, &e2.remote, e2.client, id, ev2).unwrap();
    assert!(refused(path).await.is_empty());
    let msgs = log2.lock().unwrap().clone();
    assert!(
        msgs.iter()
            .any(|m| m.contains("may not migrate guests") && m.contains("host-a")),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| m.contains("access rules")), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_with_the_wrong_name_is_not_trusted() {
    let f = fixture();
    let id = Uuid::new_v4();
    let (ev, log) = recorder();
    let mut e = ends(&f, id, Arc::new(|_| true), ev.clone()).await;
    e.remote.server_name = "localhost".into();
    let _o =
        Outbound::listen(&e.src_sock, StreamKind::Memory, &e.remote, e.client, id, ev).unwrap();
    let mut s = UnixStream::connect(&e.src_sock).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let msgs = log.lock().unwrap().clone();
    assert!(
        msgs.iter()
            .any(|m| m.contains("not valid for the host name")),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn long_socket_paths_are_refused_clearly() {
    let f = fixture();
    let long = f.tmp.path().join("x".repeat(120));
    let remote = Remote {
        host: "127.0.0.1".into(),
        port: 1,
        server_name: "127.0.0.1".into(),
    };
    let (ev, _) = recorder();
    let e = Outbound::listen(
        &long,
        StreamKind::Memory,
        &remote,
        tern_pki::client_config(&f.ca).unwrap(),
        Uuid::nil(),
        ev,
    )
    .unwrap_err();
    assert!(e.to_string().contains("too long"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_keep_streams_out() {
    let f = fixture();
    let id = Uuid::new_v4();
    let (ev, _log) = recorder();
    let e = ends(&f, id, Arc::new(|cn| cn == Some("host-a")), ev.clone()).await;
    let out =
        Outbound::listen(&e.src_sock, StreamKind::Memory, &e.remote, e.client, id, ev).unwrap();
    // More silent connections than the listener takes in its handshakes
    // at once; a real stream opened after them still gets through.
    let mut silent = Vec::new();
    for _ in 0..700 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", e.remote.port))
                .await
                .unwrap(),
        );
    }
    let d = data(1 << 20, 7);
    assert_eq!(send(&e.src_sock, &d).await, expected(&d));
    // The oldest silent one is closed by the listener, not kept.
    let mut buf = [0u8; 1];
    let first = &mut silent[0];
    assert_eq!(first.read(&mut buf).await.unwrap_or(0), 0);
    drop(out);
}
