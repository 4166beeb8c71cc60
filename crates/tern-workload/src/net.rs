//! The TCP echo server a test can keep a connection to across a migration.
//!
//! Protocol (one connection, line based): on connect the guest sends
//! `TERN-HELLO seq=<hb seq>`; then every line received is echoed back, except
//! the line `seq`, answered with `TERN-SEQ seq=<current hb seq>`.

use crate::console::{self, HB_SEQ};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest line handled; longer input is echoed in pieces of this size.
const MAX_LINE: u64 = 4096;
/// Most connections served at once; more are closed right away.
const MAX_CONNECTIONS: usize = 64;
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// The reply to one received line (`line` includes its newline, if any).
pub fn reply(line: &[u8], seq: u64) -> Vec<u8> {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    if trimmed == b"seq" {
        format!("TERN-SEQ seq={seq}\n").into_bytes()
    } else {
        let mut out = line.to_vec();
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out
    }
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    writer.write_all(format!("TERN-HELLO seq={}\n", console::get(&HB_SEQ)).as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        writer.write_all(&reply(&line, console::get(&HB_SEQ)))?;
    }
}

/// Bind `0.0.0.0:port`, print `TERN-NET listening <ip>:<port>` and serve
/// connections on background threads.
pub fn start(ip: Ipv4Addr, port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    console::emit(&format!("TERN-NET listening {ip}:{port}"));
    std::thread::Builder::new()
        .name("net-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                if CONNECTIONS.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let spawned =
                    std::thread::Builder::new()
                        .name("net-conn".into())
                        .spawn(move || {
                            let _ = serve(stream);
                            CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_line_gets_the_heartbeat_seq() {
        assert_eq!(reply(b"seq\n", 42), b"TERN-SEQ seq=42\n");
        assert_eq!(reply(b"seq\r\n", 1), b"TERN-SEQ seq=1\n");
    }

    #[test]
    fn other_lines_are_echoed() {
        assert_eq!(reply(b"hello\n", 42), b"hello\n");
        assert_eq!(reply(b"no newline", 42), b"no newline\n");
        assert_eq!(reply(b"sequence\n", 42), b"sequence\n");
    }

    #[test]
    fn serves_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            serve(s)
        });
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"ping\nseq\n").expect("write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut c, &mut out).expect("read");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out:?}");
        assert!(lines[0].starts_with("TERN-HELLO seq="));
        assert_eq!(lines[1], "ping");
        assert!(lines[2].starts_with("TERN-SEQ seq="));
        server.join().expect("server thread").expect("serve");
    }
}
