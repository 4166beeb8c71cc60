//! `attach-device`, `detach-device`, `attach-interface`,
//! `detach-interface` and `setvcpus`, with virsh's arguments and flags.

use crate::{CliError, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tern_api::{Client, DeviceFlags, Request};

/// virsh's scope flags, shared by the four verbs.
#[derive(Args, Debug, Clone, Copy)]
pub struct Scope {
    /// Change the running guest.
    #[arg(long)]
    pub live: bool,
    /// Change the stored definition.
    #[arg(long)]
    pub config: bool,
    /// The running guest if it runs, else the stored definition (default).
    #[arg(long)]
    pub current: bool,
    /// Both the running guest and the stored definition.
    #[arg(long)]
    pub persistent: bool,
}

impl From<Scope> for DeviceFlags {
    fn from(s: Scope) -> Self {
        DeviceFlags {
            live: s.live,
            config: s.config,
            current: s.current,
            persistent: s.persistent,
        }
    }
}

/// The device verbs.
#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// Add a device (a <disk> or <interface> element in FILE) to a domain.
    AttachDevice {
        /// Domain name or uuid.
        domain: String,
        /// XML file holding one <disk> or <interface> element.
        file: PathBuf,
        /// Which definitions change.
        #[command(flatten)]
        scope: Scope,
    },
    /// Remove a device (named by the element in FILE) from a domain.
    DetachDevice {
        /// Domain name or uuid.
        domain: String,
        /// XML file holding the <disk> (by its target) or <interface> (by its MAC).
        file: PathBuf,
        /// Which definitions change.
        #[command(flatten)]
        scope: Scope,
    },
    /// Set how many vCPUs are online (hot-plug with --live, up to <vcpu>'s maximum).
    Setvcpus {
        /// Domain name or uuid.
        domain: String,
        /// vCPUs online afterwards.
        count: u32,
        /// Which definitions change.
        #[command(flatten)]
        scope: Scope,
    },
    /// Add a network interface to a domain.
    AttachInterface {
        /// Domain name or uuid.
        domain: String,
        /// Interface type: network, bridge, or user.
        #[arg(long = "type")]
        kind: String,
        /// The network (--type network) or host bridge (--type bridge).
        #[arg(long)]
        source: Option<String>,
        /// NIC model, e.g. virtio (the default), e1000.
        #[arg(long)]
        model: Option<String>,
        /// MAC address (one is made up when not given).
        #[arg(long)]
        mac: Option<String>,
        /// Which definitions change.
        #[command(flatten)]
        scope: Scope,
    },
    /// Remove a network interface from a domain.
    DetachInterface {
        /// Domain name or uuid.
        domain: String,
        /// Interface type: bridge, or user.
        #[arg(long = "type")]
        kind: String,
        /// MAC address of the interface (needed when it has several).
        #[arg(long)]
        mac: Option<String>,
        /// Which definitions change.
        #[command(flatten)]
        scope: Scope,
    },
}

/// The `<interface>` element virsh's `attach-interface` arguments describe.
pub fn interface_xml(
    kind: &str,
    source: Option<&str>,
    model: Option<&str>,
    mac: Option<&str>,
) -> Result<String> {
    let esc = |v: &str| {
        v.replace('&', "&amp;")
            .replace('\'', "&apos;")
            .replace('<', "&lt;")
            .replace('"', "&quot;")
    };
    let mut x = format!("<interface type='{}'>", esc(kind));
    match (kind, source) {
        ("bridge", Some(br)) => x.push_str(&format!("<source bridge='{}'/>", esc(br))),
        ("network", Some(n)) => x.push_str(&format!("<source network='{}'/>", esc(n))),
        ("network", None) => {
            return Err(CliError::Usage(
                "--type network needs --source NETWORK (see tern net-list)".into(),
            ))
        }
        ("bridge", None) => {
            return Err(CliError::Usage(
                "--type bridge needs --source BRIDGE".into(),
            ))
        }
        ("user", _) => {}
        (other, _) => {
            return Err(CliError::Usage(format!(
                "interface type '{other}' is not supported; use network, bridge or user"
            )))
        }
    }
    if let Some(m) = mac {
        x.push_str(&format!("<mac address='{}'/>", esc(m)));
    }
    if let Some(m) = model {
        x.push_str(&format!("<model type='{}'/>", esc(m)));
    }
    x.push_str("</interface>");
    Ok(x)
}

/// Runs a device verb.
pub async fn run(c: &Client, cmd: DeviceCmd) -> Result<()> {
    let read = |f: &PathBuf| {
        std::fs::read_to_string(f).map_err(|source| CliError::File {
            path: f.display().to_string(),
            source,
        })
    };
    let req = match cmd {
        DeviceCmd::AttachDevice {
            domain,
            file,
            scope,
        } => Request::AttachDevice {
            name: domain,
            xml: read(&file)?,
            flags: scope.into(),
        },
        DeviceCmd::DetachDevice {
            domain,
            file,
            scope,
        } => Request::DetachDevice {
            name: domain,
            xml: read(&file)?,
            flags: scope.into(),
        },
        DeviceCmd::Setvcpus {
            domain,
            count,
            scope,
        } => Request::SetVcpus {
            name: domain,
            count,
            flags: scope.into(),
        },
        DeviceCmd::AttachInterface {
            domain,
            kind,
            source,
            model,
            mac,
            scope,
        } => Request::AttachDevice {
            name: domain,
            xml: interface_xml(&kind, source.as_deref(), model.as_deref(), mac.as_deref())?,
            flags: scope.into(),
        },
        DeviceCmd::DetachInterface {
            domain,
            kind,
            mac,
            scope,
        } => {
            Request::DetachDevice {
                name: domain,
                // Only the MAC names the interface to remove.
                xml: interface_xml(&kind, Some("any"), None, mac.as_deref())?,
                flags: scope.into(),
            }
        }
    };
    let msg: String = c.call(&req).await?;
    println!("{msg}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_interface_arguments_become_xml() {
        let x = interface_xml(
            "bridge",
            Some("br0"),
            Some("virtio"),
            Some("52:54:00:01:02:03"),
        )
        .unwrap();
        let d = tern_model::xml::parse_device(&x).unwrap();
        assert_eq!(d.describe(), "interface 52:54:00:01:02:03");
        assert!(interface_xml("bridge", None, None, None).is_err());
        assert!(interface_xml("direct", Some("eth0"), None, None).is_err());
    }
}
