//! Tern's cluster scheduler, as pure functions.
//!
//! The controller describes hosts ([`HostView`]) and the server to move
//! ([`ServerView`]); [`schedule`] runs every [filter](filters) on every
//! host, scores the survivors ([`score`]) and picks the best, and
//! [`forecast`] returns the same verdict for every host so an operator sees
//! why each other host does not qualify. [`plan`] walks the queue of
//! migration jobs in order and decides which may start under the
//! [`Limits`].

pub mod filters;
pub mod limits;
pub mod model;
pub mod score;
pub mod sim;

pub use filters::Rejection;
pub use limits::{Limits, Wait};
pub use model::{DiskNeed, HostView, MoveKind, MoveRequest, PoolView, ServerView};

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One host's verdict in a forecast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Host name.
    pub host: String,
    /// Its score when it qualifies, else why not.
    pub result: Result<i64, Rejection<'static>>,
}

/// No host qualifies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no host can take server '{server}': {}", summary(.rejections))]
pub struct NoHost {
    /// The server.
    pub server: String,
    /// Each host and why it was rejected.
    pub rejections: Vec<(String, Rejection<'static>)>,
}

fn summary(r: &[(String, Rejection<'static>)]) -> String {
    if r.is_empty() {
        return "there are no other hosts".into();
    }
    let mut s: Vec<String> = r
        .iter()
        .take(5)
        .map(|(h, why)| format!("{h}: {why}"))
        .collect();
    if r.len() > 5 {
        s.push(format!("and {} more", r.len() - 5));
    }
    s.join("; ")
}

fn verdict<'a>(
    req: &'a MoveRequest,
    server: &'a ServerView,
    source: Option<&'a HostView>,
    h: &'a HostView,
    limits: &Limits,
) -> Result<i64, Rejection<'a>> {
    filters::check(req, server, source, h)?;
    if req.kind != MoveKind::Rescue && !limits.inbound_ok(h.inbound) {
        return Err(Rejection::InboundLimit {
            limit: limits.per_host_inbound,
        });
    }
    Ok(score::score(h))
}

/// Every host's verdict, best first among those that qualify.
pub fn forecast(
    req: &MoveRequest,
    server: &ServerView,
    hosts: &[HostView],
    limits: &Limits,
) -> Vec<Verdict> {
    let source = hosts.iter().find(|h| h.name == server.host);
    let mut v: Vec<Verdict> = hosts
        .iter()
        .map(|h| Verdict {
            host: h.name.clone(),
            result: verdict(req, server, source, h, limits).map_err(Rejection::into_owned),
        })
        .collect();
    v.sort_by_key(|x| match &x.result {
        Ok(s) => (0, -s),
        Err(_) => (1, 0),
    });
    v
}

/// The best destination for `server`, or every host's reason why not.
/// Ties go to the host listed first, so decisions are deterministic.
pub fn schedule(
    req: &MoveRequest,
    server: &ServerView,
    hosts: &[HostView],
    limits: &Limits,
) -> Result<String, NoHost> {
    let source = hosts.iter().find(|h| h.name == server.host);
    let mut best: Option<(i64, &HostView)> = None;
    let mut rejections = Vec::new();
    for h in hosts {
        match verdict(req, server, source, h, limits) {
            Ok(s) if best.is_none_or(|(b, _)| s > b) => best = Some((s, h)),
            Ok(_) => {}
            // Borrowed while deciding: nothing is allocated per host
            // unless every host is rejected and the reasons are reported.
            Err(r) => rejections.push((h.name.as_str(), r)),
        }
    }
    match best {
        Some((_, h)) => Ok(h.name.clone()),
        None => Err(NoHost {
            server: server.name.clone(),
            rejections: rejections
                .into_iter()
                .map(|(h, r)| (h.to_string(), r.into_owned()))
                .collect(),
        }),
    }
}

/// A job waiting in the queue.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Job id.
    pub id: String,
    /// The server to move.
    pub server: ServerView,
    /// What was asked.
    pub req: MoveRequest,
}

/// What to do with one queued job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start it towards `dest`.
    Start {
        /// Job id.
        id: String,
        /// Destination host.
        dest: String,
    },
    /// Leave it queued.
    Wait {
        /// Job id.
        id: String,
        /// Why.
        why: String,
    },
    /// No host can ever take it as things stand.
    Fail {
        /// Job id.
        id: String,
        /// Why.
        why: NoHost,
    },
}

/// Decides, in queue order, which jobs start now and where. `hosts` carry
/// the migrations already running (`inbound`/`outbound`); `running` is the
/// cluster's count. Each start is counted before the next job is looked
/// at, so one call never exceeds a limit. Rescues (restarts of a dead
/// host's servers) are not migrations: they bypass the limits.
pub fn plan(queue: &[Queued], hosts: &[HostView], running: u32, limits: &Limits) -> Vec<Step> {
    let mut hosts = hosts.to_vec();
    let index: HashMap<String, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.clone(), i))
        .collect();
    let mut running = running;
    let mut out = Vec::with_capacity(queue.len());
    for q in queue {
        let src = index.get(&q.server.host).copied();
        if q.req.kind != MoveKind::Rescue {
            let outbound = src.map_or(0, |i| hosts[i].outbound);
            if let Err(w) = limits.admit(running, outbound) {
                out.push(Step::Wait {
                    id: q.id.clone(),
                    why: w.to_string(),
                });
                continue;
            }
        }
        match schedule(&q.req, &q.server, &hosts, limits) {
            Ok(dest) => {
                if q.req.kind != MoveKind::Rescue {
                    running += 1;
                    if let Some(i) = src {
                        hosts[i].outbound += 1;
                    }
                }
                if let Some(&d) = index.get(&dest) {
                    let h = &mut hosts[d];
                    if q.req.kind != MoveKind::Rescue {
                        h.inbound += 1;
                    }
                    h.vcpus_used += q.server.vcpus;
                    h.memory_used_mib += q.server.memory_mib;
                }
                out.push(Step::Start {
                    id: q.id.clone(),
                    dest,
                });
            }
            Err(e)
                if e.rejections
                    .iter()
                    .any(|(_, r)| matches!(r, Rejection::InboundLimit { .. })) =>
            {
                out.push(Step::Wait {
                    id: q.id.clone(),
                    why: "every qualifying host already receives as many migrations as allowed"
                        .into(),
                })
            }
            Err(e) => out.push(Step::Fail {
                id: q.id.clone(),
                why: e,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests;
