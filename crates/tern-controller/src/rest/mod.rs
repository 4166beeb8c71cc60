//! The controller's API as resources (`/v1/...`), with an OpenAPI
//! document generated from these handlers at `/v1/openapi.json`: what
//! `tern`'s cluster verbs and the web console use. The API port also
//! serves them (beside `POST /api/v1/call`, which only the agents still
//! speak: register, heartbeat, host-shutdown); the console serves them to
//! its logged-in sessions.
//!
//! Every handler runs a [`ClusterRequest`] through the RPC's own
//! [`crate::api::dispatch`], authorized as that request
//! ([`authz::check`]), so both always agree; errors are the API's
//! [`tern_api::ApiError`] body with its HTTP status. `GET
//! /v1/jobs/{id}/events` streams a job's changes as server-sent events
//! until it ends.

mod events;
mod hosts;
pub mod openapi;

use crate::api::dispatch;
use crate::authz::{self, Caller};
use crate::Controller;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tern_api::cluster::{ClusterRequest, JobRecord, ServerState};
use tern_api::response::error_response;
use tern_api::rest::MigrateBody;
use tern_api::{ApiError, ErrorCode};
use utoipa::ToSchema;

/// The error body of every route: the RPC's [`ApiError`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// `invalid-argument`, `not-found`, `conflict`, `forbidden`, `internal`, ...
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// A route: method, path in OpenAPI's spelling, and its handler.
pub struct Route {
    /// `get`, `post`.
    pub method: &'static str,
    /// `/v1/servers/{id}`.
    pub path: &'static str,
    handler: MethodRouter<Arc<Controller>>,
}

/// Every route of the REST API (the OpenAPI test checks the document
/// against this table).
pub fn routes() -> Vec<Route> {
    let r = |method, path, handler| Route {
        method,
        path,
        handler,
    };
    vec![
        r("get", "/v1/hosts", get(hosts::list_hosts)),
        r("get", "/v1/hosts/{id}", get(hosts::show_host)),
        r(
            "post",
            "/v1/hosts/{id}/maintenance",
            post(hosts::enter_maintenance),
        ),
        r(
            "delete",
            "/v1/hosts/{id}/maintenance",
            delete(hosts::leave_maintenance),
        ),
        r(
            "patch",
            "/v1/hosts/{id}/auto-migrate",
            patch(hosts::auto_migrate),
        ),
        r("get", "/v1/servers", get(list_servers)),
        r("get", "/v1/servers/{id}", get(show_server)),
        r("post", "/v1/servers/{id}/migrate", post(migrate_server)),
        r("post", "/v1/servers/{id}/forecast", post(forecast_server)),
        r("get", "/v1/jobs", get(list_jobs)),
        r("get", "/v1/jobs/{id}", get(show_job)),
        r("post", "/v1/jobs/{id}/cancel", post(cancel_job)),
        r("get", "/v1/jobs/{id}/events", get(events::job_events)),
        r("get", "/v1/status", get(status)),
        r("get", "/v1/openapi.json", get(openapi::document)),
    ]
}

/// The routes, without a fallback (the console has its own pages).
/// Every handler wants the caller's [`Caller`] in the request's extensions.
pub fn resources(ctl: Arc<Controller>) -> Router {
    let mut app = Router::new();
    for r in routes() {
        // axum 0.7 spells path parameters `:id`; methods on one path merge.
        app = app.route(&r.path.replace("{id}", ":id"), r.handler);
    }
    app.with_state(ctl)
}

/// The REST router over `ctl`, with a JSON 404 for unknown paths.
pub fn router(ctl: Arc<Controller>) -> Router {
    resources(ctl).fallback(not_found)
}

/// One request on the API port: `/v1/...` to the REST router, anything
/// else to the RPC endpoint ([`crate::api`]).
/// The connection's [`Caller`] rides in the request's extensions: every
/// resource is authorized as the cluster request it runs ([`authz::check`]).
pub async fn route(
    ctl: Arc<Controller>,
    caller: Arc<Caller>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, std::convert::Infallible> {
    use tower::ServiceExt;
    if req.uri().path().starts_with("/v1/") {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(caller);
        return router(ctl).oneshot(req).await;
    }
    crate::api::handle(ctl, caller, req).await
}

async fn not_found() -> Response {
    error(ApiError::new(
        ErrorCode::NotFound,
        "no such resource; see GET /v1/openapi.json",
    ))
}

/// A JSON body, or the defaults when it is empty; a malformed one is
/// refused (not replaced by the defaults, which would act with options
/// nobody gave).
fn parse_body<T: DeserializeOwned + Default>(body: &[u8], schema: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("malformed body: {e}; see {schema} in /v1/openapi.json"),
        )
    })
}

