//! The `tern` command line: parses virsh-style verbs, talks to `ternd`
//! through the host API, and prints virsh-like tables (or JSON).

pub mod args;
pub mod cluster;
pub mod device;
mod domain;
pub mod event;
mod forecast_view;
pub mod migrate;
mod netfs_args;
pub mod network;
pub mod pki;
mod proxy;
mod rbd_args;
mod secret;
mod storage;
pub mod table;

use args::{Cli, Cmd};
use tern_api::{Client, ClientError};
use tern_model::uri::ConnectUri;
use thiserror::Error;

/// Why a command failed; printed as one `error: ...` line.
#[derive(Debug, Error)]
pub enum CliError {
    /// The connection URI is malformed.
    #[error("{0}")]
    Uri(#[from] tern_model::uri::UriError),
    /// Talking to the agent failed or it refused.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Making a certificate failed.
    #[error("{0}")]
    Pki(#[from] tern_pki::IssueError),
    /// The ssh proxy could not reach the agent.
    #[error("{0}")]
    Proxy(String),
    /// A migration failed; the source agent's job says why.
    #[error("{0}")]
    Migrate(String),
    /// The guest agent answered with an error.
    #[error("{0}")]
    GuestAgent(String),
}

/// Result alias.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Builds the client for `--connect`, TERN_DEFAULT_URI or the default.
pub fn connect(uri: Option<&str>) -> Result<Client> {
    let text = uri.unwrap_or(tern_model::uri::DEFAULT_URI);
    let uri: ConnectUri = text.parse()?;
    Ok(Client::from_uri(&uri)?)
}

pub(crate) fn read_file(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CliError::File {
        path: path.display().to_string(),
        source,
    })
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    // These verbs work without (or are themselves) a connection to an agent.
    let cmd = match cli.cmd {
        Cmd::Pki(p) => return pki::run(p),
        Cmd::Proxy { socket } => return proxy::run(&socket).await,
        Cmd::Cluster(c) => {
            return cluster::run(&cluster::client(cli.controller.as_deref())?, c).await
        }
        // With a controller, `migrate-forecast ID` asks the scheduler which
        // hosts qualify (Cloudpods's verb) instead of sampling the guest.
        Cmd::MigrateForecast {
            ref domain,
            desturi: None,
            json,
            ..
        } if cli.controller.is_some() => {
            let c = cluster::client(cli.controller.as_deref())?;
            return cluster::forecast(&c, domain, json).await;
        }
        other => other,
    };
    let client = connect(cli.connect.as_deref())?;
    match cmd {
        Cmd::SrvInfo { json } => srv_info(&client, json).await,
        Cmd::Event {
            domain,
            keep_looping,
            timestamp,
            timeout,
            json,
        } => {
            let a = event::EventArgs {
                domain,
                keep_looping,
                timestamp,
                json,
                timeout: timeout.map(std::time::Duration::from_secs),
            };
            event::run(&client, a).await
        }
        Cmd::Cluster(c) => cluster::run(&cluster::client(cli.controller.as_deref())?, c).await,
        Cmd::Device(d) => device::run(&client, d).await,
        Cmd::Net(n) => network::run(&client, n).await,
        Cmd::Secret(s) => secret::run(&client, s).await,
        c @ (Cmd::Nodeinfo { .. }
        | Cmd::PoolDefineAs { .. }
        | Cmd::PoolBuild { .. }
        | Cmd::PoolStart { .. }
        | Cmd::PoolAutostart { .. }
        | Cmd::PoolList { .. }
        | Cmd::PoolInfo { .. }
        | Cmd::PoolRefresh { .. }
        | Cmd::PoolDestroy { .. }
        | Cmd::PoolUndefine { .. }
        | Cmd::VolCreateAs { .. }
        | Cmd::VolList { .. }
        | Cmd::VolInfo { .. }
        | Cmd::VolPath { .. }
        | Cmd::VolResize { .. }
        | Cmd::VolDelete { .. }) => storage::run(&client, c).await,
        c @ (Cmd::Migrate(_)
        | Cmd::Domjobinfo { .. }
        | Cmd::Domjobevents { .. }
        | Cmd::Domjobabort { .. }
        | Cmd::MigrateSetspeed { .. }
        | Cmd::MigrateGetspeed { .. }
        | Cmd::MigrateSetmaxdowntime { .. }
        | Cmd::MigrateGetmaxdowntime { .. }
        | Cmd::MigrateCompcache { .. }
        | Cmd::MigratePostcopy { .. }
        | Cmd::MigrateForecast { .. }) => migrate::run(&client, c).await,
        c => domain::run(&client, c).await,
    }
}

async fn srv_info(client: &Client, json: bool) -> Result<()> {
    let i: tern_api::ServerInfo = client.call(&tern_api::Request::ServerInfo).await?;
    if json {
        print_json(&i);
        return Ok(());
    }
    let access = if i.read_only {
        "read-only"
    } else {
        "read-write"
    };
    println!("{:<22} {} ({access})", "Identity:", i.identity);
    println!("{:<22} {} of {}", "Clients:", i.clients, i.max_clients);
    println!(
        "{:<22} {} of {}",
        "Unauthenticated:", i.anonymous_clients, i.max_anonymous_clients
    );
    println!(
        "{:<22} {} of {}",
        "Workers busy:", i.workers_busy, i.max_workers
    );
    println!(
        "{:<22} {} of {}",
        "Priority workers busy:", i.prio_workers_busy, i.prio_workers
    );
    Ok(())
}
