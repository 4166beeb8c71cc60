//! The bulk phase of a tunnel stream: TLS 1.3 records sealed and opened by
//! the agent itself once rustls has finished the handshake, the way kernel
//! TLS takes over after a user-space handshake (this host's kernel has no
//! kTLS; where it has, the same keys could be handed to it).
//!
//! Why: through tokio-rustls every byte was copied into rustls's record
//! buffer on the way out and out of its plaintext buffer on the way in, and
//! each 256 KiB went through several task wake-ups. Here each direction is
//! one thread with blocking sockets:
//!
//! - **up** (local socket to peer): `readv` straight into the payload slots
//!   of up to [`SLOTS`] records laid out back to back, then each record is
//!   sealed in place and the whole batch leaves in one `write`;
//! - **down** (peer to local socket): one large `read`, every complete
//!   record opened in place, and the plaintexts leave in one `writev`.
//!
//! The records are standard TLS 1.3 (RFC 8446 §5.2): header `17 03 03 len`,
//! inner plaintext = data ‖ content type, AEAD tag; nonce = IV ⊕ sequence
//! number; the header is the additional data. The sequence numbers continue
//! from the handshake's. End of stream is a sealed `close_notify` alert,
//! then TCP FIN; a FIN without it is reported as a truncated stream.
//! Post-handshake handshake messages are ignored, except `key_update`,
//! which neither agent sends and which is refused.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

/// Largest payload of one record (2^14).
pub const PAYLOAD: usize = 16 * 1024;
const HEADER: usize = 5;
const TAG: usize = 16;
/// One full record: header, payload, content type, tag.
const SLOT: usize = HEADER + PAYLOAD + 1 + TAG;
/// Records sealed per batch (128 KiB of payload per `readv`: the batch
/// stays in cache between the copy in, the cipher and the copy out).
pub const SLOTS: usize = 8;
/// Largest ciphertext a TLS 1.3 record may carry.
const MAX_CIPHERTEXT: usize = PAYLOAD + 256;
/// The down direction's read buffer.
const DOWN_BUFFER: usize = 256 << 10;

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;
const KEY_UPDATE: u8 = 24;
const CLOSE_NOTIFY: u8 = 0;

/// One direction's key state.
pub struct Cipher {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Cipher {
    /// The key of one direction from rustls's extracted secrets, and the
    /// sequence number to continue from.
    pub fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> io::Result<Cipher> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(invalid(
                    "the tunnel negotiated a cipher it cannot take over",
                ))
            }
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| invalid("the tunnel's traffic key has the wrong length"))?;
        let iv: [u8; aead::NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| invalid("the tunnel's IV has the wrong length"))?;
        Ok(Cipher {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    fn nonce(&mut self) -> io::Result<Nonce> {
        // A sequence number must never repeat under one key.
        let seq = self.seq;
        self.seq = seq
            .checked_add(1)
            .ok_or_else(|| invalid("the tunnel stream used up its sequence numbers"))?;
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Seals the record in `slot` whose `len` payload bytes are already at
    /// `slot[HEADER..]`; returns the record's length.
    fn seal(&mut self, slot: &mut [u8], len: usize, kind: u8) -> io::Result<usize> {
        let body = len + 1 + TAG;
        let header = [
            APPLICATION_DATA,
            0x03,
            0x03,
            (body >> 8) as u8,
            (body & 0xff) as u8,
        ];
        slot[..HEADER].copy_from_slice(&header);
        slot[HEADER + len] = kind;
        let nonce = self.nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce,
                Aad::from(header),
                &mut slot[HEADER..HEADER + len + 1],
            )
            .map_err(|_| invalid("sealing a tunnel record failed"))?;
        slot[HEADER + len + 1..HEADER + body].copy_from_slice(tag.as_ref());
        Ok(HEADER + body)
    }

    /// Opens the record `rec` (header included) in place; returns its
    /// content type and its data's length (the data starts at `HEADER`).
    fn open(&mut self, rec: &mut [u8]) -> io::Result<(u8, usize)> {
        let (header, body) = rec.split_at_mut(HEADER);
        let mut aad = [0u8; HEADER];
        aad.copy_from_slice(header);
        let nonce = self.nonce()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| invalid("a tunnel record failed authentication (corrupted or forged)"))?;
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(invalid("a tunnel record has no content type"));
        };
        Ok((plain[end], end))
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Local socket to peer until the local side ends its writing; then a
/// `close_notify` and FIN. Returns the bytes carried.
pub fn up(mut local: &UnixStream, mut tcp: &TcpStream, mut cipher: Cipher) -> io::Result<u64> {
    let mut buf = vec![0u8; SLOTS * SLOT];
    let mut total = 0u64;
    loop {
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> = buf
                .chunks_mut(SLOT)
                .map(|s| IoSliceMut::new(&mut s[HEADER..HEADER + PAYLOAD]))
                .collect();
            retry(|| local.read_vectored(&mut iov))?
        };
        if n == 0 {
            // Alert level 1 (warning), description close_notify.
            buf[HEADER..HEADER + 2].copy_from_slice(&[1, CLOSE_NOTIFY]);
            let len = cipher.seal(&mut buf, 2, ALERT)?;
            tcp.write_all(&buf[..len])?;
            tcp.shutdown(Shutdown::Write)?;
            return Ok(total);
        }
        let mut out = 0;
        let mut left = n;
        for slot in buf.chunks_mut(SLOT) {
            if left == 0 {
                break;
            }
            let len = left.min(PAYLOAD);
            let rec = cipher.seal(slot, len, APPLICATION_DATA)?;
            // Only the last record may be short, so records stay contiguous.
            out += rec;
            left -= len;
        }
        tcp.write_all(&buf[..out])?;
        total += n as u64;
    }
}

