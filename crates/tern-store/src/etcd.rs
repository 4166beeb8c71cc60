//! The etcd store: several controllers share one etcd cluster. Keys live
//! under a prefix; revisions are etcd's mod revisions; CAS is a
//! transaction comparing them.

use crate::{Entry, Guard, LeaseId, Result, Store, StoreError};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::time::Duration;

/// A store on etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
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
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(EtcdStore {
            client,
            prefix: prefix.to_string(),
        })
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
        let r = self.client.clone().get(self.k(key), None).await?;
        Ok(r.kvs().first().map(|kv| self.entry(kv)))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64> {
        let r = self
            .client
            .clone()
            .put(self.k(key), value, lease_opts(lease))
            .await
            .map_err(|e| lease_err(lease, e))?;
        Ok(r.header().map_or(0, |h| h.revision() as u64))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let r = self.client.clone().delete(self.k(key), None).await?;
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
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| lease_err(lease, e))?;
        Ok(r.succeeded()
            .then(|| r.header().map_or(0, |h| h.revision() as u64)))
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
        let r = self.client.clone().txn(txn).await?;
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
        let r = self
            .client
            .clone()
            .get(self.k(prefix), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(r.kvs().iter().map(|kv| self.entry(kv)).collect())
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        Ok(self.client.clone().lease_grant(secs, None).await?.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let e = |e| lease_err(Some(lease), e);
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(e)?;
        keeper.keep_alive().await.map_err(e)?;
        match stream.message().await.map_err(e)? {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseExpired(lease)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) => match lease_err(Some(lease), e) {
                StoreError::LeaseExpired(_) => Ok(()),
                e => Err(e),
            },
        }
    }
}
