//! End-to-end transfers over loopback TCP: sparseness, zero blocks, compression, streams.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::*;
use tern_transfer::{allocated_extents, Compression, Extent, Receiver, SessionId};

const MIB: u64 = 1 << 20;

/// 64 MiB file: random extents (one unaligned, one crossing chunk boundaries), and a
/// data extent that contains explicit zero 64 KiB blocks.
fn sample(path: &std::path::Path) -> u64 {
    let mut zeroed = random_bytes(3, 4 * MIB as usize);
    zeroed[MIB as usize..MIB as usize + 3 * 65536].fill(0); // 3 zero blocks inside a chunk
    zeroed[2 * MIB as usize..3 * MIB as usize].fill(0); // 4 whole zero chunks' worth
    make_file(
        path,
        64 * MIB,
        &[
            (0, random_bytes(1, 3 * MIB as usize + 12345)),
            (20 * MIB + 4096, random_bytes(2, 700_000)),
            (40 * MIB, zeroed),
            (64 * MIB - 8192, random_bytes(4, 8192)),
        ],
    );
    allocated_extents(path).unwrap().iter().map(|e| e.len).sum()
}

#[test]
fn sparse_file_roundtrip_keeps_holes_and_skips_zero_blocks() {
    let d = dirs();
    let data = sample(&d.src);
    let before = identity(&d.src);
    let sid = SessionId::random();
    let (s, r) = transfer(&d.src, &d.dest, &send_opts(sid), recv_opts(sid));
    let (s, r) = (s.unwrap(), r.unwrap());
    assert_eq!(read_all(&d.dest), read_all(&d.src));
    assert_eq!(identity(&d.src), before, "source must not change");
    assert_eq!(s.bytes_total_data, data);
    assert_eq!(r.bytes_total_data, data);
    let zero = 3 * 65536 + MIB;
    assert_eq!(s.bytes_zero_skipped, zero);
    assert_eq!(r.bytes_zero_skipped, zero);
    assert_eq!(s.bytes_skipped_resumed, 0);
    assert_eq!(s.chunks, r.chunks);
    assert_eq!(
        s.bytes_sent_wire, r.bytes_sent_wire,
        "both sides count the same wire bytes"
    );
    assert!(s.bytes_sent_wire < data - zero + 4096 * s.chunks);
    // Holes stay holes; zero blocks became holes.
    let dest_alloc = allocated(&d.dest);
    assert!(
        dest_alloc <= data - zero + 64 * 1024,
        "dest allocates {dest_alloc} for {} data bytes",
        data - zero
    );
    let ext = allocated_extents(&d.dest).unwrap();
    let covers = |off: u64| {
        ext.iter()
            .any(|e: &Extent| e.offset <= off && off < e.end())
    };
    assert!(!covers(10 * MIB) && !covers(41 * MIB + 65536) && !covers(42 * MIB + 100));
    assert!(covers(40 * MIB) && covers(64 * MIB - 1));
    // Only the destination file remains: no partial, no journal.
    assert_eq!(dest_dir_listing(&d), vec!["dest.img".to_string()]);
}

#[test]
fn zstd_compression_is_negotiated_and_shrinks_the_wire() {
    let d = dirs();
    let text: Vec<u8> = b"tern moves virtual machines between hosts. "
        .iter()
        .copied()
        .cycle()
        .take(6 << 20)
        .collect();
    make_file(
        &d.src,
        16 * MIB,
        &[(MIB, text), (12 * MIB, random_bytes(9, MIB as usize))],
    );
    let sid = SessionId::random();
    let mut so = send_opts(sid);
    so.compression = Compression::Zstd(3);
    let (s, r) = transfer(&d.src, &d.dest, &so, recv_opts(sid));
    let (s, r) = (s.unwrap(), r.unwrap());
    assert!(s.compressed && r.compressed);
    assert_eq!(read_all(&d.dest), read_all(&d.src));
    // 6 MiB of text squeezes to almost nothing; the random MiB is sent raw.
    assert!(s.bytes_sent_wire < 2 * MIB, "wire {}", s.bytes_sent_wire);
    assert!(s.bytes_sent_wire > MIB);

    // A receiver may decline: same result, raw on the wire.
    std::fs::remove_file(&d.dest).unwrap();
    let mut ro = recv_opts(sid);
    ro.allow_compression = false;
    let (s, r) = transfer(&d.src, &d.dest, &so, ro);
    let (s, r) = (s.unwrap(), r.unwrap());
    assert!(!s.compressed && !r.compressed);
    assert!(s.bytes_sent_wire > 7 * MIB);
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}