/// Peer to local socket until the peer's `close_notify`; then the local
/// socket's writing side is shut down. `early` holds bytes already read
/// from the peer's socket during the handshake. Returns the bytes carried.
pub fn down(
    tcp: &TcpStream,
    mut local: &UnixStream,
    cipher: Cipher,
    early: &[u8],
) -> io::Result<u64> {
    let total = read_records(tcp, cipher, early, |buf, pieces| {
        write_pieces(&mut local, buf, pieces)
    })?;
    local.shutdown(Shutdown::Write)?;
    Ok(total)
}

/// The record reader: opens every record arriving on `peer` and hands the
/// plaintext pieces of each read to `deliver`, until a `close_notify`
/// (returns the bytes delivered) or an error. Nothing unauthenticated is
/// ever delivered. Generic over the source so the fuzz target
/// ([`fuzz_read_records`]) runs it on arbitrary bytes.
fn read_records(
    mut peer: impl Read,
    mut cipher: Cipher,
    early: &[u8],
    mut deliver: impl FnMut(&[u8], &[(usize, usize)]) -> io::Result<u64>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; DOWN_BUFFER.max(early.len() + HEADER + MAX_CIPHERTEXT)];
    buf[..early.len()].copy_from_slice(early);
    let (mut start, mut end) = (0usize, early.len());
    let mut total = 0u64;
    let mut pieces: Vec<(usize, usize)> = Vec::with_capacity(DOWN_BUFFER / PAYLOAD + 1);
    loop {
        pieces.clear();
        let closed = open_complete(&mut buf, &mut start, end, &mut cipher, &mut pieces)?;
        total += deliver(&buf, &pieces)?;
        if closed {
            return Ok(total);
        }
        if start == end {
            (start, end) = (0, 0);
        } else if buf.len() - end < HEADER + MAX_CIPHERTEXT {
            // Only a partial record is left: move it to the front.
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let m = retry(|| peer.read(&mut buf[end..]))?;
        if m == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tunnel peer closed the stream without close_notify (truncated)",
            ));
        }
        end += m;
    }
}

