//! The cluster API server: HTTP/1.1 on TCP, `POST /api/v1/call` with a
//! [`ClusterRequest`], in the style of the agent's host API.

use crate::authz::{self, Caller};
use crate::error::{CtlError, Result};
use crate::inventory::{now_ms, Read, ALIVE, HOSTS};
use crate::reply::Reply;
use crate::sync::apply::{apply_changes, apply_sync, SyncScope};
use crate::{jobs, Controller};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::sync::Arc;
use tern_api::cluster::{
    ClusterRequest, HeartbeatReply, HostRecord, HostReport, HostStatus, JobRecord, RegisterReply,
    ShutdownReply, StatusReply,
};
use tern_api::{ApiError, ErrorCode, CALL_PATH};
use tern_store::StoreError;

/// Largest request accepted (reports carry every domain's XML).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

use tern_api::response::error_response;

fn ok<T: Serialize>(v: T) -> Result<Reply> {
    serde_json::to_vec(&v)
        .map(Reply::Json)
        .map_err(|e| CtlError::Invalid(e.to_string()))
}

pub(crate) async fn handle(
    ctl: Arc<Controller>,
    caller: Arc<Caller>,
    req: hyper::Request<Incoming>,
) -> std::result::Result<axum::response::Response, std::convert::Infallible> {
    let error_response = |e| error_response(e).map(axum::body::Body::new);
    // Refuse before reading the body: a refused identity sends nothing big.
    if let Caller::Refused(why) = caller.as_ref() {
        return Ok(error_response(ApiError::new(
            ErrorCode::Forbidden,
            why.clone(),
        )));
    }
    if req.method() != hyper::Method::POST || req.uri().path() != CALL_PATH {
        return Ok(error_response(ApiError::new(
            ErrorCode::NotFound,
            format!("no such endpoint; POST {CALL_PATH}"),
        )));
    }
    let body = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return Ok(error_response(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "request body did not arrive within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )))
        }
        Ok(Err(e)) => {
            return Ok(error_response(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("request body refused: {e}"),
            )))
        }
    };
    let parsed: std::result::Result<ClusterRequest, _> = serde_json::from_slice(&body);
    let r = match parsed {
        Ok(r) => match authz::check(&caller, &r) {
            Ok(()) => dispatch(&ctl, r).await.map_err(ApiError::from),
            Err(e) => {
                tracing::info!(caller = caller.name(), error = %e, "request refused");
                Err(e)
            }
        },
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("malformed request: {e}"),
        )),
    };
    Ok(match r {
        Ok(reply) => reply.into_response(200),
        Err(e) => error_response(e),
    })
}

/// Runs one request.
pub async fn dispatch(ctl: &Arc<Controller>, req: ClusterRequest) -> Result<Reply> {
    match req {
        ClusterRequest::Register { report } => ok(register(ctl, report).await?),
        ClusterRequest::Heartbeat {
            host,
            lease,
            report,
            digest,
        } => ok(heartbeat(ctl, &host, lease, report, &digest).await?),
        // Encoded from the kept records as the connection takes them (see
        // crate::reply): at 50 000 servers, a copy of every record and then
        // the whole answer in one buffer were the controller's peak memory.
        ClusterRequest::HostList => Ok(Reply::Hosts(ctl.inv.hosts_shared().await?)),
        ClusterRequest::HostShow { id } => ok(ctl.inv.host(&id).await?),
        ClusterRequest::ServerList => Ok(Reply::Servers(ctl.inv.servers_shared().await?)),
        ClusterRequest::ServerShow { id } => ok(ctl.inv.server(&id).await?),
        ClusterRequest::ServerMigrate { id, opts } => {
            ok(jobs::create(ctl, &id, false, opts).await?)
        }
        ClusterRequest::ServerLiveMigrate { id, opts } => {
            ok(jobs::create(ctl, &id, true, opts).await?)
        }
        ClusterRequest::MigrateForecast { id, live, opts } => {
            ok(jobs::forecast(ctl, &id, live, &opts).await?)
        }
        ClusterRequest::MigrateCancel { id } => ok(jobs::cancel(ctl, &id).await?),
        ClusterRequest::JobList => ok(ctl.inv.jobs().await?),
        ClusterRequest::HostMaintenance { id } => ok(maintenance(ctl, &id).await?),
        ClusterRequest::HostMaintenanceLeave { id } => ok(leave_maintenance(ctl, &id).await?),
        ClusterRequest::HostAutoMigrate {
            id,
            on_host_down,
            on_host_shutdown,
        } => ok(auto_migrate(ctl, &id, on_host_down, on_host_shutdown).await?),
        ClusterRequest::HostShutdown { host } => ok(host_shutdown(ctl, &host).await?),
        ClusterRequest::Status => ok(StatusReply {
            id: ctl.cfg.id.clone(),
            leader: ctl.election.leader().await?,
        }),
    }
}

