//! Domain operations behind the virsh verbs.

use crate::error::{AgentError, Result};
use crate::launch::{self, LaunchMode};
use crate::monitor;
use crate::procs;
use crate::registry::{self, DomainEntry, DomainSlot};
use crate::Agent;
use std::sync::Arc;
use std::time::Duration;
use tern_api::{BlockEntry, ConsoleChunk, DomainInfo, DomainRef, DomainSummary};
use tern_model::{xml, Domain, DomainState, StateReason};
use tern_qemu::cmdline;

/// How long `destroy` waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

fn not_running(name: &str) -> AgentError {
    AgentError::Conflict(format!("domain '{name}' is not running; start it first"))
}

/// Gives NICs without a MAC a stable one (52:54:00 is QEMU's prefix), so the
/// guest keeps its address across restarts and migrations.
fn assign_macs(d: &mut Domain) {
    for (i, iface) in d.devices.interfaces.iter_mut().enumerate() {
        if iface.mac.is_none() {
            let b = d.uuid.as_bytes();
            iface.mac = Some(format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                b[13],
                b[14],
                b[15].wrapping_add(i as u8)
            ));
        }
    }
}

fn parse(xml_text: &str) -> Result<Domain> {
    let mut d = xml::parse_domain(xml_text)?;
    assign_macs(&mut d);
    Ok(d)
}

impl Agent {
    fn summary(&self, slot: &DomainSlot, e: &DomainEntry) -> DomainSummary {
        let (state, reason) = slot.current();
        DomainSummary {
            id: e.run.as_ref().map(|r| r.id),
            name: slot.name.clone(),
            uuid: slot.uuid,
            state,
            reason,
            persistent: e.persistent,
        }
    }

    /// `list [--all]`.
    pub async fn list(&self, all: bool) -> Vec<DomainSummary> {
        let mut out = Vec::new();
        for slot in self.domains.all() {
            let e = slot.inner.lock().await;
            if all || e.run.is_some() {
                out.push(self.summary(&slot, &e));
            }
        }
        out
    }

    /// `dominfo`.
    pub async fn dominfo(&self, name: &str) -> Result<DomainInfo> {
        let slot = self.domains.find(name)?;
        let e = slot.inner.lock().await;
        let d = e.run.as_ref().map(|r| &r.live).unwrap_or(&e.def);
        let run_dir = self.layout.run_dir(&slot.name);
        Ok(DomainInfo {
            summary: self.summary(&slot, &e),
            os_type: d.os.os_type.clone(),
            vcpus: d.vcpus,
            max_memory_kib: d.memory_kib,
            used_memory_kib: d.current_memory_kib,
            pid: e.run.as_ref().map(|r| r.pid),
            accel: e.run.as_ref().map(|r| r.accel.clone()),
            console_pty: e.run.as_ref().and_then(|r| r.console_pty.clone()),
            console_log: Some(console_path(&run_dir, d).display().to_string()),
            security_label: self.security_label(slot.uuid),
        })
    }

    /// `domblklist`.
    pub async fn domblklist(&self, name: &str) -> Result<Vec<BlockEntry>> {
        let slot = self.domains.find(name)?;
        let e = slot.inner.lock().await;
        let d = e.run.as_ref().map(|r| &r.live).unwrap_or(&e.def);
        let mut out = Vec::with_capacity(d.devices.disks.len());
        for k in &d.devices.disks {
            out.push(BlockEntry {
                target: k.target_dev.clone(),
                source: crate::pools::block_source(&self.pools, k).await,
                device: match k.device {
                    tern_model::DiskDevice::Disk => "disk".into(),
                    tern_model::DiskDevice::Cdrom => "cdrom".into(),
                },
            });
        }
        Ok(out)
    }

    /// `dumpxml`: the live definition while running, else the stored one.
    pub async fn dumpxml(&self, name: &str) -> Result<String> {
        let slot = self.domains.find(name)?;
        let e = slot.inner.lock().await;
        let d = e.run.as_ref().map(|r| &r.live).unwrap_or(&e.def);
        Ok(xml::to_xml(d))
    }

