//! Failure paths: corruption, cut links and resume, full disks, cancellation.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tern_transfer::{journal_path, partial_path, Error, Receiver, SessionId};

const MIB: u64 = 1 << 20;

#[test]
fn corrupted_byte_fails_with_checksum_mismatch_then_retry_succeeds() {
    let d = dirs();
    make_file(&d.src, 8 * MIB, &[(0, random_bytes(11, 4 * MIB as usize))]);
    let sid = SessionId::random();
    let mut so = send_opts(sid);
    so.streams = 1;
    so.chunk_size = 1 << 20;
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    // Preface + Hello are ~100 bytes: byte 512 KiB is inside chunk 0's payload.
    let proxy = Proxy::start(r.local_addr(), Fault::FlipAt(512 * 1024));
    let s = tern_transfer::send(proxy.addr, &d.src, &so, |_| {});
    let re = r.wait().unwrap_err();
    assert!(
        matches!(
            re,
            Error::ChecksumMismatch {
                chunk: 0,
                offset: 0,
                ..
            }
        ),
        "{re}"
    );
    let se = s.unwrap_err();
    assert!(
        se.to_string().contains("checksum mismatch for chunk 0"),
        "{se}"
    );
    assert!(!d.dest.exists());
    // The bad chunk was never journaled: a retry resends it and the result is right.
    let (s, r) = transfer(&d.src, &d.dest, &so, recv_opts(sid));
    s.unwrap();
    r.unwrap();
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}

#[test]
fn cut_link_resumes_without_resending_verified_chunks() {
    let d = dirs();
    make_file(
        &d.src,
        64 * MIB,
        &[
            (0, random_bytes(12, 10 * MIB as usize)),
            (30 * MIB, random_bytes(13, 6 * MIB as usize)),
        ],
    );
    let before = identity(&d.src);
    let sid = SessionId::random();
    let so = send_opts(sid);
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let proxy = Proxy::start(r.local_addr(), Fault::CutAfter(3 * MIB));
    let first = tern_transfer::send(proxy.addr, &d.src, &so, |_| {});
    assert!(first.is_err());
    let re = r.wait().unwrap_err();
    assert!(re.is_retryable(), "{re}");
    assert!(partial_path(&d.dest).exists() && journal_path(&d.dest).exists());
    drop(proxy);

    let (s, r) = transfer(&d.src, &d.dest, &so, recv_opts(sid));
    let (s, r) = (s.unwrap(), r.unwrap());
    assert_eq!(read_all(&d.dest), read_all(&d.src));
    assert_eq!(identity(&d.src), before);
    let total = 16 * MIB;
    assert_eq!(s.bytes_total_data, total);
    // Each stream is cut after 3 MiB, but the first error aborts every stream, so how
    // much the receiver verified before it stopped depends on scheduling: at least a
    // chunk (256 KiB), typically 1.75-5.5 MiB.
    assert!(
        s.bytes_skipped_resumed >= 256 * 1024,
        "resumed only {}",
        s.bytes_skipped_resumed
    );
    assert_eq!(s.bytes_skipped_resumed, r.bytes_skipped_resumed);
    assert!(s.chunks_resumed > 0 && s.chunks_resumed == r.chunks_resumed);
    assert!(
        s.bytes_sent_wire < total - s.bytes_skipped_resumed + 64 * 1024,
        "wire {}",
        s.bytes_sent_wire
    );
    assert!(
        s.bytes_sent_wire < total,
        "the second attempt sends less than a full copy"
    );
    assert!(!partial_path(&d.dest).exists() && !journal_path(&d.dest).exists());
}

#[test]
fn changed_source_restarts_from_scratch() {
    let d = dirs();
    make_file(&d.src, 32 * MIB, &[(0, random_bytes(14, 8 * MIB as usize))]);
    let sid = SessionId::random();
    let so = send_opts(sid);
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let proxy = Proxy::start(r.local_addr(), Fault::CutAfter(2 * MIB));
    assert!(tern_transfer::send(proxy.addr, &d.src, &so, |_| {}).is_err());
    assert!(r.wait().is_err());
    // The source changes between attempts (new data, new mtime): the journal is stale.
    std::thread::sleep(Duration::from_millis(20));
    make_file(&d.src, 32 * MIB, &[(0, random_bytes(15, 8 * MIB as usize))]);
    let (s, r) = transfer(&d.src, &d.dest, &so, recv_opts(sid));
    let (s, _) = (s.unwrap(), r.unwrap());
    assert_eq!(s.bytes_skipped_resumed, 0);
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}

