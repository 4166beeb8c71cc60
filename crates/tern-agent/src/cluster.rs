//! Joining a cluster: register with `tern-controller`, renew the lease with
//! heartbeats that carry this host's report, and fence.
//!
//! Fencing: once the controller says it would restart this host's servers
//! elsewhere when the host dies (`fence`), the agent arms the host's fence
//! process ([`crate::fence`]), which renews a lease on every shared pool
//! and kills the guests when it cannot. Losing the controller alone kills
//! nothing. The protocol is documented in `tern_api::cluster`.

use crate::Agent;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_api::cluster::{
    controller_client_with_pki, ClusterRequest, DiskReport, DomainReport, HeartbeatReply,
    HostReport, RegisterReply, ShutdownReply,
};
use tern_api::Client;
use tern_model::{InterfaceKind, PoolInfo};

/// Wait between attempts while no controller answers.
const RETRY: Duration = Duration::from_secs(1);

/// A registration in force.
#[derive(Debug, Clone)]
struct Session {
    reply: RegisterReply,
    /// Digest of the last report the controller took: heartbeats send only
    /// the digest while the report stays the same.
    acked: Option<String>,
}

/// The address the controller reaches this host's API at: its mutual-TLS
/// listener, else (development clusters) its plain TCP one.
pub fn api_uri(agent: &Agent) -> Option<String> {
    let (scheme, l) = match (agent.cfg.listen_tls, agent.cfg.listen) {
        (Some(l), _) => ("tern+tls", l),
        (None, Some(l)) => ("tern+tcp", l),
        (None, None) => return None,
    };
    let host = agent.migration_address();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Some(format!("{scheme}://{host}:{}/system", l.port()))
}

/// A client for a controller URL, presenting this host's certificate.
fn controller(agent: &Agent, url: &str) -> Result<Client, tern_api::ClientError> {
    // One kept connection per controller: a heartbeat is then a request,
    // not a TLS handshake (see `Client::keep_alive`).
    controller_client_with_pki(url, &tern_pki::PkiDir::new(&agent.cfg.pki_dir))
        .map(Client::keep_alive)
}

/// Runs forever: register, heartbeat, re-register, fence.
pub async fn run(agent: Arc<Agent>) {
    let Some(uri) = api_uri(&agent) else {
        tracing::error!(
            "--controller needs --listen-tls (or --listen-tcp --auth none): the controller must reach this host's API"
        );
        return;
    };
    let clients: Vec<(String, Client)> = agent
        .cfg
        .controllers
        .iter()
        .filter_map(|u| match controller(&agent, u) {
            Ok(c) => Some((u.clone(), c.with_timeout(Duration::from_secs(2)))),
            Err(e) => {
                tracing::error!(controller = %u, error = %e, "ignoring a bad controller URL");
                None
            }
        })
        .collect();
    if clients.is_empty() {
        return;
    }
    // The armed state persists in the fence's own files: a fence left
    // armed by our previous life keeps guarding while we find a controller.
    crate::fence::ensure_running(&agent);
    let mut which = 0usize;
    let mut session: Option<Session> = None;
    let mut failures = 0u32;
    loop {
        let report = report(&agent, &uri).await;
        let host = report.name.clone();
        let digest = report.digest();
        let (url, client) = &clients[which % clients.len()];
        let ok = match &mut session {
            None => match client
                .clone()
                .with_timeout(tern_api::cluster::REGISTER_TIMEOUT)
                .call_json::<_, RegisterReply>(&ClusterRequest::Register { report })
                .await
            {
                Ok(r) => {
                    tracing::info!(controller = %url, lease = r.lease, "registered with the controller");
                    crate::fence::clear_fenced(&agent);
                    crate::fence::sync(&agent, &host, r.fence).await;
                    session = Some(Session {
                        reply: r,
                        acked: Some(digest),
                    });
                    true
                }
                Err(e) => {
                    tracing::debug!(controller = %url, error = %e, "registration failed");
                    false
                }
            },
            Some(s) => match client
                .call_json::<_, HeartbeatReply>(&ClusterRequest::Heartbeat {
                    host: report.name.clone(),
                    lease: s.reply.lease,
                    report: (s.acked.as_ref() != Some(&digest)).then_some(report),
                    digest: digest.clone(),
                })
                .await
            {
                Ok(r) if r.reregister => {
                    tracing::warn!(controller = %url, "lease lost; registering again");
                    session = None;
                    continue;
                }
                Ok(r) if r.send_report => {
                    tracing::info!(controller = %url, "the controller asked for the whole report");
                    s.acked = None;
                    continue;
                }
                Ok(r) => {
                    s.acked = Some(digest);
                    // The controller hears us: it rescues nothing of ours
                    // without first declaring us down.
                    crate::fence::clear_fenced(&agent);
                    crate::fence::sync(&agent, &host, r.fence).await;
                    true
                }
                Err(e) => {
                    tracing::debug!(controller = %url, error = %e, "heartbeat failed");
                    false
                }
            },
        };
        let every = session
            .as_ref()
            .map(|s| Duration::from_millis(s.reply.heartbeat_ms.max(100)));
        let wait = if ok {
            failures = 0;
            every.unwrap_or(RETRY)
        } else {
            // Another controller may be the one that answers.
            which += 1;
            failures += 1;
            tern_api::cluster::retry_delay(failures, every, unit_random())
        };
        tokio::time::sleep(wait).await;
    }
}

/// A number in [0, 1) that differs from host to host and call to call,
/// to spread retries (`retry_delay`).
fn unit_random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// Whether this stop of the agent is a host shutdown.
pub fn stop_is_host_shutdown(on_stop: crate::config::OnStop) -> bool {
    use crate::config::OnStop;
    match on_stop {
        OnStop::HostShutdown => true,
        OnStop::AgentOnly => false,
        // systemd stops ternd both for a restart and for a shutdown; only
        // the manager's own state tells them apart.
        OnStop::Auto => std::process::Command::new("systemctl")
            .arg("is-system-running")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "stopping"),
    }
}

