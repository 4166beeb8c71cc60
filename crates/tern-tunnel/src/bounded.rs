//! The TLS side's socket as rustls sees it before the hand-over: reads
//! never cross the end of a TLS record.
//!
//! At the hand-over (`splice::take_over`) rustls's keys move to the record
//! threads, and whatever rustls had already read is lost with it: both
//! ciphertext of a record it had not finished and plaintext nobody had read
//! yet. Both would happen when the peer speaks right after its reply (an
//! NBD server greets first, so its greeting can arrive with the tunnel's
//! reply byte). Handing rustls one record at a time stops it at the reply's
//! record; what follows stays in the buffer below, which the record thread
//! starts from.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;

/// TLS record header: type, version (2), length (2).
const HEADER: usize = 5;

/// A buffered socket whose reads stop at TLS record boundaries.
#[derive(Debug)]
pub struct RecordBounded {
    inner: BufReader<TcpStream>,
    /// Header bytes of the current record seen so far.
    header: [u8; HEADER],
    header_len: usize,
    /// Body bytes of the current record still to hand out.
    body_left: usize,
}

impl RecordBounded {
    /// Wraps `inner`, which must be at a record boundary.
    pub fn new(inner: BufReader<TcpStream>) -> Self {
        RecordBounded {
            inner,
            header: [0; HEADER],
            header_len: 0,
            body_left: 0,
        }
    }

    /// The buffered socket, if rustls stopped between two records.
    pub fn into_inner(self) -> std::io::Result<BufReader<TcpStream>> {
        if self.header_len != 0 || self.body_left != 0 {
            return Err(std::io::Error::other(
                "the tunnel's hand-over came in the middle of a TLS record",
            ));
        }
        Ok(self.inner)
    }

    /// How many bytes the next read may return.
    fn limit(&self) -> usize {
        if self.header_len < HEADER {
            HEADER - self.header_len
        } else {
            self.body_left
        }
    }

    /// Accounts for `bytes` just handed out.
    fn consumed(&mut self, bytes: &[u8]) {
        if self.header_len < HEADER {
            self.header[self.header_len..self.header_len + bytes.len()].copy_from_slice(bytes);
            self.header_len += bytes.len();
            if self.header_len == HEADER {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                if self.body_left == 0 {
                    self.header_len = 0;
                }
            }
        } else {
            self.body_left -= bytes.len();
            if self.body_left == 0 {
                self.header_len = 0;
            }
        }
    }
}

impl AsyncRead for RecordBounded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let want = this.limit().min(buf.remaining());
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
        match Pin::new(&mut this.inner).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                let n = part.filled().len();
                buf.advance(n);
                this.consumed(&buf.filled()[start..]);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for RecordBounded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_stop_at_each_record_and_the_rest_stays_buffered() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Two records (bodies of 3 and 2 bytes), then plain bytes.
        c.write_all(&[
            23, 3, 3, 0, 3, b'a', b'b', b'c', 23, 3, 3, 0, 2, b'd', b'e', 1, 2,
        ])
        .await
        .unwrap();
        let mut r = RecordBounded::new(BufReader::with_capacity(1 << 16, s));
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 8 {
            let n = r.read(&mut buf).await.unwrap();
            assert!(got.len() + n <= 8, "a read crossed the first record's end");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[5..], b"abc");
        let inner = r.into_inner().unwrap();
        // The next record and what follows are still in the buffer.
        assert!(inner.buffer().starts_with(&[23, 3, 3, 0, 2]));
        let mut r = RecordBounded::new(inner);
        let mut one = [0u8; 3];
        r.read_exact(&mut one).await.unwrap();
        assert!(
            r.into_inner().is_err(),
            "mid-record hand-over must be refused"
        );
    }
}
