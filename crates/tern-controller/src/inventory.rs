//! Typed records in the store: hosts, servers, jobs and host leases, as
//! JSON under fixed prefixes. Updates are read-modify-CAS loops, so two
//! controllers (or a heartbeat and a job) never lose each other's writes.

use crate::decoded::Decoded;
use crate::error::{CtlError, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use tern_api::cluster::{HostRecord, JobRecord, ServerRecord};
use tern_store::{Guard, Store};

/// Host records.
pub const HOSTS: &str = "hosts/";
/// Server records.
pub const SERVERS: &str = "servers/";
/// Job records.
pub const JOBS: &str = "jobs/";
/// One key per live host, attached to the host's lease.
pub const ALIVE: &str = "alive/";

/// Typed access to the store.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Set on the leader's view: every conditional write also needs the
    /// leader's term to be current ([`tern_store::Guard`]).
    guard: Option<Guard>,
    /// Host records as last decoded, shared by every view of one store.
    hosts_seen: Arc<Decoded<HostRecord>>,
    /// Server records as last decoded.
    servers_seen: Arc<Decoded<ServerRecord>>,
}

/// A listing that finds more changed records than this reads them all in
/// one request rather than one by one.
const BULK_READ_AFTER: usize = 16;

/// How a listing reads the records that changed since they were decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkRead {
    /// A read per changed record (few changed).
    OneByOne,
    /// The changed records only, many per round trip.
    Changed,
    /// The whole prefix with values (most changed: a cold cache).
    Listing,
}

/// Policy: few changed records are read one by one; many, together; and
/// when most of the prefix changed, the prefix is listed whole.
fn bulk_read(changed: usize, listed: usize) -> BulkRead {
    if changed <= BULK_READ_AFTER {
        BulkRead::OneByOne
    } else if changed * 2 > listed {
        BulkRead::Listing
    } else {
        BulkRead::Changed
    }
}

/// Record types the inventory keeps decoded ([`Decoded`]): the ones read
/// on every heartbeat and every tick.
pub trait Kept: DeserializeOwned + Send + Sync + 'static {
    /// This type's cache in `inv`.
    fn seen(inv: &Inventory) -> &Decoded<Self>;
}

impl Kept for HostRecord {
    fn seen(inv: &Inventory) -> &Decoded<Self> {
        &inv.hosts_seen
    }
}

impl Kept for ServerRecord {
    fn seen(inv: &Inventory) -> &Decoded<Self> {
        &inv.servers_seen
    }
}

fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| CtlError::Record {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Records are plain data: serialising them cannot fail.
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    // The store keeps this buffer: without the trim, a report's record
    // kept up to twice its length (the encoder's growth), 30 MB a
    // thousand hosts.
    b.shrink_to_fit();
    b
}

/// How current a read of revisions must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Every write that finished before the read.
    Linearizable,
    /// Possibly a moment behind (see [`tern_store::recent`]): for a reader
    /// whose every write re-reads its record, as a heartbeat's do.
    Recent,
}

impl Inventory {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Inventory {
        Inventory {
            store,
            guard: None,
            hosts_seen: Arc::default(),
            servers_seen: Arc::default(),
        }
    }

    /// The same records, with every conditional write guarded by `guard`.
    pub fn guarded(&self, guard: Guard) -> Inventory {
        Inventory {
            store: self.store.clone(),
            guard: Some(guard),
            hosts_seen: self.hosts_seen.clone(),
            servers_seen: self.servers_seen.clone(),
        }
    }

    async fn cas(&self, key: &str, expected: Option<u64>, value: Vec<u8>) -> Result<bool> {
        let r = match &self.guard {
            Some(g) => {
                self.store
                    .compare_and_swap_guarded(key, expected, value, g)
                    .await?
            }
            None => {
                self.store
                    .compare_and_swap(key, expected, value, None)
                    .await?
            }
        };
        Ok(r.is_some())
    }

