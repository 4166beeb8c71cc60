//! Proving a host fenced before any of its guests starts elsewhere.
//!
//! Every host in a cluster renews a lease on each shared pool (see
//! `tern_api::fence` and `docs/FENCING.md`). While a host's cluster lease
//! is lapsed, the leader reads that host's storage leases every tick
//! through other hosts that see the same pools, and keeps, per pool, when
//! it first and last saw the same `(instance, counter)` on its own
//! monotonic clock. Once the host is down and every readable lease has
//! stood still for the host's promise plus the write timeout plus a
//! margin, the host's guests are dead: the proof is stored
//! (`fenced/HOST/SINCE`) and only then may rescues of that death start
//! ([`proven`]). No clock is compared with another host's clock. RBD pools
//! carry no lease: their guests' Ceph clients are blocklisted instead
//! ([`crate::rbd_fence`]), and a confirmed blocklist is that pool's proof.

use crate::error::Result;
use crate::evacuate::host_client;
use crate::Controller;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_api::cluster::{HostRecord, HostStatus};
use tern_api::fence::LeaseRecord;
use tern_api::Request;

/// Store prefix of fence proofs: `fenced/HOST/SINCE_MS`.
pub const FENCED: &str = "fenced/";

/// How long reading one lease through another host may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the leader saw of one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    instance: String,
    counter: u64,
    armed: bool,
    fence_after_ms: u64,
    io_timeout_ms: u64,
    watchdog_ms: u64,
    first_seen: Instant,
    last_seen: Instant,
}

/// One lease's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The host promised nothing (its fence is not armed).
    NotArmed,
    /// Its fence feeds no watchdog, and this controller requires one.
    NoWatchdog,
    /// Still renewing, or not stood still long enough: this much longer.
    Waiting(Duration),
    /// Stood still long enough: the host's guests are dead.
    Proven(Duration),
}

/// Folds a new read of a lease into what was seen before.
pub fn observe(prev: Option<&Observation>, rec: &LeaseRecord, now: Instant) -> Observation {
    match prev {
        Some(p) if p.instance == rec.instance && p.counter == rec.counter => Observation {
            last_seen: now,
            ..p.clone()
        },
        _ => Observation {
            instance: rec.instance.clone(),
            counter: rec.counter,
            armed: rec.armed,
            fence_after_ms: rec.fence_after_ms,
            io_timeout_ms: rec.io_timeout_ms,
            watchdog_ms: rec.watchdog_ms,
            first_seen: now,
            last_seen: now,
        },
    }
}

/// How long a lease must stand still: the promise, plus the write timeout
/// (a renewal started before the reader looked may land after), plus a
/// margin for the two clocks' rates (10 %, at least half a second).
pub fn required_wait(fence_after_ms: u64, io_timeout_ms: u64) -> Duration {
    let margin = (fence_after_ms / 10).max(500);
    Duration::from_millis(fence_after_ms + io_timeout_ms + margin)
}

/// The verdict on one lease; `require_watchdog`: only a host whose fence
/// feeds a watchdog can be proven fenced.
pub fn verdict(o: &Observation, require_watchdog: bool) -> Verdict {
    if !o.armed {
        return Verdict::NotArmed;
    }
    if require_watchdog && o.watchdog_ms == 0 {
        return Verdict::NoWatchdog;
    }
    let need = required_wait(o.fence_after_ms, o.io_timeout_ms);
    let still = o.last_seen.duration_since(o.first_seen);
    if still >= need {
        Verdict::Proven(still)
    } else {
        Verdict::Waiting(need - still)
    }
}

/// Whether a host is proven fenced from its pools' verdicts: at least one
/// lease, and every lease read stood still long enough.
pub fn host_proven(verdicts: &[Verdict]) -> bool {
    !verdicts.is_empty() && verdicts.iter().all(|v| matches!(v, Verdict::Proven(_)))
}

/// A stored proof that a host's guests are dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceProof {
    /// The host.
    pub host: String,
    /// The death it is about (the host's `Down` time).
    pub since_ms: u64,
    /// When it was proven, ms since the epoch.
    pub proven_ms: u64,
    /// Per pool: the lease that stood still, and for how long.
    pub evidence: Vec<String>,
}

/// Key of a host's fence proof for one death.
pub fn proof_key(host: &str, since_ms: u64) -> String {
    format!("{FENCED}{host}/{since_ms}")
}

/// Whether the death of `host` at `since_ms` is proven fenced.
pub async fn proven(ctl: &Arc<Controller>, host: &str, since_ms: u64) -> Result<bool> {
    Ok(ctl
        .lead()
        .store
        .get(&proof_key(host, since_ms))
        .await?
        .is_some())
}

