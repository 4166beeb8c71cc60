//! The benchmark image: creating it, comparing copies of it, measuring disk use.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use tern_transfer::{allocated_extents, Extent};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;

/// Layout of the image: `size` bytes, random extents and one explicitly zeroed extent.
pub struct Layout {
    pub size: u64,
    pub random: Vec<Extent>,
    pub zeroed: Extent,
}

/// 8 GiB with 2 GiB of random data in four 512 MiB extents, plus 64 MiB of written zeros
/// (allocated on the source, to be detected and left as a hole by sparse-aware tools).
pub fn default_layout() -> Layout {
    let r = |off: u64| Extent {
        offset: off,
        len: 512 * MIB,
    };
    Layout {
        size: 8 * GIB,
        random: vec![r(0), r(2 * GIB + MIB), r(4 * GIB + 12 * MIB), r(7 * GIB)],
        zeroed: Extent {
            offset: 3 * GIB,
            len: 64 * MIB,
        },
    }
}

/// Fills `buf` with xorshift64* output.
fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for c in buf.chunks_exact_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        c.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
}

/// Writes the image (two threads generate the random data) and syncs it.
pub fn create(path: &Path, layout: &Layout) -> io::Result<()> {
    let f = File::create(path)?;
    f.set_len(layout.size)?;
    std::thread::scope(|s| -> io::Result<()> {
        let f = &f;
        let mut jobs = Vec::new();
        for (i, e) in layout.random.iter().enumerate() {
            let e = *e;
            jobs.push(s.spawn(move || -> io::Result<()> {
                let mut state =
                    0x1234_5678_9abc_def1 ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut buf = vec![0u8; 8 << 20];
                let mut off = e.offset;
                while off < e.end() {
                    let n = (e.end() - off).min(buf.len() as u64) as usize;
                    fill_random(&mut state, &mut buf[..n]);
                    f.write_all_at(&buf[..n], off)?;
                    off += n as u64;
                }
                Ok(())
            }));
            if jobs.len() == 2 {
                jobs.remove(0)
                    .join()
                    .map_err(|_| io::Error::other("writer panicked"))??;
            }
        }
        for j in jobs {
            j.join()
                .map_err(|_| io::Error::other("writer panicked"))??;
        }
        let z = vec![0u8; 8 << 20];
        let mut off = layout.zeroed.offset;
        while off < layout.zeroed.end() {
            f.write_all_at(&z, off)?;
            off += z.len() as u64;
        }
        Ok(())
    })?;
    f.sync_all()
}

/// Bytes allocated on disk (st_blocks * 512).
pub fn on_disk(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Sum of the allocated extents' lengths.
pub fn data_bytes(path: &Path) -> io::Result<u64> {
    Ok(allocated_extents(path)
        .map_err(io::Error::other)?
        .iter()
        .map(|e| e.len)
        .sum())
}

/// Byte-for-byte comparison that skips ranges that are holes in both files.
pub fn files_equal(a: &Path, b: &Path) -> io::Result<bool> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    let size = fa.metadata()?.len();
    if fb.metadata()?.len() != size {
        return Ok(false);
    }
    let mut all: Vec<Extent> = allocated_extents(a).map_err(io::Error::other)?;
    all.extend(allocated_extents(b).map_err(io::Error::other)?);
    all.sort_by_key(|e| e.offset);
    let mut merged: Vec<Extent> = Vec::new();
    for e in all {
        match merged.last_mut() {
            Some(m) if e.offset <= m.end() => m.len = m.len.max(e.end() - m.offset),
            _ => merged.push(e),
        }
    }
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    for e in merged {
        let mut off = e.offset;
        while off < e.end() {
            let n = (e.end() - off).min(ba.len() as u64) as usize;
            fa.read_exact_at(&mut ba[..n], off)?;
            fb.read_exact_at(&mut bb[..n], off)?;
            if ba[..n] != bb[..n] {
                return Ok(false);
            }
            off += n as u64;
        }
    }
    Ok(true)
}
