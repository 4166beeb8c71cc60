//! `tern-controller`: the cluster controller.
//!
//! Agents register and renew a lease ([`api`]); the controller keeps hosts,
//! servers and jobs in a [`tern_store::Store`] ([`inventory`]). Every
//! controller serves the API; the elected leader alone runs the loop in
//! [`Controller::run`]: host health ([`health`]), evacuation of dead hosts
//! ([`evacuate`]), and migration jobs through the scheduler and its limits
//! ([`jobs`]). The wire protocol and its message sequence are documented
//! in `tern_api::cluster`.

pub mod agents;
pub mod api;
pub mod authz;
pub mod console;
pub mod decoded;
pub mod error;
pub mod evacuate;
pub mod fencing;
pub mod follow;
pub mod health;
#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod heartbeat_tests;
pub mod interrupted;
pub mod inventory;
pub mod jobs;
pub mod listen;
pub mod metrics;
#[cfg(test)]
mod operator_tests;
pub mod rbd_fence;
pub mod recent;
pub mod reply;
pub mod rescue;
pub mod rescue_check;
pub mod rest;
pub mod runner;
pub mod sync;
pub mod views;

use inventory::Inventory;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_scheduler::Limits;
use tern_store::Election;

/// Default lease of a host: it is lapsed after this long without a heartbeat.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// Default heartbeat interval of agents.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default grace between a lapse and the probe that declares a host down.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Everything the controller needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// API address.
    pub listen: SocketAddr,
    /// `file:DIR` or `etcd:URL[,URL...]`.
    pub store: String,
    /// This controller's id (in elections and logs).
    pub id: String,
    /// Host lease TTL.
    pub lease_ttl: Duration,
    /// Agents' heartbeat interval.
    pub heartbeat: Duration,
    /// Grace after a lapse.
    pub grace: Duration,
    /// How often the leader looks at the cluster.
    pub tick: Duration,
    /// Leader lease TTL (hand-over time).
    pub leader_ttl: Duration,
    /// Migration limits.
    pub limits: Limits,
    /// Cluster setting: every live migration uses QEMU's TLS
    /// (`--enable-tls`), whatever the request says.
    pub migration_tls: bool,
    /// The API is on mutual TLS (not `--auth none`): hosts must then be
    /// reached over `tern+tls://` too.
    pub api_tls: bool,
    /// Tests: exit right after marking a host down, before its rescues.
    pub fault_exit_after_mark_down: bool,
    /// Prove a host fenced only if its fence feeds a watchdog (its lease
    /// names one): without it, a fence that died or froze with the agent
    /// would not have stopped the guests (`docs/FENCING.md`).
    pub fence_require_watchdog: bool,
}

impl ControllerConfig {
    /// Defaults for a store and a listen address.
    pub fn new(listen: SocketAddr, store: &str) -> ControllerConfig {
        ControllerConfig {
            listen,
            store: store.to_string(),
            id: format!("ctl-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            lease_ttl: DEFAULT_LEASE_TTL,
            heartbeat: DEFAULT_HEARTBEAT,
            grace: DEFAULT_GRACE,
            tick: Duration::from_millis(250),
            leader_ttl: Duration::from_secs(3),
            limits: Limits::default(),
            migration_tls: false,
            api_tls: false,
            fault_exit_after_mark_down: false,
            fence_require_watchdog: false,
        }
    }
}

/// The controller's shared state.
#[derive(Debug)]
pub struct Controller {
    /// Configuration.
    pub cfg: ControllerConfig,
    /// Records.
    pub inv: Inventory,
    /// The election every controller takes part in.
    pub election: Election,
    leader: AtomicBool,
    /// The current term's guard while leading.
    guard: Mutex<Option<tern_store::Guard>>,
    /// Jobs with a runner in this process (aborted if leadership is lost,
    /// so two controllers never drive one migration).
    runners: Mutex<HashMap<String, Option<tokio::task::AbortHandle>>>,
    /// What the leader saw of lapsed hosts' storage leases.
    fence_watch: Mutex<fencing::Watch>,
    /// Per host, why its fencing is not proven yet (shown on rescue jobs).
    fence_notes: Mutex<HashMap<String, String>>,
    /// The online hosts, for register replies ([`api::PEERS_MAX_AGE`]).
    peers: recent::Recent<api::Peers>,
    /// Where servers are, for hosts that register again.
    placement: recent::Recent<sync::apply::Placement>,
    /// Registrations served at once (see [`api::REGISTRATIONS_AT_ONCE`]).
    registering: tokio::sync::Semaphore,
    /// When the host leases this controller renewed run out, so that a
    /// lapse's grace counts from the lease's end.
    lease_ends: health::LeaseEnds,
}

/// Renews the leader's lease every `every` until that fails; then says so.
async fn renew(lead: tern_store::Leadership, every: Duration, lost: Arc<tokio::sync::Notify>) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = lead.renew().await {
            tracing::warn!(error = %e, term = lead.term, "lost leadership");
            lost.notify_one();
            return;
        }
    }
}

/// Name of the controllers' election.
const ELECTION: &str = "controller";

impl Controller {
    /// Opens the store.
    pub async fn open(cfg: ControllerConfig) -> anyhow::Result<Arc<Controller>> {
        let store = tern_store::open(&cfg.store)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open store {}: {e}", cfg.store))?;
        if cfg.store.starts_with("file:") {
            // The file store's lock makes this the only controller: an
            // election key left by our previous life is stale.
            store.delete(&format!("election/{ELECTION}")).await?;
        }
        Ok(Controller::on_store(cfg, store))
    }