/// Opens every complete record of `buf[*start..end]` in place, noting
/// where each plaintext lies in `pieces` and moving `start` past it; true
/// once a `close_notify` was opened (nothing after it is read).
fn open_complete(
    buf: &mut [u8],
    start: &mut usize,
    end: usize,
    cipher: &mut Cipher,
    pieces: &mut Vec<(usize, usize)>,
) -> io::Result<bool> {
    while end - *start >= HEADER {
        let h = &buf[*start..*start + HEADER];
        if h[0] != APPLICATION_DATA {
            return Err(invalid(
                "the tunnel peer sent a record that is not TLS 1.3 application data",
            ));
        }
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        if !(TAG + 1..=MAX_CIPHERTEXT).contains(&len) {
            return Err(invalid(
                "the tunnel peer sent a record of impossible length",
            ));
        }
        if end - *start < HEADER + len {
            break;
        }
        let (kind, n) = cipher.open(&mut buf[*start..*start + HEADER + len])?;
        let data = *start + HEADER;
        *start += HEADER + len;
        match kind {
            APPLICATION_DATA if n > 0 => pieces.push((data, n)),
            APPLICATION_DATA => {}
            ALERT if n == 2 && buf[data + 1] == CLOSE_NOTIFY => return Ok(true),
            ALERT => return Err(invalid("the tunnel peer sent a TLS alert")),
            HANDSHAKE if n > 0 && buf[data] == KEY_UPDATE => {
                return Err(invalid(
                    "the tunnel peer asked for a key update, which the tunnel does not do",
                ))
            }
            // A late NewSessionTicket: nothing to do with it.
            HANDSHAKE => {}
            _ => return Err(invalid("the tunnel peer sent a record of unknown type")),
        }
    }
    Ok(false)
}

/// Fuzz target body (`fuzz/`, target `tunnel_records`): the record reader
/// on bytes from a peer. The first byte picks the mode: even, the rest is
/// raw bytes off the wire; odd, it is a list of records to seal with the
/// peer's key (`kind`, `len` as two bytes, then up to `len` payload bytes;
/// a kind with bit 7 set also flips one byte of that sealed record). The
/// second byte sets the size of each read. Checks: no panic, and whatever
/// is delivered is a prefix of the application data that was sealed
/// (nothing forged, reordered or replayed gets through).
#[doc(hidden)]
pub fn fuzz_read_records(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&step, rest)) = rest.split_first() else {
        return;
    };
    let secrets = || ConnectionTrafficSecrets::Chacha20Poly1305 {
        key: rustls::crypto::cipher::AeadKey::from([3u8; 32]),
        iv: rustls::crypto::cipher::Iv::from([5u8; 12]),
    };
    let (Ok(mut sealer), Ok(opener)) = (Cipher::new(1, &secrets()), Cipher::new(1, &secrets()))
    else {
        return;
    };
    let (wire, sealed) = if mode % 2 == 0 {
        (rest.to_vec(), Vec::new())
    } else {
        seal_script(&mut sealer, rest)
    };
    let reads = Chunks {
        data: &wire,
        at: 0,
        step: usize::from(step) * 97 + 1,
    };
    let mut got = Vec::new();
    let _ = read_records(reads, opener, &[], |buf, pieces| {
        for &(at, n) in pieces {
            got.extend_from_slice(&buf[at..at + n]);
        }
        Ok(pieces.iter().map(|p| p.1 as u64).sum())
    });
    assert!(
        sealed.starts_with(&got),
        "delivered {} bytes that were not sealed in that order",
        got.len()
    );
}

/// Seals the records a fuzz input describes; returns the wire bytes and
/// the application data sealed, in order.
fn seal_script(sealer: &mut Cipher, mut script: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    let mut sealed = Vec::new();
    let mut slot = vec![0u8; SLOT];
    while let [kind, a, b, tail @ ..] = script {
        let len = (usize::from(u16::from_be_bytes([*a, *b])) % (PAYLOAD + 1)).min(tail.len());
        let plain = &tail[..len];
        slot[HEADER..HEADER + len].copy_from_slice(plain);
        script = &tail[len..];
        let content = match kind & 0x7f {
            0 => APPLICATION_DATA,
            1 => ALERT,
            2 => HANDSHAKE,
            k => k,
        };
        let Ok(n) = sealer.seal(&mut slot, len, content) else {
            break;
        };
        if kind & 0x80 != 0 {
            slot[(usize::from(*a) % n).max(1)] ^= 0x40;
        }
        if content == APPLICATION_DATA {
            sealed.extend_from_slice(plain);
        }
        wire.extend_from_slice(&slot[..n]);
    }
    (wire, sealed)
}