/// The host is shutting down: asks a controller to move the running guests
/// away (when the host's policy says so) and waits until none runs here,
/// the controller's jobs have all ended, or `timeout` passes. Guests still
/// here afterwards are left to the host's own shutdown.
pub async fn leave_for_shutdown(agent: &Arc<Agent>, timeout: Duration) {
    let host = match &agent.cfg.host_name {
        Some(h) => h.clone(),
        None => agent.facts().await.hostname,
    };
    let mut reply = None;
    for u in &agent.cfg.controllers {
        let Ok(c) = controller(agent, u) else {
            continue;
        };
        let c = c.with_timeout(Duration::from_secs(10));
        match c
            .call_json::<_, ShutdownReply>(&ClusterRequest::HostShutdown { host: host.clone() })
            .await
        {
            Ok(r) => {
                reply = Some((c, r));
                break;
            }
            Err(e) => tracing::warn!(controller = %u, error = %e, "host shutdown not acknowledged"),
        }
    }
    let Some((client, reply)) = reply else {
        tracing::warn!("no controller answered: guests stay on this host");
        return;
    };
    if !reply.evacuating {
        tracing::info!(
            reason = reply.reason.as_deref().unwrap_or(""),
            "host shutdown: guests stay on this host"
        );
        return;
    }
    let ids: Vec<String> = reply.jobs.iter().map(|j| j.id.clone()).collect();
    tracing::warn!(jobs = ?ids, "host shutdown: waiting for the controller to move the running guests away");
    let deadline = Instant::now() + timeout;
    loop {
        let running: Vec<String> = agent
            .list(false)
            .await
            .into_iter()
            .map(|d| d.name)
            .collect();
        if running.is_empty() {
            tracing::info!("host shutdown: no guest runs here any more");
            return;
        }
        let jobs = client
            .get::<Vec<tern_api::cluster::JobRecord>>("/v1/jobs")
            .await
            .unwrap_or_default();
        let open = jobs
            .iter()
            .any(|j| ids.contains(&j.id) && !j.state.is_terminal());
        if !open && !jobs.is_empty() {
            tracing::warn!(guests = ?running, "host shutdown: the controller's jobs ended; these guests stay");
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(guests = ?running, "host shutdown: gave up waiting; these guests stay");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn bridges() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            if e.path().join("bridge").is_dir() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn pool_of<'a>(pools: &'a [PoolInfo], path: &str) -> Option<&'a PoolInfo> {
    pools
        .iter()
        // An empty target would hold every path.
        .filter(|p| !p.def.target.as_os_str().is_empty())
        .filter(|p| std::path::Path::new(path).starts_with(&p.def.target))
        .max_by_key(|p| p.def.target.as_os_str().len())
}

/// What this host is and runs.
pub async fn report(agent: &Arc<Agent>, api_uri: &str) -> HostReport {
    let facts = agent.facts().await;
    let pools = agent.pools.list(true).await;
    let mut domains = Vec::new();
    let mut running = Vec::new();
    for s in agent.list(true).await {
        let (Ok(info), Ok(blk), Ok(xml)) = (
            agent.dominfo(&s.name).await,
            agent.domblklist(&s.name).await,
            agent.dumpxml(&s.name).await,
        ) else {
            continue;
        };
        if let Some(id) = s.id {
            running.push(crate::pools::rbd_clients::Running {
                name: s.name.clone(),
                id,
                sources: blk.iter().filter_map(|b| b.source.clone()).collect(),
            });
        }
        let disks = blk
            .iter()
            .filter(|b| b.device == "disk")
            .filter_map(|b| {
                let path = b.source.clone()?;
                let pool = pool_of(&pools, &path);
                // A network disk (nfs://, rbd://...) is the same on every host.
                let network = path.contains("://");
                Some(DiskReport {
                    target: b.target.clone(),
                    bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                    pool: pool.map(|p| p.def.name.clone()),
                    shared: network || pool.is_some_and(|p| p.def.shared),
                    path,
                })
            })
            .collect();
        let parsed = tern_model::xml::parse_domain(&xml);
        let machine = parsed.as_ref().ok().and_then(|d| d.os.machine.clone());
        let networks = parsed
            .map(|d| {
                d.devices
                    .interfaces
                    .iter()
                    .filter_map(|i| match &i.kind {
                        InterfaceKind::Bridge { bridge } => Some(bridge.clone()),
                        // Matched against the networks hosts define.
                        InterfaceKind::Network { network } => Some(format!("network:{network}")),
                        InterfaceKind::User => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        domains.push(DomainReport {
            name: s.name.clone(),
            uuid: s.uuid.to_string(),
            active: s.id.is_some(),
            vcpus: info.vcpus,
            memory_mib: info.max_memory_kib / 1024,
            disks,
            networks,
            machine,
            xml,
        });
    }
    let rbd_clients = if agent.cfg.faults.hide_rbd_clients {
        Vec::new()
    } else {
        agent.pools.rbd_clients(&pools, &running).await
    };
    HostReport {
        name: agent
            .cfg
            .host_name
            .clone()
            .unwrap_or_else(|| facts.hostname.clone()),
        api_uri: api_uri.to_string(),
        facts,
        pools,
        networks: bridges()
            .into_iter()
            .chain(
                agent
                    .networks
                    .list()
                    .into_iter()
                    .map(|n| format!("network:{}", n.name)),
            )
            .collect(),
        labels: agent.cfg.labels.iter().cloned().collect(),
        domains,
        rbd_clients,
    }
}
