//! `tern-controller`: Tern's cluster controller.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tern_controller::console::{self, auth};
use tern_controller::{api, Controller, ControllerConfig};

/// mimalloc, not glibc's malloc: at thousands of hosts the controller
/// holds a gigabyte of records and makes and frees small buffers on every
/// heartbeat, and glibc's allocator (`_int_malloc`, `malloc_consolidate`)
/// was a fifth of its CPU time on etcd at 2 000 hosts.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tern cluster controller: inventory, scheduler, migration jobs, host-down evacuation.
#[derive(Parser, Debug)]
#[command(
    name = "tern-controller",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// API address (agents and `tern --controller https://ADDR` connect
    /// here); mutual TLS with the certificates in --pki-dir.
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// CA, server certificate (served to agents and `tern`) and client
    /// certificate (presented to agents), as `tern pki` makes them.
    #[arg(long, default_value = tern_pki::DEFAULT_PKI_DIR, env = "TERN_CONTROLLER_PKI_DIR")]
    pki_dir: PathBuf,
    /// `none`: serve the API on plain HTTP without authentication, for
    /// development only (anyone who reaches the port controls the cluster).
    #[arg(long, value_enum)]
    auth: Option<ApiAuth>,
    /// Operator certificate names (CN patterns, `*` and `?`) allowed to
    /// change things; repeatable. Default: every operator certificate of
    /// the CA. Host certificates (`tern pki issue-host`) never are.
    #[arg(long = "tls-allowed-dn")]
    tls_allowed_dn: Vec<String>,
    /// Operator certificate names (CN patterns) that may only read; repeatable.
    #[arg(long = "tls-readonly-dn")]
    tls_readonly_dn: Vec<String>,
    /// Cluster setting: every migration is encrypted (as if each request
    /// said --enable-tls): live ones with QEMU's TLS, cold copies of local
    /// disks over TLS streams between the agents.
    #[arg(long)]
    migration_tls: bool,
    /// Store: file:DIR (embedded, one controller) or etcd:URL[,URL...].
    #[arg(long, default_value = "file:/var/lib/tern-controller")]
    store: String,
    /// This controller's id in elections (default: random).
    #[arg(long)]
    id: Option<String>,
    /// Host lease, ms: a host is lapsed after this long without a heartbeat.
    #[arg(long, default_value_t = 3000)]
    lease_ttl_ms: u64,
    /// Agents' heartbeat interval, ms.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Rescue a down host's guests only if its fence feeds a watchdog
    /// (`ternd --fence-watchdog`; its storage lease names one): a host
    /// without one is safe only while its fence process outlives its agent,
    /// so its rescues wait for an operator (see docs/FENCING.md).
    #[arg(long)]
    fence_require_watchdog: bool,
    /// Grace between a host's lease running out and declaring the host
    /// down, ms (its agent is probed within the grace's last second).
    #[arg(long, default_value_t = 2000)]
    grace_ms: u64,
    /// Leader lease, ms (how soon another controller takes over).
    #[arg(long, default_value_t = 3000)]
    leader_ttl_ms: u64,
    /// Outbound migrations per host.
    #[arg(long, default_value_t = 2)]
    max_outbound_per_host: u32,
    /// Inbound migrations per host.
    #[arg(long, default_value_t = 2)]
    max_inbound_per_host: u32,
    /// Migrations in the cluster.
    #[arg(long, default_value_t = 5)]
    max_cluster_migrations: u32,
    /// Serve the web console on this address (needs --console-users).
    #[arg(long, requires = "console_users")]
    console_listen: Option<SocketAddr>,
    /// The console's password file (see `tern-controller console-passwd`).
    #[arg(long)]
    console_users: Option<PathBuf>,
    /// Log lines as text or as JSON objects (filter with TERN_CONTROLLER_LOG).
    #[arg(long, value_enum, default_value = "text")]
    log_format: tern_log::LogFormat,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve the console over TLS with the certificates of --pki-dir;
    /// browsers presenting an operator certificate of the CA log in with
    /// it (the API's identities and --tls-*-dn rules), others with a password.
    #[arg(long, requires = "console_listen")]
    console_tls: bool,
    /// Seconds a connection to the API may wait before (or while) sending
    /// a request head; idle and slow clients are closed after it.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Connections to the API that may be in their TLS handshake at once;
    /// a newer one displaces the oldest (a flood of silent connections
    /// cannot crowd out real clients).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_anonymous_clients: u64,
    /// Tests: exit right after marking a host down, before its rescues.
    #[arg(long, hide = true)]
    fault_exit_after_mark_down: bool,
}

/// `--auth` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ApiAuth {
    /// No authentication (development only).
    None,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Adds or replaces a web console user; reads the password from stdin.
    ConsolePasswd {
        /// The password file (created if absent, mode 0600).
        file: PathBuf,
        /// User name.
        user: String,
        /// ro (read-only) or rw (read-write).
        #[arg(long, default_value = "ro")]
        role: String,
    },
}

/// `console-passwd`: the password is the first line of stdin.
fn console_passwd(file: &std::path::Path, user: &str, role: &str) -> anyhow::Result<()> {
    let role: auth::Role = role.parse()?;
    let mut line = String::new();
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password for {user}: ");
    }
    std::io::stdin().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        anyhow::bail!("the password is empty; give it on standard input");
    }
    auth::set_user(file, user, role, pw)?;
    eprintln!("{user} ({role:?}) written to {}", file.display());
    Ok(())
}

