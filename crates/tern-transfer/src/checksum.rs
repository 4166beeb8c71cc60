//! Per-chunk checksums.
//!
//! XXH3-128 by default: rsync (3.2.3 and later) uses it as its own strong
//! checksum, and at 10-20 GB/s a core it costs a twentieth of the copy,
//! where BLAKE3 (about 4 GB/s here) made the engine CPU-bound on two cores.
//! What the checksum guards against is accidental damage between the
//! source's page cache and the destination's (network, framing, buffers,
//! decompression, reassembly); a forger on the path could rewrite the
//! checksum beside the data whatever the function, so a cryptographic one
//! buys nothing there (that is the transport's job: TLS). BLAKE3 remains
//! for operators who want a cryptographic digest of every chunk.

use std::fmt;
use std::str::FromStr;

/// Which function checksums each chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Checksum {
    /// XXH3, 128-bit (the default).
    #[default]
    Xxh3,
    /// BLAKE3, 256-bit.
    Blake3,
    /// BLAKE3 in keyed mode, a MAC: with a key both agents got over their
    /// authenticated control channel and that never travels on the data
    /// connection, a forger on the path can no longer rewrite a chunk and
    /// its checksum together. Each MAC also covers the chunk's index,
    /// offset and length, so authentic chunks cannot be moved either.
    Mac(MacKey),
}

/// A 256-bit key for [`Checksum::Mac`]; its `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MacKey(pub [u8; 32]);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// The Hello tag: a MAC over the session and the Hello's fields (all
    /// but the stream index, so every stream of a session carries the
    /// same tag). With a key, the tag takes the session id's place on the
    /// wire: the receiver recomputes it, and a sender without the key
    /// cannot open a session.
    pub fn hello_tag(&self, session: &[u8; 16], hello: &crate::wire::Hello) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"tern-transfer hello\0");
        h.update(session);
        let body = crate::wire::Hello {
            session: [0; 16],
            stream_index: 0,
            ..hello.clone()
        }
        .encode();
        h.update(&body);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }
}

/// Equality that takes the same time wherever the inputs differ.
pub(crate) fn same_tag(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Checksum {
    /// Name as given on command lines and shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            Checksum::Xxh3 => "xxh3-128",
            Checksum::Blake3 => "blake3",
            Checksum::Mac(_) => "blake3-mac",
        }
    }

    /// The checksum of `data`, zero-padded to 32 bytes.
    pub fn of(self, data: &[u8]) -> [u8; 32] {
        let mut h = ChunkHasher::new(self);
        h.update(data);
        h.finalize()
    }

    /// The checksum of chunk `index` at `offset` holding `data` (with a
    /// MAC, bound to its place; otherwise as [`Checksum::of`]).
    pub fn of_chunk(self, index: u64, offset: u64, data: &[u8]) -> [u8; 32] {
        let mut h = ChunkHasher::for_chunk(self, index, offset, data.len() as u64);
        h.update(data);
        h.finalize()
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Checksum {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "xxh3" | "xxh3-128" | "xxh128" => Ok(Checksum::Xxh3),
            "blake3" => Ok(Checksum::Blake3),
            _ => Err(crate::Error::InvalidOptions(format!(
                "unknown checksum '{s}'; use xxh3-128 or blake3"
            ))),
        }
    }
}

/// An incremental checksum of one chunk.
pub(crate) enum ChunkHasher {
    Xxh3(Box<twox_hash::XxHash3_128>),
    Blake3(Box<blake3::Hasher>),
}

impl ChunkHasher {
    pub(crate) fn new(c: Checksum) -> ChunkHasher {
        match c {
            Checksum::Xxh3 => ChunkHasher::Xxh3(Box::new(twox_hash::XxHash3_128::new())),
            Checksum::Blake3 => ChunkHasher::Blake3(Box::new(blake3::Hasher::new())),
            Checksum::Mac(k) => ChunkHasher::Blake3(Box::new(blake3::Hasher::new_keyed(&k.0))),
        }
    }

    /// A hasher for one chunk; a MAC starts with the chunk's place.
    pub(crate) fn for_chunk(c: Checksum, index: u64, offset: u64, len: u64) -> ChunkHasher {
        let mut h = ChunkHasher::new(c);
        if let (Checksum::Mac(_), ChunkHasher::Blake3(b)) = (c, &mut h) {
            b.update(b"tern-transfer chunk\0");
            b.update(&index.to_le_bytes());
            b.update(&offset.to_le_bytes());
            b.update(&len.to_le_bytes());
        }
        h
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            ChunkHasher::Xxh3(h) => h.write(data),
            ChunkHasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub(crate) fn finalize(self) -> [u8; 32] {
        match self {
            ChunkHasher::Xxh3(h) => {
                let mut out = [0u8; 32];
                out[..16].copy_from_slice(&h.finish_128().to_le_bytes());
                out
            }
            ChunkHasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_one_shot_and_functions_differ() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        for c in [Checksum::Xxh3, Checksum::Blake3] {
            let mut h = ChunkHasher::new(c);
            for piece in data.chunks(65_536) {
                h.update(piece);
            }
            assert_eq!(h.finalize(), c.of(&data), "{c}");
            assert_eq!(c.name().parse::<Checksum>().unwrap(), c);
        }
        assert_ne!(Checksum::Xxh3.of(&data), Checksum::Blake3.of(&data));
        assert_eq!(&Checksum::Xxh3.of(&data)[16..], &[0u8; 16]);
        assert!("md5".parse::<Checksum>().is_err());
    }

    #[test]
    fn a_mac_needs_the_key_and_binds_the_chunk_to_its_place() {
        let data = vec![7u8; 4096];
        let k = Checksum::Mac(MacKey([1; 32]));
        let other = Checksum::Mac(MacKey([2; 32]));
        assert_ne!(k.of_chunk(0, 0, &data), other.of_chunk(0, 0, &data));
        assert_ne!(k.of_chunk(0, 0, &data), k.of_chunk(1, 0, &data));
        assert_ne!(k.of_chunk(0, 0, &data), k.of_chunk(0, 4096, &data));
        assert_ne!(k.of_chunk(0, 0, &data), Checksum::Blake3.of(&data));
        // Unkeyed checksums do not change with the place (journals stay valid).
        assert_eq!(
            Checksum::Blake3.of_chunk(3, 9, &data),
            Checksum::Blake3.of(&data)
        );
        assert_eq!(format!("{:?}", MacKey([9; 32])), "MacKey(..)");
    }
}
