//! Handshake hygiene and hostile peers.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use common::*;
use tern_transfer::wire::{self, ChunkHeader, Hello, Kind};
use tern_transfer::{Error, Receiver, SessionId};

const MIB: u64 = 1 << 20;

fn reply_to(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.starts_with(&wire::MAGIC), "reply {out:?}");
    assert_eq!(out[wire::PREFACE_LEN], Kind::Reject as u8);
    String::from_utf8_lossy(&out[wire::PREFACE_LEN + wire::FRAME_HEADER_LEN..]).into_owned()
}

#[test]
fn receiver_refuses_strangers_and_old_versions_then_serves_the_real_sender() {
    let d = dirs();
    make_file(&d.src, 4 * MIB, &[(0, random_bytes(30, MIB as usize))]);
    let sid = SessionId::random();
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let msg = reply_to(r.local_addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        msg,
        "peer is not a tern-transfer endpoint (bad magic in handshake)"
    );
    let mut v99 = wire::MAGIC.to_vec();
    v99.extend_from_slice(&[99, 0, 0, 0]);
    let msg = reply_to(r.local_addr(), &v99);
    assert_eq!(
        msg,
        "peer speaks tern-transfer protocol version 99, but this side supports only version 2"
    );
    // Wrong session: a clear refusal, and the receiver keeps waiting for the right one.
    let e = tern_transfer::send(
        r.local_addr(),
        &d.src,
        &send_opts(SessionId::random()),
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Rejected(m) if m.contains("is not expected here")),
        "{e}"
    );
    tern_transfer::send(r.local_addr(), &d.src, &send_opts(sid), |_| {}).unwrap();
    r.wait().unwrap();
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}

fn fake_receiver(reply: &'static [u8]) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(reply);
    });
    addr
}

#[test]
fn sender_refuses_peers_that_are_not_receivers() {
    let d = dirs();
    make_file(&d.src, MIB, &[(0, random_bytes(31, 4096))]);
    let so = send_opts(SessionId::random());
    let e = tern_transfer::send(
        fake_receiver(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        &d.src,
        &so,
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadMagic), "{e}");
    let e = tern_transfer::send(
        fake_receiver(b"TERNXFER\x01\x00\x00\x00"),
        &d.src,
        &so,
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedVersion { peer: 1, ours: 2 }),
        "{e}"
    );
}

/// Handshakes as a (malicious) sender and returns the connected control stream.
fn hostile_sender(addr: std::net::SocketAddr, sid: SessionId) -> TcpStream {
    let hello = Hello {
        flags: 0,
        session: sid.0,
        stream_index: 0,
        stream_count: 1,
        chunk_size: 1 << 20,
        file_size: 8 * MIB,
        chunk_count: 2,
        data_bytes: 2 * MIB,
        fingerprint: [0; 32],
    };
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&wire::preface()).unwrap();
    wire::write_frame(&mut s, Kind::Hello, &hello.encode()).unwrap();
    let mut p = [0u8; wire::PREFACE_LEN];
    s.read_exact(&mut p).unwrap();
    let (kind, len) = wire::read_frame_header(&mut s).unwrap().unwrap();
    assert_eq!(kind, Kind::Welcome);
    let mut body = Vec::new();
    wire::read_body(&mut s, &mut body, len).unwrap();
    s
}

fn error_reply(s: &mut TcpStream) -> String {
    let (kind, len) = wire::read_frame_header(s).unwrap().unwrap();
    assert_eq!(kind, Kind::Error);
    let mut body = Vec::new();
    wire::read_body(s, &mut body, len).unwrap();
    String::from_utf8(body).unwrap()
}

#[test]
fn receiver_rejects_chunks_outside_the_file_and_oversized_frames() {
    let d = dirs();
    let sid = SessionId::random();
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let mut s = hostile_sender(r.local_addr(), sid);
    let h = ChunkHeader {
        index: 0,
        offset: 8 * MIB - 10,
        len: 4096,
        flags: 0,
        zero_mask: 0,
        hash: [0; 32],
    };
    let mut body = h.encode().to_vec();
    body.extend_from_slice(&[1u8; 4096]);
    wire::write_frame(&mut s, Kind::Chunk, &body).unwrap();
    assert!(error_reply(&mut s).contains("runs past the end of the file"));
    let e = r.wait().unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    // Nothing was written outside the file; partial data is kept for a resume.
    assert_eq!(
        std::fs::metadata(tern_transfer::partial_path(&d.dest))
            .unwrap()
            .len(),
        8 * MIB
    );

    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let mut s = hostile_sender(r.local_addr(), sid);
    let mut hdr = wire::frame_header(Kind::Chunk, 0);
    hdr[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&hdr).unwrap();
    assert!(error_reply(&mut s).contains("exceeds the limit"));
    assert!(matches!(r.wait(), Err(Error::Protocol(_))));
}
