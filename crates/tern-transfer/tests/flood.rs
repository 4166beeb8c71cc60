//! Silent connections to a cold-copy receiver: each is closed after the
//! Hello limit, and a flood of them (opened before the real sender and
//! kept coming while it copies) neither stops nor delays the copy past its
//! accept timeout.

mod common;

use common::*;
use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tern_transfer::{MacKey, Receiver, SessionId};

const MIB: u64 = 1 << 20;

/// Opens silent connections to `addr` until stopped, holding every one
/// the receiver has not closed (at most 256).
fn flood(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut held = VecDeque::new();
        let mut opened = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(s) = TcpStream::connect(addr) {
                opened += 1;
                held.push_back(s);
                if held.len() > 256 {
                    held.pop_front();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        opened
    })
}

#[test]
fn a_silent_connection_is_closed_and_a_flood_does_not_stop_the_copy() {
    let d = dirs();
    make_file(&d.src, 8 * MIB, &[(MIB, random_bytes(9, 5 * MIB as usize))]);
    let sid = SessionId::random();
    let key = MacKey([5; 32]);
    let mut ro = recv_opts(sid);
    ro.mac_key = Some(key);
    let r = Receiver::bind("127.0.0.1:0", &d.dest, ro).unwrap();

    // One connection that says nothing is closed by the receiver.
    let mut silent = TcpStream::connect(r.local_addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut buf = [0u8; 64];
    // A Reject frame or a bare close, never a wait for ever.
    loop {
        match silent.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }

    // Then a flood, before and during the real copy.
    let stop = Arc::new(AtomicBool::new(false));
    let f = flood(r.local_addr(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let mut so = send_opts(sid);
    so.mac_key = Some(key);
    so.streams = 4;
    let s = tern_transfer::send(r.local_addr(), &d.src, &so, |_| {});
    stop.store(true, Ordering::Relaxed);
    let opened = f.join().unwrap();
    s.expect("the copy under a flood");
    r.wait().expect("the receiver under a flood");
    assert!(opened > 10, "the flood opened only {opened} connections");
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}
