//! `ternd`: Tern's host agent.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use tern_agent::access::Grant;
use tern_agent::config::{AccelSetting, AgentConfig, OnStop};
use tern_agent::{listen, server, Agent};

/// Tern host agent: runs QEMU guests and serves the host API.
#[derive(Parser, Debug)]
#[command(name = "ternd", version)]
struct Args {
    /// Directory for definitions, run-time records and pool definitions.
    #[arg(long, default_value = "/var/lib/tern", env = "TERND_STATE_DIR")]
    state_dir: PathBuf,
    /// Unix socket of the host API.
    #[arg(long, default_value = tern_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Serve the API over mutual TLS 1.3 on this address (default port of
    /// tern+tls:// is 16714); clients need a certificate from the CA in --pki-dir.
    #[arg(long)]
    listen_tls: Option<SocketAddr>,
    /// CA, server and client certificates (see `tern pki`).
    #[arg(long, default_value = tern_pki::DEFAULT_PKI_DIR, env = "TERND_PKI_DIR")]
    pki_dir: PathBuf,
    /// Serve the API on plain TCP, without encryption or authentication;
    /// requires --auth none.
    #[arg(long)]
    listen_tcp: Option<SocketAddr>,
    /// Authentication on --listen-tcp; only `none` exists: say it explicitly.
    #[arg(long, value_enum)]
    auth: Option<TcpAuth>,
    /// Old spelling of `--listen-tcp ADDR --auth none`.
    #[arg(long, hide = true, conflicts_with = "listen_tcp")]
    listen: Option<SocketAddr>,
    /// Access rules and limits, TOML with libvirtd.conf's key names
    /// (max_clients, max_anonymous_clients, max_workers, prio_workers,
    /// max_client_requests, max_request_bytes, auth_timeout,
    /// unix_sock_{group,ro_perms,rw_perms}, tls_allowed_dn_list,
    /// tls_readonly_dn_list).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accelerator: kvm, tcg, or auto (prove KVM boots a kernel, else tcg).
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelSetting,
    /// Where `--accel auto` remembers its answer.
    #[arg(long, default_value = "/var/cache/tern/accel.json")]
    accel_cache: PathBuf,
    /// QEMU system emulator.
    #[arg(long, env = "TERN_QEMU", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Override a reported host fact, KEY=VALUE (cpu_model, microcode,
    /// kernel, qemu_version, hostname, page_size); for tests.
    #[arg(long = "fact", value_parser = parse_kv)]
    facts: Vec<(String, String)>,
    /// Address other hosts use to reach incoming migrations on this host.
    #[arg(long)]
    migration_address: Option<String>,
    /// Port range for incoming migrations, FIRST-LAST.
    #[arg(long, default_value = "49152-49215", value_parser = parse_range)]
    migration_ports: std::ops::RangeInclusive<u16>,
    /// Cancel a migration whose transferred bytes stand still this many seconds.
    #[arg(long, default_value_t = 15)]
    stall_timeout: u64,
    /// Join a cluster: the controller's URL (https://HOST:PORT, mutual TLS
    /// with this host's certificate from --pki-dir, issued by `tern pki
    /// issue-host NAME`); several, comma-separated, for controllers sharing
    /// an etcd store. Needs --listen-tls (the controller reaches the API
    /// there); http:// and --listen-tcp --auth none are for development.
    #[arg(long, value_delimiter = ',')]
    controller: Vec<String>,
    /// Name of this host in the cluster (default: the host name).
    #[arg(long)]
    host_name: Option<String>,
    /// What SIGTERM means: auto (a host shutdown when systemd says the
    /// system is stopping), host-shutdown (always), agent-only (never). On
    /// a host shutdown a cluster agent asks the controller to move its
    /// running guests away (auto-migrate-on-host-shutdown) and waits.
    #[arg(long, value_enum, default_value = "auto")]
    on_stop: OnStop,
    /// Longest wait, in seconds, for guests to move away on a host shutdown.
    #[arg(long, default_value_t = 300)]
    shutdown_timeout: u64,
    /// Labels reported to the controller, KEY=VALUE (repeatable).
    #[arg(long = "labels", value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// Settle a migration alone once no driver spoke about it for this
    /// many seconds (a killed `tern`, a cut link): roll back an incoming
    /// guest that never ran, finish or roll back an outgoing one.
    #[arg(long, default_value_t = 30)]
    orphan_timeout: u64,
    /// Log lines as text or as JSON objects (filter with TERND_LOG).
    #[arg(long, value_enum, default_value = "text")]
    log_format: tern_log::LogFormat,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Test-only fault injection: delay Prepare by this many milliseconds.
    #[arg(long, hide = true)]
    fault_prepare_delay_ms: Option<u64>,
    /// Test-only fault injection: a migration task that reaches this named
    /// point writes `fault-POINT` in the state directory and stops there.
    #[arg(long, hide = true)]
    fault_stop_at: Option<String>,
    /// Refuse the first domain start (tests: a rescue that fails once).
    #[arg(long, hide = true)]
    fault_refuse_start_once: bool,
    /// Report no RBD client addresses (tests: a host that dies before it
    /// ever reported its guest's Ceph client).
    #[arg(long, hide = true)]
    fault_hide_rbd_clients: bool,
    /// Fence: a host in a cluster promises its guests are dead this long
    /// after its last storage lease renewal, ms (see docs/FENCING.md).
    #[arg(long, default_value_t = 5000)]
    fence_after_ms: u64,
    /// Fence: storage lease renewal interval, ms.
    #[arg(long, default_value_t = 500)]
    fence_renew_ms: u64,
    /// Fence: a lease write slower than this does not count, ms.
    #[arg(long, default_value_t = 1000)]
    fence_io_timeout_ms: u64,
    /// Fence: the watchdog the fence feeds while the host-down policy
    /// arms it, so that guests stop even if the fence and the agent both
    /// die or freeze: a watchdog device such as /dev/watchdog (softdog or
    /// hardware; the kernel resets the host), `guests` (the tern-watchdog
    /// process kills the guests instead), or `none` (see docs/FENCING.md).
    #[arg(long, default_value = "none", env = "TERND_FENCE_WATCHDOG")]
    fence_watchdog: tern_agent::fence::watchdog::WatchdogSpec,
}