    /// `define`: stores a new definition or updates an existing one with the
    /// same name and uuid (a running domain keeps its live definition until
    /// its next start).
    pub async fn define(self: &Arc<Self>, xml_text: &str) -> Result<DomainRef> {
        self.define_domain(parse(xml_text)?).await
    }

    /// Refuses changes to a domain that is migrating (virsh's
    /// `--change-protection`, always on in Tern).
    fn ensure_not_migrating(&self, name: &str) -> Result<()> {
        use tern_migrate::Phase;
        // Finish and Confirm are the migration's own steps that define or
        // undefine; anything earlier is a change from outside.
        match self.jobs.get(name) {
            Some(j) if matches!(j.phase(), Phase::Begin | Phase::Prepare | Phase::Perform) => Err(AgentError::Conflict(format!(
                "domain '{name}' is migrating (phase {}); its definition cannot change until the job ends",
                j.phase()
            ))),
            _ => Ok(()),
        }
    }

    /// `define` of an already parsed definition.
    pub async fn define_domain(self: &Arc<Self>, mut d: Domain) -> Result<DomainRef> {
        self.ensure_not_migrating(&d.name)?;
        assign_macs(&mut d);
        crate::guest_setup::complete(self, &mut d);
        crate::confine::check_domain_paths(self, &d).await?;
        for other in self.domains.all() {
            if other.uuid == d.uuid && other.name != d.name {
                return Err(AgentError::Conflict(format!(
                    "domain '{}' already has uuid {}; change the <uuid> or undefine '{}' first",
                    other.name, d.uuid, other.name
                )));
            }
        }
        if let Some(slot) = self.domains.get(&d.name) {
            if slot.uuid != d.uuid {
                return Err(AgentError::Conflict(format!(
                    "domain '{}' already exists with uuid {}; remove the <uuid> line to update it, or pick another name",
                    d.name, slot.uuid
                )));
            }
            let mut e = slot.inner.lock().await;
            // Keep MACs stable across redefinitions that omit them.
            if let Some(old) = e.run.as_ref().map(|r| &r.live).or(Some(&e.def)) {
                for (n, o) in d.devices.interfaces.iter_mut().zip(&old.devices.interfaces) {
                    if n.mac.is_none() {
                        n.mac = o.mac.clone();
                    }
                }
            }
            registry::save_def(&self.layout.domains(), &d)?;
            e.def = d.clone();
            e.persistent = true;
            return Ok(DomainRef {
                name: d.name,
                uuid: d.uuid,
                updated: true,
            });
        }
        registry::save_def(&self.layout.domains(), &d)?;
        let slot = DomainSlot::new(
            DomainEntry {
                def: d.clone(),
                persistent: true,
                run: None,
                stopping: None,
            },
            (DomainState::ShutOff, StateReason::Unknown),
        );
        if let Err(e) = self.domains.insert(slot) {
            let _ = std::fs::remove_file(registry::def_path(&self.layout.domains(), &d.name));
            return Err(e);
        }
        Ok(DomainRef {
            name: d.name,
            uuid: d.uuid,
            updated: false,
        })
    }

    /// `create`: starts a transient domain; nothing remains if it fails.
    pub async fn create(self: &Arc<Self>, xml_text: &str, paused: bool) -> Result<DomainRef> {
        let d = parse(xml_text)?;
        if self.domains.all().iter().any(|s| s.uuid == d.uuid) {
            return Err(AgentError::Conflict(format!(
                "a domain with uuid {} already exists; change the <uuid>",
                d.uuid
            )));
        }
        let slot = DomainSlot::transient(d.clone());
        self.domains.insert(slot.clone())?;
        let mut e = slot.inner.lock().await;
        match self.boot(&slot, &mut e, &d, paused).await {
            Ok(()) => Ok(DomainRef {
                name: d.name,
                uuid: d.uuid,
                updated: false,
            }),
            Err(err) => {
                drop(e);
                self.forget_domain(&slot);
                let _ = std::fs::remove_dir_all(self.layout.run_dir(&d.name));
                Err(err)
            }
        }
    }

