//! `net-define-as`, `net-list`, `net-info` and `net-undefine`: names for
//! host bridges, so `<interface type='network'>` works on every host.

use crate::table::{kv, table};
use crate::{print_json, Result};
use clap::Subcommand;
use tern_api::{Client, NetworkInfo, Request};

/// The network verbs.
#[derive(Subcommand, Debug)]
pub enum NetCmd {
    /// Define a network: a name guests use for a bridge of this host.
    NetDefineAs {
        /// The network's name (what <source network=...> says).
        name: String,
        /// The host bridge it stands for.
        #[arg(long)]
        bridge: String,
    },
    /// List this host's networks.
    NetList {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one network.
    NetInfo {
        /// The network's name.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a network definition (guests already running keep their NIC).
    NetUndefine {
        /// The network's name.
        name: String,
    },
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// Runs a network verb.
pub async fn run(c: &Client, cmd: NetCmd) -> Result<()> {
    match cmd {
        NetCmd::NetDefineAs { name, bridge } => {
            let n: NetworkInfo = c.call(&Request::NetDefineAs { name, bridge }).await?;
            println!("Network {} defined on bridge {}", n.name, n.bridge);
        }
        NetCmd::NetList { json } => {
            let all: Vec<NetworkInfo> = c.call(&Request::NetList).await?;
            if json {
                print_json(&all);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|n| vec![n.name.clone(), n.bridge.clone(), yes_no(n.active)])
                    .collect();
                print!("{}", table(&["Name", "Bridge", "Active"], &rows));
            }
        }
        NetCmd::NetInfo { name, json } => {
            let n: NetworkInfo = c.call(&Request::NetInfo { name }).await?;
            if json {
                print_json(&n);
            } else {
                print!(
                    "{}",
                    kv(&[
                        ("Name:", n.name.clone()),
                        ("Bridge:", n.bridge.clone()),
                        ("Active:", yes_no(n.active)),
                    ])
                );
            }
        }
        NetCmd::NetUndefine { name } => {
            let _: serde_json::Value = c.call(&Request::NetUndefine { name: name.clone() }).await?;
            println!("Network {name} has been undefined");
        }
    }
    Ok(())
}