/// The pools `host` keeps a lease on, each with a host that can read it.
fn readers<'a>(host: &HostRecord, hosts: &'a [Arc<HostRecord>]) -> Vec<(String, &'a HostRecord)> {
    host.report
        .pools
        .iter()
        .filter(|p| p.def.shared && p.active)
        // RBD pools carry no lease file (Ceph's blocklist fences them).
        .filter(|p| p.def.kind != tern_model::PoolKind::Rbd)
        .filter_map(|p| {
            hosts
                .iter()
                .find(|r| {
                    r.report.name != host.report.name
                        && r.status == HostStatus::Online
                        && r.report
                            .pools
                            .iter()
                            .any(|q| q.def.name == p.def.name && q.def.shared && q.active)
                })
                .map(|r| (p.def.name.clone(), &**r))
        })
        .collect()
}

async fn read(reader: &HostRecord, pool: &str, host: &str) -> Option<LeaseRecord> {
    let c = host_client(reader).ok()?.with_timeout(READ_TIMEOUT);
    let r = c
        .call::<Option<LeaseRecord>>(&Request::FenceLease {
            pool: pool.to_string(),
            host: host.to_string(),
        })
        .await;
    match r {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%host, %pool, reader = %reader.report.name, error = %e, "lease read failed");
            None
        }
    }
}

/// Per host, per pool: what the leader saw.
pub type Watch = HashMap<String, HashMap<String, Observation>>;

/// Reads the leases of every lapsed or down host and stores a proof for
/// each down host whose leases all stood still long enough.
pub async fn watch_tick(ctl: &Arc<Controller>, hosts: &[Arc<HostRecord>]) -> Result<()> {
    // One read for every host's blocklist record (almost always none),
    // rather than a read per online host on every tick.
    let fenced: std::collections::HashSet<String> = ctl
        .lead()
        .store
        .list(crate::rbd_fence::RBD_FENCED)
        .await?
        .into_iter()
        .map(|e| e.key[crate::rbd_fence::RBD_FENCED.len()..].to_string())
        .collect();
    for h in hosts {
        let name = &h.report.name;
        let since = match h.status {
            HostStatus::Online => {
                ctl.fence_watch().remove(name);
                if fenced.contains(name) {
                    crate::rbd_fence::cleanup(ctl, h, hosts).await;
                }
                continue;
            }
            HostStatus::Lapsed { .. } => None,
            HostStatus::Down { since_ms } => Some(since_ms),
        };
        if let Some(s) = since {
            if proven(ctl, name, s).await? {
                continue;
            }
        }
        let mut verdicts = Vec::new();
        let mut evidence = Vec::new();
        for (pool, reader) in readers(h, hosts) {
            let Some(rec) = read(reader, &pool, name).await else {
                continue;
            };
            let now = Instant::now();
            let o = {
                let mut w = ctl.fence_watch();
                let per = w.entry(name.clone()).or_default();
                let o = observe(per.get(&pool), &rec, now);
                per.insert(pool.clone(), o.clone());
                o
            };
            let v = verdict(&o, ctl.cfg.fence_require_watchdog);
            let dog = match o.watchdog_ms {
                0 => "no watchdog".to_string(),
                t => format!("watchdog {t} ms"),
            };
            evidence.push(format!(
                "pool {pool}: lease {}#{} ({dog}, read by {}) {v:?}",
                &o.instance[..o.instance.len().min(8)],
                o.counter,
                reader.report.name
            ));
            verdicts.push(v);
        }
        // RBD-backed guests: their Ceph clients blocklisted once the host
        // is down (see `rbd_fence`).
        let mut why_not = None;
        if let Some(since_ms) = since {
            for (v, line) in crate::rbd_fence::fence(ctl, h, hosts, since_ms).await {
                if v == Verdict::NotArmed {
                    why_not = Some(line.clone());
                }
                evidence.push(line);
                verdicts.push(v);
            }
        }
        ctl.set_fence_note(name, why_not.unwrap_or_else(|| summary(&verdicts)));
        let Some(since_ms) = since else { continue };
        if host_proven(&verdicts) {
            let proof = FenceProof {
                host: name.clone(),
                since_ms,
                proven_ms: crate::inventory::now_ms(),
                evidence,
            };
            if ctl
                .lead()
                .create(&proof_key(name, since_ms), &proof)
                .await?
            {
                tracing::warn!(host = %name, evidence = ?proof.evidence, "host proven fenced: its leases stood still past its promise");
            }
        }
    }
    Ok(())
}