/// `--auth` values for plain TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TcpAuth {
    /// Anyone who reaches the port has full access.
    None,
}

fn parse_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not FIRST-LAST"))?;
    let a: u16 = a.parse().map_err(|_| format!("bad port '{a}'"))?;
    let b: u16 = b.parse().map_err(|_| format!("bad port '{b}'"))?;
    if a == 0 || a > b {
        return Err(format!("'{s}' is not a valid port range"));
    }
    Ok(a..=b)
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

#[tokio::main]
async fn main() {
    tern_docgen::generate_if_asked(<Args as clap::CommandFactory>::command, "8");
    // State, sockets, received disk copies: private unless given a mode.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let args = Args::parse();
    tern_log::init(args.log_format, "TERND_LOG");
    if let Err(e) = run(args).await {
        eprintln!("ternd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    tern_agent::procs::become_subreaper();
    let mut cfg = AgentConfig::new(&args.state_dir);
    cfg.socket = args.socket.clone();
    let listen_tcp = match (args.listen_tcp, args.auth, args.listen) {
        (Some(a), Some(TcpAuth::None), None) | (None, _, Some(a)) => Some(a),
        (Some(a), None, None) => anyhow::bail!(
            "--listen-tcp {a} serves the API without authentication; add --auth none to accept that, or use --listen-tls"
        ),
        (None, Some(_), None) => anyhow::bail!("--auth applies to --listen-tcp, which is not given"),
        (Some(_), _, Some(_)) => anyhow::bail!("use --listen-tcp or --listen, not both"),
        (None, None, None) => None,
    };
    cfg.listen = listen_tcp;
    cfg.listen_tls = args.listen_tls;
    cfg.pki_dir = args.pki_dir;
    if let Some(path) = &args.config {
        cfg.server = tern_agent::settings::ServerSettings::load(path)?;
    }
    cfg.accel = args.accel;
    cfg.accel_cache = args.accel_cache;
    cfg.qemu_binary = args.qemu;
    cfg.fact_overrides = args.facts;
    cfg.migration_address = args.migration_address;
    cfg.migration_ports = args.migration_ports;
    cfg.stall_timeout = std::time::Duration::from_secs(args.stall_timeout.max(1));
    cfg.orphan_timeout = std::time::Duration::from_secs(args.orphan_timeout.max(1));
    cfg.controllers = args.controller;
    cfg.host_name = args.host_name;
    cfg.labels = args.labels;
    cfg.on_stop = args.on_stop;
    cfg.shutdown_timeout = std::time::Duration::from_secs(args.shutdown_timeout);
    if !cfg.controllers.is_empty() && cfg.listen.is_none() && cfg.listen_tls.is_none() {
        anyhow::bail!(
            "--controller needs --listen-tls ADDR (or, for development only, --listen-tcp ADDR --auth none): the controller reaches this host's API there"
        );
    }
    cfg.faults.prepare_delay = args
        .fault_prepare_delay_ms
        .map(std::time::Duration::from_millis);
    cfg.faults.stop_at = args.fault_stop_at;
    cfg.faults.refuse_start_once = args.fault_refuse_start_once;
    cfg.faults.hide_rbd_clients = args.fault_hide_rbd_clients;
    cfg.fence = tern_agent::fence::config::FenceSettings {
        renew_ms: args.fence_renew_ms,
        fence_after_ms: args.fence_after_ms,
        io_timeout_ms: args.fence_io_timeout_ms,
        ..Default::default()
    };
    cfg.fence.validate().map_err(|e| anyhow::anyhow!(e))?;
    args.fence_watchdog
        .check(&cfg.fence)
        .map_err(|e| anyhow::anyhow!(e))?;
    cfg.fence_watchdog = args.fence_watchdog;

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if tokio::net::UnixStream::connect(&cfg.socket).await.is_ok() {
        anyhow::bail!(
            "another ternd already serves {}; stop it or use --socket",
            cfg.socket.display()
        );
    }
    let set = &cfg.server;
    let group = set.unix_sock_group.as_deref();
    let unix = listen::bind_unix(&cfg.socket, set.unix_sock_rw_perms, group)?;
    let ro_path = listen::read_only_socket(&cfg.socket);
    let unix_ro = listen::bind_unix(&ro_path, set.unix_sock_ro_perms, group)?;
    // Certificates are checked before anything else starts: a typo in
    // --pki-dir must stop ternd, not surface at the first client.
    let tls = match cfg.listen_tls {
        Some(addr) => {
            // The message already names the cause; anyhow's chain would repeat it.
            let config = tern_pki::server_config(&tern_pki::PkiDir::new(&cfg.pki_dir))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            Some((l, tokio_rustls::TlsAcceptor::from(config)))
        }
        None => None,
    };
    let tcp = match cfg.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--metrics-listen): {e}"))?,
        ),
        None => None,
    };
    let agent = Agent::open(cfg).await?;
    if let Some(l) = metrics {
        tracing::info!(addr = %l.local_addr()?, "serving Prometheus metrics at /metrics");
        tokio::spawn(tern_agent::metrics::serve(agent.clone(), l));
    }
    // Probe the accelerator now rather than on the first start.
    let a = agent.clone();
    tokio::spawn(async move {
        a.accel().await;
    });
    // Migrated disks whose sync was deferred, from before this agent started.
    let dirs: Vec<_> = agent
        .pools
        .list(false)
        .await
        .into_iter()
        .map(|p| p.def.target)
        .collect();
    tokio::task::spawn_blocking(move || tern_agent::migration::cold::settle_markers(dirs));
    let srv = server::Server::new(agent.clone());
    tracing::info!(socket = %agent.cfg.socket.display(), state_dir = %agent.cfg.state_dir.display(), "ternd ready");
    if let Some(l) = tcp {
        tracing::warn!(addr = %l.local_addr()?, "INSECURE: serving the API on plain TCP without encryption or authentication (--auth none); anyone who reaches this port controls every guest");
        tokio::spawn(listen::serve_tcp(srv.clone(), l));
    }
    if !agent.cfg.controllers.is_empty() {
        tokio::spawn(tern_agent::cluster::run(agent.clone()));
    }
    if let Some((l, acceptor)) = tls {
        tracing::info!(addr = %l.local_addr()?, pki_dir = %agent.cfg.pki_dir.display(), "serving the API on mutual TLS");
        tokio::spawn(listen::serve_tls(srv.clone(), l, acceptor));
    }
    tokio::spawn(listen::serve_unix(srv.clone(), unix_ro, Grant::ReadOnly));
    let serve = tokio::spawn(listen::serve_unix(srv, unix, Grant::ReadWrite));
    // systemd (Type=notify): every listener is bound and served from here on.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            // Every listener keeps serving meanwhile: the controller drives
            // the migrations through this agent's API.
            if !agent.cfg.controllers.is_empty()
                && tern_agent::cluster::stop_is_host_shutdown(agent.cfg.on_stop)
            {
                tracing::warn!("SIGTERM during a host shutdown");
                tern_agent::cluster::leave_for_shutdown(&agent, agent.cfg.shutdown_timeout).await;
            }
            tracing::info!("SIGTERM: exiting; guests keep running")
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: exiting; guests keep running"),
    }
    let _ = std::fs::remove_file(&agent.cfg.socket);
    let _ = std::fs::remove_file(listen::read_only_socket(&agent.cfg.socket));
    Ok(())
}