#[test]
fn without_resume_a_failure_removes_partial_data() {
    let d = dirs();
    make_file(&d.src, 16 * MIB, &[(0, random_bytes(16, 8 * MIB as usize))]);
    let sid = SessionId::random();
    let mut ro = recv_opts(sid);
    ro.resume = false;
    let r = Receiver::bind("127.0.0.1:0", &d.dest, ro).unwrap();
    let proxy = Proxy::start(r.local_addr(), Fault::CutAfter(2 * MIB));
    assert!(tern_transfer::send(proxy.addr, &d.src, &send_opts(sid), |_| {}).is_err());
    assert!(r.wait().is_err());
    assert!(
        dest_dir_listing(&d).is_empty(),
        "{:?}",
        dest_dir_listing(&d)
    );
}

/// A small tmpfs mounted over a directory for the ENOSPC test; unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path) -> Option<SmallFs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tern-transfer-test"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_destination_fails_clearly_and_removes_partial_data() {
    let d = dirs();
    let Some(_fs) = SmallFs::mount(d.dest.parent().unwrap()) else {
        eprintln!("skipping: cannot mount a small tmpfs (needs root)");
        return;
    };
    make_file(
        &d.src,
        64 * MIB,
        &[(0, random_bytes(17, 12 * MIB as usize))],
    );
    let sid = SessionId::random();
    let (s, r) = transfer(&d.src, &d.dest, &send_opts(sid), recv_opts(sid));
    let re = r.unwrap_err();
    assert!(matches!(re, Error::NoSpace { .. }), "{re}");
    let msg = re.to_string();
    assert!(
        msg.starts_with("destination ran out of space writing ") && msg.contains("dest.img"),
        "{msg}"
    );
    let se = s.unwrap_err();
    assert!(
        se.to_string()
            .contains("destination ran out of space writing"),
        "{se}"
    );
    assert!(
        dest_dir_listing(&d).is_empty(),
        "{:?}",
        dest_dir_listing(&d)
    );
}

#[test]
fn existing_destination_is_not_replaced_unless_asked() {
    let d = dirs();
    make_file(&d.src, MIB, &[(0, random_bytes(18, 100_000))]);
    std::fs::write(&d.dest, b"precious").unwrap();
    let sid = SessionId::random();
    let e = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap_err();
    assert!(matches!(e, Error::DestinationExists(_)), "{e}");
    assert_eq!(std::fs::read(&d.dest).unwrap(), b"precious");
    let mut ro = recv_opts(sid);
    ro.overwrite = true;
    let (s, r) = transfer(&d.src, &d.dest, &send_opts(sid), ro);
    s.unwrap();
    r.unwrap();
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}

#[test]
fn cancel_and_accept_timeout() {
    let d = dirs();
    let sid = SessionId::random();
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    r.cancel();
    assert!(matches!(r.wait(), Err(Error::Cancelled)));
    let mut ro = recv_opts(sid);
    ro.accept_timeout = Duration::from_millis(200);
    let r = Receiver::bind("127.0.0.1:0", &d.dest, ro).unwrap();
    assert!(matches!(r.wait(), Err(Error::Timeout(_))));
    assert!(dest_dir_listing(&d).is_empty());
}

#[test]
fn sender_cancel_stops_the_transfer() {
    let d = dirs();
    make_file(&d.src, 16 * MIB, &[(0, random_bytes(19, 8 * MIB as usize))]);
    let sid = SessionId::random();
    let mut so = send_opts(sid);
    so.rate_limit = Some(MIB);
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let token = so.cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        token.cancel();
    });
    let e = tern_transfer::send(r.local_addr(), &d.src, &so, |_| {}).unwrap_err();
    t.join().unwrap();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(r.wait().is_err());
}

#[test]
fn source_modified_during_the_transfer_fails_it() {
    let d = dirs();
    make_file(&d.src, 16 * MIB, &[(0, random_bytes(20, 4 * MIB as usize))]);
    let sid = SessionId::random();
    let mut so = send_opts(sid);
    so.rate_limit = Some(4 * MIB);
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let src = d.src.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let f = std::fs::File::options().write(true).open(&src).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 12 * MIB).unwrap();
    });
    let e = tern_transfer::send(r.local_addr(), &d.src, &so, |_| {}).unwrap_err();
    t.join().unwrap();
    assert!(matches!(e, Error::SourceChanged(_)), "{e}");
    let re = r.wait().unwrap_err();
    assert!(
        re.to_string().contains("changed during the transfer"),
        "{re}"
    );
    assert!(!d.dest.exists());
}
