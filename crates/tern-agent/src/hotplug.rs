//! Devices added to and removed from a guest (`attach-device`,
//! `detach-device`, `attach-interface`, `detach-interface`), as virsh does
//! them, in a way that migrates.
//!
//! A device plugged into a running guest joins its live definition with an
//! address assigned by the same layout rules as at start; the QEMU
//! arguments come from the command-line builder (see
//! `tern_qemu::cmdline::hotplug`). A migration sends the live definition,
//! so the destination starts QEMU with the device at the same PCI address.
//!
//! A removal is done only when the guest released the device (QEMU's
//! `DEVICE_DELETED`). Until then the device stays in the definition and
//! the domain refuses to migrate: the two QEMUs would not agree on the
//! machine.

mod qemu;
mod vcpus;

use crate::error::{AgentError, Result};
use crate::registry::{self, DomainEntry, DomainSlot};
use crate::Agent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tern_api::DeviceFlags as Flags;
use tern_model::xml::{parse_device, HotDevice};
use tern_model::Domain;

/// The definitions to change: (the running guest, the stored definition).
/// virsh's rules: `--current` (or nothing) means the running guest if it
/// runs, else the stored definition; `--persistent` means both, or only
/// the stored one when the guest is off; `--current` excludes the others.
pub fn scope(f: Flags, running: bool, persistent_def: bool) -> Result<(bool, bool)> {
    if f.current && (f.live || f.config || f.persistent) {
        return Err(AgentError::Invalid(
            "--current cannot be combined with --live, --config or --persistent".into(),
        ));
    }
    let (live, config) = if f.persistent {
        (running, true)
    } else if f.live || f.config {
        (f.live, f.config)
    } else {
        (running, !running)
    };
    if live && !running {
        return Err(AgentError::Conflict(
            "the domain is not running; use --config to change its stored definition".into(),
        ));
    }
    if config && !persistent_def {
        return Err(AgentError::Conflict(
            "the domain is transient (no stored definition); use --live only, or define it first"
                .into(),
        ));
    }
    Ok((live, config))
}

/// Removals asked of running guests that have not released the device
/// yet, by domain: QEMU device ids.
#[derive(Debug, Default)]
pub struct Pending(Mutex<HashMap<String, Vec<String>>>);

impl Pending {
    fn add(&self, domain: &str, id: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(domain.to_string())
            .or_default()
            .push(id.to_string());
    }

    fn remove(&self, domain: &str, id: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = m.get_mut(domain) {
            v.retain(|x| x != id);
            if v.is_empty() {
                m.remove(domain);
            }
        }
    }

    /// Why `domain` cannot migrate now, if a removal is pending.
    pub fn refusal(&self, domain: &str) -> Option<String> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(domain).filter(|v| !v.is_empty()).map(|v| {
            format!(
                "the guest has not yet released device(s) {} that detach-device removed; migrate once it has (check with dumpxml), or reboot it",
                v.join(", ")
            )
        })
    }
}

/// A device added to a definition: the target or MAC must be free.
fn add_to(def: &mut Domain, dev: &HotDevice) -> Result<()> {
    match dev {
        HotDevice::Disk(disk) => {
            if def
                .devices
                .disks
                .iter()
                .any(|d| d.target_dev == disk.target_dev)
            {
                return Err(AgentError::Conflict(format!(
                    "domain '{}' already has a disk with target {}; pick another <target dev=...>",
                    def.name, disk.target_dev
                )));
            }
            def.devices.disks.push(disk.clone());
        }
        HotDevice::Interface(iface) => {
            let mac = iface.mac.as_deref();
            if mac.is_some()
                && def
                    .devices
                    .interfaces
                    .iter()
                    .any(|i| i.mac.as_deref() == mac)
            {
                return Err(AgentError::Conflict(format!(
                    "domain '{}' already has an interface with MAC {}",
                    def.name,
                    mac.unwrap_or_default()
                )));
            }
            def.devices.interfaces.push(iface.clone());
        }
    }
    tern_model::layout::assign_addresses(def);
    tern_model::validate::validate(def)
        .map_err(|e| AgentError::Invalid(format!("with {}: {e}", dev.describe())))?;
    Ok(())
}

/// Where `dev` sits in `def`: a disk by its target, an interface by its
/// MAC (or the only interface, when the XML names no MAC).
fn position(def: &Domain, dev: &HotDevice) -> Result<usize> {
    let found = match dev {
        HotDevice::Disk(disk) => def
            .devices
            .disks
            .iter()
            .position(|d| d.target_dev == disk.target_dev),
        HotDevice::Interface(iface) => match &iface.mac {
            Some(m) => def
                .devices
                .interfaces
                .iter()
                .position(|i| i.mac.as_deref() == Some(m.as_str())),
            None if def.devices.interfaces.len() == 1 => Some(0),
            None => {
                return Err(AgentError::Invalid(format!(
                    "domain '{}' has {} interfaces; name the one to remove with --mac",
                    def.name,
                    def.devices.interfaces.len()
                )))
            }
        },
    };
    found.ok_or_else(|| {
        AgentError::Invalid(format!(
            "domain '{}' has no {}; see dumpxml",
            def.name,
            dev.describe()
        ))
    })
}

