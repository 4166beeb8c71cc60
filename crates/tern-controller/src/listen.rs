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
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_pki::tls::Side;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
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

/// Connections still in their handshake, oldest first; dropping a sender
/// tells that handshake to give up.
#[derive(Debug, Default)]
struct Handshakes {
    next: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A connection's place among the handshakes; freed on drop.
struct HandshakeSlot {
    table: Arc<Mutex<Handshakes>>,
    id: u64,
}

impl Handshakes {
    /// Admits a new handshake, displacing the oldest when `max` are running.
    /// The receiver completes when this one is displaced in turn.
    fn admit(table: &Arc<Mutex<Handshakes>>, max: usize) -> (HandshakeSlot, oneshot::Receiver<()>) {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        while t.queue.len() >= max.max(1) {
            if let Some((id, _cancel)) = t.queue.pop_front() {
                tracing::info!(
                    connection = id,
                    "too many connections in their TLS handshake: dropping the oldest"
                );
            }
        }
        let id = t.next;
        t.next += 1;
        let (tx, rx) = oneshot::channel();
        t.queue.push_back((id, tx));
        (
            HandshakeSlot {
                table: table.clone(),
                id,
            },
            rx,
        )
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.queue.retain(|(id, _)| *id != self.id);
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
    let handshakes = Arc::new(Mutex::new(Handshakes::default()));
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let _ = s.set_nodelay(true);
                let slot = Handshakes::admit(&handshakes, limits.max_anonymous);
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
    (slot, displaced): (HandshakeSlot, oneshot::Receiver<()>),
    idle: Duration,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let done = tokio::select! {
        r = handshake => r,
        _ = displaced => return,
    };
    drop(slot);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_handshake_table_displaces_its_oldest_entry() {
        let t = Arc::new(Mutex::new(Handshakes::default()));
        let (a, mut ra) = Handshakes::admit(&t, 2);
        let (_b, mut rb) = Handshakes::admit(&t, 2);
        assert!(ra
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        let (_c, _rc) = Handshakes::admit(&t, 2);
        // a was displaced: its sender is gone.
        assert_eq!(ra.try_recv(), Err(oneshot::error::TryRecvError::Closed));
        assert_eq!(rb.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        drop(a);
        assert_eq!(t.lock().unwrap().queue.len(), 2);
    }
}
