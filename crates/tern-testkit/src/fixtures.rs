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
