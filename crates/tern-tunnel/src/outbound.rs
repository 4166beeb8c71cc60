//! The source's end: a unix socket QEMU migrates to; every connection on
//! it becomes a TLS stream to the destination agent's tunnel listener.

use crate::splice::{take_over, Stats};
use crate::{keepalive, EventSink, TunnelError};
use rustls::pki_types::ServerName;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tern_migrate::protocol::{StreamKind, TunnelHello, TunnelReply};
use tern_pki::tls::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use uuid::Uuid;

/// How long reaching the destination's tunnel may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest unix socket path (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A local socket whose connections are carried to a destination agent.
/// Dropping it stops accepting and removes the socket file; streams in
/// flight go on until QEMU closes them, or end at once with `abort()`.
pub struct Outbound {
    path: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    kill: watch::Sender<bool>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("path", &self.path)
            .finish()
    }
}

struct Ctx {
    connector: TlsConnector,
    name: ServerName<'static>,
    host: String,
    port: u16,
    hello: TunnelHello,
    events: EventSink,
    stats: Arc<Stats>,
    kill: watch::Receiver<bool>,
}

/// Where a stream goes.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The destination agent's tunnel address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The name its certificate must be valid for.
    pub server_name: String,
}

impl Outbound {
    /// Listens on the unix socket `path`; each connection becomes a `kind`
    /// stream of migration `id` to `remote`.
    pub fn listen(
        path: &Path,
        kind: StreamKind,
        remote: &Remote,
        config: Arc<rustls::ClientConfig>,
        id: Uuid,
        events: EventSink,
    ) -> Result<Outbound, TunnelError> {
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(TunnelError::PathTooLong(path.to_path_buf()));
        }
        let name = tern_pki::tls::server_name(&remote.server_name)?;
        // The agent seals the bulk of each stream itself (`record`).
        let mut config = (*config).clone();
        config.enable_secret_extraction = true;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| TunnelError::Listen {
            what: path.display().to_string(),
            source,
        })?;
        let kill = watch::channel(false).0;
        let stats = Arc::new(Stats::default());
        let ctx = Arc::new(Ctx {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            host: remote.host.clone(),
            port: remote.port,
            hello: TunnelHello { id, stream: kind },
            events,
            stats: stats.clone(),
            kill: kill.subscribe(),
        });
        let accept = tokio::spawn(accept_loop(listener, ctx));
        Ok(Outbound {
            path: path.to_path_buf(),
            accept,
            kill,
            stats,
        })
    }

    /// The socket QEMU connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Ends every stream now.
    pub fn abort(&self) {
        self.accept.abort();
        self.kill.send_replace(true);
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((u, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { carry(u, &ctx).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "tunnel: local accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn carry(local: UnixStream, ctx: &Ctx) {
    crate::big_buffers(&local);
    let target = format!("{}:{}", ctx.host, ctx.port);
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = TcpStream::connect((ctx.host.as_str(), ctx.port))
            .await
            .map_err(|e| format!("cannot reach the destination's tunnel at {target}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp);
        let mut tls = ctx
            .connector
            .connect(ctx.name.clone(), crate::read_buffered(tcp))
            .await
            .map_err(|e| {
                let why = tern_pki::explain_tls_failure(&e, Side::Client)
                    .unwrap_or_else(|| e.to_string());
                format!("TLS to the destination's tunnel at {target} failed: {why}")
            })?;
        tls.write_all(&ctx.hello.encode())
            .await
            .map_err(|e| format!("tunnel to {target}: {e}"))?;
        tls.flush()
            .await
            .map_err(|e| format!("tunnel to {target}: {e}"))?;
        let mut code = [0u8; 1];
        tls.read_exact(&mut code)
            .await
            .map_err(|e| format!("the destination's tunnel at {target} closed: {e}"))?;
        match TunnelReply::from_code(code[0]) {
            Some(TunnelReply::Ok) => Ok(tls),
            Some(r) => Err(format!(
                "the destination refused a tunnel stream: {}",
                r.explain()
            )),
            None => Err(format!(
                "the destination answered the tunnel with unknown code {}; upgrade this agent",
                code[0]
            )),
        }
    })
    .await;
    let tls = match opened {
        Ok(Ok(t)) => t,
        Ok(Err(why)) => {
            (ctx.events)(why);
            return;
        }
        Err(_) => {
            (ctx.events)(format!(
                "the destination's tunnel at {target} did not answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ));
            return;
        }
    };
    let (io, conn) = tls.into_inner();
    if let Err(e) = take_over(local, io, conn, &ctx.stats, ctx.kill.clone()).await {
        tracing::debug!(%target, error = %e, "tunnel stream ended with an error");
    }
}
