//! The host API server: HTTP/1.1 on a unix socket (and TCP when asked),
//! one typed [`Request`] per call, dispatched to the agent.

use crate::error::AgentError;
use crate::Agent;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tern_api::{ApiError, ErrorCode, Request, API_VERSION, CALL_PATH, VERSION_HEADER};
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest request body accepted (domain XML is the biggest payload).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

fn json_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&e).unwrap_or_default();
    json_response(e.code.http_status(), body)
}

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
    agent: Arc<Agent>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() != hyper::Method::POST || req.uri().path() != CALL_PATH {
        return Ok(error_response(ApiError::new(
            ErrorCode::NotFound,
            format!("no such endpoint; POST {CALL_PATH}"),
        )));
    }
    if let Some(v) = req.headers().get(VERSION_HEADER) {
        if v.to_str().ok() != Some(&API_VERSION.to_string()) {
            return Ok(error_response(ApiError::new(
                ErrorCode::Version,
                format!(
                    "client speaks API version {}, this ternd speaks {API_VERSION}; use matching versions",
                    v.to_str().unwrap_or("?")
                ),
            )));
        }
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_response(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("request body refused: {e}"),
            )))
        }
    };
    let result = match parse_request(&body) {
        Ok(r) => dispatch(&agent, r).await,
        Err(e) => Err(e),
    };
    Ok(match result {
        Ok(b) => json_response(200, b),
        Err(e) => error_response(e),
    })
}

/// Runs one request against the agent.
pub async fn dispatch(agent: &Arc<Agent>, req: Request) -> Result<Vec<u8>, ApiError> {
    tracing::debug!(?req, "request");
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
            Request::Suspend { name } => ok(a.suspend(&name).await?)?,
            Request::Resume { name } => ok(a.resume(&name).await?)?,
            Request::Undefine {
                name,
                remove_all_storage,
            } => ok(a.undefine(&name, remove_all_storage).await?)?,
            Request::Console { name, offset, max } => ok(a.console(&name, offset, max).await?)?,
            Request::PoolDefineAs {
                name,
                target,
                shared,
            } => ok(a.pools.define(&name, &target, shared).await?)?,
            Request::PoolBuild { name } => ok(a.pools.build(&name).await?)?,
            Request::PoolStart { name } => ok(a.pools.start(&name).await?)?,
            Request::PoolAutostart { name, disable } => {
                ok(a.pools.set_autostart(&name, !disable).await?)?
            }
            Request::PoolList { all } => ok(a.pools.list(all).await)?,
            Request::PoolInfo { name } => ok(a.pools.info(&name).await?)?,
            Request::PoolRefresh { name } => {
                a.pools.active_dir(&name).await?;
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
        })
    }
    .await;
    r.map_err(ApiError::from)
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

/// Serves one connection.
pub async fn serve_connection<S>(agent: Arc<Agent>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(agent.clone(), req));
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Accepts connections on a unix socket forever.
pub async fn serve_unix(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(serve_connection(agent.clone(), s));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts connections on a TCP socket forever.
pub async fn serve_tcp(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_connection(agent.clone(), s));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
