//! The destination's guard in front of QEMU's incoming-migration port.
//!
//! QEMU 10 does an incoming migration's TLS handshake on its main loop with
//! a blocking socket: one TCP connection that says nothing (or a ClientHello
//! and then nothing) freezes the whole destination QEMU, its QMP and its
//! NBD server included, for as long as it stays open (the mirror and the
//! migration stall; test `data_plane.rs`,
//! `a_silent_connection_does_not_stall_a_tls_migration`). So QEMU no longer
//! listens on the network: it waits on a unix socket in its run directory,
//! and this agent listens on the migration address instead. A connection
//! reaches QEMU only if it comes from one of the source host's addresses
//! (the source names them in Begin) and its first bytes arrive within
//! [`FIRST_BYTES`] and look right (a whole TLS handshake record holding a
//! ClientHello with `--tls`, any byte without); others are closed. Once as
//! many streams as the migration opens (1, plus the multifd channels or
//! post-copy's preempt channel) were handed over, the guard stops
//! listening. Post-copy recovery gets a guard of its own ([`recovery`]).
//!
//! With `postcopy-preempt` the source opens a second connection when it
//! switches to post-copy, for the pages the guest waits for; QEMU takes
//! that only on a socket it listens on itself, so such a migration is
//! relayed too.
//!
//! How a screened connection reaches QEMU ([`Target`]): a migration of one
//! stream (the default) hands QEMU the accepted socket itself (`getfd`,
//! then `migrate-incoming fd:NAME`), so the agent is out of the data path
//! altogether. Relaying the bytes, even by splice(2), cost the destination
//! agent 40-120 ms of CPU per 2 GiB guest on two cores, CPU that both
//! QEMUs wanted (`tern-bench converge` notes the agents' CPU). An `fd:`
//! channel is one connection, though (QEMU's multifd over `fd:` is for
//! files), so `--parallel` keeps QEMU on a unix socket in its run directory
//! and the guard moves each channel's bytes by splice(2) (see [`splice`]),
//! as does post-copy recovery, whose QEMU listens through
//! `migrate-recover`.

mod splice;

use super::Job;
use crate::error::{AgentError, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How long a new connection may take to show its first bytes.
pub const FIRST_BYTES: Duration = Duration::from_secs(5);
/// Connections being screened at once; more are closed at once.
const SCREENING: usize = 32;
/// The largest TLS record (2^14 plus expansion), what a peek may need.
const RECORD_MAX: usize = 16384 + 2048 + 5;

/// What a connection's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes yet.
    Wait,
    /// Hand it to QEMU.
    Pass,
    /// Close it, for this reason.
    Refuse(&'static str),
}

/// Judges the first bytes of a connection (`tls`: the migration is
/// wrapped in TLS, so a client must open with a ClientHello).
pub fn judge(first: &[u8], tls: bool) -> Verdict {
    if !tls {
        return if first.is_empty() {
            Verdict::Wait
        } else {
            Verdict::Pass
        };
    }
    // Record: type 22 (handshake), version 3.x, length; body: type 1
    // (ClientHello).
    if first.first().is_some_and(|&t| t != 22) {
        return Verdict::Refuse("not a TLS handshake");
    }
    if first.get(1).is_some_and(|&v| v != 3) {
        return Verdict::Refuse("not a TLS version");
    }
    if first.len() < 6 {
        return Verdict::Wait;
    }
    let len = usize::from(u16::from_be_bytes([first[3], first[4]]));
    if len == 0 || len + 5 > RECORD_MAX {
        return Verdict::Refuse("a TLS record of impossible length");
    }
    if first[5] != 1 {
        return Verdict::Refuse("a TLS handshake that is not a ClientHello");
    }
    if first.len() < len + 5 {
        return Verdict::Wait;
    }
    Verdict::Pass
}

/// Who may reach QEMU through the guard.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The migration is wrapped in TLS.
    pub tls: bool,
    /// The source host's addresses; empty: any (a source that did not say).
    pub peers: Vec<IpAddr>,
    /// Streams QEMU takes: 1, plus the multifd channels or post-copy's
    /// preempt channel.
    pub streams: usize,
    /// The streams after the first may say nothing at first: without
    /// TLS, QEMU opens post-copy's preempt channel silently and writes to
    /// it only when the guest asks for a page. Such a connection is
    /// handed over at once (the main stream is QEMU's already; a silent
    /// connection stalls QEMU only in a TLS handshake).
    pub quiet_after_first: bool,
}

impl Policy {
    /// Whether a connection from `ip` may be screened at all.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.peers.is_empty() || self.peers.iter().any(|p| p.to_canonical() == ip)
    }

    /// Whether a connection that comes after `passed` streams were handed
    /// over must show its first bytes before it is.
    pub fn screens(&self, passed: usize) -> bool {
        self.tls || !self.quiet_after_first || passed == 0
    }

    /// The policy for migration options `o` from the source's `peers`.
    pub fn for_migration(o: &tern_migrate::MigrateOptions, peers: Vec<IpAddr>) -> Policy {
        Policy {
            tls: o.tls,
            peers,
            streams: o.incoming_streams(),
            quiet_after_first: o.preempts(),
        }
    }
}

