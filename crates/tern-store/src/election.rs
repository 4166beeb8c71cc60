//! Leader election on any [`Store`]: the leader is whoever created the
//! election key, which hangs off the leader's lease. The leader renews the
//! lease; if it dies, the key expires with the lease and the next
//! candidate's create succeeds. A hand-over therefore takes at most one
//! TTL plus one retry interval.

use crate::{LeaseId, Result, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// One election.
#[derive(Debug, Clone)]
pub struct Election {
    store: Arc<dyn Store>,
    key: String,
    ttl: Duration,
}

/// Won leadership: renew it with [`Leadership::renew`] at least every TTL/3.
#[derive(Debug)]
pub struct Leadership {
    store: Arc<dyn Store>,
    /// The lease holding the election key.
    pub lease: LeaseId,
    /// This candidate's id.
    pub id: String,
    /// The term: the election key's revision, which stays the same for
    /// as long as this leadership lasts ([`Leadership::guard`]).
    pub term: u64,
    key: String,
}

impl Election {
    /// An election named `name` whose leader must renew within `ttl`.
    pub fn new(store: Arc<dyn Store>, name: &str, ttl: Duration) -> Election {
        Election {
            store,
            key: format!("election/{name}"),
            ttl,
        }
    }

    /// The current leader's id.
    pub async fn leader(&self) -> Result<Option<String>> {
        Ok(self
            .store
            .get(&self.key)
            .await?
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    /// One attempt to become leader.
    pub async fn try_campaign(&self, id: &str) -> Result<Option<Leadership>> {
        let lease = self.store.grant(self.ttl).await?;
        match self
            .store
            .compare_and_swap(&self.key, None, id.as_bytes().to_vec(), Some(lease))
            .await?
        {
            Some(term) => Ok(Some(Leadership {
                store: self.store.clone(),
                lease,
                id: id.to_string(),
                term,
                key: self.key.clone(),
            })),
            None => {
                self.store.revoke(lease).await?;
                Ok(None)
            }
        }
    }

    /// Waits until `id` leads, trying every `retry`.
    pub async fn campaign(&self, id: &str, retry: Duration) -> Result<Leadership> {
        loop {
            match self.try_campaign(id).await {
                Ok(Some(l)) => return Ok(l),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "election attempt failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }
}

impl Leadership {
    /// Renews the lease; an error means leadership is lost.
    pub async fn renew(&self) -> Result<()> {
        self.store.keep_alive(self.lease).await
    }

    /// The guard that makes a write conditional on this leadership.
    pub fn guard(&self) -> crate::Guard {
        crate::Guard {
            key: self.key.clone(),
            revision: self.term,
        }
    }

    /// Gives leadership up at once.
    pub async fn resign(self) -> Result<()> {
        match self.store.revoke(self.lease).await {
            Err(StoreError::LeaseExpired(_)) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
