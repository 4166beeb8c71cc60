//! The controller's store, behind one trait.
//!
//! [`Store`] is a small key-value interface in etcd's image: values carry
//! the revision they were written at, writes can be conditional on it
//! ([`Store::compare_and_swap`]), keys can hang off a lease that dies when
//! nobody renews it, and [`election`] builds leader election on those two
//! primitives alone, so both implementations elect the same way:
//!
//! - [`FileStore`]: the embedded default, for one controller. Everything
//!   lives in one JSON snapshot rewritten atomically on each change, and a
//!   lock file keeps a second controller off the same directory. Leases
//!   survive a restart with a fresh TTL, so a restarted controller gives
//!   every host a full lease before calling it down.
//! - [`EtcdStore`]: several controllers on an etcd cluster.

pub mod coalesce;
pub mod election;
pub mod etcd;
pub mod file;
pub mod recent;
pub mod renew;

pub use election::{Election, Leadership};
pub use etcd::EtcdStore;
pub use file::FileStore;

use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// A lease id.
pub type LeaseId = i64;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the last write (never 0 for a stored key).
    pub revision: u64,
    /// Lease the key belongs to.
    pub lease: Option<LeaseId>,
}

/// Store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store's files could not be read or written.
    #[error("store file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot is not what this version writes.
    #[error("store file {path} is corrupt: {message}; restore it from a backup or move it away")]
    Corrupt {
        /// The file.
        path: String,
        /// Parser message.
        message: String,
    },
    /// Another controller holds the embedded store.
    #[error("another tern-controller uses the store in {0}; stop it, or use an etcd store for several controllers")]
    Locked(String),
    /// etcd refused or is unreachable.
    #[error("etcd: {0}")]
    Etcd(#[source] Box<etcd_client::Error>),
    /// The lease expired or never existed.
    #[error("lease {0:x} has expired")]
    LeaseExpired(LeaseId),
    /// A guarded write found its guard key changed: the writer's term is
    /// over (another controller leads).
    #[error("write refused: {0} changed, so this controller no longer leads")]
    Deposed(String),
    /// A store URL could not be parsed.
    #[error("store '{0}' is not file:DIR or etcd:URL[,URL...]")]
    Url(String),
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::Etcd(Box::new(e))
    }
}

/// A condition on another key: a guarded write happens only while `key`
/// is still at `revision`. Leaders guard their writes with the election
/// key's revision (their term), so a deposed leader writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The key.
    pub key: String,
    /// The revision it must still have.
    pub revision: u64,
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store trait.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;
    /// Writes a key (attached to `lease` if given); returns its revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64>;
    /// Removes a key; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Writes only if the key is at revision `expected` (`None`: only if
    /// absent). Returns the new revision, or `None` when the condition failed.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<u64>>;
    /// As [`Store::compare_and_swap`], and only while `guard` holds;
    /// [`StoreError::Deposed`] if it does not.
    async fn compare_and_swap_guarded(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        guard: &Guard,
    ) -> Result<Option<u64>>;
    /// Writes every entry if none of the keys exists, atomically; whether
    /// it did. A host joining reports its servers, each a new record:
    /// written one by one they were one round trip (and on the file store
    /// one fsync) each.
    async fn create_all(&self, entries: &[(String, Vec<u8>)]) -> Result<bool>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>>;
    /// Each key's revision (`None`: absent), without its value, in one
    /// round trip. A caller that keeps decoded values by revision (the
    /// controller, for host and server records) then reads only the keys
    /// that changed: a heartbeat of a host with ten servers was eleven
    /// reads, each carrying a record with its XML.
    async fn revisions(&self, keys: &[String]) -> Result<Vec<Option<u64>>>;
    /// As [`Store::revisions`], but possibly a moment behind the newest
    /// writes (never by more than [`recent::FRESH_FOR`]), and usually
    /// without a round trip. Only for a reader whose writes each re-read
    /// and compare revisions, so that a stale answer costs a failed
    /// comparison: a heartbeat, which asks only whether anything changed.
    async fn revisions_recent(&self, keys: &[String]) -> Result<Vec<Option<u64>>> {
        self.revisions(keys).await
    }
    /// Several keys' entries (`None`: absent), in order, in as few round
    /// trips as the store allows. A listing that finds a few hundred of
    /// thousands of records changed (hosts registering) reads just those:
    /// reading the whole prefix again, every health tick, was hundreds of
    /// megabytes a second out of etcd at 5 000 hosts.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }
    /// Every key starting with `prefix` with its revision, in key order,
    /// without values; as [`Store::revisions`], for a whole prefix.
    async fn list_revisions(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// A new lease that lives `ttl` unless renewed.
    async fn grant(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews a lease for another TTL; [`StoreError::LeaseExpired`] if gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Ends a lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;
}

/// Opens `file:DIR` or `etcd:URL[,URL...]`.
pub async fn open(spec: &str) -> Result<Arc<dyn Store>> {
    if let Some(dir) = spec.strip_prefix("file:") {
        if dir.is_empty() {
            return Err(StoreError::Url(spec.into()));
        }
        return Ok(Arc::new(FileStore::open(dir)?));
    }
    if let Some(urls) = spec.strip_prefix("etcd:") {
        let eps: Vec<String> = urls
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.to_string()
                } else {
                    format!("http://{s}")
                }
            })
            .collect();
        if eps.is_empty() {
            return Err(StoreError::Url(spec.into()));
        }
        return Ok(Arc::new(EtcdStore::connect(&eps, "/tern/").await?));
    }
    Err(StoreError::Url(spec.into()))
}
