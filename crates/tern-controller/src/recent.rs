//! A value read at most so long ago, read again by one caller at a time.
//!
//! When thousands of hosts register at once (a controller restart, a
//! store that was unreachable for longer than the lease), each
//! registration wants a cluster-wide view: the peer list, where servers
//! are. One read serves all the registrations within its age, and while
//! it is being made the others wait for it rather than each making its
//! own: without that, a thousand registrations arriving together each
//! listed every host record, and on etcd none finished within its agent's
//! timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The last value read and when.
#[derive(Debug)]
pub struct Recent<T> {
    slot: tokio::sync::Mutex<Option<(Instant, Arc<T>)>>,
    max_age: Duration,
}

impl<T> Recent<T> {
    /// Values are read again once older than `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Recent {
            slot: tokio::sync::Mutex::new(None),
            max_age,
        }
    }

    /// The value, read with `read` if the last one is too old or missing.
    /// Callers arriving while a read is under way wait for it.
    pub async fn get<E, F, Fut>(&self, read: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, v)) = slot.as_ref() {
            if at.elapsed() < self.max_age {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(read().await?);
        *slot = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn callers_together_share_one_read() {
        let r = Arc::new(Recent::<usize>::new(Duration::from_secs(60)));
        let reads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (r, reads) = (r.clone(), reads.clone());
            tasks.push(tokio::spawn(async move {
                r.get(|| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, ()>(reads.fetch_add(1, Ordering::SeqCst) + 1)
                })
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(*t.await.unwrap(), 1);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_old_value_or_a_failed_read_is_read_again() {
        let r = Recent::<u8>::new(Duration::ZERO);
        assert_eq!(*r.get(|| async { Ok::<_, ()>(1) }).await.unwrap(), 1);
        assert!(r.get(|| async { Err::<u8, _>("down") }).await.is_err());
        assert_eq!(*r.get(|| async { Ok::<_, ()>(2) }).await.unwrap(), 2);
    }
}
