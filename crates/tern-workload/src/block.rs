//! The self-checking disk block format (pure code).
//!
//! A block is 4096 bytes:
//!
//! | bytes      | content                                                   |
//! |------------|-----------------------------------------------------------|
//! | 0..8       | magic `TERNBLK1`                                          |
//! | 8..16      | block index, u64 little-endian                            |
//! | 16..24     | generation, u64 little-endian (starts at 1)               |
//! | 24..56     | SHA-256 of bytes 0..24 followed by bytes 56..4096         |
//! | 56..4096   | payload: `pattern::mix` words derived from (index, gen)   |

use crate::pattern::mix;
use sha2::{Digest, Sha256};

/// Bytes in a block.
pub const BLOCK_BYTES: usize = 4096;
/// The magic at the start of every formatted block.
pub const MAGIC: [u8; 8] = *b"TERNBLK1";
const HASH_AT: usize = 24;
const PAYLOAD_AT: usize = 56;

/// Why a block did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The block does not start with the magic (never formatted, or overwritten).
    NoMagic,
    /// The block belongs to another index (misdirected write).
    WrongIndex {
        /// Index stored in the block.
        found: u64,
    },
    /// The checksum does not match the contents (torn or corrupted block).
    BadChecksum {
        /// Generation stored in the block.
        found_gen: u64,
    },
}

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockError::NoMagic => write!(f, "reason=no-magic"),
            BlockError::WrongIndex { found } => write!(f, "reason=wrong-index found_index={found}"),
            BlockError::BadChecksum { found_gen } => {
                write!(f, "reason=bad-checksum found_gen={found_gen}")
            }
        }
    }
}

fn checksum(block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&block[..HASH_AT]);
    h.update(&block[PAYLOAD_AT..BLOCK_BYTES]);
    h.finalize().into()
}

/// Whether `block` starts with the magic.
pub fn has_magic(block: &[u8]) -> bool {
    block.len() >= MAGIC.len() && block[..MAGIC.len()] == MAGIC
}

/// Write block `index` at generation `gen` into `block` (4096 bytes).
pub fn encode(block: &mut [u8], index: u64, gen: u64) {
    let block = &mut block[..BLOCK_BYTES];
    block[..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&index.to_le_bytes());
    block[16..24].copy_from_slice(&gen.to_le_bytes());
    let seed = mix(index ^ mix(gen ^ 0x5445_524E_4449_534B));
    for (k, chunk) in block[PAYLOAD_AT..].chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(seed.wrapping_add(k as u64)).to_le_bytes());
    }
    let sum = checksum(block);
    block[HASH_AT..PAYLOAD_AT].copy_from_slice(&sum);
}

fn u64_at(block: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&block[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Check that `block` is a valid block number `index`; returns its generation.
/// The caller compares the generation with the one it expects.
pub fn decode(block: &[u8], index: u64) -> Result<u64, BlockError> {
    let block = &block[..BLOCK_BYTES];
    if !has_magic(block) {
        return Err(BlockError::NoMagic);
    }
    let found = u64_at(block, 8);
    let gen = u64_at(block, 16);
    if checksum(block)[..] != block[HASH_AT..PAYLOAD_AT] {
        return Err(BlockError::BadChecksum { found_gen: gen });
    }
    if found != index {
        return Err(BlockError::WrongIndex { found });
    }
    Ok(gen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(index: u64, gen: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_BYTES];
        encode(&mut b, index, gen);
        b
    }

    #[test]
    fn roundtrip() {
        let b = block(17, 5);
        assert!(has_magic(&b));
        assert_eq!(decode(&b, 17), Ok(5));
        assert_ne!(block(17, 5), block(17, 6));
    }

    #[test]
    fn zero_block_has_no_magic() {
        assert_eq!(decode(&[0u8; BLOCK_BYTES], 0), Err(BlockError::NoMagic));
    }

    #[test]
    fn misdirected_block_is_detected() {
        let b = block(3, 1);
        assert_eq!(decode(&b, 4), Err(BlockError::WrongIndex { found: 3 }));
    }

    #[test]
    fn corruption_anywhere_is_detected() {
        for at in [9usize, 17, 30, 56, 2000, 4095] {
            let mut b = block(100, 2);
            b[at] ^= 0x01;
            assert!(
                matches!(decode(&b, 100), Err(BlockError::BadChecksum { .. })),
                "flip at {at} not detected"
            );
        }
    }

    #[test]
    fn error_text_is_greppable() {
        assert_eq!(
            BlockError::BadChecksum { found_gen: 4 }.to_string(),
            "reason=bad-checksum found_gen=4"
        );
    }
}
