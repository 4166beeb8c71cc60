//! `ternd`: Tern's host agent.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use tern_agent::config::{AccelSetting, AgentConfig};
use tern_agent::{server, Agent};

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
    /// Also serve the API on this TCP address (no authentication: keep it on
    /// a trusted network).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Accelerator: kvm, tcg, or auto (prove KVM boots a kernel, else tcg).
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelSetting,
    /// Where `--accel auto` remembers its answer.
    #[arg(long, default_value = "/var/cache/tern/accel.json")]
    accel_cache: PathBuf,
    /// QEMU system emulator.
    #[arg(long, default_value = "qemu-system-x86_64")]
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
    /// Join a cluster: the controller's URL (http://HOST:PORT); several,
    /// comma-separated, for controllers sharing an etcd store. Needs --listen.
    #[arg(long, value_delimiter = ',')]
    controller: Vec<String>,
    /// Name of this host in the cluster (default: the host name).
    #[arg(long)]
    host_name: Option<String>,
    /// Labels reported to the controller, KEY=VALUE (repeatable).
    #[arg(long = "labels", value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// Test-only fault injection: delay Prepare by this many milliseconds.
    #[arg(long, hide = true)]
    fault_prepare_delay_ms: Option<u64>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERND_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("ternd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    tern_agent::procs::become_subreaper();
    let mut cfg = AgentConfig::new(&args.state_dir);
    cfg.socket = args.socket.clone();
    cfg.listen = args.listen;
    cfg.accel = args.accel;
    cfg.accel_cache = args.accel_cache;
    cfg.qemu_binary = args.qemu;
    cfg.fact_overrides = args.facts;
    cfg.migration_address = args.migration_address;
    cfg.migration_ports = args.migration_ports;
    cfg.stall_timeout = std::time::Duration::from_secs(args.stall_timeout.max(1));
    cfg.controllers = args.controller;
    cfg.host_name = args.host_name;
    cfg.labels = args.labels;
    if !cfg.controllers.is_empty() && cfg.listen.is_none() {
        anyhow::bail!(
            "--controller needs --listen: the controller reaches this host's API over TCP"
        );
    }
    cfg.faults.prepare_delay = args
        .fault_prepare_delay_ms
        .map(std::time::Duration::from_millis);

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
    let _ = std::fs::remove_file(&cfg.socket);
    let unix = tokio::net::UnixListener::bind(&cfg.socket)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.socket.display()))?;
    let tcp = match cfg.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    let agent = Agent::open(cfg).await?;
    // Probe the accelerator now rather than on the first start.
    let a = agent.clone();
    tokio::spawn(async move {
        a.accel().await;
    });
    tracing::info!(socket = %agent.cfg.socket.display(), state_dir = %agent.cfg.state_dir.display(), "ternd ready");
    if let Some(l) = tcp {
        tracing::warn!(addr = %l.local_addr()?, "serving the API on plain TCP without authentication");
        tokio::spawn(server::serve_tcp(agent.clone(), l));
    }
    if !agent.cfg.controllers.is_empty() {
        tokio::spawn(tern_agent::cluster::run(agent.clone()));
    }
    let serve = server::serve_unix(agent.clone(), unix);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting; guests keep running"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: exiting; guests keep running"),
    }
    let _ = std::fs::remove_file(&agent.cfg.socket);
    Ok(())
}
