//! Listeners: the read-write and read-only unix sockets, plain TCP (only
//! with `--auth none`), and mutual TLS. Each accepted stream gets a
//! [`Peer`] (identity and grant) and a place among the server's clients.
//!
//! A TLS connection is anonymous until its handshake completes; it has
//! `auth_timeout` to do so and may be displaced by newer connections when
//! the anonymous pool is full (see [`crate::limits`]). A failed handshake is
//! logged with the reason in plain words, and the socket is half-closed and
//! drained before it is dropped so the client reads the TLS alert instead
//! of a connection reset.

use crate::access::Grant;
use crate::server::{serve_connection, Peer, Server};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tern_pki::tls::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::TlsAcceptor;

/// The read-only socket next to a read-write socket: `<socket>-ro`.
pub fn read_only_socket(rw: &Path) -> PathBuf {
    let mut s = rw.as_os_str().to_owned();
    s.push("-ro");
    PathBuf::from(s)
}

/// Binds a unix socket with `mode` and, if given, group `group`.
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", path.display()))?;
    if let Some(g) = group {
        let gid = group_id(g)?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| anyhow::anyhow!("cannot give {} to group {g}: {e}", path.display()))?;
    }
    Ok(l)
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| anyhow::anyhow!("unix_sock_group '{name}' is not a valid group name"))?;
    // SAFETY: getgrnam reads a NUL-terminated string; the result is only
    // dereferenced when non-null, before any other call that could reuse it.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        anyhow::bail!("unix_sock_group '{name}' does not exist; create it or change the config");
    }
    // SAFETY: non-null pointer to the static group record just returned.
    Ok(unsafe { (*gr).gr_gid })
}

async fn pause_after_accept_error(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Accepts on a unix socket forever; every connection gets `grant`.
pub async fn serve_unix(server: Arc<Server>, listener: UnixListener, grant: Grant) {
    let label = match grant {
        Grant::ReadOnly => "unix-ro",
        _ => "unix",
    };
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let Some(slot) = server.clients_for(&grant).admit_authenticated() else {
                    tracing::warn!("max_clients (max_ro_clients on {label}) reached: refusing a unix connection");
                    continue;
                };
                let identity = match s.peer_cred() {
                    Ok(c) => format!("{label}:uid={}", c.uid()),
                    Err(_) => label.to_string(),
                };
                let peer = Peer {
                    identity,
                    grant: grant.clone(),
                };
                tokio::spawn(serve_connection(server.clone(), s, peer, slot));
            }
            Err(e) => pause_after_accept_error(e).await,
        }
    }
}

/// Accepts plain TCP forever (`--listen-tcp --auth none`): read-write for
/// anyone who can reach the port.
pub async fn serve_tcp(server: Arc<Server>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let Some(slot) = server.clients.admit_authenticated() else {
                    tracing::warn!(%addr, "max_clients reached: refusing a TCP connection");
                    continue;
                };
                let _ = s.set_nodelay(true);
                let peer = Peer {
                    identity: format!("tcp:{addr}"),
                    grant: Grant::ReadWrite,
                };
                tokio::spawn(serve_connection(server.clone(), s, peer, slot));
            }
            Err(e) => pause_after_accept_error(e).await,
        }
    }
}

/// Accepts mutual-TLS connections forever.
pub async fn serve_tls(server: Arc<Server>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(tls_connection(
                    server.clone(),
                    acceptor.clone(),
                    s,
                    addr.to_string(),
                ));
            }
            Err(e) => pause_after_accept_error(e).await,
        }
    }
}

async fn tls_connection(server: Arc<Server>, acceptor: TlsAcceptor, tcp: TcpStream, addr: String) {
    let Some((slot, displaced)) = server.clients.admit_anonymous() else {
        tracing::warn!(%addr, "max_clients reached by authenticated clients: refusing a TLS connection");
        return;
    };
    let timeout = server.clients.limits().auth_timeout;
    let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp).into_fallible());
    let outcome = tokio::select! {
        r = handshake => r,
        _ = displaced => {
            tracing::debug!(%addr, "unauthenticated connection displaced by a newer one");
            return;
        }
    };
    let tls = match outcome {
        Err(_) => {
            tracing::info!(%addr, secs = timeout.as_secs(), "closing a connection that did not finish its TLS handshake in time (auth_timeout)");
            return;
        }
        Ok(Err((e, tcp))) => {
            let why = tern_pki::explain_tls_failure(&e, Side::Server).unwrap_or(e.to_string());
            tracing::warn!(%addr, "TLS handshake refused: {why}");
            drop(slot);
            linger(tcp).await;
            return;
        }
        Ok(Ok(tls)) => tls,
    };
    let id = tern_pki::peer_identity(tls.get_ref().1.peer_certificates());
    let cn = id.as_ref().map(|i| i.cn.clone());
    let grant = server.agent.cfg.server.tls.grant_identity(id.as_ref());
    if let Grant::Refused(why) = &grant {
        tracing::warn!(%addr, cn = cn.as_deref().unwrap_or("-"), "TLS client refused: {why}");
    }
    // A read-only identity moves to the read-only share.
    let slot = match grant {
        Grant::ReadOnly => {
            drop(slot);
            match server.read_only.clients.admit_authenticated() {
                Some(ro) => ro,
                None => {
                    tracing::warn!(%addr, "max_ro_clients reached: refusing a read-only TLS client");
                    return;
                }
            }
        }
        _ => slot.promote(),
    };
    let peer = Peer {
        identity: cn.unwrap_or_else(|| format!("tls:{addr}")),
        grant,
    };
    serve_connection(server, tls, peer, slot).await;
}

/// Half-closes and drains a refused connection for a moment, so its TLS
/// alert reaches the client before the socket goes (closing with unread
/// data would send a reset that can destroy the alert).
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}
