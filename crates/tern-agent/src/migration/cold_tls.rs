//! `--tls` for cold copies: the transfer engine's streams (control and
//! data, one TCP connection each) carried over mutual TLS with the
//! cluster's certificates, so a disk never crosses the migration network
//! in the clear. The engine itself is unchanged and keeps its keyed MACs:
//!
//! - destination: each receiver listens on loopback only, and a [`Front`]
//!   on the migration address accepts TLS connections whose client
//!   certificate is the source agent's (the subject the driver relayed
//!   from Begin, as QEMU's `tls-authz` for live migrations), and relays
//!   each to the receiver;
//! - source: a [`Relay`] on loopback takes the sender's connections and
//!   carries each to the destination's front over TLS, checking that the
//!   destination's certificate is valid for the address it announced.
//!
//! Handshakes are bounded like the agent's other listeners: 10 s each, at
//! most [`MAX_HANDSHAKES`] at once (the oldest displaced).

use crate::error::{AgentError, Result};
use crate::Agent;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_pki::handshakes::Handshakes;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a TLS handshake (and reaching the peer) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in their handshake at once per listener (the engine opens
/// at most 16 streams per file).
pub const MAX_HANDSHAKES: usize = 32;

/// A task that ends when its owner drops it.
#[derive(Debug)]
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Destination: the TLS listener in front of one receiver. Dropping it
/// stops accepting; relayed streams go on until either end closes.
#[derive(Debug)]
pub struct Front {
    port: u16,
    _accept: Task,
}

impl Front {
    /// The port announced to the source.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn needs_pki(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Conflict(format!(
        "--tls with --cold needs this agent's {what} certificate: {e}"
    ))
}

/// Destination, Prepare: listens on the migration address (a port of the
/// migration range) and relays connections presenting the certificate
/// whose subject is `source` to `receiver` (on loopback).
pub async fn front(agent: &Agent, receiver: SocketAddr, source: Option<&str>) -> Result<Front> {
    let source = source
        .ok_or_else(|| {
            AgentError::Invalid(
                "a --tls cold migration needs the source agent's identity (relayed from Begin)"
                    .into(),
            )
        })?
        .to_string();
    let config = agent
        .tls_server_config()
        .map_err(|e| needs_pki("server", e))?;
    let mut bound = None;
    for p in agent.cfg.migration_ports.clone() {
        if let Ok(l) = TcpListener::bind((agent.migration_bind_address().as_str(), p)).await {
            bound = Some(l);
            break;
        }
    }
    let listener = bound
        .ok_or_else(|| AgentError::Failed("no free migration port for a --tls cold copy".into()))?;
    let port = listener
        .local_addr()
        .map_err(|e| AgentError::Failed(format!("reading the cold copy's TLS port: {e}")))?
        .port();
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(accept_loop(listener, acceptor, receiver, Arc::new(source)));
    Ok(Front {
        port,
        _accept: Task(task),
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    receiver: SocketAddr,
    source: Arc<String>,
) {
    let handshakes = Handshakes::new(MAX_HANDSHAKES);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cold copy TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut slot = handshakes.admit().await;
        let (acceptor, source) = (acceptor.clone(), source.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            if !slot.hello(&tcp, HANDSHAKE_TIMEOUT).await {
                tracing::info!(%addr, "cold copy connection said nothing (or was displaced first)");
                return;
            }
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let mut tls = match slot.run(handshake).await {
                Some(Ok(Ok(t))) => t,
                Some(Ok(Err(e))) => {
                    tracing::info!(%addr, error = %e, "cold copy TLS handshake refused");
                    return;
                }
                Some(Err(_)) | None => {
                    tracing::info!(%addr, "cold copy connection closed before its TLS handshake ended");
                    return;
                }
            };
            let id = tern_pki::peer_identity(tls.get_ref().1.peer_certificates());
            if id.as_ref().map(|i| i.dn.as_str()) != Some(source.as_str()) {
                tracing::warn!(
                    %addr,
                    identity = id.as_ref().map(|i| i.dn.as_str()).unwrap_or("-"),
                    "cold copy refused: only the source agent's certificate may send this copy"
                );
                return;
            }
            let Ok(mut local) = TcpStream::connect(receiver).await else {
                return;
            };
            let _ = local.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut local).await;
        });
    }
}

/// Source: the loopback address the sender connects to instead of the
/// destination. Dropping it stops accepting.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    _accept: Task,
}

impl Relay {
    /// Where the sender connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Source, Perform: a loopback listener whose every connection becomes a
/// TLS stream to the destination's front at `host:port`; the destination's
/// certificate must be valid for `host`, the address it announced.
pub async fn relay(agent: &Agent, host: &str, port: u16) -> Result<Relay> {
    let config = agent
        .tls_client_config()
        .map_err(|e| needs_pki("client", e))?;
    let name = tern_pki::tls::server_name(host).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| AgentError::Failed(format!("cannot open the cold copy's TLS relay: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AgentError::Failed(format!("reading the cold copy's TLS relay: {e}")))?;
    let connector = TlsConnector::from(config);
    let host = host.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut local, _)) = listener.accept().await {
            let (connector, name, host) = (connector.clone(), name.clone(), host.clone());
            tokio::spawn(async move {
                let _ = local.set_nodelay(true);
                let dial = async {
                    let tcp = TcpStream::connect((host.as_str(), port)).await?;
                    let _ = tcp.set_nodelay(true);
                    connector.connect(name, tcp).await
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, dial).await {
                    Ok(Ok(mut tls)) => {
                        let _ = tokio::io::copy_bidirectional(&mut local, &mut tls).await;
                    }
                    Ok(Err(e)) => {
                        let why = tern_pki::explain_tls_failure(&e, tern_pki::tls::Side::Client)
                            .unwrap_or_else(|| e.to_string());
                        tracing::warn!(%host, port, "cold copy over TLS: {why}");
                    }
                    Err(_) => {
                        tracing::warn!(%host, port, "cold copy over TLS: no handshake in time")
                    }
                }
            });
        }
    });
    Ok(Relay {
        addr,
        _accept: Task(task),
    })
}
