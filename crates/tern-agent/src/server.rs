//! The host API server: HTTP/1.1 over whatever stream a listener accepted
//! (see [`crate::listen`]), one typed [`Request`] per call: checked against
//! the connection's [`Grant`], given a worker, dispatched to the agent.

use crate::access::{self, Grant};
use crate::error::AgentError;
use crate::limits::{ClientSlot, Clients, Workers};
use crate::Agent;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tern_api::{ApiError, ErrorCode, Request, API_VERSION, CALL_PATH, VERSION_HEADER};
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest request body accepted by default (domain XML is the biggest
/// payload); `max_request_bytes` in the config file changes it.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The API server: the agent plus the connection and worker accounting.
#[derive(Debug)]
pub struct Server {
    /// The agent requests run against.
    pub agent: Arc<Agent>,
    /// Open connections.
    pub clients: Arc<Clients>,
    /// Request workers.
    pub workers: Workers,
    /// Read-only connections and their workers: a share of their own.
    pub read_only: ReadOnlyShare,
}

/// The connections and workers of read-only clients, apart from the
/// read-write ones, so a crowd of readers cannot starve administrators.
#[derive(Debug)]
pub struct ReadOnlyShare {
    /// Read-only connections (`max_ro_clients`).
    pub clients: Arc<Clients>,
    /// Read-only request workers (`ro_workers`).
    pub workers: Workers,
}

impl Server {
    /// A server with the limits of the agent's configuration.
    pub fn new(agent: Arc<Agent>) -> Arc<Server> {
        let l = agent.cfg.server.limits.clone();
        let ro_limits = crate::settings::Limits {
            max_clients: l.max_ro_clients,
            ..l.clone()
        };
        Arc::new(Server {
            read_only: ReadOnlyShare {
                clients: Clients::new(ro_limits),
                workers: Workers::new(l.ro_workers, 0),
            },
            workers: Workers::new(l.max_workers, l.prio_workers),
            clients: Clients::new(l),
            agent,
        })
    }

    /// The connection table a client with `grant` is counted in.
    pub fn clients_for(&self, grant: &Grant) -> &Arc<Clients> {
        match grant {
            Grant::ReadOnly => &self.read_only.clients,
            _ => &self.clients,
        }
    }

    fn info(&self, peer: &Peer) -> tern_api::ServerInfo {
        let c = self.clients.counts();
        let l = self.clients.limits();
        let (busy, max, prio_busy, prio_max) = self.workers.usage();
        tern_api::ServerInfo {
            clients: c.anonymous + c.authenticated,
            anonymous_clients: c.anonymous,
            max_clients: l.max_clients,
            max_anonymous_clients: l.max_anonymous_clients,
            workers_busy: busy,
            max_workers: max,
            prio_workers_busy: prio_busy,
            prio_workers: prio_max,
            identity: peer.identity.clone(),
            read_only: peer.grant == Grant::ReadOnly,
        }
    }
}

/// Who is on the other end of a connection, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// For logs and `srv-info`: certificate CN, `unix`, `unix-ro`, `tcp`.
    pub identity: String,
    /// What the connection may do.
    pub grant: Grant,
}

use tern_api::response::{error_response, json_response};

fn ok<T: Serialize>(v: T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(&v).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

/// Parses a request body; exposed for fuzzing and tests.
pub fn parse_request(body: &[u8]) -> Result<Request, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("malformed request: {e}"),
        )
    })
}

async fn handle(
    server: Arc<Server>,
    peer: Arc<Peer>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(match call(&server, &peer, req).await {
        Ok(b) => json_response(200, b),
        Err(e) => error_response(e),
    })
}

async fn call(
    server: &Arc<Server>,
    peer: &Peer,
    req: hyper::Request<Incoming>,
) -> Result<Vec<u8>, ApiError> {
    if req.method() != hyper::Method::POST || req.uri().path() != CALL_PATH {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no such endpoint; POST {CALL_PATH}"),
        ));
    }
    if let Some(v) = req.headers().get(VERSION_HEADER) {
        if v.to_str().ok() != Some(&API_VERSION.to_string()) {
            return Err(ApiError::new(
                ErrorCode::Version,
                format!(
                    "client speaks API version {}, this ternd speaks {API_VERSION}; use matching versions",
                    v.to_str().unwrap_or("?")
                ),
            ));
        }
    }
    // Refuse before reading the body: a refused identity sends nothing big.
    if let Grant::Refused(why) = &peer.grant {
        return Err(ApiError::new(ErrorCode::Forbidden, why.clone()));
    }
    let limit = server.clients.limits().max_request_bytes;
    let wait = server.clients.limits().request_timeout;
    let body = tokio::time::timeout(wait, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "request body did not arrive within {} s (request_timeout)",
                    wait.as_secs()
                ),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("request body refused: {e} (limit {limit} bytes, max_request_bytes)"),
            )
        })?
        .to_bytes();
    let req = parse_request(&body)?;
    access::check(&peer.grant, &req).inspect_err(|_| {
        tracing::info!(identity = %peer.identity, op = %op_name(&req), "refused on a read-only connection");
    })?;
    if req == Request::ServerInfo {
        return ok(server.info(peer));
    }
    if let Request::Events { .. } = &req {
        // A watcher waits here without holding a worker.
        return dispatch(&server.agent, req).await;
    }
    let worker = match peer.grant {
        Grant::ReadOnly => server.read_only.workers.acquire(false).await,
        _ => server.workers.acquire(req.is_priority()).await,
    };
    // The request runs to its end even if the client goes away: hyper drops
    // a pending service future when the connection closes, and a migration
    // step cut at an await (between `cont` and recording it, say) would
    // leave its job half-done.
    let agent = server.agent.clone();
    tokio::spawn(async move {
        let _worker = worker;
        dispatch(&agent, req).await
    })
    .await
    .map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the request's task failed: {e}"),
        )
    })?
}

