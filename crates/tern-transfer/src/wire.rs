//! Wire format: a fixed preface, then length-prefixed frames (all integers little-endian).

use std::io::{self, IoSlice, Read, Write};

use crate::error::{Error, Result};
use crate::extents::MAX_CHUNK_SIZE;

/// First 8 bytes each side sends on every connection.
pub const MAGIC: [u8; 8] = *b"TERNXFER";
/// Protocol version this build speaks.
pub const VERSION: u16 = 2;
/// Preface: magic, version (u16), reserved (u16).
pub const PREFACE_LEN: usize = 12;
/// Most chunks a session may have (bounds the resume bitmap to 4 MiB).
pub const MAX_CHUNK_COUNT: u64 = 1 << 25;
/// Largest frame body accepted from a peer.
pub const MAX_FRAME: u32 = MAX_CHUNK_SIZE + 4096;
/// Longest text (error or reject message) accepted from a peer.
pub const MAX_TEXT: u32 = 1024;
/// Size of a frame header: type (u8), 3 reserved bytes, body length (u32).
pub const FRAME_HEADER_LEN: usize = 8;
/// Size of the fixed part of a chunk frame body.
pub const CHUNK_HEADER_LEN: usize = 64;
/// Hello flag / Welcome flag: zstd compression wanted / accepted.
pub const FLAG_ZSTD: u16 = 1;
/// Hello flag: chunks carry BLAKE3 checksums (else XXH3-128). Version 2.
pub const FLAG_BLAKE3: u16 = 2;
/// Hello flag: chunks carry keyed BLAKE3 MACs and the Hello's session
/// field is its MAC tag ([`crate::checksum::MacKey::hello_tag`]).
pub const FLAG_MAC: u16 = 4;
/// Chunk flag: the payload is zstd-compressed.
pub const CHUNK_COMPRESSED: u8 = 1;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Sender → receiver, first frame of every stream.
    Hello = 1,
    /// Receiver → sender, accepts a Hello.
    Welcome = 2,
    /// Receiver → sender, refuses a Hello (text).
    Reject = 3,
    /// Sender → receiver, one chunk.
    Chunk = 4,
    /// Sender → receiver on data streams: no more chunks on this stream.
    End = 5,
    /// Sender → receiver on the control stream: all streams are done sending.
    Finish = 6,
    /// Receiver → sender: everything verified and committed.
    Done = 7,
    /// Either way: fatal error (text), the session is aborted.
    Error = 8,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Reject,
            4 => Kind::Chunk,
            5 => Kind::End,
            6 => Kind::Finish,
            7 => Kind::Done,
            8 => Kind::Error,
            _ => return None,
        })
    }

    fn max_len(self) -> u32 {
        match self {
            Kind::Hello => 128,
            Kind::Welcome => 8 + (MAX_CHUNK_COUNT / 8) as u32,
            Kind::Reject | Kind::Error => MAX_TEXT,
            Kind::Chunk => MAX_FRAME,
            Kind::End | Kind::Finish => 0,
            Kind::Done => 8,
        }
    }
}

/// Builds this side's preface.
pub fn preface() -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..8].copy_from_slice(&MAGIC);
    p[8..10].copy_from_slice(&VERSION.to_le_bytes());
    p
}

/// Checks a peer's preface: magic first, then version.
pub fn check_preface(p: &[u8; PREFACE_LEN]) -> Result<()> {
    if p[..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let v = u16::from_le_bytes([p[8], p[9]]);
    if v != VERSION {
        return Err(Error::UnsupportedVersion {
            peer: v,
            ours: VERSION,
        });
    }
    Ok(())
}

/// Writes all of `bufs`, looping over short vectored writes.
pub fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encodes a frame header.
pub fn frame_header(kind: Kind, len: usize) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0] = kind as u8;
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// Writes one whole frame.
pub fn write_frame(w: &mut impl Write, kind: Kind, body: &[u8]) -> io::Result<()> {
    let h = frame_header(kind, body.len());
    write_all_vectored(w, &mut [IoSlice::new(&h), IoSlice::new(body)])
}

/// Reads a frame header and checks the type and its length bound.
pub fn read_frame_header(r: &mut impl Read) -> io::Result<Result<(Kind, u32)>> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut h)?;
    let Some(kind) = Kind::from_u8(h[0]) else {
        return Ok(Err(Error::Protocol(format!("unknown frame type {}", h[0]))));
    };
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > kind.max_len() {
        return Ok(Err(Error::Protocol(format!(
            "{kind:?} frame of {len} bytes exceeds the limit of {}",
            kind.max_len()
        ))));
    }
    Ok(Ok((kind, len)))
}

/// Reads `len` bytes of body into `buf` (reusing its allocation).
pub fn read_body(r: &mut impl Read, buf: &mut Vec<u8>, len: u32) -> io::Result<()> {
    buf.resize(len as usize, 0);
    r.read_exact(buf)
}

/// Encodes a text message, cut to [`MAX_TEXT`] bytes on a character boundary.
pub fn text_body(msg: &str) -> &[u8] {
    let mut end = msg.len().min(MAX_TEXT as usize);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg.as_bytes()[..end]
}

