//! The etcd store: several controllers share one etcd cluster. Keys live
//! under a prefix; revisions are etcd's mod revisions; CAS is a
//! transaction comparing them.
//!
//! Failover is ours, as etcd's own Go client does it: one client per
//! member, one pinned member, and a call that finds its member unreachable
//! (or without a leader) tries the next one and pins it. etcd-client's
//! balanced channel keeps sending a share of the calls to a dead member
//! (about one in four failed in `the_etcd_store_fails_over_when_a_member_dies`),
//! and a controller whose store fails cannot rescue anything.
//!
//! The pinned member is the leader when one can be found, and a background
//! check keeps it so: a follower forwards every write to the leader, every
//! linearizable read costs it a round trip to the leader, and every lease
//! renewal it takes becomes an HTTP request to the leader (etcd 3.4). At
//! 5 000 hosts that forwarding was most of what three members on two cores
//! could do.

use crate::coalesce::{Coalescer, ReadBatch};
use crate::recent::Recent;
use crate::renew::{Renewals, Renewed};
use crate::{Entry, Guard, LeaseId, Result, Store, StoreError};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Largest answer to a list. gRPC's default, 4 MiB, is the records of a
/// few hundred hosts (each carries its host's report, with every domain's
/// XML): past it every list failed, and with it registration.
const MAX_LIST_BYTES: usize = 1 << 30;

/// etcd's default limit on the operations in one transaction
/// (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// Grouped revision reads in flight at once (see [`crate::coalesce`]).
const REVISION_READS_IN_FLIGHT: usize = 4;

/// How often the store checks that it is pinned to the leader.
const LEADER_CHECK: Duration = Duration::from_secs(2);