/// A peer that hands out `data` `step` bytes per read.
struct Chunks<'a> {
    data: &'a [u8],
    at: usize,
    step: usize,
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(out.len()).min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Writes every piece of `buf` in as few `writev`s as the socket allows.
fn write_pieces(local: &mut &UnixStream, buf: &[u8], pieces: &[(usize, usize)]) -> io::Result<u64> {
    let mut iov: Vec<IoSlice<'_>> = pieces
        .iter()
        .map(|&(at, n)| IoSlice::new(&buf[at..at + n]))
        .collect();
    let total: usize = pieces.iter().map(|p| p.1).sum();
    let mut slices = &mut iov[..];
    while !slices.is_empty() {
        let n = retry(|| local.write_vectored(slices))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the local socket took no more data",
            ));
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Cipher, Cipher) {
        // A 32-byte key: AES-256-GCM (rustls's AeadKey holds 32 bytes).
        let secrets = || ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
            iv: rustls::crypto::cipher::Iv::from([9u8; 12]),
        };
        (
            Cipher::new(3, &secrets()).expect("sealer"),
            Cipher::new(3, &secrets()).expect("opener"),
        )
    }

    #[test]
    fn a_sealed_record_opens_to_its_data_and_a_changed_byte_fails() {
        let (mut s, mut o) = pair();
        let mut slot = vec![0u8; SLOT];
        slot[HEADER..HEADER + 5].copy_from_slice(b"hello");
        let n = s.seal(&mut slot, 5, APPLICATION_DATA).expect("seal");
        assert_eq!(n, HEADER + 5 + 1 + TAG);
        let mut rec = slot[..n].to_vec();
        assert_eq!(o.open(&mut rec).expect("open"), (APPLICATION_DATA, 5));
        assert_eq!(&rec[HEADER..HEADER + 5], b"hello");
        // The next record under the next sequence number; a flipped bit fails.
        slot[HEADER..HEADER + 5].copy_from_slice(b"world");
        let n = s.seal(&mut slot, 5, APPLICATION_DATA).expect("seal");
        slot[HEADER + 2] ^= 1;
        assert!(o.open(&mut slot[..n]).is_err());
    }

    #[test]
    fn a_replayed_record_fails() {
        let (mut s, mut o) = pair();
        let mut slot = vec![0u8; SLOT];
        let n = s.seal(&mut slot, 100, APPLICATION_DATA).expect("seal");
        let rec = slot[..n].to_vec();
        assert!(o.open(&mut rec.clone()).is_ok());
        assert!(o.open(&mut rec.clone()).is_err());
    }

    #[test]
    fn streams_arrive_whole_and_end_with_close_notify() {
        let (s, o) = pair();
        let (mut app_a, tun_a) = UnixStream::pair().expect("pair");
        let (tun_b, mut app_b) = UnixStream::pair().expect("pair");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (srv, _) = l.accept().expect("accept");
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 9999) as u8)
            .collect();
        std::thread::scope(|sc| {
            let up_t = sc.spawn(|| up(&tun_a, &c, s));
            let down_t = sc.spawn(|| down(&srv, &tun_b, o, &[]));
            let d = data.clone();
            sc.spawn(move || {
                for chunk in d.chunks(70_001) {
                    app_a.write_all(chunk).expect("write");
                }
                app_a.shutdown(Shutdown::Write).expect("shutdown");
            });
            let mut got = Vec::new();
            app_b.read_to_end(&mut got).expect("read");
            assert_eq!(got.len(), data.len());
            assert!(got == data, "the bytes changed on the way");
            assert_eq!(up_t.join().expect("up").expect("up ok"), data.len() as u64);
            assert_eq!(
                down_t.join().expect("down").expect("down ok"),
                data.len() as u64
            );
        });
    }

    #[test]
    fn a_fin_without_close_notify_is_a_truncation() {
        let (_, o) = pair();
        let (tun_b, _app_b) = UnixStream::pair().expect("pair");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (srv, _) = l.accept().expect("accept");
        drop(c);
        let e = down(&srv, &tun_b, o, &[]).expect_err("truncated");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_fuzz_body_delivers_sealed_data_and_nothing_forged() {
        // Two application-data records and a close_notify, read 98 bytes at a time.
        let mut script = vec![1u8, 1];
        for (kind, data) in [(0u8, &b"first"[..]), (0, b"second"), (1, &[1, 0][..])] {
            script.push(kind);
            script.extend_from_slice(&(data.len() as u16).to_be_bytes());
            script.extend_from_slice(data);
        }
        fuzz_read_records(&script);
        // The second record flipped: only the first may come through.
        let mut bad = script.clone();
        bad[2 + 3 + 5] |= 0x80;
        fuzz_read_records(&bad);
        // Raw bytes.
        fuzz_read_records(&[0, 0, 0x17, 3, 3, 0, 40, 1, 2, 3]);
    }
}