    /// A controller on a store already open (`cfg.store` only names it):
    /// tests wrap a store to change how it answers.
    pub fn on_store(cfg: ControllerConfig, store: Arc<dyn tern_store::Store>) -> Arc<Controller> {
        let election = Election::new(store.clone(), ELECTION, cfg.leader_ttl);
        Arc::new(Controller {
            inv: Inventory::new(store),
            election,
            leader: AtomicBool::new(false),
            guard: Mutex::default(),
            runners: Mutex::default(),
            fence_watch: Mutex::default(),
            fence_notes: Mutex::default(),
            peers: recent::Recent::new(api::PEERS_MAX_AGE),
            placement: recent::Recent::new(sync::apply::PLACEMENT_MAX_AGE),
            registering: tokio::sync::Semaphore::new(api::REGISTRATIONS_AT_ONCE),
            lease_ends: health::LeaseEnds::default(),
            cfg,
        })
    }

    /// Whether this controller leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The records as the leader writes them: every conditional write
    /// carries this controller's term, and fails once another leads (or
    /// at once when this one does not lead).
    pub fn lead(&self) -> Inventory {
        let g = self
            .guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(tern_store::Guard {
                key: format!("election/{ELECTION}"),
                revision: u64::MAX,
            });
        self.inv.guarded(g)
    }

    /// The records as an operator request (queue or cancel a job) writes
    /// them: guarded by a term like every job write. The leader uses its
    /// own, so once deposed (paused past its lease, say) its writes are
    /// refused; another controller uses the term of the leader it sees
    /// now, so its write is refused if leadership changes meanwhile.
    pub async fn operator(&self) -> error::Result<Inventory> {
        if self.is_leader() {
            return Ok(self.lead());
        }
        let key = format!("election/{ELECTION}");
        match self.inv.store.get(&key).await? {
            Some(e) => Ok(self.inv.guarded(tern_store::Guard {
                key,
                revision: e.revision,
            })),
            None => Err(error::CtlError::Conflict(
                "no controller leads the cluster right now; try again in a few seconds".into(),
            )),
        }
    }

    /// Campaigns, then leads until the lease is lost; forever. The lease
    /// is renewed by its own task, so a slow tick cannot let it lapse
    /// unnoticed; and a tick that runs on after the lease was lost writes
    /// nothing, since its writes carry the lost term.
    pub async fn run(self: Arc<Self>) {
        loop {
            let lead = self
                .election
                .campaign(&self.cfg.id, Duration::from_millis(250))
                .await;
            let Ok(lead) = lead else { continue };
            *self.guard.lock().unwrap_or_else(|p| p.into_inner()) = Some(lead.guard());
            self.leader.store(true, Ordering::Relaxed);
            tracing::info!(id = %self.cfg.id, term = lead.term, "leading the cluster");
            let lost = Arc::new(tokio::sync::Notify::new());
            let renewer = tokio::spawn(renew(lead, self.cfg.leader_ttl / 3, lost.clone()));
            loop {
                tokio::select! {
                    _ = lost.notified() => break,
                    _ = async {
                        tokio::time::sleep(self.cfg.tick).await;
                        if let Err(e) = self.tick().await {
                            tracing::warn!(error = %e, "controller tick failed");
                        }
                    } => {}
                }
            }
            renewer.abort();
            self.leader.store(false, Ordering::Relaxed);
            *self.guard.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.abort_runners();
        }
    }

    /// Stops every job runner of this process: the next leader resumes
    /// their jobs from the store.
    fn abort_runners(&self) {
        let mut r = self.runners.lock().unwrap_or_else(|p| p.into_inner());
        for (id, h) in r.drain() {
            if let Some(h) = h {
                tracing::warn!(job = %id, "no longer leading: leaving the job to the next leader");
                h.abort();
            }
        }
    }

    /// Notes that `host`'s lease was granted or renewed by a request sent
    /// at `sent_ms` (ms since the epoch), so that a lapse's grace counts
    /// from the lease's end ([`health`]).
    pub(crate) fn lease_renewed(&self, host: &str, lease: i64, sent_ms: u64) {
        let ttl = self.cfg.lease_ttl.as_millis() as u64;
        self.lease_ends.renewed(host, lease, sent_ms, ttl);
    }

    /// One look at the cluster: host health, then jobs.
    pub async fn tick(self: &Arc<Self>) -> error::Result<()> {
        evacuate::health_tick(self).await?;
        jobs::schedule_tick(self).await
    }

    fn fence_watch(&self) -> std::sync::MutexGuard<'_, fencing::Watch> {
        self.fence_watch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_fence_note(&self, host: &str, note: String) {
        self.fence_notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), note);
    }

    fn fence_note(&self, host: &str) -> Option<String> {
        self.fence_notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    fn runner_claim(&self, id: &str) -> bool {
        let mut r = self.runners.lock().unwrap_or_else(|p| p.into_inner());
        if r.contains_key(id) {
            return false;
        }
        r.insert(id.to_string(), None);
        true
    }

    fn runner_started(&self, id: &str, h: tokio::task::AbortHandle) {
        let mut r = self.runners.lock().unwrap_or_else(|p| p.into_inner());
        match r.get_mut(id) {
            Some(slot) => *slot = Some(h),
            // Leadership was lost between claim and spawn.
            None => h.abort(),
        }
    }

    fn runner_release(&self, id: &str) {
        self.runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn has_runner(&self, id: &str) -> bool {
        self.runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }
}
