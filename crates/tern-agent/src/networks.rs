//! Tern networks: a name for a host bridge, defined on each host
//! (`net-define-as NAME --bridge BR`), so that `<interface type='network'>
//! <source network='NAME'/>` — what virt-install writes for libvirt's
//! `default` network — joins the right bridge on whichever host the guest
//! runs. Migration and rescue need only the same names on both hosts, not
//! the same bridge names.

use crate::config::write_atomic;
use crate::error::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use tern_model::{Domain, InterfaceKind};

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The name guests use.
    pub name: String,
    /// The host bridge it stands for.
    pub bridge: String,
}

/// The networks of this host, stored one file each.
#[derive(Debug)]
pub struct Networks {
    dir: PathBuf,
    all: Mutex<BTreeMap<String, Network>>,
}

impl Networks {
    /// Loads the definitions in `dir` (unreadable files are logged and skipped).
    pub fn load(dir: PathBuf) -> Networks {
        let mut all = BTreeMap::new();
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = f.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Network>(&b).map_err(|e| e.to_string()))
            {
                Ok(n) => {
                    all.insert(n.name.clone(), n);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a network definition")
                }
            }
        }
        Networks {
            dir,
            all: Mutex::new(all),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Network>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `net-define-as`: defines (or redefines) a network.
    pub fn define(&self, name: &str, bridge: &str) -> Result<Network> {
        tern_model::names::validate_name("network", name)?;
        tern_model::names::validate_name("bridge", bridge)?;
        let n = Network {
            name: name.into(),
            bridge: bridge.into(),
        };
        let path = self.dir.join(format!("{name}.json"));
        let text = serde_json::to_vec_pretty(&n)
            .map_err(|e| AgentError::Failed(format!("cannot serialise network: {e}")))?;
        write_atomic(&path, &text).map_err(|e| AgentError::state(&path, e))?;
        self.map().insert(name.into(), n.clone());
        Ok(n)
    }

    /// `net-undefine`.
    pub fn undefine(&self, name: &str) -> Result<()> {
        if self.map().remove(name).is_none() {
            return Err(unknown(name));
        }
        let path = self.dir.join(format!("{name}.json"));
        std::fs::remove_file(&path).map_err(|e| AgentError::state(&path, e))
    }

    /// `net-list`.
    pub fn list(&self) -> Vec<Network> {
        self.map().values().cloned().collect()
    }

    /// `net-info`.
    pub fn get(&self, name: &str) -> Result<Network> {
        self.map().get(name).cloned().ok_or_else(|| unknown(name))
    }

    /// The domain as QEMU gets it: every `type='network'` interface made a
    /// bridge interface on this host's bridge for that network.
    pub fn resolve(&self, d: &Domain) -> Result<Domain> {
        let mut out = d.clone();
        for iface in &mut out.devices.interfaces {
            if let InterfaceKind::Network { network } = &iface.kind {
                let n = self.get(network).map_err(|_| {
                    AgentError::Invalid(format!(
                        "domain '{}' joins network '{network}', which this host does not define; run 'tern net-define-as {network} --bridge BRIDGE' here",
                        d.name
                    ))
                })?;
                iface.kind = InterfaceKind::Bridge { bridge: n.bridge };
            }
        }
        Ok(out)
    }
}

impl Network {
    /// What `net-list` and `net-info` show.
    pub fn info(&self) -> tern_api::NetworkInfo {
        tern_api::NetworkInfo {
            name: self.name.clone(),
            bridge: self.bridge.clone(),
            active: std::path::Path::new("/sys/class/net")
                .join(&self.bridge)
                .exists(),
        }
    }
}

fn unknown(name: &str) -> AgentError {
    AgentError::NoNetwork(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_resolves_to_its_bridge_and_an_unknown_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let nets = Networks::load(dir.path().to_path_buf());
        nets.define("default", "virbr0").unwrap();
        let d = tern_model::xml::parse_domain(
            "<domain type='kvm'><name>g</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>\
             <devices><interface type='network'><source network='default'/></interface>\
             <interface type='network'><source network='storage'/></interface></devices></domain>",
        )
        .unwrap();
        let e = nets.resolve(&d).unwrap_err().to_string();
        assert!(
            e.contains("network 'storage'") && e.contains("net-define-as storage"),
            "{e}"
        );
        nets.define("storage", "br-st").unwrap();
        let r = nets.resolve(&d).unwrap();
        assert_eq!(
            r.devices.interfaces[0].kind,
            InterfaceKind::Bridge {
                bridge: "virbr0".into()
            }
        );
        // Stored: a restarted agent knows them.
        let again = Networks::load(dir.path().to_path_buf());
        assert_eq!(again.list().len(), 2);
        again.undefine("storage").unwrap();
        assert!(again.get("storage").is_err());
    }
}
