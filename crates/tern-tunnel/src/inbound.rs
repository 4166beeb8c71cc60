//! The destination's end: a dedicated mutual-TLS listener for one
//! migration, connecting each accepted stream to the local socket of its
//! kind.

use crate::splice::{take_over, Stats};
use crate::{keepalive, EventSink, Gate, TunnelError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tern_migrate::protocol::{StreamKind, TunnelHello, TunnelReply, TUNNEL_HELLO_LEN};
use tern_pki::handshakes::{Handshakes, Slot};
use tern_pki::tls::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

/// How long a connection has to finish its handshake and send its header.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in their handshake at once (multifd opens up to 255
/// channels together, plus NBD streams); a newer one displaces the oldest,
/// so strays that never finish cannot crowd the real streams out.
const MAX_HANDSHAKES: usize = 320;
/// Connections at once: every handshake slot plus as many carried streams.
const MAX_CONNECTIONS: usize = 2 * MAX_HANDSHAKES;

/// Where each kind of stream goes on this host.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// The incoming QEMU's migration socket.
    pub memory: Option<PathBuf>,
    /// The incoming QEMU's NBD server socket (disks copied along).
    pub nbd: Option<PathBuf>,
}

impl Routes {
    fn path(&self, k: StreamKind) -> Option<&PathBuf> {
        match k {
            StreamKind::Memory => self.memory.as_ref(),
            StreamKind::Nbd => self.nbd.as_ref(),
        }
    }
}

/// A tunnel listener for one incoming migration. Dropping it stops
/// accepting; streams already flowing go on until QEMU closes them.
pub struct Inbound {
    port: u16,
    accept: tokio::task::JoinHandle<()>,
    kill: watch::Sender<bool>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").field("port", &self.port).finish()
    }
}

struct Ctx {
    acceptor: TlsAcceptor,
    id: Uuid,
    routes: Routes,
    gate: Gate,
    events: EventSink,
    stats: Arc<Stats>,
    kill: watch::Receiver<bool>,
}

impl Inbound {
    /// Listens on `listen` at the first free port of `ports` and accepts
    /// streams for migration `id` from clients `gate` lets in.
    pub async fn bind(
        listen: &str,
        ports: impl IntoIterator<Item = u16>,
        config: Arc<rustls::ServerConfig>,
        id: Uuid,
        routes: Routes,
        gate: Gate,
        events: EventSink,
    ) -> Result<Inbound, TunnelError> {
        let mut range = (u16::MAX, 0);
        let mut bound = None;
        let mut last_err = None;
        for p in ports {
            range = (range.0.min(p), range.1.max(p));
            match TcpListener::bind((listen, p)).await {
                Ok(l) => {
                    // Port 0 asks the kernel for one (tests).
                    let p = l.local_addr().map(|a| a.port()).unwrap_or(p);
                    bound = Some((l, p));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        let (listener, port) = match (bound, last_err) {
            (Some(b), _) => b,
            (None, Some(source)) => {
                return Err(TunnelError::Listen {
                    what: listen.to_string(),
                    source,
                })
            }
            (None, None) => {
                return Err(TunnelError::NoPort {
                    first: range.0,
                    last: range.1,
                })
            }
        };
        let kill = watch::channel(false).0;
        let stats = Arc::new(Stats::default());
        // The agent seals the bulk of each stream itself (`record`); no
        // session tickets, so nothing arrives after the hello but records.
        let mut config = (*config).clone();
        config.enable_secret_extraction = true;
        config.send_tls13_tickets = 0;
        let ctx = Arc::new(Ctx {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            id,
            routes,
            gate,
            events,
            stats: stats.clone(),
            kill: kill.subscribe(),
        });
        let accept = tokio::spawn(accept_loop(listener, ctx));
        Ok(Inbound {
            port,
            accept,
            kill,
            stats,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Ends every stream now (the migration failed or was cancelled).
    pub fn abort(&self) {
        self.accept.abort();
        self.kill.send_replace(true);
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshakes = Handshakes::new(MAX_HANDSHAKES);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "tunnel accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "too many tunnel connections: refusing one");
            continue;
        };
        let ctx = ctx.clone();
        let slot = handshakes.admit().await;
        tokio::spawn(async move {
            stream(tcp, addr.to_string(), &ctx, slot).await;
            drop(permit);
        });
    }
}

async fn stream(tcp: TcpStream, addr: String, ctx: &Ctx, mut slot: Slot) {
    let _ = tcp.set_nodelay(true);
    keepalive(&tcp);
    if !slot.hello(&tcp, HANDSHAKE_TIMEOUT).await {
        tracing::info!(%addr, "tunnel connection said nothing (or was displaced first)");
        return;
    }
    let tcp = crate::read_buffered(tcp);
    let opened = slot
        .run(tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut tls = ctx.acceptor.accept(tcp).await.map_err(|e| {
                tern_pki::explain_tls_failure(&e, Side::Server).unwrap_or_else(|| e.to_string())
            })?;
            let mut head = [0u8; TUNNEL_HELLO_LEN];
            tls.read_exact(&mut head)
                .await
                .map_err(|e| format!("no tunnel header: {e}"))?;
            Ok::<_, String>((tls, head))
        }))
        .await;
    let Some(opened) = opened else {
        tracing::info!(%addr, "tunnel connection displaced by newer ones before its handshake ended");
        return;
    };
    let (mut tls, head) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(why)) => {
            (ctx.events)(format!("tunnel: refused a connection from {addr}: {why}"));
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "tunnel connection did not finish its handshake in time");
            return;
        }
    };
    let cn = tern_pki::peer_common_name(tls.get_ref().1.peer_certificates());
    let (reply, local) = match TunnelHello::decode(&head) {
        Err(e) => {
            (ctx.events)(format!("tunnel: {e} (from {addr})"));
            (TunnelReply::BadHeader, None)
        }
        Ok(h) if h.id != ctx.id => (TunnelReply::UnknownMigration, None),
        Ok(_) if !(ctx.gate)(cn.as_deref()) => {
            (ctx.events)(format!(
                "tunnel: certificate '{}' may not migrate guests here (tls_allowed_dn_list / tls_readonly_dn_list)",
                cn.as_deref().unwrap_or("-")
            ));
            (TunnelReply::Forbidden, None)
        }
        Ok(h) => match ctx.routes.path(h.stream) {
            None => (TunnelReply::NoRoute, None),
            Some(p) => match UnixStream::connect(p).await {
                Ok(u) => (TunnelReply::Ok, Some(u)),
                Err(e) => {
                    (ctx.events)(format!(
                        "tunnel: the local QEMU socket {} refused a {:?} stream: {e}",
                        p.display(),
                        h.stream
                    ));
                    (TunnelReply::LocalRefused, None)
                }
            },
        },
    };
    if tls.write_all(&[reply.code()]).await.is_err() || tls.flush().await.is_err() {
        return;
    }
    let Some(local) = local else {
        let _ = tls.shutdown().await;
        return;
    };
    crate::big_buffers(&local);
    let (io, conn) = tls.into_inner();
    if let Err(e) = take_over(local, io, conn, &ctx.stats, ctx.kill.clone()).await {
        tracing::debug!(%addr, error = %e, "tunnel stream ended with an error");
    }
}