fn check_report(r: &HostReport, api_tls: bool) -> Result<()> {
    let valid = !r.name.is_empty()
        && r.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(CtlError::Invalid(format!(
            "host name '{}' is invalid; use letters, digits, '-', '_' and '.'",
            r.name
        )));
    }
    let Ok(uri) = r.api_uri.parse::<tern_model::uri::ConnectUri>() else {
        return Err(CtlError::Invalid(format!(
            "host {} reports API address '{}', which is not a tern URI",
            r.name, r.api_uri
        )));
    };
    if let Some(why) = tern_api::peer::refusal(&uri) {
        return Err(CtlError::Invalid(format!(
            "host {} reports API address '{}': {why}",
            r.name, r.api_uri
        )));
    }
    if api_tls && uri.transport != tern_model::uri::Transport::Tls {
        return Err(CtlError::Invalid(format!(
            "host {} reports API address '{}', but this controller reaches hosts only over mutual TLS; start ternd with --listen-tls",
            r.name, r.api_uri
        )));
    }
    Ok(())
}

/// Registrations served at once. Each is a dozen store round trips and
/// decodes a report; when thousands of hosts register together (a
/// controller or network coming back), serving them all at once made
/// every one slow: at 5 000 hosts on etcd they took 9-27 s, agents gave up
/// at 30 s and came back, and the controller registered 9 122 times for
/// 5 000 hosts, its memory peaking at 1.5 GiB. A few at a time, each is
/// quick, and the rest wait their turn.
pub const REGISTRATIONS_AT_ONCE: usize = 32;

/// How long a registration may wait for its turn before it is refused as
/// busy. Well inside the agent's own limit
/// ([`tern_api::cluster::REGISTER_TIMEOUT`]), so a registration is never
/// served after its agent stopped waiting; a refused agent backs off.
pub const REGISTER_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn register(ctl: &Arc<Controller>, report: HostReport) -> Result<RegisterReply> {
    check_report(&report, ctl.cfg.api_tls)?;
    let t0 = std::time::Instant::now();
    let _turn = tokio::time::timeout(REGISTER_QUEUE_WAIT, ctl.registering.acquire())
        .await
        .map_err(|_| {
            CtlError::Busy(format!(
                "the controller is busy registering other hosts (waited {} s); retry later",
                REGISTER_QUEUE_WAIT.as_secs()
            ))
        })?
        .map_err(|_| CtlError::Busy("the controller is shutting down".into()))?;
    let name = report.name.clone();
    let store = &ctl.inv.store;
    let lease = store.grant(ctl.cfg.lease_ttl).await?;
    store
        .put(&format!("{ALIVE}{name}"), b"1".to_vec(), Some(lease))
        .await?;
    let key = format!("{HOSTS}{name}");
    let rec = HostRecord::online(report.clone(), lease);
    let created = ctl.inv.create(&key, &rec).await?;
    // The report this host made before, if it is known.
    let mut before = None;
    let fence = if created {
        false
    } else {
        let r = ctl
            .inv
            .update_host(&name, |h| {
                before = Some(std::mem::replace(&mut h.report, report.clone()));
                h.report_digest = rec.report_digest.clone();
                h.status = HostStatus::Online;
                h.lease = lease;
                // Back from a clean shutdown: schedulable again.
                h.shutting_down = false;
                Ok(true)
            })
            .await?;
        r.is_some_and(|h| h.auto_migrate_on_host_down)
    };
    // A host new to the cluster owns no record yet (host records are never
    // removed, and jobs only move servers to known hosts): reading every
    // server for each of thousands of new hosts made joining O(hosts²).
    let scope = match &before {
        None => SyncScope::Reported,
        Some(old) => SyncScope::Returning(old),
    };
    apply_sync(ctl, &report, scope).await?;
    let peers = peers(ctl, &name).await?;
    let lease = fresh_lease(ctl, &name, lease).await?;
    let ms = t0.elapsed().as_millis() as u64;
    tracing::info!(host = %name, ms, "host registered");
    Ok(RegisterReply {
        lease,
        lease_ttl_ms: ctl.cfg.lease_ttl.as_millis() as u64,
        heartbeat_ms: ctl.cfg.heartbeat.as_millis() as u64,
        fence,
        peers,
    })
}