/// A MAC for an interface that names none, as libvirt makes them.
fn with_mac(mut dev: HotDevice) -> HotDevice {
    if let HotDevice::Interface(i) = &mut dev {
        if i.mac.is_none() {
            let b = uuid::Uuid::new_v4().into_bytes();
            i.mac = Some(format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]));
        }
    }
    dev
}

impl Agent {
    /// `attach-device` (and `attach-interface`, which builds the XML).
    pub async fn attach_device(
        self: &Arc<Self>,
        name: &str,
        xml: &str,
        f: Flags,
    ) -> Result<String> {
        let dev = with_mac(parse_device(xml)?);
        let slot = self.domains.find(name)?;
        let mut e = slot.inner.lock().await;
        let (live, config) = scope(f, e.run.is_some(), e.persistent)?;
        self.refuse_during_migration(&slot.name)?;
        let mut stored = e.def.clone();
        if config {
            add_to(&mut stored, &dev)?;
        }
        if live {
            let placed = qemu::plug(self, &slot, &mut e, &dev).await?;
            if config {
                // The stored copy takes the live address when it is free
                // there, so the guest sees one machine across restarts.
                stored = e.def.clone();
                add_to(&mut stored, &placed)?;
            }
        }
        if config {
            registry::save_def(&self.layout.domains(), &stored)?;
            e.def = stored;
        }
        Ok(format!("Device attached successfully ({})", dev.describe()))
    }

    /// `detach-device` (and `detach-interface`).
    pub async fn detach_device(
        self: &Arc<Self>,
        name: &str,
        xml: &str,
        f: Flags,
    ) -> Result<String> {
        let dev = parse_device(xml)?;
        let slot = self.domains.find(name)?;
        let mut e = slot.inner.lock().await;
        let (live, config) = scope(f, e.run.is_some(), e.persistent)?;
        self.refuse_during_migration(&slot.name)?;
        let mut stored = e.def.clone();
        if config {
            let at = position(&stored, &dev)?;
            remove_at(&mut stored, &dev, at);
        }
        let mut msg = format!("Device detached successfully ({})", dev.describe());
        if live {
            let run = e.run.as_ref().ok_or_else(|| not_running(&slot.name))?;
            let at = position(&run.live, &dev)?;
            if !qemu::unplug(self, &slot, &mut e, &dev, at).await? {
                msg = format!(
                    "Device detach request sent ({}); the guest has not released it yet, and Tern finishes the removal when it does",
                    dev.describe()
                );
            }
        }
        if config {
            registry::save_def(&self.layout.domains(), &stored)?;
            e.def = stored;
        }
        Ok(msg)
    }

    fn refuse_during_migration(&self, name: &str) -> Result<()> {
        if self.jobs.get(name).is_some() {
            return Err(AgentError::Conflict(format!(
                "a migration of '{name}' is under way; change its devices once it has ended"
            )));
        }
        Ok(())
    }
}

fn remove_at(def: &mut Domain, dev: &HotDevice, at: usize) {
    match dev {
        HotDevice::Disk(_) => {
            def.devices.disks.remove(at);
        }
        HotDevice::Interface(_) => {
            def.devices.interfaces.remove(at);
        }
    }
}

fn not_running(name: &str) -> AgentError {
    AgentError::Conflict(format!("domain '{name}' is not running"))
}

/// Records the live definition of a running domain on disk, so that a
/// restarted agent (and the next migration) knows the devices it has now.
fn save_live(agent: &Agent, slot: &DomainSlot, e: &DomainEntry) {
    let Some(run) = &e.run else { return };
    let rec = registry::RuntimeRecord {
        id: run.id,
        pid: run.pid,
        start_time: run.start_time,
        live: run.live.clone(),
        persistent: e.persistent,
        taps: run.taps.clone(),
        accel: run.accel.clone(),
        console_pty: run.console_pty.clone(),
    };
    if let Err(err) = registry::save_runtime(&agent.layout.run_dir(&slot.name), &rec) {
        tracing::error!(domain = %slot.name, error = %err, "cannot record the live definition after a device change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(live: bool, config: bool, current: bool, persistent: bool) -> Flags {
        Flags {
            live,
            config,
            current,
            persistent,
        }
    }

    #[test]
    fn scope_follows_virsh() {
        let none = Flags::default();
        assert_eq!(scope(none, true, true).unwrap(), (true, false));
        assert_eq!(scope(none, false, true).unwrap(), (false, true));
        assert_eq!(
            scope(f(false, false, false, true), true, true).unwrap(),
            (true, true)
        );
        assert_eq!(
            scope(f(false, false, false, true), false, true).unwrap(),
            (false, true)
        );
        assert_eq!(
            scope(f(true, true, false, false), true, true).unwrap(),
            (true, true)
        );
        assert!(scope(f(true, false, false, false), false, true).is_err());
        assert!(scope(f(false, true, false, false), true, false).is_err());
        assert!(scope(f(true, false, true, false), true, true).is_err());
    }

    #[test]
    fn pending_removals_refuse_migration_until_released() {
        let p = Pending::default();
        assert!(p.refusal("g").is_none());
        p.add("g", "vdb");
        assert!(p.refusal("g").unwrap().contains("vdb"));
        p.remove("g", "vdb");
        assert!(p.refusal("g").is_none());
    }
}
