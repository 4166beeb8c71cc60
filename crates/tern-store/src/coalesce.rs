//! Revision reads that arrive together go to etcd together.
//!
//! Every heartbeat asks for the revisions of its host's record and of its
//! servers' (eleven keys with ten servers). At 5 000 hosts that is 5 000
//! etcd transactions a second, each a linearizable read the etcd leader
//! confirms with its followers: more than three etcd members and the
//! controller can do on two cores (at 1 000 hosts the first member already
//! used twice the controller's CPU). Reads that arrive while earlier ones
//! are in flight wait for a free slot and then go out as one transaction
//! of up to etcd's operation limit, as a database groups commits: an idle
//! controller's read goes out at once, a busy one's shares a transaction
//! with a dozen others.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Reads a batch of keys' revisions in one request; `None` if it failed
/// (each caller then reads its own keys alone, and gets its own error).
pub type ReadBatch = Arc<
    dyn Fn(Vec<String>) -> Pin<Box<dyn Future<Output = Option<Vec<Option<u64>>>> + Send>>
        + Send
        + Sync,
>;

/// One caller's keys and where its revisions go.
struct Pending {
    keys: Vec<String>,
    reply: oneshot::Sender<Option<Vec<Option<u64>>>>,
}

/// Groups concurrent revision reads into shared requests.
#[derive(Debug, Clone)]
pub struct Coalescer {
    tx: mpsc::UnboundedSender<Pending>,
    max_ops: usize,
}

impl Coalescer {
    /// Starts grouping reads for `read` (on the current Tokio runtime):
    /// at most `max_ops` keys a request, `in_flight` requests at once. It
    /// stops when the last clone is dropped.
    pub fn start(read: ReadBatch, max_ops: usize, in_flight: usize) -> Coalescer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(group(rx, read, max_ops, in_flight.max(1)));
        Coalescer { tx, max_ops }
    }

    /// The revisions of `keys`, in order; `None` when the shared request
    /// failed or `keys` do not fit in one (the caller reads them alone).
    pub async fn revisions(&self, keys: &[String]) -> Option<Vec<Option<u64>>> {
        if keys.is_empty() || keys.len() > self.max_ops {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                keys: keys.to_vec(),
                reply,
            })
            .ok()?;
        answer.await.ok().flatten()
    }
}

/// The grouping loop: waits for a read, then for a free slot, then takes
/// every read queued meanwhile that still fits.
async fn group(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    read: ReadBatch,
    max_ops: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut ops = first.keys.len();
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            if ops + p.keys.len() > max_ops {
                carried = Some(p);
                break;
            }
            ops += p.keys.len();
            batch.push(p);
        }
        let read = read.clone();
        tokio::spawn(async move {
            let keys: Vec<String> = batch.iter().flat_map(|p| p.keys.clone()).collect();
            let answer = read(keys).await.filter(|r| r.len() == ops);
            let mut at = 0;
            for p in batch {
                let n = p.keys.len();
                let mine = answer.as_ref().map(|r| r[at..at + n].to_vec());
                at += n;
                let _ = p.reply.send(mine);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A fake store: a key's revision is its length; records each batch.
    fn fake(batches: Arc<Mutex<Vec<usize>>>, fail: Arc<AtomicUsize>) -> ReadBatch {
        Arc::new(move |keys: Vec<String>| {
            let batches = batches.clone();
            let fail = fail.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                batches.lock().unwrap().push(keys.len());
                if fail.load(Ordering::SeqCst) > 0 {
                    return None;
                }
                Some(keys.iter().map(|k| Some(k.len() as u64)).collect())
            })
        })
    }

    fn keys(i: usize, n: usize) -> Vec<String> {
        (0..n).map(|j| "k".repeat(1 + (i * 7 + j) % 13)).collect()
    }

    #[tokio::test]
    async fn concurrent_reads_share_requests_and_each_gets_its_own_answer() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let c = Coalescer::start(fake(batches.clone(), Arc::default()), 128, 1);
        let mut tasks = Vec::new();
        for i in 0..50 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let k = keys(i, 11);
                let got = c.revisions(&k).await.unwrap();
                let want: Vec<_> = k.iter().map(|k| Some(k.len() as u64)).collect();
                assert_eq!(got, want, "caller {i}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let b = batches.lock().unwrap().clone();
        assert_eq!(b.iter().sum::<usize>(), 50 * 11);
        // Eleven keys a caller, at most 128 a request: 11 callers at most.
        assert!(b.iter().all(|n| *n <= 121), "{b:?}");
        assert!(b.len() < 50, "no read was shared: {b:?}");
    }

    #[tokio::test]
    async fn a_failed_or_oversized_read_tells_the_caller_to_read_alone() {
        let fail = Arc::new(AtomicUsize::new(1));
        let c = Coalescer::start(fake(Arc::default(), fail), 128, 2);
        assert_eq!(c.revisions(&keys(1, 3)).await, None);
        let ok = Coalescer::start(fake(Arc::default(), Arc::default()), 4, 2);
        assert_eq!(ok.revisions(&keys(1, 5)).await, None);
        assert!(ok.revisions(&keys(1, 4)).await.is_some());
        assert_eq!(ok.revisions(&[]).await, None);
    }
}