#[test]
fn many_streams_and_read_back_verification() {
    let d = dirs();
    let regions: Vec<_> = (0..12)
        .map(|i| (i * 5 * MIB + i * 4096, random_bytes(i + 20, 1_500_000)))
        .collect();
    make_file(&d.src, 80 * MIB, &regions);
    let sid = SessionId::random();
    let mut so = send_opts(sid);
    so.streams = 5;
    so.chunk_size = 64 * 1024;
    let mut ro = recv_opts(sid);
    ro.verify_read_back = true;
    let (s, r) = transfer(&d.src, &d.dest, &so, ro);
    let (s, r) = (s.unwrap(), r.unwrap());
    assert_eq!(s.streams, 5);
    assert_eq!(r.streams, 5);
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}

#[test]
fn empty_and_all_hole_files() {
    for size in [0, 10 * MIB] {
        let d = dirs();
        make_file(&d.src, size, &[]);
        let sid = SessionId::random();
        let (s, r) = transfer(&d.src, &d.dest, &send_opts(sid), recv_opts(sid));
        let (s, _) = (s.unwrap(), r.unwrap());
        assert_eq!(s.bytes_total_data, 0);
        assert_eq!(s.chunks, 0);
        assert_eq!(std::fs::metadata(&d.dest).unwrap().len(), size);
        assert_eq!(allocated(&d.dest), 0);
    }
}

#[test]
fn rate_limit_slows_the_transfer() {
    let d = dirs();
    make_file(&d.src, 8 * MIB, &[(0, random_bytes(5, 3 * MIB as usize))]);
    let sid = SessionId::random();
    let mut so = send_opts(sid);
    so.rate_limit = Some(2 * MIB);
    let t = Instant::now();
    let (s, r) = transfer(&d.src, &d.dest, &so, recv_opts(sid));
    s.unwrap();
    r.unwrap();
    // 3 MiB at 2 MiB/s with a 0.5 MiB burst: at least 1.25 s.
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}

#[test]
fn progress_reports_reach_the_total() {
    let d = dirs();
    make_file(&d.src, 16 * MIB, &[(0, random_bytes(6, 4 * MIB as usize))]);
    let sid = SessionId::random();
    let mut so = send_opts(sid);
    so.rate_limit = Some(8 * MIB);
    so.progress_interval = Duration::from_millis(50);
    let r = Receiver::bind("127.0.0.1:0", &d.dest, recv_opts(sid)).unwrap();
    let mut seen = Vec::new();
    tern_transfer::send(r.local_addr(), &d.src, &so, |p| seen.push(p)).unwrap();
    r.wait().unwrap();
    assert!(seen.len() >= 3, "{} reports", seen.len());
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    let last = seen.last().unwrap();
    assert_eq!((last.bytes_done, last.bytes_total), (4 * MIB, 4 * MIB));
    assert!(last.bytes_per_sec > 0.0);
}

#[test]
fn qcow2_like_file_is_sent_as_a_file() {
    // A dense header, a dense middle and preallocated-but-unwritten space at the end:
    // the engine is format-agnostic and only looks at the file's extents.
    let d = dirs();
    let mut header = vec![0u8; 65536];
    header[..4].copy_from_slice(b"QFI\xfb");
    make_file(
        &d.src,
        0,
        &[(0, header), (65536, random_bytes(7, 3 * MIB as usize))],
    );
    let f = File::options().write(true).open(&d.src).unwrap();
    f.set_len(32 * MIB).unwrap();
    f.write_all_at(b"tail", 32 * MIB - 4).unwrap();
    let sid = SessionId::random();
    let (s, r) = transfer(&d.src, &d.dest, &send_opts(sid), recv_opts(sid));
    s.unwrap();
    r.unwrap();
    assert_eq!(read_all(&d.dest), read_all(&d.src));
}