/// A request's operation for logs, e.g. `migrate-prepare` (its JSON `op`,
/// and a nested one for migration requests), never its fields.
pub fn op_name(req: &Request) -> String {
    let v = serde_json::to_value(req).unwrap_or_default();
    let op = |v: &serde_json::Value| v.get("op").and_then(|o| o.as_str()).map(str::to_string);
    match (op(&v), v.as_object().and_then(|o| o.values().find_map(op))) {
        (Some(a), Some(b)) if a != b => format!("{a}/{b}"),
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => "?".into(),
    }
}

/// Runs one request against the agent.
pub async fn dispatch(agent: &Arc<Agent>, req: Request) -> Result<Vec<u8>, ApiError> {
    // The operation only: requests carry transfer session ids and whole
    // definitions, which do not belong in logs.
    tracing::debug!(op = %op_name(&req), "request");
    let verb = crate::metrics::verb_of(&req);
    let a = agent;
    let r: Result<Vec<u8>, AgentError> = async {
        Ok(match req {
            Request::NodeInfo => ok(a.facts().await)?,
            Request::List { all } => ok(a.list(all).await)?,
            Request::DomInfo { name } => ok(a.dominfo(&name).await?)?,
            Request::DomBlkList { name } => ok(a.domblklist(&name).await?)?,
            Request::DumpXml { name } => ok(a.dumpxml(&name).await?)?,
            Request::Define { xml } => ok(a.define(&xml).await?)?,
            Request::Create { xml, paused } => ok(a.create(&xml, paused).await?)?,
            Request::Start { name, paused } => ok(a.start(&name, paused).await?)?,
            Request::Shutdown { name, timeout_secs } => {
                ok(a.shutdown(&name, Duration::from_secs(timeout_secs)).await?)?
            }
            Request::Destroy { name } => ok(a.destroy(&name).await?)?,
            Request::Reboot { name } => ok(a.reboot(&name).await?)?,
            Request::InjectNmi { name } => ok(a.inject_nmi(&name).await?)?,
            Request::NetDefineAs { name, bridge } => ok(a.networks.define(&name, &bridge)?.info())?,
            Request::NetUndefine { name } => ok(a.networks.undefine(&name)?)?,
            Request::NetList => ok(a
                .networks
                .list()
                .iter()
                .map(|n| n.info())
                .collect::<Vec<_>>())?,
            Request::NetInfo { name } => ok(a.networks.get(&name)?.info())?,
            Request::AttachDevice { name, xml, flags } => {
                ok(a.attach_device(&name, &xml, flags).await?)?
            }
            Request::SetVcpus { name, count, flags } => {
                ok(a.set_vcpus(&name, count, flags).await?)?
            }
            Request::DetachDevice { name, xml, flags } => {
                ok(a.detach_device(&name, &xml, flags).await?)?
            }
            Request::QemuAgentCommand {
                name,
                command,
                timeout_secs,
            } => ok(a
                .qemu_agent_command(&name, &command, Duration::from_secs(timeout_secs))
                .await?)?,
            Request::Suspend { name } => ok(a.suspend(&name).await?)?,
            Request::Resume { name } => ok(a.resume(&name).await?)?,
            Request::Undefine {
                name,
                remove_all_storage,
                nvram,
            } => ok(a.undefine_with(&name, remove_all_storage, nvram).await?)?,
            Request::Console { name, offset, max } => ok(a.console(&name, offset, max).await?)?,
            Request::PoolDefineAs {
                name,
                rbd: Some(src),
                ..
            } => ok(a.pools.define_rbd(&name, src).await?)?,
            Request::PoolDefineAs {
                name,
                target,
                shared,
                logical: Some(src),
                ..
            } => ok(a
                .pools
                .define_logical(&name, src, Some(&target), shared)
                .await?)?,
            Request::PoolDefineAs {
                name,
                target,
                shared,
                netfs,
                rbd: None,
                logical: None,
            } => ok(a.pools.define(&name, &target, shared, netfs).await?)?,
            Request::PoolBuild { name } => ok(a.pools.build(&name).await?)?,
            Request::PoolStart { name } => ok(a.pools.start(&name).await?)?,
            Request::PoolAutostart { name, disable } => {
                ok(a.pools.set_autostart(&name, !disable).await?)?
            }
            Request::PoolList { all } => ok(a.pools.list(all).await)?,
            Request::PoolInfo { name } => ok(a.pools.info(&name).await?)?,
            Request::PoolRefresh { name } => {
                a.pools.active_store(&name).await?;
                ok(a.pools.info(&name).await?)?
            }
            Request::PoolDestroy { name } => ok(a.pools.destroy(&name).await?)?,
            Request::PoolUndefine { name } => ok(a.pools.undefine(&name).await?)?,
            Request::VolCreateAs {
                pool,
                name,
                capacity,
                format,
                backing_vol,
            } => ok(a
                .pools
                .vol_create(&pool, &name, capacity, &format, backing_vol.as_deref())
                .await?)?,
            Request::VolList { pool } => ok(a.pools.vol_list(&pool).await?)?,
            Request::VolInfo { pool, name } => ok(a.pools.vol_info(&pool, &name).await?)?,
            Request::VolResize {
                pool,
                name,
                capacity,
                delta,
                shrink,
            } => {
                let v = a.pools.vol_info(&pool, &name).await?;
                if let Some(user) = a.running_user_of(&v.path).await {
                    return Err(AgentError::Conflict(format!(
                        "storage volume '{name}' is in use by running domain '{user}'; stop it first"
                    )));
                }
                let size = if delta { v.capacity.saturating_add(capacity) } else { capacity };
                ok(a.pools.vol_resize(&pool, &name, v.capacity, size, shrink).await?)?
            }
            Request::VolDelete { pool, name } => {
                let v = a.pools.vol_info(&pool, &name).await?;
                if let Some(user) = a.running_user_of(&v.path).await {
                    return Err(AgentError::Conflict(format!(
                        "storage volume '{name}' is in use by running domain '{user}'; stop it first"
                    )));
                }
                ok(a.pools.vol_delete(&pool, &name).await?)?
            }
            Request::Migration(m) => crate::migration::dispatch(a, m).await?,
            Request::Secret(r) => crate::secrets::dispatch(&a.pools.secrets, r)?,
            Request::FenceLease { pool, host } => ok(crate::fence::read_lease(a, &pool, &host).await?)?,
            Request::RbdBlocklist {
                pool,
                addrs,
                remove,
                images,
                spare,
            } => ok(a
                .pools
                .rbd_blocklist(&pool, &addrs, remove, &images, &spare)
                .await?)?,
            Request::Events {
                after,
                domain,
                wait_ms,
            } => ok(crate::events::log()
                .wait(after, domain.as_deref(), Duration::from_millis(wait_ms))
                .await)?,
            Request::ServerInfo => {
                return Err(AgentError::Failed(
                    "server-info is answered by the API server, not the agent".into(),
                ))
            }
        })
    }
    .await;
    let r = r.map_err(ApiError::from);
    let status = match &r {
        Ok(_) => "ok".to_string(),
        Err(e) => serde_json::to_value(e.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    };
    crate::metrics::metrics().api_request(&verb, &status);
    r
}

impl Agent {
    /// The running domain whose disks include `path`, if any.
    pub async fn running_user_of(&self, path: &std::path::Path) -> Option<String> {
        for slot in self.domains.all() {
            let e = slot.inner.lock().await;
            if let Some(run) = &e.run {
                if run
                    .live
                    .devices
                    .disks
                    .iter()
                    .any(|d| d.source.as_deref() == Some(path))
                {
                    return Some(slot.name.clone());
                }
            }
        }
        None
    }
}

impl From<ApiError> for AgentError {
    fn from(e: ApiError) -> Self {
        AgentError::Failed(e.message)
    }
}

/// Serves one connection until the peer closes it; `slot` holds its
/// place among the server's clients meanwhile.
pub async fn serve_connection<S>(server: Arc<Server>, stream: S, peer: Peer, slot: ClientSlot)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(identity = %peer.identity, grant = ?peer.grant, "connection");
    let idle = server.clients.limits().idle_timeout;
    let peer = Arc::new(peer);
    let svc = service_fn(move |req| handle(server.clone(), peer.clone(), req));
    if let Err(e) = http1::Builder::new()
        // Headers are small; a peer streaming endless headers is cut off.
        .max_buf_size(64 << 10)
        // Runs while hyper waits for a request head: from the connection's
        // start and after each answer, so it closes idle connections and
        // ones that send their headers too slowly.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(slot);
}