/// Where a screened connection goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// QEMU listens on this unix socket; the guard relays the bytes.
    Relay(PathBuf),
    /// QEMU waits (`-incoming defer`) for the connection itself: the guard
    /// passes the socket with `getfd` and starts `migrate-incoming fd:`.
    /// For a migration of one stream only.
    Socket(tern_qemu::Qmp),
}

/// The name the handed-over socket has in QEMU (`getfd`).
const FD_NAME: &str = "tern-migration";

/// Counters of one guard.
#[derive(Debug, Default)]
struct Stats {
    passed: AtomicU64,
    /// Of those, handed to QEMU as sockets (no bytes through the guard).
    sockets: AtomicU64,
    refused: AtomicU64,
    to_qemu: Arc<AtomicU64>,
    from_qemu: Arc<AtomicU64>,
}

/// A running guard; dropping it stops listening (handed-over streams go on
/// until QEMU or the source closes them, or [`Guard::abort`]).
#[derive(Debug)]
pub struct Guard {
    port: u16,
    accept: tokio::task::AbortHandle,
    relays: Arc<Mutex<Vec<splice::Ends>>>,
    stats: Arc<Stats>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Guard {
    /// The port the source is told about.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Ends every handed-over stream now (the migration failed).
    pub fn abort(&self) {
        self.accept.abort();
        for e in self.relays.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            e.stop();
        }
    }

    /// One line for the job's events.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let how = match s.sockets.load(Ordering::Relaxed) {
            0 => format!(
                "relayed: {} MiB in, {} MiB out",
                s.to_qemu.load(Ordering::Relaxed) >> 20,
                s.from_qemu.load(Ordering::Relaxed) >> 20
            ),
            _ => "the socket itself, nothing relayed".to_string(),
        };
        format!(
            "guard passed {} stream(s) to QEMU ({how}), closed {} other connection(s)",
            s.passed.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed),
        )
    }

    /// Listens on `listen`, the first free port of `ports`, and hands what
    /// `policy` admits to QEMU as `qemu` says. `events` gets one line
    /// per refusal.
    pub async fn start(
        listen: &str,
        ports: impl IntoIterator<Item = u16>,
        qemu: Target,
        policy: Policy,
        events: Arc<dyn Fn(String) + Send + Sync>,
    ) -> Result<Guard> {
        let (listener, port) = bind(listen, ports).await?;
        let stats = Arc::new(Stats::default());
        let relays = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(
            listener,
            qemu,
            policy,
            stats.clone(),
            Arc::downgrade(&relays),
            events,
        ));
        Ok(Guard {
            port,
            accept: task.abort_handle(),
            relays,
            stats,
        })
    }
}

async fn bind(listen: &str, ports: impl IntoIterator<Item = u16>) -> Result<(TcpListener, u16)> {
    let mut range = (u16::MAX, 0);
    for p in ports {
        range = (range.0.min(p), range.1.max(p));
        match TcpListener::bind((listen, p)).await {
            Ok(l) => {
                let p = l.local_addr().map(|a| a.port()).unwrap_or(p);
                return Ok((l, p));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                return Err(AgentError::Failed(format!(
                    "the migration guard cannot listen on {listen}: {e}"
                )))
            }
        }
    }
    Err(AgentError::Failed(format!(
        "the migration guard found no free port on {listen} in {}-{}; widen --migration-ports",
        range.0, range.1
    )))
}