    /// Launches QEMU for `def` and records it as the domain's run.
    async fn boot(
        self: &Arc<Self>,
        slot: &Arc<DomainSlot>,
        e: &mut DomainEntry,
        def: &Domain,
        paused: bool,
    ) -> Result<()> {
        crate::migration::cold::ensure_durable(def).await?;
        let run = launch::launch(self, def, LaunchMode::Boot { paused }).await?;
        crate::faults::point(self, "boot-before-record").await;
        monitor::install(self, slot, e, run);
        if paused {
            slot.set(DomainState::Paused, StateReason::User);
        } else {
            slot.set(DomainState::Running, StateReason::Booted);
        }
        Ok(())
    }

    /// `start`.
    pub async fn start(self: &Arc<Self>, name: &str, paused: bool) -> Result<DomainRef> {
        let slot = self.domains.find(name)?;
        let mut e = slot.inner.lock().await;
        if e.run.is_some() {
            return Err(AgentError::Conflict(format!(
                "domain '{}' is already running; use 'tern destroy {}' first to restart it",
                slot.name, slot.name
            )));
        }
        crate::fence::refuse_start(self, &slot.name)?;
        let def = e.def.clone();
        self.boot(&slot, &mut e, &def, paused).await?;
        Ok(DomainRef {
            name: def.name,
            uuid: def.uuid,
            updated: false,
        })
    }

    /// `shutdown`: ACPI power button, then wait for the guest to go.
    pub async fn shutdown(&self, name: &str, timeout: Duration) -> Result<()> {
        let slot = self.domains.find(name)?;
        {
            let e = slot.inner.lock().await;
            let run = e.run.as_ref().ok_or_else(|| not_running(&slot.name))?;
            run.qmp.execute("system_powerdown", None).await?;
        }
        if slot.wait_for(|s| s == DomainState::ShutOff, timeout).await {
            Ok(())
        } else {
            Err(AgentError::Timeout(format!(
                "domain '{}' did not shut down within {} s (the guest ignored the ACPI power button); use 'tern destroy {}' to force it off",
                slot.name,
                timeout.as_secs(),
                slot.name
            )))
        }
    }

    /// `destroy`: SIGTERM, then SIGKILL if QEMU lingers.
    pub async fn destroy(&self, name: &str) -> Result<()> {
        let slot = self.domains.find(name)?;
        let pid = {
            let mut e = slot.inner.lock().await;
            let pid = e.run.as_ref().ok_or_else(|| not_running(&slot.name))?.pid;
            e.stopping = Some(StateReason::Destroyed);
            pid
        };
        procs::signal(pid, libc::SIGTERM);
        if slot
            .wait_for(|s| s == DomainState::ShutOff, TERM_GRACE)
            .await
        {
            return Ok(());
        }
        procs::signal(pid, libc::SIGKILL);
        if slot
            .wait_for(|s| s == DomainState::ShutOff, TERM_GRACE)
            .await
        {
            return Ok(());
        }
        Err(AgentError::Failed(format!(
            "QEMU (pid {pid}) of domain '{}' did not exit after SIGKILL",
            slot.name
        )))
    }

    /// `reboot`: a hardware reset of the guest.
    pub async fn reboot(&self, name: &str) -> Result<()> {
        let slot = self.domains.find(name)?;
        let e = slot.inner.lock().await;
        let run = e.run.as_ref().ok_or_else(|| not_running(&slot.name))?;
        run.qmp.execute("system_reset", None).await?;
        Ok(())
    }

    /// `suspend`.
    pub async fn suspend(&self, name: &str) -> Result<()> {
        let slot = self.domains.find(name)?;
        let e = slot.inner.lock().await;
        let run = e.run.as_ref().ok_or_else(|| not_running(&slot.name))?;
        run.qmp.execute("stop", None).await?;
        slot.set(DomainState::Paused, StateReason::User);
        Ok(())
    }

    /// `resume`.
    pub async fn resume(&self, name: &str) -> Result<()> {
        let slot = self.domains.find(name)?;
        let e = slot.inner.lock().await;
        let run = e.run.as_ref().ok_or_else(|| not_running(&slot.name))?;
        if slot.current().0 != DomainState::Paused {
            return Err(AgentError::Conflict(format!(
                "domain '{}' is not paused",
                slot.name
            )));
        }
        let state = run.qmp.run_state().await?;
        let (migration, _) = run.qmp.migration().await?;
        let job = self.jobs.get(&slot.name).map(|j| j.phase());
        if let Some(why) = tern_migrate::recovery::resume_refusal(state, migration, job) {
            return Err(AgentError::Conflict(format!(
                "domain '{}' cannot be resumed: {why}",
                slot.name
            )));
        }
        run.qmp.execute("cont", None).await?;
        slot.set(DomainState::Running, StateReason::Unpaused);
        Ok(())
    }

