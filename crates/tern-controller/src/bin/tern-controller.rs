//! `tern-controller`: Tern's cluster controller.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tern_controller::console::{self, auth};
use tern_controller::{api, Controller, ControllerConfig};

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
    /// API address (agents and `tern --controller` connect here).
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
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
    /// Grace between a lapse and declaring the host down, ms.
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
    // The store, sockets and keys it writes: private unless given a mode.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_CONTROLLER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args = Args::parse();
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
    cfg.limits = tern_scheduler::Limits {
        per_host_outbound: a.max_outbound_per_host.max(1),
        per_host_inbound: a.max_inbound_per_host.max(1),
        cluster: a.max_cluster_migrations.max(1),
    };
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
    let ctl = Controller::open(cfg).await?;
    tracing::info!(id = %ctl.cfg.id, listen = %ctl.cfg.listen, store = %ctl.cfg.store, "tern-controller ready");
    if let Some(l) = console_listener {
        tracing::info!(listen = %l.local_addr()?, users = users.len(), "web console ready");
        let c = console::Console::new(ctl.clone(), users);
        tokio::spawn(async move {
            if let Err(e) = console::serve(c, l).await {
                tracing::error!(error = %e, "web console stopped");
            }
        });
    }
    tokio::spawn(ctl.clone().run());
    let serve = api::serve(ctl.clone(), listener);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: exiting"),
    }
    Ok(())
}
