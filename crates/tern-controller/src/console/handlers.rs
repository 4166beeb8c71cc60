//! The console's JSON endpoints: login, and the agent calls the migrate
//! dialog and the server menu need (the cluster's own resources are the
//! REST API's, [`crate::rest`]).

use super::auth;
use super::{Console, Fail, COOKIE};
use crate::error::CtlError;
use crate::evacuate::host_client;
use crate::jobs;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tern_api::cluster::{HostRecord, JobKind, MigrateRequestOptions};
use tern_api::{ApiError, Client, ErrorCode, MigrationRequest, Request};

type Res = Result<Response, Fail>;

/// Body of `POST /api/login`.
#[derive(Debug, Deserialize)]
pub struct Login {
    user: String,
    password: String,
}

/// Opens a session and sets its cookie.
pub async fn login(State(c): State<Arc<Console>>, Json(l): Json<Login>) -> Res {
    let users = c.users.clone();
    let (user, password) = (l.user.clone(), l.password);
    // Argon2 is deliberately slow: off the async threads.
    let role = tokio::task::spawn_blocking(move || auth::check(&users, &user, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        tracing::info!(user = %l.user, "console login refused");
        // Slows password guessing down to one try a second per connection.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        return Err(Fail(ApiError::new(
            ErrorCode::Forbidden,
            "wrong user name or password",
        )));
    };
    tracing::info!(user = %l.user, ?role, "console login");
    let token = c.sessions.open(&l.user, role);
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"user": l.user, "role": role})),
    )
        .into_response())
}

/// Ends the session.
pub async fn logout(State(c): State<Arc<Console>>, h: HeaderMap) -> Res {
    if let Ok(cookie) = h
        .get(header::COOKIE)
        .map(|v| v.to_str().unwrap_or(""))
        .ok_or(())
    {
        if let Some(t) = auth::cookie_token(cookie, COOKIE) {
            c.sessions.close(t);
        }
    }
    let gone = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok(([(header::SET_COOKIE, gone)], StatusCode::NO_CONTENT).into_response())
}

/// Who is logged in.
pub async fn me(State(c): State<Arc<Console>>, h: HeaderMap) -> Res {
    let s = c.session(&h)?;
    Ok(Json(json!({"user": s.user, "role": s.role, "controller": c.ctl.cfg.id})).into_response())
}

fn agent(h: &HostRecord) -> Result<Client, Fail> {
    host_client(h).map_err(|source| {
        Fail(
            CtlError::Agent {
                host: h.report.name.clone(),
                source,
            }
            .into(),
        )
    })
}

/// An agent's failure: its own code when it answered ([`crate::error::error_code`]).
fn agent_err(host: &str) -> impl Fn(tern_api::ClientError) -> Fail + '_ {
    move |source| {
        Fail(
            CtlError::Agent {
                host: host.to_string(),
                source,
            }
            .into(),
        )
    }
}

/// How long "Shut down" waits for the guest to power off (ACPI), as
/// `tern shutdown`'s agent call does; past it the agent's message says to
/// force it off.
pub const SHUTDOWN_WAIT_SECS: u64 = 60;

/// Body of `POST /api/server-action`.
#[derive(Debug, Deserialize)]
pub struct ServerAction {
    server: String,
    action: String,
}

/// Starts or shuts down a server on its host.
pub async fn server_action(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Json(a): Json<ServerAction>,
) -> Res {
    let s = c.writer(&h)?;
    let srv = c.ctl.inv.server(&a.server).await?;
    let host = c.ctl.inv.host(&srv.host).await?;
    let req = match a.action.as_str() {
        "start" => Request::Start {
            name: a.server.clone(),
            paused: false,
        },
        "shutdown" => Request::Shutdown {
            name: a.server.clone(),
            timeout_secs: SHUTDOWN_WAIT_SECS,
        },
        other => {
            return Err(Fail(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("action '{other}' is unknown; use start or shutdown"),
            )))
        }
    };
    tracing::info!(user = %s.user, server = %a.server, action = %a.action, "console action");
    let v: Value = agent(&host)?
        .call(&req)
        .await
        .map_err(agent_err(&srv.host))?;
    Ok(Json(v).into_response())
}

/// Query of `GET /api/console-output`.
#[derive(Debug, Deserialize)]
pub struct OutputQuery {
    server: String,
    #[serde(default)]
    offset: u64,
}

/// A server's serial output from `offset` (the page follows it).
pub async fn console_output(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Query(q): Query<OutputQuery>,
) -> Res {
    c.session(&h)?;
    let srv = c.ctl.inv.server(&q.server).await?;
    let host = c.ctl.inv.host(&srv.host).await?;
    let v: Value = agent(&host)?
        .call(&Request::Console {
            name: q.server.clone(),
            offset: q.offset,
            max: 64 << 10,
        })
        .await
        .map_err(agent_err(&srv.host))?;
    Ok(Json(v).into_response())
}

/// Body of `POST /api/time-forecast`.
#[derive(Debug, Deserialize)]
pub struct TimeForecast {
    server: String,
    #[serde(default)]
    opts: MigrateRequestOptions,
}

/// The source agent's forecast of total time and downtime towards the
/// chosen host (or the scheduler's best one), with the job's options.
pub async fn time_forecast(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Json(t): Json<TimeForecast>,
) -> Res {
    c.writer(&h)?;
    let srv = c.ctl.inv.server(&t.server).await?;
    if !srv.domain.active {
        return Err(Fail(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "server '{}' is stopped: it moves cold, with no downtime to forecast",
                t.server
            ),
        )));
    }
    let dest = match &t.opts.prefer_host {
        Some(d) => d.clone(),
        None => best_host(&c, &t.server, &t.opts).await?,
    };
    let src = c.ctl.inv.host(&srv.host).await?;
    let dst = c.ctl.inv.host(&dest).await?;
    let options = jobs::migrate_options(JobKind::LiveMigrate, &t.opts, &srv);
    let f: Value = agent(&src)?
        .call(&Request::Migration(MigrationRequest::MigrateForecast {
            name: t.server.clone(),
            dest_uri: Some(dst.report.api_uri.clone()),
            options,
        }))
        .await
        .map_err(agent_err(&srv.host))?;
    Ok(Json(json!({"host": dest, "forecast": f})).into_response())
}

/// The host the scheduler would pick: the forecast lists the qualifying
/// hosts first, best first.
async fn best_host(c: &Console, server: &str, o: &MigrateRequestOptions) -> Result<String, Fail> {
    let rows = jobs::forecast(&c.ctl, server, Some(true), o).await?;
    rows.into_iter()
        .find(|r| r.ok)
        .map(|r| r.host)
        .ok_or_else(|| {
            Fail(ApiError::new(
                ErrorCode::Conflict,
                format!("no host qualifies for server '{server}'; see each host's reason"),
            ))
        })
}

/// `GET /api/hosts`: each host's record with the scheduler's view of it
/// (free vCPUs, memory and pool space, migrations in flight), computed by
/// the same [`crate::views::host_views`] the scheduler runs on.
pub async fn hosts(State(c): State<Arc<Console>>, h: HeaderMap) -> Res {
    c.session(&h)?;
    let hosts = c.ctl.inv.hosts_shared().await?;
    let servers = c.ctl.inv.servers_shared().await?;
    let jobs = c.ctl.inv.jobs().await?;
    let views = crate::views::host_views(&hosts, &servers, &jobs);
    let out: Vec<Value> = hosts
        .iter()
        .zip(views)
        .map(|(r, v)| json!({"record": &**r, "view": v}))
        .collect();
    Ok(Json(out).into_response())
}
