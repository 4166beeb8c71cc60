//! Host side of bridged guest NICs: tap devices joined to a bridge.

use crate::error::{AgentError, Result};
use tern_model::VirtualPort;
use tokio::process::Command;

/// A tap name unique per agent, domain and NIC, within Linux's 15 bytes:
/// two agents on one machine (a migration's source and destination) must
/// never pick the same name for the same guest.
pub fn tap_name(host_tag: &str, uuid: &uuid::Uuid, index: usize) -> String {
    let u = uuid.simple().to_string();
    format!("tn{host_tag}{}{index:x}", &u[..6])
}

/// Whether Open vSwitch's CLI is available.
pub fn have_ovs() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("ovs-vsctl").is_file()))
        .unwrap_or(false)
}

async fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .await
        .map_err(|e| AgentError::Failed(format!("cannot run {prog}: {e}; install iproute2")))?;
    if !out.status.success() {
        return Err(AgentError::Failed(format!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Creates a tap and attaches it to `bridge` (a Linux bridge, or an Open
/// vSwitch bridge when `vport` says so).
pub async fn create_tap(name: &str, bridge: &str, vport: Option<&VirtualPort>) -> Result<()> {
    let _ = run("ip", &["link", "del", name]).await;
    run("ip", &["tuntap", "add", "dev", name, "mode", "tap"]).await?;
    let attach = match vport {
        Some(v) if v.port_type == "openvswitch" => {
            let mut args = vec!["--may-exist", "add-port", bridge, name];
            let ext;
            if let Some(id) = &v.interface_id {
                ext = format!("external-ids:iface-id={id}");
                args.extend(["--", "set", "Interface", name, &ext]);
            }
            run("ovs-vsctl", &args).await
        }
        _ => run("ip", &["link", "set", name, "master", bridge]).await,
    };
    let up = match attach {
        Ok(()) => run("ip", &["link", "set", name, "up"]).await,
        Err(e) => Err(e),
    };
    if let Err(e) = up {
        let _ = run("ip", &["link", "del", name]).await;
        return Err(e);
    }
    Ok(())
}

/// Removes taps, ignoring ones already gone.
pub async fn remove_taps(names: &[String]) {
    for n in names {
        if have_ovs() {
            let _ = run("ovs-vsctl", &["--if-exists", "del-port", n]).await;
        }
        let _ = run("ip", &["link", "del", n]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz_and_differ_per_host() {
        let u = uuid::Uuid::new_v4();
        let a = tap_name("ab12", &u, 0);
        let b = tap_name("cd34", &u, 0);
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, b);
        assert_ne!(tap_name("ab12", &u, 1), a);
    }
}
