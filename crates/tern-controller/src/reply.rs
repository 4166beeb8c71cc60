//! What a cluster request answers, before it is written.
//!
//! Most answers are small and encoded at once. The lists of every host and
//! every server are not: at 5 000 hosts and 50 000 servers, `server-list`
//! encoded whole was a 160 MB buffer (twice that while it grew), the
//! controller's peak memory. They are encoded a chunk at a time as the
//! connection takes them, from the records the controller keeps decoded,
//! so an answer of any length holds about one chunk.

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde::Serialize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tern_api::cluster::{HostRecord, ServerRecord};
use tern_api::response::json_response;

/// Bytes a list chunk reaches before it is handed to the connection.
pub const LIST_CHUNK_BYTES: usize = 64 << 10;

/// An answer to a cluster request.
#[derive(Debug)]
pub enum Reply {
    /// Encoded already.
    Json(Vec<u8>),
    /// Every host, as a JSON array of host records.
    Hosts(Vec<Arc<HostRecord>>),
    /// Every server, as a JSON array of server records.
    Servers(Vec<Arc<ServerRecord>>),
}

impl Reply {
    /// The HTTP answer, with `status`; lists stream.
    pub fn into_response(self, status: u16) -> axum::response::Response {
        let body = match self {
            Reply::Json(b) => return json_response(status, b).map(axum::body::Body::new),
            Reply::Hosts(h) => axum::body::Body::new(ListBody::new(h)),
            Reply::Servers(s) => axum::body::Body::new(ListBody::new(s)),
        };
        json_response(status, Vec::new()).map(|_| body)
    }

    /// The whole answer in one buffer: for callers in this process (tests)
    /// that read it at once anyway.
    pub fn into_bytes(self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Reply::Json(b) => Ok(b),
            Reply::Hosts(h) => ListBody::new(h).encode_all(),
            Reply::Servers(s) => ListBody::new(s).encode_all(),
        }
    }
}

/// A JSON array of shared records, encoded [`LIST_CHUNK_BYTES`] at a time
/// when the connection asks for more.
#[derive(Debug)]
pub struct ListBody<T> {
    items: Vec<Arc<T>>,
    next: usize,
    done: bool,
}

impl<T: Serialize> ListBody<T> {
    /// A body for `items`, in order.
    pub fn new(items: Vec<Arc<T>>) -> Self {
        ListBody {
            items,
            next: 0,
            done: false,
        }
    }

    /// The next chunk: the opening bracket with the first records, then
    /// records (each after a comma), the last with the closing bracket.
    fn chunk(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        let mut buf = Vec::with_capacity(LIST_CHUNK_BYTES + (LIST_CHUNK_BYTES >> 2));
        if self.next == 0 {
            buf.push(b'[');
        }
        while self.next < self.items.len() && buf.len() < LIST_CHUNK_BYTES {
            if self.next > 0 {
                buf.push(b',');
            }
            serde_json::to_writer(&mut buf, &*self.items[self.next])?;
            self.next += 1;
        }
        if self.next == self.items.len() {
            buf.push(b']');
            self.done = true;
        }
        Ok(buf)
    }

    fn encode_all(mut self) -> Result<Vec<u8>, serde_json::Error> {
        let mut all = Vec::new();
        while !self.done {
            all.extend(self.chunk()?);
        }
        Ok(all)
    }
}

impl<T: Serialize> Body for ListBody<T> {
    type Data = Bytes;
    type Error = serde_json::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(this.chunk().map(|b| Frame::data(Bytes::from(b)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(items: Vec<Arc<serde_json::Value>>) -> (Vec<u8>, usize) {
        let mut b = ListBody::new(items);
        let (mut all, mut chunks) = (Vec::new(), 0);
        while !b.done {
            all.extend(b.chunk().unwrap());
            chunks += 1;
        }
        (all, chunks)
    }

    #[test]
    fn a_list_encodes_as_the_same_json_array_in_chunks() {
        for n in [0, 1, 2, 3, 5000] {
            let items: Vec<_> = (0..n)
                .map(|i| Arc::new(serde_json::json!({"n": i, "pad": "x".repeat(100)})))
                .collect();
            let plain: Vec<&serde_json::Value> = items.iter().map(|i| &**i).collect();
            let whole = serde_json::to_vec(&plain).unwrap();
            let (streamed, chunks) = encoded(items);
            assert_eq!(streamed, whole, "{n} items");
            // 5 000 records of ~120 bytes: several chunks, none far over.
            if n == 5000 {
                assert!(chunks > 5, "{chunks} chunks");
            }
        }
    }

    #[test]
    fn no_chunk_grows_far_past_the_limit() {
        let items: Vec<_> = (0..2000)
            .map(|i| Arc::new(serde_json::json!({"n": i, "pad": "y".repeat(1000)})))
            .collect();
        let mut b = ListBody::new(items);
        while !b.done {
            let c = b.chunk().unwrap();
            assert!(c.len() < LIST_CHUNK_BYTES + 2048, "{} bytes", c.len());
        }
    }
}
