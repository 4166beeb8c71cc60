//! Finding a file's allocated extents and cutting them into chunks.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// Granularity of zero detection inside data extents (64 KiB).
pub const ZERO_BLOCK: usize = 64 * 1024;
/// The most zero-detection blocks a chunk may hold (one bit each in a `u64` mask).
pub const MAX_BLOCKS_PER_CHUNK: usize = 64;
/// Largest allowed chunk (4 MiB).
pub const MAX_CHUNK_SIZE: u32 = (ZERO_BLOCK * MAX_BLOCKS_PER_CHUNK) as u32;
/// Default chunk size: the largest one, 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = MAX_CHUNK_SIZE;

/// A byte range of a file that holds data (not a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte of the range.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Lists the allocated (data) extents of the file at `path` with `SEEK_DATA`/`SEEK_HOLE`.
///
/// File systems without hole reporting give one extent covering the whole file.
pub fn allocated_extents(path: &Path) -> Result<Vec<Extent>> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::io(format!("reading metadata of {}", path.display()), e))?
        .len();
    extents_of(&file, size)
        .map_err(|e| Error::io(format!("mapping extents of {}", path.display()), e))
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: lseek on a valid, owned descriptor has no memory-safety preconditions.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Lists the data extents of an open file of `size` bytes.
///
/// Uses `lseek`, which moves the descriptor's file position; callers use positional I/O.
pub fn extents_of(file: &File, size: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match lseek(file, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && pos == 0 => {
                // No SEEK_DATA support: treat the whole file as data.
                return Ok(vec![Extent {
                    offset: 0,
                    len: size,
                }]);
            }
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let hole = lseek(file, data, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        if hole <= data {
            return Err(io::Error::other("SEEK_HOLE went backwards"));
        }
        out.push(Extent {
            offset: data,
            len: hole - data,
        });
        pos = hole;
    }
    Ok(out)
}

/// One unit of transfer, verification and resume: a piece of one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// First byte in the file.
    pub offset: u64,
    /// Length in bytes, at most the session's chunk size.
    pub len: u32,
}

/// The deterministic list of chunks for a file: each extent cut into `chunk_size` pieces.
#[derive(Debug, Clone)]
pub struct ChunkPlan {
    /// The chunks, in file order; a chunk's index is its position here.
    pub chunks: Vec<Chunk>,
    /// Sum of all chunk lengths (allocated data bytes).
    pub data_bytes: u64,
}

impl ChunkPlan {
    /// Cuts `extents` into chunks of at most `chunk_size` bytes.
    pub fn new(extents: &[Extent], chunk_size: u32) -> Self {
        let mut chunks = Vec::new();
        let mut data_bytes = 0;
        for e in extents {
            let mut off = e.offset;
            while off < e.end() {
                let len = (e.end() - off).min(u64::from(chunk_size)) as u32;
                chunks.push(Chunk { offset: off, len });
                off += u64::from(len);
            }
            data_bytes += e.len;
        }
        ChunkPlan { chunks, data_bytes }
    }
}

/// Identity of a source file's content for resume: size, mtime, inode, chunk size, extent
/// map and checksum function.
pub fn fingerprint(
    meta: &std::fs::Metadata,
    extents: &[Extent],
    chunk_size: u32,
    checksum: crate::Checksum,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"tern-transfer fingerprint v2");
    // Journal records hold checksums: another function cannot reuse them.
    h.update(checksum.name().as_bytes());
    h.update(&meta.len().to_le_bytes());
    h.update(&meta.mtime().to_le_bytes());
    h.update(&meta.mtime_nsec().to_le_bytes());
    h.update(&meta.dev().to_le_bytes());
    h.update(&meta.ino().to_le_bytes());
    h.update(&chunk_size.to_le_bytes());
    for e in extents {
        h.update(&e.offset.to_le_bytes());
        h.update(&e.len.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

static ZEROS: [u8; ZERO_BLOCK] = [0; ZERO_BLOCK];

/// A slice of `len` zero bytes (`len` <= [`ZERO_BLOCK`]).
pub(crate) fn zeros(len: usize) -> &'static [u8] {
    &ZEROS[..len]
}

/// Number of zero-detection blocks in a chunk of `len` bytes.
pub(crate) fn blocks_in(len: usize) -> usize {
    len.div_ceil(ZERO_BLOCK)
}

/// Bit i set means block i of `data` is all zeros.
pub(crate) fn zero_mask(data: &[u8]) -> u64 {
    let mut mask = 0u64;
    for (i, block) in data.chunks(ZERO_BLOCK).enumerate() {
        if block == zeros(block.len()) {
            mask |= 1 << i;
        }
    }
    mask
}

/// Runs of blocks with the same zero state: `(is_zero, byte_start, byte_len)` within a chunk.
pub(crate) fn runs(len: usize, mask: u64) -> impl Iterator<Item = (bool, usize, usize)> {
    let nblocks = blocks_in(len);
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= nblocks {
            return None;
        }
        let zero = mask & (1 << i) != 0;
        let start = i;
        while i < nblocks && (mask & (1 << i) != 0) == zero {
            i += 1;
        }
        let byte_start = start * ZERO_BLOCK;
        let byte_end = (i * ZERO_BLOCK).min(len);
        Some((zero, byte_start, byte_end - byte_start))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn extents_of_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 8192], 1 << 20).unwrap();
        f.write_all_at(&[2u8; 4096], 10 << 20).unwrap();
        let ext = allocated_extents(&p).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    offset: 1 << 20,
                    len: 8192
                },
                Extent {
                    offset: 10 << 20,
                    len: 4096
                }
            ]
        );
    }

    #[test]
    fn empty_and_dense_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e");
        File::create(&p).unwrap();
        assert!(allocated_extents(&p).unwrap().is_empty());
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        assert_eq!(
            allocated_extents(&p).unwrap(),
            vec![Extent {
                offset: 0,
                len: 10_000
            }]
        );
    }

    #[test]
    fn plan_cuts_extents() {
        let ext = [
            Extent { offset: 0, len: 10 },
            Extent {
                offset: 100,
                len: 25,
            },
        ];
        let plan = ChunkPlan::new(&ext, 10);
        let lens: Vec<_> = plan.chunks.iter().map(|c| (c.offset, c.len)).collect();
        assert_eq!(lens, vec![(0, 10), (100, 10), (110, 10), (120, 5)]);
        assert_eq!(plan.data_bytes, 35);
    }

    #[test]
    fn zero_mask_and_runs() {
        let mut data = vec![0u8; ZERO_BLOCK * 3 + 100];
        data[ZERO_BLOCK + 5] = 1;
        data[3 * ZERO_BLOCK + 99] = 1;
        let mask = zero_mask(&data);
        assert_eq!(mask, 0b0101);
        let r: Vec<_> = runs(data.len(), mask).collect();
        assert_eq!(
            r,
            vec![
                (true, 0, ZERO_BLOCK),
                (false, ZERO_BLOCK, ZERO_BLOCK),
                (true, 2 * ZERO_BLOCK, ZERO_BLOCK),
                (false, 3 * ZERO_BLOCK, 100)
            ]
        );
    }
}
