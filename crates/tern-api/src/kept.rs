//! The one connection a [`crate::Client`] may keep open between calls
//! ([`crate::Client::keep_alive`]), shared by the client's clones.

use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;

/// The sending half of a kept HTTP/1.1 connection.
pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The kept connection, if one is open. Whoever holds the lock owns it
/// for one call; a call that finds it held opens its own.
#[derive(Debug, Default, Clone)]
pub(crate) struct Kept(Arc<tokio::sync::Mutex<Option<Sender>>>);

impl Kept {
    /// The connection, unless a call is using it.
    pub(crate) fn try_lock(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Sender>>, tokio::sync::TryLockError> {
        self.0.try_lock()
    }
}

#[cfg(test)]
mod tests {
    use crate::Client;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A loopback HTTP server answering `{}` that counts its connections
    /// and closes each after `per_conn` requests.
    async fn server(per_conn: usize) -> (u16, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let served = Arc::new(AtomicUsize::new(0));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"{}"),
                            ));
                            if n >= per_conn {
                                r.headers_mut()
                                    .insert("connection", "close".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (port, conns)
    }

    async fn call(c: &Client) {
        let _: serde_json::Value = c.get("/x").await.unwrap();
    }

    #[tokio::test]
    async fn a_kept_connection_carries_every_call_until_the_server_closes_it() {
        let (port, conns) = server(3).await;
        let c = Client::tcp("127.0.0.1", port).keep_alive();
        for _ in 0..3 {
            call(&c).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        // The server closed it after the third: the next call reconnects.
        call(&c).await;
        call(&c).await;
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn without_keep_alive_each_call_connects() {
        let (port, conns) = server(100).await;
        let c = Client::tcp("127.0.0.1", port);
        call(&c).await;
        call(&c).await;
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }
}