/// How much history etcd keeps: each store compacts, this often, to the
/// revision it saw this long ago. etcd keeps every version of every key
/// until someone compacts (as kube-apiserver does every 5 minutes), and
/// hosts rewrite their records whenever their reports change: at 5 000
/// hosts registering, the database grew by 750 MB in two minutes, toward
/// etcd's 2 GiB quota, past which it takes no more writes.
const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// A store on etcd.
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Vec<Client>>,
    pinned: Arc<AtomicUsize>,
    prefix: String,
    /// The keep-alive stream every renewal goes on (see [`crate::renew`]).
    renewals: Arc<Mutex<Option<Arc<Renewals>>>>,
    /// Held while a keep-alive stream is opened, so one is.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// Groups concurrent revision reads (see [`crate::coalesce`]); `None`
    /// on the store the grouping itself reads through.
    coalescer: Option<Coalescer>,
    /// Revisions kept by a watch (see [`crate::recent`]), started by the
    /// first [`Store::revisions_recent`].
    recent: Arc<OnceLock<Arc<Recent>>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to the endpoints (`http://HOST:PORT`), keeping keys under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        let mut members = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            members.push(Client::connect([e], Some(opts.clone())).await?);
        }
        if members.is_empty() {
            return Err(StoreError::from(etcd_client::Error::InvalidArgs(
                "no etcd endpoint".into(),
            )));
        }
        let members = Arc::new(members);
        let pinned = Arc::new(AtomicUsize::new(leader_of(&members).await.unwrap_or(0)));
        tokio::spawn(follow_leader(
            Arc::downgrade(&members),
            Arc::downgrade(&pinned),
        ));
        tokio::spawn(compact_history(
            Arc::downgrade(&members),
            Arc::downgrade(&pinned),
        ));
        let mut store = EtcdStore {
            members,
            pinned,
            prefix: prefix.to_string(),
            renewals: Arc::default(),
            opening: Arc::default(),
            coalescer: None,
            recent: Arc::default(),
        };
        let raw = store.clone();
        let read: ReadBatch = Arc::new(move |keys: Vec<String>| {
            let raw = raw.clone();
            Box::pin(async move { raw.read_revisions(&keys).await.ok() })
        });
        store.coalescer = Some(Coalescer::start(
            read,
            MAX_TXN_OPS,
            REVISION_READS_IN_FLIGHT,
        ));
        Ok(store)
    }

    /// The revisions of `keys` in transactions of at most
    /// [`MAX_TXN_OPS`] reads, without grouping.
    async fn read_revisions(&self, keys: &[String]) -> Result<Vec<Option<u64>>> {
        let keys_only = || Some(GetOptions::new().with_keys_only());
        self.read_in_txns(keys, keys_only, |kv| kv.mod_revision() as u64)
            .await
    }

    /// Reads `keys` in transactions of at most [`MAX_TXN_OPS`] reads
    /// (etcd refuses more, by default), each found key mapped by `f`.
    async fn read_in_txns<T>(
        &self,
        keys: &[String],
        opts: impl Fn() -> Option<GetOptions>,
        f: impl Fn(&etcd_client::KeyValue) -> T,
    ) -> Result<Vec<Option<T>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::get(self.k(k), opts()))
                .collect();
            let txn = &Txn::new().and_then(ops);
            let r = self
                .call(|c| async move {
                    let mut kv = c.kv_client().max_decoding_message_size(MAX_LIST_BYTES);
                    kv.txn(txn.clone()).await
                })
                .await?;
            for op in r.op_responses() {
                if let etcd_client::TxnOpResponse::Get(g) = op {
                    out.push(g.kvs().first().map(&f));
                }
            }
        }
        if out.len() != keys.len() {
            return Err(StoreError::from(etcd_client::Error::InvalidArgs(format!(
                "etcd answered {} of {} reads in a transaction",
                out.len(),
                keys.len()
            ))));
        }
        Ok(out)
    }

    /// Runs `f` on the pinned member; when that member cannot answer, on
    /// each other member in turn, pinning the first that does. A retried
    /// write is safe here: puts are idempotent, and a compare-and-swap
    /// that did land the first time fails its comparison the second time,
    /// which callers already treat as "someone else wrote".
    async fn call<T, F, Fut>(&self, f: F) -> std::result::Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let first = self.pinned.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let m = (first + i) % n;
            match f(self.members[m].clone()).await {
                Ok(v) => {
                    if m != first {
                        self.pinned.store(m, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if member_unavailable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one member"))
    }

    /// The open keep-alive stream, if it is on the member the store is
    /// pinned to (after an election, renewals follow the new leader).
    fn usable_renewals(&self) -> Option<Arc<Renewals>> {
        let pinned = self.pinned.load(Ordering::Relaxed) % self.members.len();
        self.renewals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|r| r.is_open() && r.member == pinned)
    }

    fn k(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn entry(&self, kv: &etcd_client::KeyValue) -> Entry {
        let key = String::from_utf8_lossy(kv.key());
        Entry {
            key: key.strip_prefix(&self.prefix).unwrap_or(&key).to_string(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision() as u64,
            lease: (kv.lease() != 0).then_some(kv.lease()),
        }
    }
}

/// The index of the member that says it leads, if any does. Each member is
/// asked about itself, so a member cut off from the others (which may
/// still name an old leader) is never taken for the leader by hearsay.
async fn leader_of(members: &[Client]) -> Option<usize> {
    for (i, c) in members.iter().enumerate() {
        let asked = tokio::time::timeout(LEADER_CHECK, c.clone().status()).await;
        if let Ok(Ok(s)) = asked {
            let me = s.header().map(|h| h.member_id());
            if me.is_some() && me == Some(s.leader()) {
                return Some(i);
            }
        }
    }
    None
}

/// Keeps the pinned member on the leader while the store lives. A failed
/// call still moves the pin at once (see `call`); this moves it back to
/// the leader after an election, when no call failed.
async fn follow_leader(
    members: std::sync::Weak<Vec<Client>>,
    pinned: std::sync::Weak<AtomicUsize>,
) {
    loop {
        tokio::time::sleep(LEADER_CHECK).await;
        let (Some(m), Some(p)) = (members.upgrade(), pinned.upgrade()) else {
            return;
        };
        if let Some(i) = leader_of(&m).await {
            p.store(i, Ordering::Relaxed);
        }
    }
}

/// Compacts etcd's history while the store lives: every [`COMPACT_EVERY`],
/// to the revision seen one period before. Several controllers each do it;
/// compacting to a revision already compacted is refused, harmlessly.
async fn compact_history(
    members: std::sync::Weak<Vec<Client>>,
    pinned: std::sync::Weak<AtomicUsize>,
) {
    let mut seen: Option<i64> = None;
    loop {
        tokio::time::sleep(COMPACT_EVERY).await;
        let (Some(m), Some(p)) = (members.upgrade(), pinned.upgrade()) else {
            return;
        };
        let c = m[p.load(Ordering::Relaxed) % m.len()].clone();
        seen = compact_step(c, seen).await;
    }
}

/// One period of [`compact_history`]: compacts to `seen` (the revision
/// of one period before), and returns the revision now, to compact to
/// next time (or `seen` again if the member did not say).
async fn compact_step(mut c: Client, seen: Option<i64>) -> Option<i64> {
    let now = match c.status().await {
        Ok(s) => s.header().map(|h| h.revision()),
        Err(_) => None,
    };
    if let Some(rev) = seen.filter(|r| *r > 0) {
        if let Err(e) = c.compact(rev, None).await {
            tracing::debug!(revision = rev, error = %e, "etcd compaction skipped");
        }
    }
    now.or(seen)
}

/// Whether `e` says the member could not serve the call (down, cut off,
/// or without a leader), so another member may.
fn member_unavailable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        _ => false,
    }
}

fn lease_opts(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|l| PutOptions::new().with_lease(l))
}

