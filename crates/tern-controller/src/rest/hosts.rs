//! `/v1/hosts/...`: hosts, their health, maintenance and evacuation policy.

use super::{call, error, parse_body, ErrorBody};
use crate::authz::Caller;
use crate::Controller;
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use std::sync::Arc;
use tern_api::cluster::ClusterRequest;
use tern_api::rest::AutoMigrateBody;

/// Hosts and their health.
#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, description = "Every host record (report, status, lease, maintenance, policies)", body = [Object])))]
pub async fn list_hosts(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::HostList, 200).await
}

/// One host.
#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts",
    params(("id" = String, Path, description = "Host name")),
    responses((status = 200, description = "The host record", body = Object),
        (status = 404, description = "No such host", body = ErrorBody)))]
pub async fn show_host(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::HostShow { id }, 200).await
}

/// Puts a host in maintenance: its running servers move live, its stopped
/// ones cold, and the scheduler places nothing new on it.
#[utoipa::path(post, path = "/v1/hosts/{id}/maintenance", tag = "hosts",
    params(("id" = String, Path, description = "Host name")),
    responses((status = 202, description = "The jobs queued to evacuate it", body = [Object]),
        (status = 404, description = "No such host", body = ErrorBody),
        (status = 409, description = "None of its servers can move", body = ErrorBody)))]
pub async fn enter_maintenance(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    call(&ctl, &caller, ClusterRequest::HostMaintenance { id }, 202).await
}

/// Ends a host's maintenance: it takes new servers again (the evacuated
/// ones stay where they went).
#[utoipa::path(delete, path = "/v1/hosts/{id}/maintenance", tag = "hosts",
    params(("id" = String, Path, description = "Host name")),
    responses((status = 200, description = "The host record", body = Object),
        (status = 404, description = "No such host", body = ErrorBody)))]
pub async fn leave_maintenance(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    call(
        &ctl,
        &caller,
        ClusterRequest::HostMaintenanceLeave { id },
        200,
    )
    .await
}

/// Sets a host's evacuation policy: restart its servers elsewhere when it
/// dies, move them away when it shuts down cleanly (which needs the first).
#[utoipa::path(patch, path = "/v1/hosts/{id}/auto-migrate", tag = "hosts",
    params(("id" = String, Path, description = "Host name")),
    request_body(content = AutoMigrateBody, description = "The policies to change; absent ones stay"),
    responses((status = 200, description = "The host record", body = Object),
        (status = 400, description = "Shutdown policy without the host-down one, or a bad body", body = ErrorBody),
        (status = 404, description = "No such host", body = ErrorBody)))]
pub async fn auto_migrate(
    State(ctl): State<Arc<Controller>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let b: AutoMigrateBody = match parse_body(&body, "AutoMigrateBody") {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let req = ClusterRequest::HostAutoMigrate {
        id,
        on_host_down: b.on_host_down,
        on_host_shutdown: b.on_host_shutdown,
    };
    call(&ctl, &caller, req, 200).await
}