/// Accepts, screens and hands over until `policy.streams` passed.
async fn serve(
    listener: TcpListener,
    qemu: Target,
    policy: Policy,
    stats: Arc<Stats>,
    relays: Weak<Mutex<Vec<splice::Ends>>>,
    events: Arc<dyn Fn(String) + Send + Sync>,
) {
    let mut screening: JoinSet<(SocketAddr, Result<TcpStream, &'static str>)> = JoinSet::new();
    let mut passed = 0;
    let refuse = |peer: SocketAddr, why: &str| {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        events(format!("guard closed a connection from {peer}: {why}"));
    };
    while passed < policy.streams {
        tokio::select! {
            a = listener.accept() => {
                let Ok((sock, peer)) = a else { continue };
                if !policy.admits(peer.ip()) {
                    refuse(peer, "not an address of the source host");
                } else if screening.len() >= SCREENING {
                    refuse(peer, "too many connections waiting");
                } else if !policy.screens(passed) {
                    screening.spawn(async move { (peer, Ok(sock)) });
                } else {
                    let tls = policy.tls;
                    screening.spawn(async move { (peer, screen(sock, tls).await) });
                }
            }
            Some(Ok((peer, r))) = screening.join_next(), if !screening.is_empty() => match r {
                Err(why) => refuse(peer, why),
                Ok(sock) => match hand_over(sock, &qemu, &stats).await {
                    Ok(ends) => {
                        passed += 1;
                        stats.passed.fetch_add(1, Ordering::Relaxed);
                        match (relays.upgrade(), ends) {
                            (Some(r), Some(ends)) => r.lock().unwrap_or_else(|p| p.into_inner()).push(ends),
                            (None, Some(ends)) => ends.stop(),
                            (_, None) => {}
                        }
                    }
                    Err(e) => events(format!("guard could not hand {peer} to QEMU: {e}")),
                },
            },
        }
    }
}

/// Waits (at most [`FIRST_BYTES`]) for the connection's first bytes and
/// judges them, without consuming them.
async fn screen(sock: TcpStream, tls: bool) -> std::result::Result<TcpStream, &'static str> {
    let mut buf = vec![0u8; RECORD_MAX];
    let judged = tokio::time::timeout(FIRST_BYTES, async {
        loop {
            let n = sock.peek(&mut buf).await.map_err(|_| "a socket error")?;
            if n == 0 {
                return Err("closed before it said anything");
            }
            match judge(&buf[..n], tls) {
                Verdict::Pass => return Ok(()),
                Verdict::Refuse(why) => return Err(why),
                // Part of a record: the rest is on its way.
                Verdict::Wait => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    match judged {
        Ok(Ok(())) => Ok(sock),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("silent (or too slow) for the first bytes"),
    }
}

/// Gives `sock` to QEMU: the socket itself, or a relay to QEMU's unix
/// socket (whose ends are returned).
async fn hand_over(
    sock: TcpStream,
    qemu: &Target,
    stats: &Stats,
) -> std::result::Result<Option<splice::Ends>, String> {
    let tcp = sock.into_std().map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match qemu {
        Target::Relay(path) => {
            let unix = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
            splice::relay(tcp, unix, stats.to_qemu.clone(), stats.from_qemu.clone())
                .map(Some)
                .map_err(|e| e.to_string())
        }
        Target::Socket(qmp) => {
            use std::os::fd::AsFd;
            // QEMU sets the descriptor's modes itself; ours closes on drop.
            qmp.execute_with_fd(
                "getfd",
                Some(serde_json::json!({ "fdname": FD_NAME })),
                tcp.as_fd(),
            )
            .await
            .map_err(|e| e.to_string())?;
            qmp.execute(
                "migrate-incoming",
                Some(serde_json::json!({ "uri": format!("fd:{FD_NAME}") })),
            )
            .await
            .map_err(|e| e.to_string())?;
            stats.sockets.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
    }
}

/// Destination, Prepare: QEMU listens on a unix socket, the guard on the
/// migration address; the job keeps the guard. Returns the guard's port.
pub(super) async fn incoming(
    agent: &crate::Agent,
    qmp: &tern_qemu::Qmp,
    req: &tern_migrate::protocol::PrepareRequest,
    job: &Arc<Job>,
    listen: &str,
    ports: std::ops::RangeInclusive<u16>,
) -> Result<u16> {
    let o = &req.options;
    let policy = Policy::for_migration(o, req.source_addresses.clone());
    let target = if policy.streams == 1 {
        Target::Socket(qmp.clone())
    } else {
        let run_dir = agent.layout.run_dir(&req.domain.name);
        let sock = super::tunnel::socket(agent, &run_dir, "guard-mem.sock")?;
        qmp.execute(
            "migrate-incoming",
            Some(serde_json::json!({ "uri": format!("unix:{}", sock.display()) })),
        )
        .await?;
        Target::Relay(sock)
    };
    let weak = Arc::downgrade(job);
    let events = Arc::new(move |m: String| {
        if let Some(j) = weak.upgrade() {
            j.event(m);
        }
    });
    let guard = Guard::start(listen, ports, target, policy, events).await?;
    let port = guard.port();
    job.set_tunnel(super::tunnel::Ends::Guard(guard));
    Ok(port)
}

/// How long a recovery's guard waits for its one stream.
const RECOVERY_WINDOW: Duration = Duration::from_secs(300);

/// Destination, post-copy recovery: a guard in front of the unix socket
/// `migrate-recover` made QEMU listen on, for the main stream and the
/// preempt channel if the migration has one (post-copy has no multifd
/// channels), from any address (the job that knew the source's may be
/// gone); it stops listening after them or [`RECOVERY_WINDOW`]. Returns
/// its port.
pub(super) async fn recovery(
    agent: &crate::Agent,
    domain: &str,
    qemu: PathBuf,
    o: &tern_migrate::MigrateOptions,
) -> Result<u16> {
    let policy = Policy {
        streams: 1 + usize::from(o.preempts()),
        ..Policy::for_migration(o, Vec::new())
    };
    let name = domain.to_string();
    let events = Arc::new(move |m: String| tracing::info!(domain = %name, "{m}"));
    let guard = Guard::start(
        &agent.migration_bind_address(),
        agent.cfg.migration_ports.clone(),
        Target::Relay(qemu),
        policy,
        events,
    )
    .await?;
    let port = guard.port();
    tokio::spawn(async move {
        tokio::time::sleep(RECOVERY_WINDOW).await;
        drop(guard);
    });
    Ok(port)
}

/// This host's own addresses (what the source tells the destination's
/// guard in Begin): every address of every interface.
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; its ifa_addr is null or a sockaddr of the
        // family it names.
        unsafe {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let s = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let s = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(s.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