    /// `undefine [--remove-all-storage]`: a running domain becomes transient;
    /// storage is only removed from an inactive domain, and only files that
    /// live in one of this host's pools. Returns the removed files.
    pub async fn undefine(&self, name: &str, remove_storage: bool) -> Result<Vec<String>> {
        self.undefine_with(name, remove_storage, false).await
    }

    /// `undefine`, also removing the NVRAM file with `nvram`. A guest's TPM
    /// state goes with its definition, as in libvirt.
    pub async fn undefine_with(
        &self,
        name: &str,
        remove_storage: bool,
        nvram: bool,
    ) -> Result<Vec<String>> {
        let slot = self.domains.find(name)?;
        self.ensure_not_migrating(&slot.name)?;
        let mut e = slot.inner.lock().await;
        if !e.persistent {
            return Err(AgentError::Conflict(format!(
                "domain '{}' is transient (created, not defined); destroy it instead",
                slot.name
            )));
        }
        if e.run.is_some() && remove_storage {
            return Err(AgentError::Conflict(format!(
                "domain '{}' is running; destroy it before removing its storage",
                slot.name
            )));
        }
        let path = registry::def_path(&self.layout.domains(), &slot.name);
        std::fs::remove_file(&path).map_err(|err| AgentError::state(&path, err))?;
        e.persistent = false;
        let mut removed = Vec::new();
        if e.run.is_none() {
            if remove_storage {
                for disk in e.def.devices.disks.iter().filter(|d| !d.readonly) {
                    if let Some(r) = self.pools.remove_disk_volume(disk).await {
                        removed.push(r);
                    }
                }
            }
            if let Some(store) = e.def.os.nvram.as_ref().filter(|_| nvram) {
                if std::fs::remove_file(&store.path).is_ok() {
                    removed.push(store.path.display().to_string());
                }
            }
            crate::guest_setup::remove_tpm_state(self, &e.def);
            let _ = std::fs::remove_dir_all(self.layout.run_dir(&slot.name));
            drop(e);
            // Its uid goes back to the range (a running domain keeps it
            // until it ends, see `monitor`).
            self.forget_domain(&slot);
        }
        Ok(removed)
    }

    /// `console`: serial output from `offset`.
    pub async fn console(&self, name: &str, offset: u64, max: u64) -> Result<ConsoleChunk> {
        use std::io::{Read, Seek, SeekFrom};
        let slot = self.domains.find(name)?;
        let (path, active) = {
            let e = slot.inner.lock().await;
            let d = e.run.as_ref().map(|r| &r.live).unwrap_or(&e.def);
            (
                console_path(&self.layout.run_dir(&slot.name), d),
                e.run.is_some(),
            )
        };
        let mut data = Vec::new();
        let mut next = offset;
        if let Ok(mut f) = std::fs::File::open(&path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let start = offset.min(len);
            f.seek(SeekFrom::Start(start))
                .map_err(|err| AgentError::state(&path, err))?;
            f.take(max.min(4 << 20))
                .read_to_end(&mut data)
                .map_err(|err| AgentError::state(&path, err))?;
            next = start + data.len() as u64;
        }
        Ok(ConsoleChunk {
            data: String::from_utf8_lossy(&data).into_owned(),
            next_offset: next,
            active,
        })
    }
}

/// Where serial port 0's output is kept: the agent's log for a pty, or the
/// file the definition names.
pub fn console_path(run_dir: &std::path::Path, d: &Domain) -> std::path::PathBuf {
    let serial0 = d
        .devices
        .serials
        .iter()
        .find(|s| s.port == 0)
        .map(|s| &s.kind)
        .or_else(|| d.devices.consoles.first().map(|c| &c.kind));
    match serial0 {
        Some(tern_model::CharDev::File { path }) => path.clone(),
        _ => cmdline::console_log(run_dir, 0),
    }
}
