//! Every key's revision, kept in memory by an etcd watch, for readers that
//! may be a moment behind.
//!
//! A heartbeat asks for the revisions of its host's record and its
//! servers', to learn that nothing changed. At 5 000 hosts that was 5 000
//! linearizable reads a second: even grouped (see [`crate::coalesce`]),
//! the read path was the largest part of what the controller and three
//! etcd members spent per heartbeat, on two cores that also ran the
//! agents. Writes to records are rare next to heartbeats, so the store
//! lists the revisions once and then follows a watch: a heartbeat while
//! nothing changed reads nothing from etcd.
//!
//! A watch can fall silently behind: its member may be stopped, cut off
//! from the others, or no longer the one the store uses. So the copy
//! answers only while it is **confirmed**: every [`CONFIRM_EVERY`] the
//! follower reads the current revision linearizably from the watch's own
//! member, asks the watch for its progress, and counts the copy confirmed
//! from the moment of that read once the watch reports reaching it. A copy
//! not confirmed within [`FRESH_FOR`] answers nothing, and readers fall
//! back to linearizable reads while the follower lists again.
//!
//! What a reader gets is therefore every write older than [`FRESH_FOR`],
//! and usually every write older than a few milliseconds, but not
//! necessarily the newest. (etcd before 3.4.25 and 3.5.8 may answer a
//! progress request ahead of events still queued for the watch, etcd
//! issue 15220: that can confirm a copy a few milliseconds early, never
//! one that stopped moving.) That is right only for a reader whose every
//! write re-reads its record and compares revisions (all of the
//! controller's writes do), so a stale revision costs a failed comparison
//! and never a lost update.

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the follower confirms its copy.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(500);

/// How long a confirmation lasts. A few confirmation periods, so one slow
/// answer does not send every heartbeat back to etcd.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// How long the follower waits after its member failed before it lists
/// again (on the member the store is pinned to by then).
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Largest watch or list answer (records carry their host's report).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Whether a copy confirmed at `confirmed` (if ever) may answer at `now`.
pub fn fresh(confirmed: Option<Instant>, now: Instant) -> bool {
    confirmed.is_some_and(|t| now.saturating_duration_since(t) < FRESH_FOR)
}

/// A confirmation in flight: the watch must reach `revision`, read
/// linearizably at `read_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The revision the member had when asked.
    pub revision: u64,
    /// When it was asked.
    pub read_at: Instant,
}

/// What a watch answer that reached `applied` does to a pending
/// confirmation: the moment the copy is confirmed from, if it is now.
pub fn confirmed_by(pending: Option<Pending>, applied: u64) -> Option<Instant> {
    pending.filter(|p| applied >= p.revision).map(|p| p.read_at)
}

/// Whether a confirmation asked at `read_at` has waited too long: the
/// watch is stuck, and the follower should start over.
pub fn stuck(pending: Option<Pending>, now: Instant) -> bool {
    pending.is_some_and(|p| now.saturating_duration_since(p.read_at) >= FRESH_FOR)
}

/// The copy: full etcd keys to their mod revisions.
#[derive(Debug, Default)]
struct Kept {
    revisions: HashMap<Vec<u8>, u64>,
    /// The revision the copy is known complete to.
    applied: u64,
    confirmed: Option<Instant>,
}

/// Revisions under one prefix, as a watch last reported them.
#[derive(Debug, Default)]
pub struct Recent {
    kept: Mutex<Kept>,
}

impl Recent {
    /// Starts following `prefix` on the pinned member of `members` (on the
    /// current Tokio runtime); the follower stops when the returned copy
    /// is dropped.
    pub fn follow(
        members: Weak<Vec<Client>>,
        pinned: Weak<AtomicUsize>,
        prefix: String,
    ) -> Arc<Recent> {
        let recent = Arc::new(Recent::default());
        tokio::spawn(follow(members, pinned, prefix, Arc::downgrade(&recent)));
        recent
    }

