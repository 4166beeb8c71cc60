//! The cluster API on mutual TLS: every connection presents a certificate
//! of the `tern pki` CA, which [`crate::authz`] turns into a [`Caller`].
//!
//! Limits, as the agent's listener (libvirtd's): a connection that does not
//! finish its handshake within [`HANDSHAKE_TIMEOUT`] is closed; at most
//! [`Limits::max_anonymous`] connections may be in their handshake at once,
//! and a newcomer beyond that displaces the oldest of them (a flood of
//! silent connections only ever holds those slots, and keeps losing them,
//! while a real client's handshake takes milliseconds); a connection that
//! sends no complete request head within [`Limits::idle_timeout`] (from
//! its handshake and after each answer) is closed.

use crate::api::serve_connection;
use crate::authz::{Caller, Rules};
use crate::Controller;
use std::sync::Arc;
use std::time::Duration;
use tern_pki::handshakes::{Handshakes, Slot};
use tern_pki::tls::Side;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API listener's connection limits (`--idle-timeout`,
/// `--max-anonymous-clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may wait before (or while) sending a request
    /// head: idle and slow-header clients are closed after it.
    pub idle_timeout: Duration,
    /// Connections in their TLS handshake at once.
    pub max_anonymous: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(60),
            max_anonymous: 20,
        }
    }
}

/// Accepts mutual-TLS connections forever.
pub async fn serve_tls(
    ctl: Arc<Controller>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    rules: Arc<Rules>,
    limits: Limits,
) {
    let handshakes = Handshakes::new(limits.max_anonymous);
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let _ = s.set_nodelay(true);
                let slot = handshakes.admit().await;
                tokio::spawn(connection(
                    ctl.clone(),
                    acceptor.clone(),
                    rules.clone(),
                    s,
                    addr.to_string(),
                    slot,
                    limits.idle_timeout,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    ctl: Arc<Controller>,
    acceptor: TlsAcceptor,
    rules: Arc<Rules>,
    tcp: TcpStream,
    addr: String,
    mut slot: Slot,
    idle: Duration,
) {
    if !slot.hello(&tcp, HANDSHAKE_TIMEOUT).await {
        tracing::info!(%addr, "closing a connection that said nothing (or was displaced first)");
        return;
    }
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let Some(done) = slot.run(handshake).await else {
        return;
    };
    let tls = match done {
        Err(_) => {
            tracing::info!(%addr, "closing a connection that did not finish its TLS handshake in time");
            return;
        }
        Ok(Err(e)) => {
            let why = tern_pki::explain_tls_failure(&e, Side::Server).unwrap_or(e.to_string());
            tracing::warn!(%addr, "TLS handshake refused: {why}");
            return;
        }
        Ok(Ok(tls)) => tls,
    };
    let id = tern_pki::peer_identity(tls.get_ref().1.peer_certificates());
    let caller = rules.caller(id.as_ref());
    match &caller {
        Caller::Refused(why) => tracing::warn!(%addr, "TLS client refused: {why}"),
        c => tracing::debug!(%addr, caller = ?c, "connection"),
    }
    serve_connection(ctl, tls, caller, idle).await;
}

/// How long the console and metrics listeners wait for a request head.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `app` on plain HTTP (the console without `--console-tls`, the
/// metrics endpoint) until the process ends, closing connections that send
/// no complete request head within [`HTTP_IDLE_TIMEOUT`] (idle and
/// slow-header clients), as the API does.
pub async fn serve_http(listener: TcpListener, app: axum::Router) -> std::io::Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .max_buf_size(64 << 10)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HTTP_IDLE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}