/// One line on why a host is not (yet) proven fenced.
pub fn summary(v: &[Verdict]) -> String {
    if v.is_empty() {
        return "no storage lease of the host could be read: its fencing cannot be proven".into();
    }
    if v.contains(&Verdict::NotArmed) {
        return "the host's fence is not armed: its fencing cannot be proven".into();
    }
    if v.contains(&Verdict::NoWatchdog) {
        return "the host's fence feeds no watchdog and this controller requires one (--fence-require-watchdog): a fence that died with the agent would not have stopped the guests, so its fencing cannot be proven; start ternd with --fence-watchdog, or stop the host and act by hand".into();
    }
    let left = v
        .iter()
        .filter_map(|v| match v {
            Verdict::Waiting(d) => Some(*d),
            _ => None,
        })
        .max();
    match left {
        Some(d) => format!(
            "waiting for the host's storage lease to stand still ({:.1} s left)",
            d.as_secs_f64()
        ),
        None => "the host is proven fenced".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::fence::{LEASE_MAGIC, LEASE_VERSION};

    fn rec(instance: &str, counter: u64, armed: bool) -> LeaseRecord {
        rec_dog(instance, counter, armed, 0)
    }

    fn rec_dog(instance: &str, counter: u64, armed: bool, watchdog_ms: u64) -> LeaseRecord {
        LeaseRecord {
            magic: LEASE_MAGIC.into(),
            version: LEASE_VERSION,
            host: "a".into(),
            instance: instance.into(),
            counter,
            armed,
            fence_after_ms: 5000,
            io_timeout_ms: 1000,
            written_ms: 0,
            watchdog_ms,
        }
    }

    #[test]
    fn a_lease_is_proven_only_after_standing_still_past_the_promise() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let need = required_wait(5000, 1000);
        assert_eq!(need, Duration::from_millis(6500));
        let o = observe(None, &rec("i", 1, true), t0);
        assert_eq!(verdict(&o, false), Verdict::Waiting(need));
        // Renewed: the wait starts again.
        let o = observe(Some(&o), &rec("i", 2, true), ms(6000));
        assert_eq!(verdict(&o, false), Verdict::Waiting(need));
        let o = observe(Some(&o), &rec("i", 2, true), ms(12_000));
        assert_eq!(
            verdict(&o, false),
            Verdict::Waiting(Duration::from_millis(500))
        );
        let o2 = observe(Some(&o), &rec("i", 2, true), ms(12_500));
        assert_eq!(verdict(&o2, false), Verdict::Proven(need));
        // A restarted fence (new instance, same counter) is a renewal.
        let o3 = observe(Some(&o), &rec("j", 2, true), ms(12_500));
        assert!(matches!(verdict(&o3, false), Verdict::Waiting(_)));
        // An unarmed lease proves nothing however long it stands.
        let u = observe(None, &rec("i", 1, false), t0);
        let u = observe(Some(&u), &rec("i", 1, false), ms(60_000));
        assert_eq!(verdict(&u, false), Verdict::NotArmed);
    }

    #[test]
    fn a_controller_that_requires_a_watchdog_proves_only_hosts_that_feed_one() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(60);
        let none = observe(None, &rec("i", 1, true), t0);
        let none = observe(Some(&none), &rec("i", 1, true), late);
        assert_eq!(verdict(&none, true), Verdict::NoWatchdog);
        assert!(matches!(verdict(&none, false), Verdict::Proven(_)));
        assert!(summary(&[Verdict::NoWatchdog]).contains("--fence-require-watchdog"));
        let fed = observe(None, &rec_dog("i", 1, true, 3000), t0);
        let fed = observe(Some(&fed), &rec_dog("i", 1, true, 3000), late);
        assert!(matches!(verdict(&fed, true), Verdict::Proven(_)));
        // The promise still comes first: unarmed proves nothing.
        let u = observe(None, &rec_dog("i", 1, false, 3000), t0);
        assert_eq!(verdict(&u, true), Verdict::NotArmed);
    }

    #[test]
    fn a_host_is_proven_only_when_every_lease_read_is() {
        let p = Verdict::Proven(Duration::from_secs(7));
        let w = Verdict::Waiting(Duration::from_secs(1));
        assert!(!host_proven(&[]));
        assert!(host_proven(std::slice::from_ref(&p)));
        assert!(!host_proven(&[p.clone(), w.clone()]));
        assert!(!host_proven(&[p, Verdict::NotArmed]));
        assert!(summary(&[w]).contains("1.0 s left"));
        assert!(summary(&[]).contains("cannot be proven"));
    }
}