fn lease_err(lease: Option<LeaseId>, e: etcd_client::Error) -> StoreError {
    match (lease, &e) {
        (Some(l), etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
            StoreError::LeaseExpired(l)
        }
        (Some(l), etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("lease not found") => {
            StoreError::LeaseExpired(l)
        }
        _ => StoreError::from(e),
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let k = &self.k(key);
        let r = self
            .call(|mut c| async move { c.get(k.as_str(), None).await })
            .await?;
        Ok(r.kvs().first().map(|kv| self.entry(kv)))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64> {
        let (k, value) = (&self.k(key), &value);
        let r = self
            .call(|mut c| async move { c.put(k.as_str(), value.clone(), lease_opts(lease)).await })
            .await
            .map_err(|e| lease_err(lease, e))?;
        Ok(r.header().map_or(0, |h| h.revision() as u64))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let k = &self.k(key);
        let r = self
            .call(|mut c| async move { c.delete(k.as_str(), None).await })
            .await?;
        Ok(r.deleted() > 0)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<u64>> {
        let k = self.k(key);
        // A key that does not exist has mod revision 0.
        let cmp = Compare::mod_revision(k.clone(), CompareOp::Equal, expected.unwrap_or(0) as i64);
        let txn =
            Txn::new()
                .when(vec![cmp])
                .and_then(vec![TxnOp::put(k, value, lease_opts(lease))]);
        let txn = &txn;
        let r = self
            .call(|mut c| async move { c.txn(txn.clone()).await })
            .await
            .map_err(|e| lease_err(lease, e))?;
        Ok(r.succeeded()
            .then(|| r.header().map_or(0, |h| h.revision() as u64)))
    }

    async fn create_all(&self, entries: &[(String, Vec<u8>)]) -> Result<bool> {
        // A transaction holds a compare and a put per key.
        for chunk in entries.chunks(MAX_TXN_OPS / 2) {
            let absent = chunk
                .iter()
                .map(|(k, _)| Compare::mod_revision(self.k(k), CompareOp::Equal, 0))
                .collect::<Vec<_>>();
            let puts = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(self.k(k), v.clone(), None))
                .collect::<Vec<_>>();
            let txn = &Txn::new().when(absent).and_then(puts);
            let r = self
                .call(|mut c| async move { c.txn(txn.clone()).await })
                .await?;
            if !r.succeeded() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn compare_and_swap_guarded(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        guard: &Guard,
    ) -> Result<Option<u64>> {
        let k = self.k(key);
        let g = self.k(&guard.key);
        let cmp = Compare::mod_revision(k.clone(), CompareOp::Equal, expected.unwrap_or(0) as i64);
        let term = Compare::mod_revision(g.clone(), CompareOp::Equal, guard.revision as i64);
        // One transaction: the write and both conditions are atomic; on
        // failure, the guard key is read to tell a deposed leader apart.
        let txn = Txn::new()
            .when(vec![cmp, term])
            .and_then(vec![TxnOp::put(k, value, None)])
            .or_else(vec![TxnOp::get(g, None)]);
        let txn = &txn;
        let r = self
            .call(|mut c| async move { c.txn(txn.clone()).await })
            .await?;
        if r.succeeded() {
            return Ok(Some(r.header().map_or(0, |h| h.revision() as u64)));
        }
        let guard_rev = r.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => {
                Some(g.kvs().first().map_or(0, |kv| kv.mod_revision() as u64))
            }
            _ => None,
        });
        if guard_rev != Some(guard.revision) {
            return Err(StoreError::Deposed(guard.key.clone()));
        }
        Ok(None)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let k = &self.k(prefix);
        let opts = || Some(GetOptions::new().with_prefix());
        let r = self
            .call(|c| async move {
                let mut kv = c.kv_client().max_decoding_message_size(MAX_LIST_BYTES);
                kv.get(k.as_str(), opts()).await
            })
            .await?;
        Ok(r.kvs().iter().map(|kv| self.entry(kv)).collect())
    }

    async fn revisions(&self, keys: &[String]) -> Result<Vec<Option<u64>>> {
        if let Some(c) = &self.coalescer {
            if let Some(r) = c.revisions(keys).await {
                return Ok(r);
            }
        }
        self.read_revisions(keys).await
    }

    async fn revisions_recent(&self, keys: &[String]) -> Result<Vec<Option<u64>>> {
        let recent = self.recent.get_or_init(|| {
            Recent::follow(
                Arc::downgrade(&self.members),
                Arc::downgrade(&self.pinned),
                self.prefix.clone(),
            )
        });
        match recent.revisions(keys.iter().map(|k| self.k(k).into_bytes())) {
            Some(revs) => Ok(revs),
            None => self.revisions(keys).await,
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.read_in_txns(keys, || None, |kv| self.entry(kv)).await
    }

    async fn list_revisions(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let k = &self.k(prefix);
        let opts = || Some(GetOptions::new().with_prefix().with_keys_only());
        let r = self
            .call(|c| async move {
                let mut kv = c.kv_client().max_decoding_message_size(MAX_LIST_BYTES);
                kv.get(k.as_str(), opts()).await
            })
            .await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                let e = self.entry(kv);
                (e.key, e.revision)
            })
            .collect())
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let r = self
            .call(|mut c| async move { c.lease_grant(secs, None).await })
            .await?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let renew = |r: Arc<Renewals>| async move {
            match r.renew(lease).await {
                Renewed::Yes => Some(Ok(())),
                Renewed::Expired => Some(Err(StoreError::LeaseExpired(lease))),
                // The stream broke (its member died, say): open another.
                Renewed::Broken => None,
            }
        };
        if let Some(r) = self.usable_renewals() {
            if let Some(done) = renew(r).await {
                return done;
            }
        }
        let _opening = self.opening.lock().await;
        // Another renewal may have opened one while this one waited.
        if let Some(r) = self.usable_renewals() {
            if let Some(done) = renew(r).await {
                return done;
            }
        }
        // Opening the stream sends one renewal and waits for its answer (a
        // TTL of 0, "lease not found", is an error): that is this renewal.
        let (keeper, stream) = self
            .call(|mut c| async move { c.lease_keep_alive(lease).await })
            .await
            .map_err(|e| lease_err(Some(lease), e))?;
        // `call` pins the member that answered.
        let member = self.pinned.load(Ordering::Relaxed) % self.members.len();
        *self.renewals.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Renewals::start(keeper, stream, member));
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let r = self
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => match lease_err(Some(lease), e) {
                StoreError::LeaseExpired(_) => Ok(()),
                e => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// History older than one period goes, newer history stays: a
    /// revision seen at the last step can no longer be read after the
    /// next, one written since still can.
    #[tokio::test]
    async fn each_step_compacts_to_the_revision_the_last_one_saw() {
        let e = tern_testkit::Etcd::start();
        let mut c = Client::connect([e.url.as_str()], None).await.unwrap();
        let first = c.put("k", "1", None).await.unwrap();
        let first = first.header().unwrap().revision();
        let seen = compact_step(c.clone(), None).await;
        assert_eq!(seen, Some(first), "the first step only looks");
        let kept = c.put("k", "2", None).await.unwrap();
        let kept = kept.header().unwrap().revision();
        c.put("k", "3", None).await.unwrap();
        let at = |r: i64| Some(etcd_client::GetOptions::new().with_revision(r));
        assert!(
            c.get("k", at(first - 1)).await.is_ok(),
            "nothing compacted yet"
        );
        let next = compact_step(c.clone(), seen).await;
        assert!(next > seen, "{next:?} after {seen:?}");
        let gone = c.get("k", at(first - 1)).await;
        assert!(gone.is_err(), "history before the seen revision is kept");
        let v = c.get("k", at(kept)).await.unwrap();
        assert_eq!(v.kvs()[0].value(), b"2", "history since was compacted");
    }
}