    /// The revisions of `keys` (full etcd keys), if the copy is confirmed.
    pub fn revisions(&self, keys: impl Iterator<Item = Vec<u8>>) -> Option<Vec<Option<u64>>> {
        let c = self.lock();
        if !fresh(c.confirmed, Instant::now()) {
            return None;
        }
        Some(keys.map(|k| c.revisions.get(&k).copied()).collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the copy with a listing made at `revision`, unconfirmed.
    fn reset(&self, revisions: HashMap<Vec<u8>, u64>, revision: u64) {
        *self.lock() = Kept {
            revisions,
            applied: revision,
            confirmed: None,
        };
    }

    fn forget(&self) {
        self.lock().confirmed = None;
    }

    /// Applies one watch answer; returns the revision the copy is now
    /// known complete to. An answer without events is a progress report:
    /// its revision is the watch's. An answer with events is complete only
    /// to its last event (etcd sends a watch that fell behind its history
    /// in batches, each stamped with the current revision).
    fn apply(&self, r: &WatchResponse) -> u64 {
        let mut c = self.lock();
        if r.events().is_empty() {
            let at = r.header().map_or(0, |h| h.revision() as u64);
            c.applied = c.applied.max(at);
        }
        for e in r.events() {
            let Some(kv) = e.kv() else { continue };
            let rev = kv.mod_revision() as u64;
            match e.event_type() {
                EventType::Put => c.revisions.insert(kv.key().to_vec(), rev),
                EventType::Delete => c.revisions.remove(kv.key()),
            };
            c.applied = c.applied.max(rev);
        }
        c.applied
    }

    fn confirm(&self, at: Instant) {
        let mut c = self.lock();
        c.confirmed = Some(c.confirmed.map_or(at, |t| t.max(at)));
    }
}

/// Why one run of the follower ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the watch was cancelled: {0}")]
    Cancelled(String),
    #[error("the watch stream closed")]
    Closed,
    #[error("the copy is no longer wanted")]
    Dropped,
    #[error("the member did not confirm in time")]
    Stuck,
    #[error("the store moved to another member")]
    Moved,
}

/// Lists and watches, run after run, until the copy is dropped.
async fn follow(
    members: Weak<Vec<Client>>,
    pinned: Weak<AtomicUsize>,
    prefix: String,
    recent: Weak<Recent>,
) {
    loop {
        let (Some(m), Some(p)) = (members.upgrade(), pinned.upgrade()) else {
            return;
        };
        let n = m.len();
        let at = p.load(Ordering::Relaxed) % n;
        let client = m[at].clone();
        drop(m);
        let member = Member { client, at, n };
        let ended = follow_once(&member, &p, &prefix, &recent).await;
        if let Some(r) = recent.upgrade() {
            r.forget();
        }
        match ended {
            None => return,
            Some(Ended::Moved) => {}
            Some(e) => {
                tracing::debug!(member = at, error = %e, "revision watch restarts");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// The member a run follows, and its place among `n`.
struct Member {
    client: Client,
    at: usize,
    n: usize,
}

/// One list and watch on one member; `None` once the copy is dropped.
async fn follow_once(
    member: &Member,
    pinned: &AtomicUsize,
    prefix: &str,
    recent: &Weak<Recent>,
) -> Option<Ended> {
    let client = &member.client;
    let run = async {
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let listed = kv.get(prefix, Some(opts)).await?;
        let revision = listed.header().map_or(0, |h| h.revision() as u64);
        let revisions = listed
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision() as u64))
            .collect();
        recent
            .upgrade()
            .ok_or(Ended::Dropped)?
            .reset(revisions, revision);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision as i64 + 1);
        let (mut watcher, mut stream) = client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .watch(prefix, Some(opts))
            .await?;
        let mut pending: Option<Pending> = None;
        let mut tick = tokio::time::interval(CONFIRM_EVERY);
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let r = msg?.ok_or(Ended::Closed)?;
                    if r.canceled() {
                        return Err(Ended::Cancelled(r.cancel_reason().to_string()));
                    }
                    let Some(copy) = recent.upgrade() else { return Err(Ended::Dropped) };
                    let applied = copy.apply(&r);
                    if let Some(t) = confirmed_by(pending, applied) {
                        copy.confirm(t);
                        pending = None;
                    }
                }
                _ = tick.tick() => {
                    if recent.strong_count() == 0 {
                        return Err(Ended::Dropped);
                    }
                    if pinned.load(Ordering::Relaxed) % member.n != member.at {
                        return Err(Ended::Moved);
                    }
                    if stuck(pending, Instant::now()) {
                        return Err(Ended::Stuck);
                    }
                    if pending.is_none() {
                        pending = Some(ask(client, prefix).await?);
                        watcher.request_progress().await?;
                    }
                }
            }
        }
    };
    let ended: Result<(), Ended> = run.await;
    match ended {
        Err(Ended::Dropped) => None,
        Err(e) => Some(e),
        Ok(()) => None,
    }
}

/// The member's current revision, read linearizably (so a member cut off
/// from the others cannot answer), and when it was read.
async fn ask(client: &Client, prefix: &str) -> Result<Pending, Ended> {
    let read_at = Instant::now();
    let mut kv = client.kv_client();
    // One key that never exists: the answer is just the header.
    let r = tokio::time::timeout(FRESH_FOR, kv.get(prefix, None))
        .await
        .map_err(|_| Ended::Stuck)??;
    Ok(Pending {
        revision: r.header().map_or(0, |h| h.revision() as u64),
        read_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_answers_only_for_a_while_after_its_last_confirmation() {
        let t = Instant::now();
        assert!(!fresh(None, t));
        assert!(fresh(Some(t), t + FRESH_FOR / 2));
        assert!(!fresh(Some(t), t + FRESH_FOR));
        // A confirmation from the future (clock read on another task) holds.
        assert!(fresh(Some(t + Duration::from_millis(5)), t));
    }

    #[test]
    fn a_confirmation_counts_from_its_read_once_the_watch_reaches_it() {
        let t = Instant::now();
        let p = Some(Pending {
            revision: 40,
            read_at: t,
        });
        assert_eq!(confirmed_by(p, 39), None);
        assert_eq!(confirmed_by(p, 40), Some(t));
        assert_eq!(confirmed_by(p, 41), Some(t));
        assert_eq!(confirmed_by(None, 41), None);
    }

    #[test]
    fn a_confirmation_unanswered_for_the_freshness_period_means_a_stuck_watch() {
        let t = Instant::now();
        let p = Some(Pending {
            revision: 1,
            read_at: t,
        });
        assert!(!stuck(p, t + FRESH_FOR / 2));
        assert!(stuck(p, t + FRESH_FOR));
        assert!(!stuck(None, t + FRESH_FOR * 10));
    }
}