/// The host's lease, renewed as the reply leaves, so the agent has a whole
/// lease from the moment it learns it. A registration's clock starts at
/// the grant: when a busy store made the rest of it take longer than the
/// agent's first heartbeat could make up for, that heartbeat found the
/// lease gone, the agent registered again, slowly again, and at 5 000
/// hosts on etcd most agents did nothing else. A lease that lapsed while
/// registering is replaced (alive key and record) rather than refused.
async fn fresh_lease(ctl: &Arc<Controller>, name: &str, lease: i64) -> Result<i64> {
    let store = &ctl.inv.store;
    let sent = now_ms();
    match store.keep_alive(lease).await {
        Ok(()) => {
            ctl.lease_renewed(name, lease, sent);
            return Ok(lease);
        }
        Err(StoreError::LeaseExpired(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(host = %name, "lease lapsed while registering; granting another");
    let sent = now_ms();
    let lease = store.grant(ctl.cfg.lease_ttl).await?;
    ctl.lease_renewed(name, lease, sent);
    store
        .put(&format!("{ALIVE}{name}"), b"1".to_vec(), Some(lease))
        .await?;
    ctl.inv
        .update_host(name, |h| {
            h.lease = lease;
            h.status = HostStatus::Online;
            Ok(true)
        })
        .await?;
    Ok(lease)
}

/// The host's record and its servers' for a heartbeat, without a round
/// trip to the store while nothing changed (see [`Read::Recent`]); decoded
/// only if they changed since the last heartbeat. Without a report, the
/// servers are the ones the stored report names, if it is the same.
async fn heartbeat_records(
    ctl: &Arc<Controller>,
    host: &str,
    report: Option<&HostReport>,
    digest: &str,
    read: Read,
) -> Result<(
    Option<Arc<HostRecord>>,
    Vec<Arc<tern_api::cluster::ServerRecord>>,
)> {
    if let Some(r) = report {
        let names = r.domains.iter().map(|d| d.name.as_str());
        return ctl.inv.host_and_servers(host, names, read).await;
    }
    // The servers the stored report names, guessed from the host's record
    // as last read: one read while that still holds.
    let names = |h: &HostRecord| -> Vec<String> {
        h.report.domains.iter().map(|d| d.name.clone()).collect()
    };
    let guess = ctl
        .inv
        .host_as_last_read(host)
        .map(|h| names(&h))
        .unwrap_or_default();
    let guessed = guess.iter().map(String::as_str);
    match ctl.inv.host_and_servers(host, guessed, read).await? {
        (Some(rec), _) if rec.report_digest == digest && names(&rec) != guess => {
            let named = rec.report.domains.iter().map(|d| d.name.as_str());
            ctl.inv.host_and_servers(host, named, read).await
        }
        found => Ok(found),
    }
}

/// Whether the host's record says its agent must register again: the
/// lease it renews is not the record's, or the host was declared down.
fn must_reregister(rec: Option<&HostRecord>, lease: i64) -> bool {
    rec.is_none_or(|r| r.lease != lease || matches!(r.status, HostStatus::Down { .. }))
}

async fn heartbeat(
    ctl: &Arc<Controller>,
    host: &str,
    lease: i64,
    report: Option<HostReport>,
    digest: &str,
) -> Result<HeartbeatReply> {
    let gone = HeartbeatReply {
        reregister: true,
        ..HeartbeatReply::default()
    };
    let mut read = heartbeat_records(ctl, host, report.as_ref(), digest, Read::Recent).await?;
    // A recent read may predate the registration that wrote this lease:
    // only a linearizable one may send the agent to register again.
    if must_reregister(read.0.as_deref(), lease) {
        read = heartbeat_records(ctl, host, report.as_ref(), digest, Read::Linearizable).await?;
    }
    let (rec, servers) = read;
    let Some(rec) = rec else {
        return Ok(gone);
    };
    if must_reregister(Some(&rec), lease) {
        return Ok(gone);
    }
    let sent = now_ms();
    match ctl.inv.store.keep_alive(lease).await {
        Ok(()) => ctl.lease_renewed(host, lease, sent),
        Err(StoreError::LeaseExpired(_)) => return Ok(gone),
        Err(e) => return Err(e.into()),
    }
    let reply = HeartbeatReply {
        fence: rec.auto_migrate_on_host_down,
        ..HeartbeatReply::default()
    };
    match report {
        None if rec.report_digest == digest && !digest.is_empty() => {
            apply_changes(ctl, &rec.report, &servers).await?;
        }
        None => {
            return Ok(HeartbeatReply {
                send_report: true,
                ..reply
            })
        }
        Some(report) => {
            // The agent's digest is kept as it sent it, so an agent of
            // another version (whose JSON may differ) still matches itself.
            let digest = match digest {
                "" => report.digest(),
                d => d.to_string(),
            };
            if rec.report == report {
                apply_changes(ctl, &report, &servers).await?;
            } else {
                check_report(&report, ctl.cfg.api_tls)?;
                // Synced before the report is stored: a sync that fails is
                // made again on the next heartbeat, against the same
                // stored report.
                apply_sync(ctl, &report, SyncScope::Since(&rec.report)).await?;
            }
            if rec.report != report || rec.report_digest != digest {
                ctl.inv
                    .update_host(host, |h| {
                        h.report = report.clone();
                        h.report_digest = digest.clone();
                        Ok(true)
                    })
                    .await?;
            }
        }
    }
    Ok(reply)
}

/// How stale the peer list in register replies may be. It is
/// informational (agents do not act on it), and reading it means decoding
/// every host's record: when thousands of hosts register at once (a
/// controller restart), one read serves all of them.
pub const PEERS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// The online hosts' names and API URIs, for [`crate::recent::Recent`].
pub type Peers = Vec<(String, String)>;

/// API URIs of the other online hosts, at most [`PEERS_MAX_AGE`] old.
async fn peers(ctl: &Arc<Controller>, host: &str) -> Result<Vec<String>> {
    let online = ctl
        .peers
        .get(|| async {
            Ok::<_, CtlError>(
                ctl.inv
                    .hosts_shared()
                    .await?
                    .iter()
                    .filter(|h| h.status == HostStatus::Online)
                    .map(|h| (h.report.name.clone(), h.report.api_uri.clone()))
                    .collect(),
            )
        })
        .await?;
    Ok(online
        .iter()
        .filter(|(name, _)| name != host)
        .map(|(_, uri)| uri.clone())
        .collect())
}

/// Sets a host's evacuation policy. As in Cloudpods, moving servers away
/// on shutdown needs the host-down policy too, and turning that off turns
/// both off.
async fn auto_migrate(
    ctl: &Arc<Controller>,
    id: &str,
    on_host_down: Option<bool>,
    on_host_shutdown: Option<bool>,
) -> Result<Option<HostRecord>> {
    let h = ctl.inv.host(id).await?;
    let (down, shutdown) = auto_migrate_policy(
        (h.auto_migrate_on_host_down, h.auto_migrate_on_host_shutdown),
        on_host_down,
        on_host_shutdown,
    )?;
    ctl.inv
        .update_host(id, |h| {
            h.auto_migrate_on_host_down = down;
            h.auto_migrate_on_host_shutdown = shutdown;
            Ok(true)
        })
        .await
}

/// The (on-host-down, on-host-shutdown) pair after a request.
fn auto_migrate_policy(
    (down_now, shutdown_now): (bool, bool),
    on_host_down: Option<bool>,
    on_host_shutdown: Option<bool>,
) -> Result<(bool, bool)> {
    let down = on_host_down.unwrap_or(down_now);
    match on_host_shutdown {
        Some(true) if !down => Err(CtlError::Invalid(
            "--auto-migrate-on-host-shutdown enable needs --auto-migrate-on-host-down enable too"
                .into(),
        )),
        Some(s) => Ok((down, s)),
        None => Ok((down, down && shutdown_now)),
    }
}

/// A host shuts down cleanly: with its policy, its running servers are
/// live-migrated away; the agent waits for them.
async fn host_shutdown(ctl: &Arc<Controller>, host: &str) -> Result<ShutdownReply> {
    let h = ctl.inv.host(host).await?;
    if !h.auto_migrate_on_host_shutdown {
        return Ok(ShutdownReply {
            evacuating: false,
            jobs: Vec::new(),
            reason: Some(format!(
                "host {host} does not have --auto-migrate-on-host-shutdown enabled"
            )),
        });
    }
    ctl.inv
        .update_host(host, |h| {
            let change = !h.shutting_down;
            h.shutting_down = true;
            Ok(change)
        })
        .await?;
    tracing::warn!(%host, "host shutting down: moving its running servers away");
    let mut jobs_out = Vec::new();
    for s in ctl.inv.servers_shared().await? {
        if s.host != host || !s.domain.active || s.state.in_flight() {
            continue;
        }
        match jobs::create(ctl, &s.domain.name, true, Default::default()).await {
            Ok(j) => jobs_out.push(j),
            Err(e) => {
                tracing::warn!(%host, server = %s.domain.name, error = %e, "cannot move a server off a host shutting down")
            }
        }
    }
    Ok(ShutdownReply {
        evacuating: true,
        jobs: jobs_out,
        reason: None,
    })
}

/// Evacuates a host: live for running servers, cold for stopped ones.
async fn maintenance(ctl: &Arc<Controller>, host: &str) -> Result<Vec<JobRecord>> {
    ctl.inv.host(host).await?;
    ctl.inv
        .update_host(host, |h| {
            let change = !h.maintenance;
            h.maintenance = true;
            Ok(change)
        })
        .await?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for s in ctl.inv.servers_shared().await? {
        if s.host != host || s.state.in_flight() {
            continue;
        }
        match jobs::create(ctl, &s.domain.name, s.domain.active, Default::default()).await {
            Ok(j) => out.push(j),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if out.is_empty() && !errors.is_empty() {
        return Err(CtlError::Conflict(errors.join("; ")));
    }
    Ok(out)
}

/// Ends a host's maintenance: the scheduler may place servers on it again.
async fn leave_maintenance(ctl: &Arc<Controller>, host: &str) -> Result<HostRecord> {
    ctl.inv.host(host).await?;
    ctl.inv
        .update_host(host, |h| {
            let change = h.maintenance;
            h.maintenance = false;
            Ok(change)
        })
        .await?
        .ok_or_else(|| CtlError::NotFound(format!("no host '{host}'; see 'tern host-list'")))
}

/// Serves one connection (plain or TLS) for `caller` until it closes.
/// How long a request body may take to arrive.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one connection until the peer closes it, or until it sends no
/// complete request head within `idle` (from its start and after each
/// answer: idle and slow-header clients).
pub async fn serve_connection<S>(
    ctl: Arc<Controller>,
    stream: S,
    caller: Caller,
    idle: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let caller = Arc::new(caller);
    // Boxed per request: hyper keeps room for the service's future for as
    // long as the connection lives, and unboxed that future (every
    // request's state machine, inline) was 20 KB on each of thousands of
    // idle agent connections.
    let svc = service_fn(move |req| Box::pin(crate::rest::route(ctl.clone(), caller.clone(), req)));
    if let Err(e) = http1::Builder::new()
        .max_buf_size(64 << 10)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle)
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves the API on plain TCP forever, without authentication
/// (`--auth none`, development only; see [`crate::listen`] for TLS).
pub async fn serve(
    ctl: Arc<Controller>,
    listener: tokio::net::TcpListener,
    idle: std::time::Duration,
) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_connection(
                    ctl.clone(),
                    s,
                    Caller::Unauthenticated,
                    idle,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::auto_migrate_policy;

    #[test]
    fn shutdown_policy_needs_the_host_down_policy() {
        let p = auto_migrate_policy;
        assert_eq!(p((false, false), Some(true), None).unwrap(), (true, false));
        assert_eq!(
            p((false, false), Some(true), Some(true)).unwrap(),
            (true, true)
        );
        assert!(p((false, false), None, Some(true)).is_err());
        assert!(p((true, true), Some(false), Some(true)).is_err());
        assert_eq!(p((true, false), None, Some(true)).unwrap(), (true, true));
        // Turning host-down off turns shutdown off too; other changes keep it.
        assert_eq!(p((true, true), Some(false), None).unwrap(), (false, false));
        assert_eq!(p((true, true), None, None).unwrap(), (true, true));
        assert_eq!(p((true, true), None, Some(false)).unwrap(), (true, false));
    }
}
