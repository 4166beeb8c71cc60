//! Fencing that holds when `ternd` itself is dead: a storage lease per
//! host on each shared pool, renewed by a separate fence process that
//! kills the host's guests when it cannot renew in time. The design, its
//! timings and what it does not cover are in `docs/FENCING.md`.
//!
//! The agent's part is small: it tells the fence what to do (armed or
//! not, which pools; [`sync`]), keeps a fence process running, reads
//! other hosts' leases for the controller ([`read_lease`]), and clears the
//! fenced state once it is back in the cluster ([`clear_fenced`]).
//! Losing only the controller never kills a guest: the fence watches the
//! storage, not the controller.

pub mod config;
pub mod daemon;
pub mod kill;
pub mod lease;
pub mod policy;
pub mod standin;
pub mod watchdog;

use crate::error::{AgentError, Result};
use crate::pools::Store;
use crate::Agent;
use config::{FenceConfig, FenceDir};
use std::sync::Arc;
use std::time::Duration;
use tern_api::fence::{valid_host_name, LeaseRecord};
use tern_model::NetfsSource;

/// How long reading a lease for the controller may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads `host`'s lease on this host's pool `pool` (`fence-lease`).
pub async fn read_lease(agent: &Arc<Agent>, pool: &str, host: &str) -> Result<Option<LeaseRecord>> {
    if !valid_host_name(host) {
        return Err(AgentError::Invalid(format!(
            "'{host}' is not a host name; give the cluster name of a host"
        )));
    }
    let read = async {
        match agent.pools.active_store(pool).await? {
            Store::Dir(dir) => {
                let host = host.to_string();
                tokio::task::spawn_blocking(move || lease::read(&dir, &host))
                    .await
                    .map_err(|e| AgentError::Failed(format!("lease read failed: {e}")))?
                    .map_err(|e| AgentError::Failed(format!("cannot read the lease: {e}")))
            }
            Store::Nfs { src, .. } => lease::read_nfs(&src, host).await,
            Store::Rbd(_) => Err(AgentError::Unsupported(format!(
                "pool '{pool}' is an rbd pool, which carries no lease file: RBD guests are fenced by blocklisting their clients in Ceph"
            ))),
            Store::Logical { .. } => Err(AgentError::Unsupported(format!(
                "pool '{pool}' is a logical (LVM) pool, which carries no lease file; keep leases on a shared dir or netfs pool"
            ))),
        }
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(AgentError::Timeout(format!(
            "reading the lease in pool '{pool}' took over {READ_TIMEOUT:?}"
        ))),
    }
}

/// The active shared pools, each of which carries a lease: directories,
/// and exports reached over `nfs://`.
async fn lease_pools(agent: &Arc<Agent>) -> (Vec<std::path::PathBuf>, Vec<NetfsSource>) {
    let (mut dirs, mut nfs) = (Vec::new(), Vec::new());
    for p in agent.pools.list(false).await {
        if !p.def.shared {
            continue;
        }
        match agent.pools.active_store(&p.def.name).await {
            Ok(Store::Dir(d)) => dirs.push(d),
            Ok(Store::Nfs { src, .. }) => nfs.push(src),
            Ok(Store::Rbd(_)) | Ok(Store::Logical { .. }) | Err(_) => {}
        }
    }
    dirs.sort();
    nfs.sort_by(|a, b| (&a.host, &a.path).cmp(&(&b.host, &b.path)));
    (dirs, nfs)
}

/// Tells the fence what the controller said (`armed`) and which pools
/// carry a lease, and makes sure a fence process runs.
pub async fn sync(agent: &Arc<Agent>, host: &str, armed: bool) {
    let dir = FenceDir::of(&agent.cfg.state_dir);
    let (pools, nfs) = lease_pools(agent).await;
    let want = FenceConfig {
        host: host.to_string(),
        armed,
        pools,
        nfs,
        settings: agent.cfg.fence,
        watchdog: agent.cfg.fence_watchdog.clone(),
    };
    if dir.load_config().as_ref() != Some(&want) {
        tracing::info!(armed, pools = ?want.pools, "fence configuration");
        if let Err(e) = dir.save_config(&want) {
            tracing::error!(error = %e, "cannot write the fence configuration");
        }
    }
    ensure_running(agent);
}

/// Starts `tern-fence` unless one already holds the state directory.
pub fn ensure_running(agent: &Arc<Agent>) {
    let state = &agent.cfg.state_dir;
    if daemon::running(state) {
        return;
    }
    let bin = std::env::current_exe()
        .map(|e| e.with_file_name("tern-fence"))
        .unwrap_or_else(|_| "tern-fence".into());
    let dir = FenceDir::of(state);
    let _ = std::fs::create_dir_all(dir.root());
    let cmd = crate::procs::detached_command(&bin, &dir.log());
    match cmd.and_then(|mut c| c.arg("--state-dir").arg(state).spawn()) {
        Ok(c) => tracing::info!(pid = c.id(), "fence process started"),
        Err(e) => {
            tracing::error!(binary = %bin.display(), error = %e, "cannot start the fence process")
        }
    }
}

/// Whether the fence killed this host's guests and the agent has not yet
/// been back in the cluster since.
pub fn is_fenced(agent: &Agent) -> bool {
    FenceDir::of(&agent.cfg.state_dir).fenced().exists()
}

/// Back in the cluster (registered, or a heartbeat accepted): the
/// controller rescues a host's guests only after declaring it down, which
/// a registered or heartbeating host is not, so the fence may renew again
/// and guests may start here again.
pub fn clear_fenced(agent: &Agent) {
    let dir = FenceDir::of(&agent.cfg.state_dir);
    if let Some(r) = dir.load_fenced() {
        tracing::warn!(at_ms = r.at_ms, reason = %r.reason, "this host fenced its guests; registered again, so renewing the leases again");
        let _ = std::fs::remove_file(dir.fenced());
    }
}

/// Set once the test fault `--fault-refuse-start-once` refused a start.
static REFUSED_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Refuses to start a guest on a host whose fence killed its guests until
/// the agent is back in the cluster: the controller may be restarting
/// them elsewhere, and only it can say which still belong here.
pub fn refuse_start(agent: &Agent, name: &str) -> Result<()> {
    if is_fenced(agent) {
        return Err(AgentError::Conflict(format!(
            "this host fenced its guests (it could not renew its storage lease); '{name}' may run elsewhere now, so it starts here only after this agent registered with the controller again"
        )));
    }
    if agent.cfg.faults.refuse_start_once
        && !REFUSED_ONCE.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return Err(AgentError::Failed(format!(
            "fault injection: refusing the first start ('{name}')"
        )));
    }
    Ok(())
}
