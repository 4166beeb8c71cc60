//! Tell statically linked ELF executables from dynamically linked ones.

const PT_INTERP: u32 = 3;

/// Whether `bytes` is a 64-bit little-endian ELF file without a program
/// interpreter (i.e. statically linked, including static-pie).
/// `Err` says why the bytes are not such an ELF file.
pub fn is_static(bytes: &[u8]) -> Result<bool, &'static str> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file");
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().map_err(|_| "bad header")?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    if phentsize < 4 {
        return Err("bad program header size");
    }
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .ok_or("bad program header offset")?;
        let ty = bytes.get(at..at + 4).ok_or("truncated program headers")?;
        if u32::from_le_bytes([ty[0], ty[1], ty[2], ty[3]]) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn interpreter_means_dynamic() {
        assert_eq!(is_static(&elf(&[6, 3, 1])), Ok(false));
        assert_eq!(is_static(&elf(&[1, 1, 2])), Ok(true));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(is_static(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(&[1, 3]);
        truncated.truncate(100);
        assert!(is_static(&truncated).is_err());
    }

    #[test]
    fn host_binaries() {
        if let Ok(sh) = std::fs::read("/bin/sh") {
            assert_eq!(is_static(&sh), Ok(false), "/bin/sh is dynamic on Debian");
        }
    }
}
