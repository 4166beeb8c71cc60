//! Helpers shared by the integration tests: files, random data, a loopback proxy.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_transfer::{ReceiveOptions, Receiver, SendOptions, SessionId, Stats};

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Creates a sparse file of `size` bytes with `(offset, data)` regions written.
pub fn make_file(path: &Path, size: u64, regions: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, data) in regions {
        f.write_all_at(data, *off).unwrap();
    }
    f.sync_all().unwrap();
}

/// Full contents of a file.
pub fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Bytes actually allocated on disk.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Size, mtime and BLAKE3 of a file: everything that must not change on the source.
pub fn identity(path: &Path) -> (u64, i64, i64, [u8; 32]) {
    let m = std::fs::metadata(path).unwrap();
    (
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        *blake3::hash(&read_all(path)).as_bytes(),
    )
}

/// Receive options for tests: short timeouts.
pub fn recv_opts(session: SessionId) -> ReceiveOptions {
    let mut o = ReceiveOptions::new(session);
    o.accept_timeout = Duration::from_secs(20);
    o.io_timeout = Duration::from_secs(20);
    o
}

/// Send options for tests: small chunks so small files have many.
pub fn send_opts(session: SessionId) -> SendOptions {
    let mut o = SendOptions::new(session);
    o.chunk_size = 256 * 1024;
    o.io_timeout = Duration::from_secs(20);
    o
}

/// Runs a receiver and a sender to completion; returns (sender, receiver) results.
pub fn transfer(
    src: &Path,
    dest: &Path,
    so: &SendOptions,
    ro: ReceiveOptions,
) -> (tern_transfer::Result<Stats>, tern_transfer::Result<Stats>) {
    let r = Receiver::bind("127.0.0.1:0", dest, ro).unwrap();
    let s = tern_transfer::send(r.local_addr(), src, so, |_| {});
    (s, r.wait())
}

/// What the proxy does to sender → receiver bytes of each connection.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Cut both directions after this many bytes.
    CutAfter(u64),
    /// Flip the bits of the byte at this position.
    FlipAt(u64),
}

/// A loopback TCP proxy that injects one fault per connection.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts proxying to `target`.
    pub fn start(target: SocketAddr, fault: Fault) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (st, fw) = (stop.clone(), forwarded.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((down, _)) => {
                        down.set_nonblocking(false).unwrap();
                        let up = TcpStream::connect(target).unwrap();
                        let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                        let fw = fw.clone();
                        std::thread::spawn(move || pump(down, up, Some(fault), &fw));
                        std::thread::spawn(move || pump(u2, d2, None, &AtomicU64::new(0)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            addr,
            stop,
            forwarded,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, fault: Option<Fault>, count: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let mut take = n;
        match fault {
            Some(Fault::CutAfter(limit)) if pos + n as u64 >= limit => {
                take = (limit - pos) as usize
            }
            Some(Fault::FlipAt(at)) if at >= pos && at < pos + n as u64 => {
                chunk[(at - pos) as usize] ^= 0xff
            }
            _ => {}
        }
        if to.write_all(&chunk[..take]).is_err() {
            break;
        }
        pos += take as u64;
        count.fetch_add(take as u64, Ordering::Relaxed);
        if take < n {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A temp dir plus the usual src/dest paths in it.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub dest: PathBuf,
}

pub fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.img");
    let dest = tmp.path().join("out").join("dest.img");
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    Dirs { tmp, src, dest }
}

/// Names of the files in the destination directory.
pub fn dest_dir_listing(d: &Dirs) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
