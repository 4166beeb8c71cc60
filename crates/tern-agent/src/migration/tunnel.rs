//! `--tunnelled` on this agent: the destination's tunnel listener and the
//! source's local sockets (the bytes are moved by `tern-tunnel`; the
//! message sequence is in `tern_migrate::protocol`).

use super::Job;
use crate::access::Grant;
use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use tern_migrate::protocol::{IncomingTarget, PerformRequest, StreamKind};
use tern_tunnel::{EventSink, Gate, Inbound, Outbound, Remote, Routes};

/// The tunnel ends a job holds; dropping them stops accepting.
#[derive(Debug)]
pub enum Ends {
    /// Destination: the TLS listener.
    Inbound(Inbound),
    /// Source: the sockets QEMU connects to.
    Outbound(Outgoing),
    /// Destination without `--tunnelled`: the guard in front of QEMU's
    /// unix socket (see `super::guard`).
    Guard(super::guard::Guard),
}

impl Ends {
    /// Ends every stream now (the migration failed).
    pub fn abort(&self) {
        match self {
            Ends::Inbound(i) => i.abort(),
            Ends::Guard(g) => g.abort(),
            Ends::Outbound(o) => {
                o.memory.abort();
                if let Some(n) = &o.nbd {
                    n.abort();
                }
            }
        }
    }

    /// One line for the job's events: streams and bytes carried.
    pub fn summary(&self) -> String {
        let (streams, up, down) = match self {
            Ends::Guard(g) => return g.summary(),
            Ends::Inbound(i) => i.stats().totals(),
            Ends::Outbound(o) => {
                let (a, b, c) = o.memory.stats().totals();
                let (d, e, f) = o
                    .nbd
                    .as_ref()
                    .map(|n| n.stats().totals())
                    .unwrap_or_default();
                (a + d, b + e, c + f)
            }
        };
        format!(
            "tunnel carried {streams} stream(s): {} MiB out, {} MiB in",
            up >> 20,
            down >> 20
        )
    }
}

/// The source's local sockets.
#[derive(Debug)]
pub struct Outgoing {
    memory: Outbound,
    nbd: Option<Outbound>,
}

impl Outgoing {
    /// QEMU's `migrate` URI.
    pub fn qemu_uri(&self) -> String {
        format!("unix:{}", self.memory.path().display())
    }

    /// The `server` of the NBD block node a mirror writes to.
    pub fn nbd_server(&self) -> Option<Value> {
        self.nbd
            .as_ref()
            .map(|n| json!({"type": "unix", "path": n.path()}))
    }
}

/// Records tunnel events in the job without keeping it alive (the job
/// holds the tunnel).
fn sink(job: &Arc<Job>) -> EventSink {
    let weak: Weak<Job> = Arc::downgrade(job);
    Arc::new(move |m: String| {
        if let Some(j) = weak.upgrade() {
            j.event(m);
        }
    })
}

/// The socket paths of a domain's tunnel, checked for length (QEMU and the
/// kernel take at most 107 bytes). They live in the run directory's part
/// that QEMU's unprivileged user may use (see `crate::confine::user`).
pub(super) fn socket(agent: &Agent, run_dir: &Path, name: &str) -> Result<PathBuf> {
    let user = agent.guest_user_at(run_dir)?;
    let dir = crate::confine::user::qemu_dir(run_dir, user.as_ref())
        .map_err(|e| AgentError::state(run_dir, e))?;
    let p = dir.join(name);
    if p.as_os_str().len() > 107 {
        return Err(AgentError::Conflict(format!(
            "the tunnel socket path {} is too long for a unix socket; use a shorter --state-dir",
            p.display()
        )));
    }
    let _ = std::fs::remove_file(&p);
    Ok(p)
}

fn needs_pki(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Conflict(format!(
        "--tunnelled needs this agent's {what} certificate: {e}"
    ))
}

/// Destination, Prepare: QEMU waits on a unix socket (and exports disks on
/// another); the agent opens its tunnel listener for this migration.
/// Returns the socket QEMU must listen on and the NBD socket if disks come.
pub fn incoming_sockets(
    agent: &Agent,
    run_dir: &Path,
    disks: bool,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let mem = socket(agent, run_dir, "tun-mem.sock")?;
    let nbd = if disks {
        Some(socket(agent, run_dir, "tun-nbd.sock")?)
    } else {
        None
    };
    Ok((mem, nbd))
}

/// Destination, Prepare: opens the tunnel listener that connects streams to
/// `routes`, and gives the job its handle. Only identities this agent lets
/// change things (its TLS access rules) may open streams.
pub async fn listen(
    agent: &Agent,
    job: &Arc<Job>,
    listen: &str,
    advertise: &str,
    routes: Routes,
) -> Result<IncomingTarget> {
    let config = agent
        .tls_server_config()
        .map_err(|e| needs_pki("server", e))?;
    let rules = agent.cfg.server.tls.clone();
    let gate: Gate = Arc::new(move |cn| matches!(rules.grant(cn), Grant::ReadWrite));
    let inbound = Inbound::bind(
        listen,
        agent.cfg.migration_ports.clone(),
        config,
        job.id,
        routes,
        gate,
        sink(job),
    )
    .await
    .map_err(|e| AgentError::Failed(e.to_string()))?;
    let port = inbound.port();
    job.set_tunnel(Ends::Inbound(inbound));
    Ok(IncomingTarget {
        host: advertise.to_string(),
        port,
        tunnel: true,
    })
}

/// Source, Perform: opens the local sockets QEMU will migrate (and mirror)
/// to. The destination's certificate must be valid for the address it
/// announced.
pub fn outgoing(agent: &Agent, job: &Arc<Job>, run_dir: &Path, req: &PerformRequest) -> Result<()> {
    let config = agent
        .tls_client_config()
        .map_err(|e| needs_pki("client", e))?;
    let remote = |host: &str, port: u16| Remote {
        host: host.to_string(),
        port,
        server_name: host.to_string(),
    };
    let open = |name: &str, kind, r: &Remote| {
        let path = socket(agent, run_dir, name)?;
        let out = Outbound::listen(&path, kind, r, config.clone(), req.id, sink(job))
            .map_err(|e| AgentError::Failed(e.to_string()))?;
        // QEMU, unprivileged, connects to it.
        crate::confine::user::hand_over(&path, agent.guest_user_at(run_dir)?.as_ref())
            .map_err(|e| AgentError::state(&path, e))?;
        Ok::<_, AgentError>(out)
    };
    let memory = open(
        "tun-mem.sock",
        StreamKind::Memory,
        &remote(&req.target.host, req.target.port),
    )?;
    let nbd = match &req.nbd {
        Some(n) => Some(open(
            "tun-nbd.sock",
            StreamKind::Nbd,
            &remote(&n.host, n.port),
        )?),
        None => None,
    };
    job.set_tunnel(Ends::Outbound(Outgoing { memory, nbd }));
    Ok(())
}
