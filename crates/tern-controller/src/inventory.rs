//! Typed records in the store: hosts, servers, jobs and host leases, as
//! JSON under fixed prefixes. Updates are read-modify-CAS loops, so two
//! controllers (or a heartbeat and a job) never lose each other's writes.

use crate::error::{CtlError, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
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
}

fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| CtlError::Record {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Records are plain data: serialising them cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Inventory {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Inventory {
        Inventory { store, guard: None }
    }

    /// The same records, with every conditional write guarded by `guard`.
    pub fn guarded(&self, guard: Guard) -> Inventory {
        Inventory {
            store: self.store.clone(),
            guard: Some(guard),
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

    /// Every host.
    pub async fn hosts(&self) -> Result<Vec<HostRecord>> {
        self.list(HOSTS).await
    }

    /// Every server.
    pub async fn servers(&self) -> Result<Vec<ServerRecord>> {
        self.list(SERVERS).await
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
