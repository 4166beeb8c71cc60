//! The cluster API on mutual TLS: every connection presents a certificate
//! of the `tern pki` CA, which [`crate::authz`] turns into a [`Caller`].
//! A connection that does not finish its handshake within
//! [`HANDSHAKE_TIMEOUT`] is closed.

use crate::api::serve_connection;
use crate::authz::{Caller, Rules};
use crate::Controller;
use std::sync::Arc;
use std::time::Duration;
use tern_pki::tls::Side;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts mutual-TLS connections forever.
pub async fn serve_tls(
    ctl: Arc<Controller>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    rules: Arc<Rules>,
) {
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(
                    ctl.clone(),
                    acceptor.clone(),
                    rules.clone(),
                    s,
                    addr.to_string(),
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
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
    serve_connection(ctl, tls, caller).await;
}
