//! Authenticated transfers: a receiver given a MAC key accepts only a
//! sender holding the same key, whatever the sender knows of the session.

mod common;

use common::*;
use tern_transfer::{MacKey, Receiver, SessionId};

const MIB: u64 = 1 << 20;

#[test]
fn keyed_sessions_copy_and_refuse_senders_without_the_key() {
    let d = dirs();
    make_file(&d.src, 4 * MIB, &[(MIB, random_bytes(5, 2 * MIB as usize))]);
    let sid = SessionId::random();
    let key = MacKey([7; 32]);
    let mut ro = recv_opts(sid);
    ro.mac_key = Some(key);

    // The session id alone (what a sniffer of the old protocol had): refused.
    let r = Receiver::bind("127.0.0.1:0", &d.dest, ro.clone()).unwrap();
    let s = tern_transfer::send(r.local_addr(), &d.src, &send_opts(sid), |_| {});
    let e = s.unwrap_err().to_string();
    assert!(e.contains("MAC") || e.contains("authenticated"), "{e}");
    r.cancel_token().cancel();
    let _ = r.wait();

    // A wrong key: refused.
    let mut wrong = send_opts(sid);
    wrong.mac_key = Some(MacKey([8; 32]));
    let r = Receiver::bind("127.0.0.1:0", &d.dest, ro.clone()).unwrap();
    let e = tern_transfer::send(r.local_addr(), &d.src, &wrong, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("MAC does not verify"), "{e}");
    r.cancel_token().cancel();
    let _ = r.wait();
    assert!(!d.dest.exists());

    // The right key: the file arrives whole.
    let mut so = send_opts(sid);
    so.mac_key = Some(key);
    let (s, r) = transfer(&d.src, &d.dest, &so, ro);
    s.unwrap();
    r.unwrap();
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}
