//! Logging in to the console with a certificate of the cluster's CA, the
//! same identities as the cluster API (`--console-tls`).
//!
//! The console is then served over TLS with the controller's server
//! certificate and *asks* browsers for a client certificate (password
//! logins keep working without one). `POST /api/login-cert` opens a session
//! for the certificate the connection presented: an operator allowed to
//! change things gets a read-write session, one in `--tls-readonly-dn` a
//! read-only one; host certificates and certificates no rule admits are
//! refused, as on the API ([`crate::authz`]).

use super::auth::Role;
use super::{router, Console, Fail, COOKIE};
use crate::authz::{Caller, Rules};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tern_api::{ApiError, ErrorCode};
use tokio_rustls::TlsAcceptor;

/// Who the connection's client certificate makes, if it presented one.
#[derive(Debug, Clone)]
pub struct Presented(pub Option<Caller>);

/// The session a certificate gives, or why none.
pub fn role_of(who: Option<&Caller>) -> Result<(String, Role), String> {
    match who {
        Some(Caller::ReadWrite(n)) => Ok((n.clone(), Role::ReadWrite)),
        Some(Caller::ReadOnly(n)) => Ok((n.clone(), Role::ReadOnly)),
        Some(Caller::Host(n)) => Err(format!(
            "'{n}' is a host certificate; log in with an operator certificate"
        )),
        Some(Caller::Refused(why)) => Err(why.clone()),
        Some(Caller::Unauthenticated) | None => Err(
            "no client certificate was presented; import an operator certificate (`tern pki issue-client NAME`) into the browser, or log in with a password"
                .into(),
        ),
    }
}

/// `POST /api/login-cert`.
pub async fn login_cert(
    State(c): State<Arc<Console>>,
    who: Option<Extension<Presented>>,
) -> Result<Response, Fail> {
    let who = who.and_then(|Extension(p)| p.0);
    let (user, role) = role_of(who.as_ref()).map_err(|why| {
        tracing::info!(%why, "console certificate login refused");
        Fail(ApiError::new(ErrorCode::Forbidden, why))
    })?;
    tracing::info!(%user, ?role, "console login with a certificate");
    let token = c.sessions.open(&user, role);
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Secure; Path=/");
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"user": user, "role": role})),
    )
        .into_response())
}

/// Serves the console over TLS on `listener` until the process ends.
pub async fn serve_tls(
    c: Arc<Console>,
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    rules: Arc<Rules>,
) -> std::io::Result<()> {
    tokio::spawn(super::progress::record(c.clone()));
    let app = router(c);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "console accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app, rules) = (acceptor.clone(), app.clone(), rules.clone());
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "console TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let id = tern_pki::peer_identity(tls.get_ref().1.peer_certificates());
            let who = Presented(id.map(|i| rules.caller(Some(&i))));
            let svc = hyper_util::service::TowerToHyperService::new(app.layer(Extension(who)));
            // Idle and slow-header browsers are closed as on the API.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .max_buf_size(64 << 10)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(crate::listen::HTTP_IDLE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(error = %e, "console connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_operator_certificates_open_sessions() {
        assert_eq!(
            role_of(Some(&Caller::ReadWrite("admin".into()))),
            Ok(("admin".into(), Role::ReadWrite))
        );
        assert_eq!(
            role_of(Some(&Caller::ReadOnly("v".into()))),
            Ok(("v".into(), Role::ReadOnly))
        );
        assert!(role_of(Some(&Caller::Host("a".into()))).is_err());
        assert!(role_of(None).unwrap_err().contains("no client certificate"));
    }
}
