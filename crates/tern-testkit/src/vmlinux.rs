//! Extract the uncompressed ELF `vmlinux` from an x86 `bzImage`.
//!
//! Booting the ELF directly (`qemu -kernel vmlinux`, PVH entry) skips the
//! in-guest xz decompression, which costs several seconds under TCG.
//! Debian compresses the kernel with `xz --check=crc32 --x86 --lzma2`, i.e.
//! an xz stream whose block uses the x86 BCJ filter before LZMA2. `lzma-rs`
//! decodes LZMA2 but not BCJ, so this module reads the xz container itself,
//! lets `lzma-rs` decode the raw LZMA2 data, and undoes the BCJ filter.

use sha2::{Digest, Sha256};
use std::io::Cursor;

const XZ_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const FILTER_X86: u64 = 0x04;
const FILTER_LZMA2: u64 = 0x21;

/// Find the xz payload in `bzimage` and decompress it to an ELF image.
///
/// Returns `Ok(None)` when there is no xz payload (e.g. a gzip- or
/// zstd-compressed kernel: boot the bzImage then), `Err` with a reason when
/// a payload was found but could not be decoded into an ELF file.
pub fn extract(bzimage: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let from_header = header_payload_offset(bzimage);
    let mut starts: Vec<usize> = from_header.into_iter().collect();
    starts.extend(
        bzimage
            .windows(XZ_MAGIC.len())
            .enumerate()
            .filter(|&(i, w)| w == XZ_MAGIC && Some(i) != from_header)
            .map(|(i, _)| i),
    );
    let mut last_err = None;
    for start in starts {
        if bzimage.get(start..start + 6) != Some(&XZ_MAGIC[..]) {
            continue;
        }
        match decode_xz(&bzimage[start..]) {
            Ok(out) if out.starts_with(b"\x7fELF") => return Ok(Some(out)),
            Ok(_) => {
                last_err = Some("the xz payload does not decompress to an ELF file".to_string())
            }
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Offset of the compressed payload according to the x86 boot protocol
/// header (version >= 2.08), if the header is there.
fn header_payload_offset(b: &[u8]) -> Option<usize> {
    if b.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes([*b.get(0x206)?, *b.get(0x207)?]);
    if version < 0x208 {
        return None;
    }
    let setup_sects = match *b.get(0x1F1)? {
        0 => 4,
        n => n as usize,
    };
    let offset = u32::from_le_bytes(b.get(0x248..0x24C)?.try_into().ok()?) as usize;
    Some((setup_sects + 1) * 512 + offset)
}

/// Read an xz variable-length integer at `*pos`.
fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(*pos).ok_or("truncated xz header")?;
        *pos += 1;
        v |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("bad xz integer".into())
}

/// Decode a single xz stream (any number of blocks) starting at `b[0]`.
fn decode_xz(b: &[u8]) -> Result<Vec<u8>, String> {
    if b.len() < 12 || b[..6] != XZ_MAGIC {
        return Err("no xz stream header".into());
    }
    let check = b[7] & 0x0F;
    let check_len = match check {
        0 => 0,
        1 => 4,
        4 => 8,
        10 => 32,
        n => return Err(format!("unsupported xz check type {n}")),
    };
    let mut pos = 12;
    let mut out = Vec::new();
    loop {
        let size_byte = *b.get(pos).ok_or("truncated xz stream")?;
        if size_byte == 0 {
            break; // the index follows: no more blocks
        }
        let block_start = pos;
        let header_len = (size_byte as usize + 1) * 4;
        let header = b
            .get(pos..pos + header_len)
            .ok_or("truncated xz block header")?;
        let flags = header[1];
        let mut p = 2;
        if flags & 0x40 != 0 {
            varint(header, &mut p)?; // compressed size
        }
        if flags & 0x80 != 0 {
            varint(header, &mut p)?; // uncompressed size
        }
        let mut filters = Vec::new();
        for _ in 0..(flags & 0x03) + 1 {
            let id = varint(header, &mut p)?;
            let props_len = varint(header, &mut p)? as usize;
            let props = header
                .get(p..p + props_len)
                .ok_or("truncated xz filter flags")?;
            p += props_len;
            filters.push((id, props.to_vec()));
        }
        let bcj_start = match filters.as_slice() {
            [(FILTER_LZMA2, _)] => None,
            [(FILTER_X86, props), (FILTER_LZMA2, _)] => Some(match props.len() {
                0 => 0,
                4 => u32::from_le_bytes([props[0], props[1], props[2], props[3]]),
                _ => return Err("bad x86 BCJ filter properties".into()),
            }),
            other => {
                let ids: Vec<u64> = other.iter().map(|f| f.0).collect();
                return Err(format!("unsupported xz filter chain {ids:?}"));
            }
        };
        pos += header_len;
        let mut cursor = Cursor::new(&b[pos..]);
        let mut block = Vec::new();
        lzma_rs::lzma2_decompress(&mut cursor, &mut block)
            .map_err(|e| format!("LZMA2 data is corrupt: {e}"))?;
        pos += cursor.position() as usize;
        pos = block_start + (pos - block_start).div_ceil(4) * 4; // block padding
        if let Some(start) = bcj_start {
            bcj_x86(&mut block, start, false);
        }
        let stored = b
            .get(pos..pos + check_len)
            .ok_or("truncated xz block check")?;
        verify_check(check, stored, &block)?;
        pos += check_len;
        out.extend_from_slice(&block);
    }
    Ok(out)
}

fn verify_check(check: u8, stored: &[u8], data: &[u8]) -> Result<(), String> {
    let ok = match check {
        1 => {
            let mut crc = flate2::Crc::new();
            crc.update(data);
            crc.sum().to_le_bytes() == stored
        }
        10 => Sha256::digest(data)[..] == *stored,
        _ => true, // none, or CRC64 (not verified; the ELF check still applies)
    };
    if ok {
        Ok(())
    } else {
        Err("the decompressed kernel fails the xz integrity check".into())
    }
}

/// The x86 BCJ filter of xz/7-Zip (converts relative CALL/JMP targets).
/// `encode = false` undoes what the compressor did. `start` is the filter's
/// start offset (0 unless the filter properties say otherwise).
pub fn bcj_x86(buf: &mut [u8], start: u32, encode: bool) {
    const MASK_TO_ALLOWED: [bool; 8] = [true, true, true, false, true, false, false, false];
    const MASK_TO_BIT_NUMBER: [u32; 8] = [0, 1, 2, 2, 3, 3, 3, 3];
    let test86 = |b: u8| b == 0 || b == 0xFF;
    if buf.len() < 5 {
        return;
    }
    let mut prev_mask = 0u32;
    let mut prev_pos = start.wrapping_sub(5);
    let limit = buf.len() - 5;
    let mut i = 0;
    while i <= limit {
        if buf[i] != 0xE8 && buf[i] != 0xE9 {
            i += 1;
            continue;
        }
        let now = start.wrapping_add(i as u32);
        let offset = now.wrapping_sub(prev_pos);
        prev_pos = now;
        if offset > 5 {
            prev_mask = 0;
        } else {
            for _ in 0..offset {
                prev_mask &= 0x77;
                prev_mask <<= 1;
            }
        }
        let b4 = buf[i + 4];
        if test86(b4) && MASK_TO_ALLOWED[((prev_mask >> 1) & 7) as usize] && (prev_mask >> 1) < 0x10
        {
            let mut src = u32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], b4]);
            let pc = now.wrapping_add(5);
            let dest = loop {
                let dest = if encode {
                    src.wrapping_add(pc)
                } else {
                    src.wrapping_sub(pc)
                };
                if prev_mask == 0 {
                    break dest;
                }
                let bit = MASK_TO_BIT_NUMBER[((prev_mask >> 1) & 7) as usize];
                if !test86((dest >> (24 - bit * 8)) as u8) {
                    break dest;
                }
                src = dest ^ 1u32.wrapping_shl(32 - bit * 8).wrapping_sub(1);
            };
            buf[i + 4] = !(((dest >> 24) & 1).wrapping_sub(1)) as u8;
            buf[i + 1..i + 4].copy_from_slice(&dest.to_le_bytes()[..3]);
            i += 5;
            prev_mask = 0;
        } else {
            i += 1;
            prev_mask |= 1;
            if test86(b4) {
                prev_mask |= 0x10;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that look like x86 code: many E8/E9 opcodes with small targets.
    fn code_like(n: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 7 {
                    0 => 0xE8,
                    1 => 0xE9,
                    2 => 0x00,
                    3 => 0xFF,
                    _ => (x >> 32) as u8,
                }
            })
            .collect()
    }

    #[test]
    fn bcj_roundtrip() {
        for start in [0u32, 16, 0xFFFF_FFF0] {
            let original = code_like(100_000);
            let mut buf = original.clone();
            bcj_x86(&mut buf, start, true);
            assert_ne!(buf, original, "the encoder changed nothing");
            bcj_x86(&mut buf, start, false);
            assert_eq!(buf, original, "start={start:#x}");
        }
    }

    #[test]
    fn bcj_converts_a_call() {
        // CALL rel32 = +0x10 at offset 0 becomes absolute 0x15 (0x10 + 5).
        let mut buf = vec![0xE8, 0x10, 0x00, 0x00, 0x00, 0x90, 0x90];
        bcj_x86(&mut buf, 0, true);
        assert_eq!(buf, [0xE8, 0x15, 0x00, 0x00, 0x00, 0x90, 0x90]);
    }

    #[test]
    fn varints() {
        let mut p = 0;
        assert_eq!(varint(&[0x7F, 0xFF, 0x01], &mut p), Ok(0x7F));
        assert_eq!(varint(&[0x7F, 0xFF, 0x01], &mut p), Ok(0xFF));
        assert_eq!(p, 3);
        assert!(varint(&[0x80], &mut 0).is_err());
    }

    #[test]
    fn no_payload_means_none() {
        assert_eq!(extract(b"not a kernel at all"), Ok(None));
    }

    #[test]
    fn corrupt_payload_is_an_error() {
        let mut fake = vec![0u8; 64];
        fake.extend_from_slice(&XZ_MAGIC);
        fake.extend_from_slice(&[0x00, 0x01, 0, 0, 0, 0, 0x02, 0x00, 0x21, 0x01, 0x16, 0]);
        fake.extend_from_slice(&[0xFF; 32]);
        assert!(extract(&fake).is_err());
    }

    #[test]
    fn header_offset_is_read() {
        let mut b = vec![0u8; 0x300];
        b[0x1F1] = 3;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        b[0x248..0x24C].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(header_payload_offset(&b), Some(4 * 512 + 100));
    }
}