/// Decodes a peer's text message (lossy, never fails).
pub fn decode_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Little-endian field reader over a frame body that reports truncation as a protocol error.
pub struct Fields<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    /// Starts reading `buf`, naming it `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Fields { buf, what }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Protocol(format!("{} frame is truncated", self.what)));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// Takes a u8.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    /// Takes a u16.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Takes a u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Takes a u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.buf
    }
}

/// First frame on every stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`FLAG_ZSTD`] if the sender wants compression, [`FLAG_BLAKE3`] for
    /// BLAKE3 checksums.
    pub flags: u16,
    /// Session id both callers agreed on.
    pub session: [u8; 16],
    /// 0 for the control stream, 1.. for data streams.
    pub stream_index: u16,
    /// Total streams the sender opens.
    pub stream_count: u16,
    /// Chunk size of the plan.
    pub chunk_size: u32,
    /// Source file size (the destination gets exactly this length).
    pub file_size: u64,
    /// Number of chunks in the plan.
    pub chunk_count: u64,
    /// Allocated data bytes in the plan.
    pub data_bytes: u64,
    /// Source fingerprint (see [`crate::extents::fingerprint`]).
    pub fingerprint: [u8; 32],
}

impl Hello {
    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(82);
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.session);
        b.extend_from_slice(&self.stream_index.to_le_bytes());
        b.extend_from_slice(&self.stream_count.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&self.file_size.to_le_bytes());
        b.extend_from_slice(&self.chunk_count.to_le_bytes());
        b.extend_from_slice(&self.data_bytes.to_le_bytes());
        b.extend_from_slice(&self.fingerprint);
        b
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Hello> {
        let mut f = Fields::new(body, "Hello");
        Ok(Hello {
            flags: f.u16()?,
            session: f.array()?,
            stream_index: f.u16()?,
            stream_count: f.u16()?,
            chunk_size: f.u32()?,
            file_size: f.u64()?,
            chunk_count: f.u64()?,
            data_bytes: f.u64()?,
            fingerprint: f.array()?,
        })
    }
}

/// Fixed part of a chunk frame; the payload (non-zero blocks, maybe compressed) follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Index in the chunk plan.
    pub index: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Logical length (including zero blocks).
    pub len: u32,
    /// [`CHUNK_COMPRESSED`] or 0.
    pub flags: u8,
    /// Bit i set: 64 KiB block i is all zeros and not in the payload.
    pub zero_mask: u64,
    /// Checksum of the chunk's `len` logical bytes (XXH3-128 zero-padded, or BLAKE3).
    pub hash: [u8; 32],
}

impl ChunkHeader {
    /// Encodes the fixed part.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..8].copy_from_slice(&self.index.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20] = self.flags;
        b[24..32].copy_from_slice(&self.zero_mask.to_le_bytes());
        b[32..64].copy_from_slice(&self.hash);
        b
    }

    /// Decodes the fixed part.
    pub fn decode(b: &[u8]) -> Result<ChunkHeader> {
        let mut f = Fields::new(b, "Chunk");
        let index = f.u64()?;
        let offset = f.u64()?;
        let len = f.u32()?;
        let flags = f.u8()?;
        f.bytes(3)?;
        Ok(ChunkHeader {
            index,
            offset,
            len,
            flags,
            zero_mask: f.u64()?,
            hash: f.array()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_roundtrip() {
        let h = Hello {
            flags: FLAG_ZSTD,
            session: [7; 16],
            stream_index: 1,
            stream_count: 2,
            chunk_size: 1 << 20,
            file_size: 1 << 33,
            chunk_count: 512,
            data_bytes: 1 << 31,
            fingerprint: [9; 32],
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&h.encode()[..50]).is_err());
    }

    #[test]
    fn chunk_header_roundtrip() {
        let c = ChunkHeader {
            index: 3,
            offset: 99,
            len: 4096,
            flags: 1,
            zero_mask: 5,
            hash: [1; 32],
        };
        assert_eq!(ChunkHeader::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn frame_limits_enforced() {
        let mut h = frame_header(Kind::Chunk, 0).to_vec();
        h[4..8].copy_from_slice(&(MAX_FRAME + 1).to_le_bytes());
        let r = read_frame_header(&mut h.as_slice()).unwrap();
        assert!(matches!(r, Err(Error::Protocol(_))));
        let mut bad = [42u8, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            read_frame_header(&mut bad.as_slice()).unwrap(),
            Err(Error::Protocol(_))
        ));
        bad[0] = Kind::End as u8;
        assert_eq!(
            read_frame_header(&mut bad.as_slice()).unwrap().unwrap(),
            (Kind::End, 0)
        );
    }

    #[test]
    fn preface_checks() {
        assert!(check_preface(&preface()).is_ok());
        let mut p = preface();
        p[9] = 1;
        assert!(matches!(
            check_preface(&p),
            Err(Error::UnsupportedVersion { peer: 258, ours: 2 })
        ));
        let mut p = preface();
        p[0] = b'G';
        assert!(matches!(check_preface(&p), Err(Error::BadMagic)));
    }

    #[test]
    fn text_is_bounded() {
        let long = "é".repeat(2000);
        let t = text_body(&long);
        assert!(t.len() <= MAX_TEXT as usize);
        assert!(std::str::from_utf8(t).is_ok());
    }
}
