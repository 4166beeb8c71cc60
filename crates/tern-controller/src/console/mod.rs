//! The web console: hosts, servers, a migrate dialog that shows the
//! scheduler's verdicts, live progress and jobs, served on its own
//! listener (`--console-listen`).
//!
//! The console adds no cluster logic of its own: it serves the API's own
//! REST resources (`/v1/...`, [`crate::rest`]) to its sessions, each
//! session's role standing for the caller's identity, authorized by the
//! same [`crate::authz::check`] (whose read and write classes are
//! [`access`]). Host actions (start, shut down, serial
//! output, the time forecast) go to the server's agent with the same
//! client the controller's jobs use. Progress comes from the source
//! agent's job figures, recorded while a job runs ([`progress`]) and
//! streamed to browsers as server-sent events.
//!
//! Browsers log in with a password file of argon2 hashes ([`auth`]); the
//! session cookie is HttpOnly and SameSite=Strict, and every request but a
//! GET must carry `X-Tern-Console: 1`, which a cross-site form cannot send.

mod assets;
pub mod auth;
pub mod cert_login;
mod handlers;
pub mod progress;
#[cfg(test)]
mod router_tests;

use crate::authz::Caller;
use crate::Controller;
use auth::{Role, Session, Sessions, User};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tern_api::cluster::ClusterRequest;
use tern_api::{ApiError, ErrorCode};

/// Name of the session cookie.
pub const COOKIE: &str = "tern_session";
/// Header every console POST carries (a cross-site form cannot set it).
pub const CSRF_HEADER: &str = "x-tern-console";

/// What the console serves from.
#[derive(Debug)]
pub struct Console {
    ctl: Arc<Controller>,
    users: Vec<User>,
    sessions: Sessions,
    history: progress::Histories,
}

/// Who may send a cluster request through the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any session.
    Read,
    /// Read-write sessions.
    Write,
    /// Agents only, never a browser.
    Refused,
}

/// The access a cluster request needs from a browser. Every variant is
/// named, so a new request must be classified here.
pub fn access(r: &ClusterRequest) -> Access {
    match r {
        ClusterRequest::HostList
        | ClusterRequest::HostShow { .. }
        | ClusterRequest::ServerList
        | ClusterRequest::ServerShow { .. }
        | ClusterRequest::JobList
        | ClusterRequest::Status
        | ClusterRequest::MigrateForecast { .. } => Access::Read,
        ClusterRequest::ServerMigrate { .. }
        | ClusterRequest::ServerLiveMigrate { .. }
        | ClusterRequest::MigrateCancel { .. }
        | ClusterRequest::HostMaintenance { .. }
        | ClusterRequest::HostMaintenanceLeave { .. }
        | ClusterRequest::HostAutoMigrate { .. } => Access::Write,
        ClusterRequest::Register { .. }
        | ClusterRequest::Heartbeat { .. }
        | ClusterRequest::HostShutdown { .. } => Access::Refused,
    }
}

/// An error reply: the API's error JSON (`{code, message}`) with its status.
#[derive(Debug)]
pub struct Fail(pub ApiError);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

impl From<crate::error::CtlError> for Fail {
    fn from(e: crate::error::CtlError) -> Fail {
        Fail(e.into())
    }
}

fn unauthorized() -> Fail {
    Fail(ApiError::new(
        ErrorCode::Forbidden,
        "not logged in; log in to the console first",
    ))
}

impl Console {
    /// A console over `ctl` for `users`.
    pub fn new(ctl: Arc<Controller>, users: Vec<User>) -> Arc<Console> {
        Arc::new(Console {
            ctl,
            users,
            sessions: Sessions::default(),
            history: progress::Histories::default(),
        })
    }

    /// The session of a request's cookie.
    fn session(&self, h: &HeaderMap) -> Result<Session, Fail> {
        let cookie = h
            .get(axum::http::header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        auth::cookie_token(cookie, COOKIE)
            .and_then(|t| self.sessions.get(t))
            .ok_or_else(unauthorized)
    }

    /// The session, if it may act.
    fn writer(&self, h: &HeaderMap) -> Result<Session, Fail> {
        let s = self.session(h)?;
        if s.role != Role::ReadWrite {
            return Err(Fail(ApiError::new(
                ErrorCode::Forbidden,
                format!("user '{}' is read-only; ask for a read-write login", s.user),
            )));
        }
        Ok(s)
    }
}

/// Whether a request only reads (and so needs no cross-site header).
fn reads(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD)
}

/// Refuses a request that acts (POST, PATCH, DELETE...) without the
/// console's header (cross-site requests).
async fn csrf(req: axum::extract::Request, next: axum::middleware::Next) -> Result<Response, Fail> {
    if !reads(req.method()) && req.headers().get(CSRF_HEADER).is_none() {
        return Err(Fail(ApiError::new(
            ErrorCode::Forbidden,
            format!("console requests carry the header {CSRF_HEADER}: 1"),
        )));
    }
    Ok(next.run(req).await)
}

/// The caller a session stands for on the REST resources: its role as an
/// operator's (read-only or read-write); no session, no access.
async fn session_caller(
    State(c): State<Arc<Console>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, Fail> {
    let s = c.session(req.headers())?;
    if !reads(req.method()) {
        tracing::info!(user = %s.user, method = %req.method(), path = %req.uri().path(), "console action");
    }
    let caller = match s.role {
        Role::ReadOnly => Caller::ReadOnly(s.user),
        Role::ReadWrite => Caller::ReadWrite(s.user),
    };
    req.extensions_mut().insert(Arc::new(caller));
    Ok(next.run(req).await)
}

/// The console's routes: its pages and helpers, and the API's REST
/// resources for its sessions.
pub fn router(c: Arc<Console>) -> Router {
    let resources = crate::rest::resources(c.ctl.clone()).layer(
        axum::middleware::from_fn_with_state(c.clone(), session_caller),
    );
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/api/login", post(handlers::login))
        .route("/api/login-cert", post(cert_login::login_cert))
        .route("/api/logout", post(handlers::logout))
        .route("/api/me", get(handlers::me))
        .route("/api/hosts", get(handlers::hosts))
        .route("/api/server-action", post(handlers::server_action))
        .route("/api/console-output", get(handlers::console_output))
        .route("/api/time-forecast", post(handlers::time_forecast))
        .route("/api/jobs/:id/history", get(progress::history))
        .route("/api/jobs/:id/events", get(progress::events))
        .with_state(c)
        .merge(resources)
        .layer(axum::middleware::from_fn(csrf))
}

/// Serves the console on `listener` until the process ends; records the
/// progress of running jobs meanwhile.
pub async fn serve(c: Arc<Console>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    tokio::spawn(progress::record(c.clone()));
    crate::listen::serve_http(listener, router(c)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_never_send_agent_requests_and_need_rw_to_act() {
        let r = ClusterRequest::HostShutdown { host: "a".into() };
        assert_eq!(access(&r), Access::Refused);
        let r = ClusterRequest::ServerLiveMigrate {
            id: "vm".into(),
            opts: Default::default(),
        };
        assert_eq!(access(&r), Access::Write);
        let r = ClusterRequest::MigrateForecast {
            id: "vm".into(),
            live: None,
            opts: Default::default(),
        };
        assert_eq!(access(&r), Access::Read);
    }
}
