//! Small fixtures shared by integration tests.

use crate::TernHost;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Two agents, each with its own local (not shared) pool named "images".
#[derive(Debug)]
pub struct LocalPools {
    /// Source host.
    pub a: TernHost,
    /// Destination host.
    pub b: TernHost,
    /// Directory of A's pool.
    pub ia: PathBuf,
    /// Directory of B's pool.
    pub ib: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

impl LocalPools {
    /// Starts both hosts and their pools.
    pub fn start(name: &str) -> LocalPools {
        let da = tempfile::Builder::new()
            .prefix("tern-ia-")
            .tempdir()
            .expect("temp dir");
        let db = tempfile::Builder::new()
            .prefix("tern-ib-")
            .tempdir()
            .expect("temp dir");
        let a = TernHost::start(&format!("{name}-a"));
        let b = TernHost::start(&format!("{name}-b"));
        a.add_pool("images", da.path(), false);
        b.add_pool("images", db.path(), false);
        LocalPools {
            a,
            b,
            ia: da.path().to_path_buf(),
            ib: db.path().to_path_buf(),
            _dirs: vec![da, db],
        }
    }

    /// Runs `tern -c A migrate FLAGS NAME B`.
    pub fn migrate(&self, name: &str, flags: &[&str]) -> std::process::Output {
        let bu = self.b.uri();
        let mut args = vec!["migrate"];
        args.extend_from_slice(flags);
        args.extend([name, bu.as_str()]);
        self.a.tern(&args)
    }
}

/// Writes `mib` MiB of incompressible pseudo-random data (xorshift from
/// `seed`) at the start of `path`, then sets its length to `len` bytes if
/// given (leaving a hole after the data).
pub fn write_random(path: &Path, mib: usize, seed: u64, len: Option<u64>) {
    let mut f = std::fs::File::create(path).expect("create data file");
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).expect("write data file");
    }
    if let Some(l) = len {
        f.set_len(l).expect("size data file");
    }
}

/// Writes a raw image of `mib` MiB of pseudo-random data whose first
/// sector is a qcow2 header naming `backing` as its backing file: what a
/// guest can write to its own raw disk. A tool that probes the format sees
/// a qcow2 image over `backing`; the guest's bytes are what must move.
pub fn write_raw_with_qcow2_header(path: &Path, mib: usize, backing: &Path) {
    write_random(path, mib, 0x5eed_cafe, None);
    let dir = tempfile::tempdir().expect("temp dir");
    let hdr = dir.path().join("hdr.qcow2");
    // compat=0.10 keeps the header and backing name inside 512 bytes.
    let st = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "-F",
            "raw",
            "-b",
        ])
        .arg(backing)
        .arg(&hdr)
        .arg("64M")
        .status()
        .expect("run qemu-img");
    assert!(st.success(), "qemu-img create of the header failed");
    let header = std::fs::read(&hdr).expect("read header");
    let name = backing.as_os_str().as_encoded_bytes();
    assert!(
        header[..512].windows(name.len()).any(|w| w == name),
        "the backing name does not fit in the first sector"
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    f.write_all(&header[..512]).expect("write header");
}

/// Whether any file under `dir` contains the (non-empty) bytes of `secret`,
/// or any of its lines of 8 bytes or more.
pub fn dir_contains(dir: &Path, secret: &[u8]) -> Option<PathBuf> {
    let lines: Vec<&[u8]> = secret
        .split(|b| *b == b'\n')
        .filter(|l| l.len() >= 8)
        .collect();
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = dir_contains(&p, secret) {
                return Some(found);
            }
            continue;
        }
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        if lines.iter().any(|l| data.windows(l.len()).any(|w| w == *l)) {
            return Some(p);
        }
    }
    None
}
