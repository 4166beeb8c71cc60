use super::*;

fn hello(len: usize) -> Vec<u8> {
    let mut v = vec![22, 3, 1, (len >> 8) as u8, len as u8, 1];
    v.resize(len + 5, 0);
    v
}

#[test]
fn a_tls_stream_passes_only_with_a_whole_client_hello() {
    assert_eq!(judge(&[], true), Verdict::Wait);
    assert_eq!(judge(&[22, 3], true), Verdict::Wait);
    let h = hello(300);
    assert_eq!(judge(&h[..100], true), Verdict::Wait);
    assert_eq!(judge(&h, true), Verdict::Pass);
    assert!(matches!(judge(b"GET / HTTP/1.1", true), Verdict::Refuse(_)));
    assert!(matches!(
        judge(&[22, 2, 0, 0, 1, 1], true),
        Verdict::Refuse(_)
    ));
    // A ServerHello, or a record of length 0.
    assert!(matches!(
        judge(&[22, 3, 3, 0, 4, 2], true),
        Verdict::Refuse(_)
    ));
    assert!(matches!(
        judge(&[22, 3, 3, 0, 0, 1], true),
        Verdict::Refuse(_)
    ));
    assert!(matches!(
        judge(&[22, 3, 3, 0xff, 0xff, 1], true),
        Verdict::Refuse(_)
    ));
}

#[test]
fn a_plain_stream_passes_with_its_first_byte() {
    assert_eq!(judge(&[], false), Verdict::Wait);
    assert_eq!(judge(b"QEVM", false), Verdict::Pass);
}

#[test]
fn only_the_source_hosts_addresses_are_admitted() {
    let p = Policy {
        tls: true,
        peers: vec!["10.0.0.1".parse().unwrap()],
        streams: 1,
        quiet_after_first: false,
    };
    assert!(p.admits("10.0.0.1".parse().unwrap()));
    assert!(p.admits("::ffff:10.0.0.1".parse().unwrap()));
    assert!(!p.admits("10.0.0.2".parse().unwrap()));
    let any = Policy { peers: vec![], ..p };
    assert!(any.admits("10.0.0.2".parse().unwrap()));
}

#[test]
fn this_host_has_its_loopback_address() {
    assert!(own_addresses().contains(&"127.0.0.1".parse().unwrap()));
}

/// A unix "QEMU" that echoes, behind a guard on loopback: a silent client
/// is closed, a client that sends is relayed both ways, the guard stops
/// after `streams`. Also prints the relay's throughput next to the same
/// sink reached straight over TCP and unix (figures, not assertions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_relays_talkers_and_closes_the_silent() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let s = s.unwrap();
            std::thread::spawn(move || sink(s));
        }
    });
    // The same sink on TCP: what QEMU was without the guard.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let s = s.unwrap();
            std::thread::spawn(move || sink(s));
        }
    });
    let policy = Policy {
        tls: false,
        peers: vec!["127.0.0.1".parse().unwrap()],
        streams: 1,
        quiet_after_first: false,
    };
    let events: Arc<dyn Fn(String) + Send + Sync> = Arc::new(|m| eprintln!("{m}"));
    let g = Guard::start(
        "127.0.0.1",
        0..=0,
        Target::Relay(path.clone()),
        policy,
        events,
    )
    .await
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], g.port()));
    let silent = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut b = [0u8; 1];
        s.read(&mut b).unwrap_or(0)
    });
    assert_eq!(silent.await.unwrap(), 0, "the silent client was not closed");
    let size: u64 = 256 << 20;
    let through = move |mut s: Box<dyn ReadWrite + Send>| {
        let chunk = vec![7u8; 1 << 20];
        let t = std::time::Instant::now();
        for _ in 0..(size >> 20) {
            s.write_all(&chunk).unwrap();
        }
        s.finish();
        let mut echo = [0u8; 16];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo[..8], &[7u8; 8]);
        assert_eq!(u64::from_be_bytes(echo[8..].try_into().unwrap()), size);
        size as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64
    };
    let guarded = tokio::task::spawn_blocking(move || {
        through(Box::new(std::net::TcpStream::connect(addr).unwrap()))
    })
    .await
    .unwrap();
    let p = path.clone();
    let direct = tokio::task::spawn_blocking(move || {
        through(Box::new(
            std::os::unix::net::UnixStream::connect(p).unwrap(),
        ))
    })
    .await
    .unwrap();
    let plain = tokio::task::spawn_blocking(move || {
        through(Box::new(std::net::TcpStream::connect(tcp_addr).unwrap()))
    })
    .await
    .unwrap();
    eprintln!(
        "256 MiB: TCP through the guard to the unix sink {guarded:.0} MiB/s; \
         TCP straight to the same sink {plain:.0} MiB/s; unix straight {direct:.0} MiB/s"
    );
    assert!(
        g.summary().contains("passed 1 stream(s)"),
        "{}",
        g.summary()
    );
    assert!(g.summary().contains("closed 1 other"), "{}", g.summary());
    // Only one stream was wanted: the guard no longer listens.
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the guard still listens"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}

/// A "QEMU" that echoes the first 8 bytes it reads and, at the end, how
/// many it read.
fn sink(mut s: impl std::io::Read + std::io::Write) {
    let mut buf = vec![0u8; 1 << 20];
    let mut first = true;
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            let _ = s.write_all(&total.to_be_bytes());
            return;
        }
        total += n as u64;
        if first {
            s.write_all(&buf[..n.min(8)]).unwrap();
            first = false;
        }
    }
}

trait ReadWrite: std::io::Read + std::io::Write {
    fn finish(&mut self);
}
impl ReadWrite for std::net::TcpStream {
    fn finish(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}
impl ReadWrite for std::os::unix::net::UnixStream {
    fn finish(&mut self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

/// Post-copy's preempt channel opens silently without TLS: only the
/// streams after the first may, and never under TLS (where a silent
/// connection would stall QEMU's handshake).
#[test]
fn only_a_later_stream_without_tls_skips_the_first_bytes() {
    let o = tern_migrate::MigrateOptions {
        live: true,
        postcopy: true,
        postcopy_preempt: true,
        ..Default::default()
    };
    let p = Policy::for_migration(&o, vec![]);
    assert_eq!(p.streams, 2);
    assert!(p.screens(0), "the main stream is screened");
    assert!(!p.screens(1), "the preempt channel is not");
    let tls = Policy::for_migration(
        &tern_migrate::MigrateOptions {
            tls: true,
            ..o.clone()
        },
        vec![],
    );
    assert!(tls.screens(1));
    let plain = Policy::for_migration(
        &tern_migrate::MigrateOptions {
            postcopy_preempt: false,
            ..o
        },
        vec![],
    );
    assert_eq!(plain.streams, 1);
    assert!(plain.screens(1));
}