    /// One record with its revision.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(u64, T)>> {
        match self.store.get(key).await? {
            Some(e) => Ok(Some((e.revision, decode(key, &e.value)?))),
            None => Ok(None),
        }
    }

    /// The record at `key` given its current revision (`None`: absent),
    /// decoded only if that revision was not decoded before.
    async fn resolve<T: Kept>(&self, key: &str, rev: Option<u64>) -> Result<Option<Arc<T>>> {
        let seen = T::seen(self);
        let Some(rev) = rev else {
            seen.forget(key);
            return Ok(None);
        };
        if let Some(v) = seen.at(key, rev) {
            return Ok(Some(v));
        }
        // Changed since: read it (it may have moved on again; the value
        // read is kept at its own revision).
        match self.store.get(key).await? {
            Some(e) => {
                let v = Arc::new(decode::<T>(key, &e.value)?);
                seen.keep(key, e.revision, v.clone());
                Ok(Some(v))
            }
            None => {
                seen.forget(key);
                Ok(None)
            }
        }
    }

    /// The records at `keys`, in order, in one round trip to the store
    /// when none changed since they were last read.
    pub async fn kept<T: Kept>(&self, keys: &[String]) -> Result<Vec<Option<Arc<T>>>> {
        let revs = self.store.revisions(keys).await?;
        let mut out = Vec::with_capacity(keys.len());
        for (k, r) in keys.iter().zip(revs) {
            out.push(self.resolve(k, r).await?);
        }
        Ok(out)
    }

    /// A host's record as last decoded, without asking the store (it may
    /// have changed since).
    pub fn host_as_last_read(&self, host: &str) -> Option<Arc<HostRecord>> {
        self.hosts_seen.last(&format!("{HOSTS}{host}"))
    }

    /// A host's record and the server records named `servers`, without a
    /// round trip to the store when none changed (or one, on a store that
    /// cannot tell `Read::Recent` apart): what a heartbeat reads.
    pub async fn host_and_servers(
        &self,
        host: &str,
        servers: impl Iterator<Item = &str>,
        read: Read,
    ) -> Result<(Option<Arc<HostRecord>>, Vec<Arc<ServerRecord>>)> {
        let mut keys = vec![format!("{HOSTS}{host}")];
        keys.extend(servers.map(|s| format!("{SERVERS}{s}")));
        let revs = match read {
            Read::Recent => self.store.revisions_recent(&keys).await?,
            Read::Linearizable => self.store.revisions(&keys).await?,
        };
        let mut revs = revs.into_iter();
        let host = self.resolve(&keys[0], revs.next().flatten()).await?;
        let mut found = Vec::with_capacity(keys.len() - 1);
        for (k, r) in keys[1..].iter().zip(revs) {
            if let Some(s) = self.resolve(k, r).await? {
                found.push(s);
            }
        }
        Ok((host, found))
    }

    /// Every record under `prefix`, decoding only those that changed since
    /// the last listing; unreadable ones are skipped with a warning.
    pub async fn list_kept<T: Kept>(&self, prefix: &str) -> Result<Vec<Arc<T>>> {
        let listed = self.store.list_revisions(prefix).await?;
        let seen = T::seen(self);
        let stale: Vec<String> = listed
            .iter()
            .filter(|(k, r)| seen.at(k, *r).is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let present: HashSet<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        seen.retain_listed(prefix, &present);
        match bulk_read(stale.len(), listed.len()) {
            // A cold cache: one listing with values.
            BulkRead::Listing => return self.list_decoding_changed(prefix).await,
            // Many changed (hosts registering): only those, many keys per
            // round trip.
            BulkRead::Changed => self.keep_many::<T>(&stale).await?,
            BulkRead::OneByOne => {}
        }
        let mut out = Vec::with_capacity(listed.len());
        for (k, r) in &listed {
            match self.resolve::<T>(k, Some(*r)).await {
                Ok(Some(v)) => out.push(v),
                Ok(None) => {}
                Err(CtlError::Record { key, message }) => {
                    tracing::warn!(%key, error = %message, "skipping record")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reads and keeps the records at `keys` (changed since last decoded),
    /// many per round trip.
    async fn keep_many<T: Kept>(&self, keys: &[String]) -> Result<()> {
        let seen = T::seen(self);
        for e in self.store.get_many(keys).await?.into_iter().flatten() {
            match decode::<T>(&e.key, &e.value) {
                Ok(v) => seen.keep(&e.key, e.revision, Arc::new(v)),
                Err(err) => tracing::warn!(error = %err, "skipping record"),
            }
        }
        Ok(())
    }

    /// Every record under `prefix`, values and all, decoding those not
    /// decoded at their revision before.
    async fn list_decoding_changed<T: Kept>(&self, prefix: &str) -> Result<Vec<Arc<T>>> {
        let seen = T::seen(self);
        let mut out = Vec::new();
        for e in self.store.list(prefix).await? {
            if let Some(v) = seen.at(&e.key, e.revision) {
                out.push(v);
                continue;
            }
            match decode::<T>(&e.key, &e.value) {
                Ok(v) => {
                    let v = Arc::new(v);
                    seen.keep(&e.key, e.revision, v.clone());
                    out.push(v);
                }
                Err(err) => tracing::warn!(error = %err, "skipping record"),
            }
        }
        Ok(out)
    }

    /// Every record under a prefix; unreadable ones are skipped with a warning.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for e in self.store.list(prefix).await? {
            match decode(&e.key, &e.value) {
                Ok(v) => out.push(v),
                Err(err) => tracing::warn!(error = %err, "skipping record"),
            }
        }
        Ok(out)
    }

    /// Writes a record unconditionally.
    pub async fn put<T: Serialize>(&self, key: &str, v: &T) -> Result<()> {
        self.store.put(key, encode(v), None).await?;
        Ok(())
    }

    /// Writes a record only if absent; whether it was written.
    pub async fn create<T: Serialize>(&self, key: &str, v: &T) -> Result<bool> {
        self.cas(key, None, encode(v)).await
    }

    /// Writes each record that is absent, in one request when all are
    /// (a host joining); one by one otherwise.
    pub async fn create_all<T: Serialize>(&self, records: &[(String, T)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.guard.is_none() {
            let encoded: Vec<(String, Vec<u8>)> = records
                .iter()
                .map(|(k, v)| (k.clone(), encode(v)))
                .collect();
            if self.store.create_all(&encoded).await? {
                return Ok(());
            }
        }
        for (k, v) in records {
            self.create(k, v).await?;
        }
        Ok(())
    }

    /// Applies `f` to a record until the write is not raced. `f` returns
    /// whether it changed anything (nothing is written otherwise). The
    /// record after the update, or `None` if it does not exist.
    pub async fn update<T, F>(&self, key: &str, mut f: F) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T) -> Result<bool>,
    {
        loop {
            let Some((rev, mut v)) = self.get::<T>(key).await? else {
                return Ok(None);
            };
            if !f(&mut v)? {
                return Ok(Some(v));
            }
            if self.cas(key, Some(rev), encode(&v)).await? {
                return Ok(Some(v));
            }
        }
    }

    /// A host.
    pub async fn host(&self, name: &str) -> Result<HostRecord> {
        self.get::<HostRecord>(&format!("{HOSTS}{name}"))
            .await?
            .map(|(_, h)| h)
            .ok_or_else(|| CtlError::NotFound(format!("no host '{name}'; see 'tern host-list'")))
    }

    /// A server.
    pub async fn server(&self, name: &str) -> Result<ServerRecord> {
        self.get::<ServerRecord>(&format!("{SERVERS}{name}"))
            .await?
            .map(|(_, s)| s)
            .ok_or_else(|| {
                CtlError::NotFound(format!("no server '{name}'; see 'tern server-list'"))
            })
    }

    /// Every host, shared with the cache: for the leader's tick, which
    /// would otherwise copy every report four times a second.
    pub async fn hosts_shared(&self) -> Result<Vec<Arc<HostRecord>>> {
        self.list_kept(HOSTS).await
    }

    /// Every server, shared with the cache.
    pub async fn servers_shared(&self) -> Result<Vec<Arc<ServerRecord>>> {
        self.list_kept(SERVERS).await
    }

    /// Every job, oldest first.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>> {
        let mut j: Vec<JobRecord> = self.list(JOBS).await?;
        j.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(j)
    }

    /// Updates a server record.
    pub async fn update_server(
        &self,
        name: &str,
        f: impl FnMut(&mut ServerRecord) -> Result<bool>,
    ) -> Result<Option<ServerRecord>> {
        self.update(&format!("{SERVERS}{name}"), f).await
    }

    /// Updates a job record.
    pub async fn update_job(
        &self,
        id: &str,
        mut f: impl FnMut(&mut JobRecord) -> Result<bool>,
    ) -> Result<Option<JobRecord>> {
        let term = self.guard.as_ref().map(|g| g.revision);
        self.update(&format!("{JOBS}{id}"), |r: &mut JobRecord| {
            let change = f(r)?;
            if change && term.is_some() {
                r.term = term;
            }
            Ok(change)
        })
        .await
    }

    /// The term this view's writes carry, if it is the leader's.
    pub fn term(&self) -> Option<u64> {
        self.guard.as_ref().map(|g| g.revision)
    }

    /// Updates a host record.
    pub async fn update_host(
        &self,
        name: &str,
        f: impl FnMut(&mut HostRecord) -> Result<bool>,
    ) -> Result<Option<HostRecord>> {
        self.update(&format!("{HOSTS}{name}"), f).await
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_changes_are_read_one_by_one_many_together_and_most_by_listing() {
        assert_eq!(bulk_read(0, 5000), BulkRead::OneByOne);
        assert_eq!(bulk_read(BULK_READ_AFTER, 5000), BulkRead::OneByOne);
        // Hosts registering: a few hundred of thousands changed.
        assert_eq!(bulk_read(300, 5000), BulkRead::Changed);
        assert_eq!(bulk_read(2500, 5000), BulkRead::Changed);
        // A cold cache.
        assert_eq!(bulk_read(2501, 5000), BulkRead::Listing);
        assert_eq!(bulk_read(5000, 5000), BulkRead::Listing);
    }
}