fn error(e: ApiError) -> Response {
    error_response(e).into_response()
}

/// The refusal, if the connection's caller may not send `req`.
fn refused(caller: &Caller, req: &ClusterRequest) -> Option<Response> {
    authz::check(caller, req).err().map(error)
}

/// Runs a cluster request, if the caller may, and answers with its JSON
/// (or its error).
async fn call(
    ctl: &Arc<Controller>,
    caller: &Caller,
    req: ClusterRequest,
    status: u16,
) -> Response {
    if let Some(r) = refused(caller, &req) {
        return r;
    }
    match dispatch(ctl, req).await {
        Ok(reply) => reply.into_response(status),
        Err(e) => error(ApiError::from(e)),
    }
}

/// Servers (guests) in the cluster.
#[utoipa::path(get, path = "/v1/servers", tag = "servers",
    responses((status = 200, description = "Every server record (domain, host, state, error)", body = [Object])))]
async fn list_servers(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::ServerList, 200).await
}

/// One server.
#[utoipa::path(get, path = "/v1/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "Server name")),
    responses((status = 200, description = "The server record", body = Object),
        (status = 404, description = "No such server", body = ErrorBody)))]
async fn show_server(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::ServerShow { id }, 200).await
}

/// Queues a migration of a server; follow it at `/v1/jobs/{id}/events`.
#[utoipa::path(post, path = "/v1/servers/{id}/migrate", tag = "servers",
    params(("id" = String, Path, description = "Server name")),
    request_body(content = MigrateBody, description = "Live or cold, and the options"),
    responses((status = 202, description = "The job, queued", body = Object),
        (status = 400, description = "Bad options", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "The server cannot move now (state, limits, host)", body = ErrorBody)))]
async fn migrate_server(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: MigrateBody = match parse_body(&body, "MigrateBody") {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    // Reading the server's state needs the right to read it.
    if let Some(r) = refused(&caller, &ClusterRequest::ServerShow { id: id.clone() }) {
        return r;
    }
    let live = match b.live {
        Some(l) => l,
        None => match ctl.inv.server(&id).await {
            Ok(s) => s.state == ServerState::Running,
            Err(e) => return error(ApiError::from(e)),
        },
    };
    let opts = b.options;
    let req = match live {
        true => ClusterRequest::ServerLiveMigrate { id, opts },
        false => ClusterRequest::ServerMigrate { id, opts },
    };
    call(&ctl, &caller, req, 202).await
}

/// Which hosts qualify for a server's migration, and why each other does not.
#[utoipa::path(post, path = "/v1/servers/{id}/forecast", tag = "servers",
    params(("id" = String, Path, description = "Server name")),
    request_body(content = MigrateBody, description = "Live or cold (default: as the server's state implies), and the options"),
    responses((status = 200, description = "One verdict per host (host, ok, detail), the qualifying ones first, best first", body = [Object]),
        (status = 400, description = "Bad options", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody)))]
async fn forecast_server(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: MigrateBody = match parse_body(&body, "MigrateBody") {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let req = ClusterRequest::MigrateForecast {
        id,
        live: b.live,
        opts: b.options,
    };
    call(&ctl, &caller, req, 200).await
}

/// This controller and the current leader.
#[utoipa::path(get, path = "/v1/status", tag = "meta",
    responses((status = 200, description = "This controller's id and the leader's", body = Object)))]
async fn status(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::Status, 200).await
}

/// Migration jobs, queued, running and finished.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    responses((status = 200, description = "Every job record", body = [Object])))]
async fn list_jobs(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::JobList, 200).await
}

/// The job with this id, if the caller may list jobs.
async fn find_job(ctl: &Arc<Controller>, caller: &Caller, id: &str) -> Result<JobRecord, ApiError> {
    authz::check(caller, &ClusterRequest::JobList)?;
    let jobs = ctl.inv.jobs().await.map_err(ApiError::from)?;
    jobs.into_iter().find(|j| j.id == id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no job '{id}'; GET /v1/jobs lists them"),
        )
    })
}

/// One job.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job record", body = Object),
        (status = 404, description = "No such job", body = ErrorBody)))]
async fn show_job(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    match find_job(&ctl, &caller, &id).await {
        Ok(j) => (StatusCode::OK, Json(j)).into_response(),
        Err(e) => error(e),
    }
}

/// Cancels a queued or running job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id or server name")),
    responses((status = 200, description = "The job, cancelled or asked to cancel", body = Object),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is over", body = ErrorBody)))]
async fn cancel_job(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::MigrateCancel { id }, 200).await
}