#[tokio::main]
async fn main() {
    tern_docgen::generate_if_asked(<Args as clap::CommandFactory>::command, "8");
    // The store, sockets and keys it writes: private unless given a mode.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let mut args = Args::parse();
    tern_log::init(args.log_format, "TERN_CONTROLLER_LOG");
    let r = match args.cmd.take() {
        Some(Cmd::ConsolePasswd { file, user, role }) => console_passwd(&file, &user, &role),
        None => run(args).await,
    };
    if let Err(e) = r {
        eprintln!("tern-controller: {e:#}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    if a.lease_ttl_ms < 2 * a.heartbeat_ms {
        anyhow::bail!(
            "--lease-ttl-ms {} must be at least twice --heartbeat-ms {}",
            a.lease_ttl_ms,
            a.heartbeat_ms
        );
    }
    let mut cfg = ControllerConfig::new(a.listen, &a.store);
    if let Some(id) = a.id {
        cfg.id = id;
    }
    cfg.lease_ttl = Duration::from_millis(a.lease_ttl_ms);
    cfg.heartbeat = Duration::from_millis(a.heartbeat_ms);
    cfg.grace = Duration::from_millis(a.grace_ms);
    cfg.leader_ttl = Duration::from_millis(a.leader_ttl_ms);
    cfg.fault_exit_after_mark_down = a.fault_exit_after_mark_down;
    cfg.fence_require_watchdog = a.fence_require_watchdog;
    cfg.limits = tern_scheduler::Limits {
        per_host_outbound: a.max_outbound_per_host.max(1),
        per_host_inbound: a.max_inbound_per_host.max(1),
        cluster: a.max_cluster_migrations.max(1),
    };
    cfg.migration_tls = a.migration_tls;
    cfg.api_tls = a.auth.is_none();
    let pki = tern_pki::PkiDir::new(&a.pki_dir);
    // Certificates are checked first: a wrong --pki-dir stops the controller.
    let acceptor = if cfg.api_tls {
        let config = tern_pki::server_config(&pki).map_err(|e| anyhow::anyhow!("{e}"))?;
        tern_pki::client_config(&pki).map_err(|e| {
            anyhow::anyhow!("{e} (the controller presents it to agents; issue it with `tern pki issue-client tern-controller --out DIR`)")
        })?;
        Some(tokio_rustls::TlsAcceptor::from(config))
    } else {
        None
    };
    tern_controller::agents::use_pki(pki);
    let rules = std::sync::Arc::new(tern_controller::authz::Rules {
        allowed: a.tls_allowed_dn.clone(),
        read_only: a.tls_readonly_dn.clone(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let console_listener = match a.console_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--console-listen): {e}"))?,
        ),
        None => None,
    };
    let users = match &a.console_users {
        Some(f) => auth::load_users(f)?,
        None => Vec::new(),
    };
    let metrics_listener = match a.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--metrics-listen): {e}"))?,
        ),
        None => None,
    };
    let ctl = Controller::open(cfg).await?;
    if let Some(l) = metrics_listener {
        tracing::info!(listen = %l.local_addr()?, "serving Prometheus metrics at /metrics");
        tokio::spawn(tern_controller::metrics::serve(ctl.clone(), l));
    }
    tracing::info!(id = %ctl.cfg.id, listen = %ctl.cfg.listen, store = %ctl.cfg.store, "tern-controller ready");
    if let Some(l) = console_listener {
        tracing::info!(listen = %l.local_addr()?, users = users.len(), "web console ready");
        let c = console::Console::new(ctl.clone(), users);
        let tls = if a.console_tls {
            let cfg =
                tern_pki::tls::server_config_optional_client(&tern_pki::PkiDir::new(&a.pki_dir))
                    .map_err(|e| anyhow::anyhow!("--console-tls: {e}"))?;
            Some(tokio_rustls::TlsAcceptor::from(cfg))
        } else {
            None
        };
        let rules = rules.clone();
        tokio::spawn(async move {
            let r = match tls {
                Some(acc) => console::cert_login::serve_tls(c, l, acc, rules).await,
                None => console::serve(c, l).await,
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "web console stopped");
            }
        });
    }
    tokio::spawn(ctl.clone().run());
    let limits = tern_controller::listen::Limits {
        idle_timeout: Duration::from_secs(a.idle_timeout),
        max_anonymous: a.max_anonymous_clients as usize,
    };
    let serve = async {
        match acceptor {
            Some(acc) => {
                tracing::info!(pki_dir = %a.pki_dir.display(), "serving the cluster API on mutual TLS");
                tern_controller::listen::serve_tls(ctl.clone(), listener, acc, rules, limits).await
            }
            None => {
                tracing::warn!("INSECURE: serving the cluster API on plain HTTP without authentication (--auth none); anyone who reaches this port controls the cluster");
                api::serve(ctl.clone(), listener, limits.idle_timeout).await
            }
        }
    };
    // systemd (Type=notify): the API listener is bound; it serves from here on.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: exiting"),
    }
    Ok(())
}
