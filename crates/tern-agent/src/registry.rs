//! The agent's domains: definitions on disk, run-time records, lookup.
//!
//! Each domain lives in a [`DomainSlot`]: its definition and run-time
//! handles behind one async mutex (operations on one domain are serialised,
//! different domains proceed in parallel), plus a watch channel carrying its
//! state so that callers can wait for "shut off" without holding the lock.

use crate::config::write_atomic;
use crate::error::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_model::{Domain, DomainState, StateReason};
use tern_qemu::Qmp;
use tokio::sync::watch;

/// A live QEMU process running a domain.
#[derive(Debug, Clone)]
pub struct Running {
    /// Run-time id shown by `list`.
    pub id: u32,
    /// QEMU's pid.
    pub pid: u32,
    /// Kernel start time of that pid (guards against pid reuse).
    pub start_time: u64,
    /// The monitor.
    pub qmp: Qmp,
    /// The definition QEMU was started with.
    pub live: Domain,
    /// Tap devices the agent created for it.
    pub taps: Vec<String>,
    /// Accelerator in use.
    pub accel: String,
    /// Serial console pty, if any.
    pub console_pty: Option<String>,
}

/// What survives an agent restart about a running domain
/// (`run/<name>/runtime.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeRecord {
    /// Run-time id.
    pub id: u32,
    /// QEMU's pid.
    pub pid: u32,
    /// Kernel start time of the pid.
    pub start_time: u64,
    /// The definition QEMU runs.
    pub live: Domain,
    /// Whether a persistent definition exists.
    pub persistent: bool,
    /// Taps to remove when it ends.
    pub taps: Vec<String>,
    /// Accelerator.
    pub accel: String,
    /// Console pty.
    pub console_pty: Option<String>,
}

/// A domain's definition and run-time handles.
#[derive(Debug)]
pub struct DomainEntry {
    /// The stored definition (or the transient one).
    pub def: Domain,
    /// Whether `def` is stored on disk.
    pub persistent: bool,
    /// Set while QEMU runs.
    pub run: Option<Running>,
    /// Set by an operation that is ending the process on purpose, so the
    /// monitor records the right reason when it sees QEMU go.
    pub stopping: Option<StateReason>,
}

/// One domain: entry plus its observable state.
#[derive(Debug)]
pub struct DomainSlot {
    /// Definition and handles.
    pub inner: tokio::sync::Mutex<DomainEntry>,
    /// Current state.
    pub state: watch::Sender<(DomainState, StateReason)>,
    /// Name (stable for the slot's life).
    pub name: String,
    /// UUID (stable for the slot's life).
    pub uuid: uuid::Uuid,
}

impl DomainSlot {
    /// A new slot.
    pub fn new(entry: DomainEntry, state: (DomainState, StateReason)) -> Arc<Self> {
        let (tx, _) = watch::channel(state);
        Arc::new(DomainSlot {
            name: entry.def.name.clone(),
            uuid: entry.def.uuid,
            inner: tokio::sync::Mutex::new(entry),
            state: tx,
        })
    }

    /// A slot for a domain that has no stored definition (yet): `create`d,
    /// or arriving by migration.
    pub fn transient(def: Domain) -> Arc<Self> {
        DomainSlot::new(
            DomainEntry {
                def,
                persistent: false,
                run: None,
                stopping: None,
            },
            (DomainState::ShutOff, StateReason::Unknown),
        )
    }

    /// Current state.
    pub fn current(&self) -> (DomainState, StateReason) {
        *self.state.borrow()
    }

    /// Publishes a new state.
    pub fn set(&self, state: DomainState, reason: StateReason) {
        let old = self.state.send_replace((state, reason));
        if old != (state, reason) {
            crate::events::log().emit(
                &self.name,
                tern_api::event::EventKind::Lifecycle,
                format!("{state} ({reason})"),
            );
        }
    }

    /// Waits until `pred` holds for the state, up to `timeout`.
    pub async fn wait_for(&self, pred: impl Fn(DomainState) -> bool, timeout: Duration) -> bool {
        let mut rx = self.state.subscribe();
        let wait = async {
            loop {
                if pred(rx.borrow_and_update().0) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

/// All domains of the agent, by name.
#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<BTreeMap<String, Arc<DomainSlot>>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<DomainSlot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds a domain by name or uuid.
    pub fn find(&self, key: &str) -> Result<Arc<DomainSlot>> {
        let map = self.map();
        if let Some(s) = map.get(key) {
            return Ok(s.clone());
        }
        if let Ok(u) = key.parse::<uuid::Uuid>() {
            if let Some(s) = map.values().find(|s| s.uuid == u) {
                return Ok(s.clone());
            }
        }
        Err(AgentError::NoDomain(key.to_string()))
    }

    /// Looks a name up without error.
    pub fn get(&self, name: &str) -> Option<Arc<DomainSlot>> {
        self.map().get(name).cloned()
    }

    /// Inserts a slot; fails if the name is taken.
    pub fn insert(&self, slot: Arc<DomainSlot>) -> Result<()> {
        let mut map = self.map();
        if map.contains_key(&slot.name) {
            return Err(AgentError::Conflict(format!(
                "domain '{}' already exists; pick another name or undefine it first",
                slot.name
            )));
        }
        map.insert(slot.name.clone(), slot);
        Ok(())
    }

    /// Removes a slot if it is still the one registered under its name.
    pub fn remove(&self, slot: &Arc<DomainSlot>) {
        let mut map = self.map();
        if map.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(&slot.name);
        }
    }

    /// All slots, in name order.
    pub fn all(&self) -> Vec<Arc<DomainSlot>> {
        self.map().values().cloned().collect()
    }
}

/// Path of a stored definition.
pub fn def_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Stores a definition atomically.
pub fn save_def(dir: &Path, def: &Domain) -> Result<()> {
    let path = def_path(dir, &def.name);
    let text = serde_json::to_vec_pretty(def)
        .map_err(|e| AgentError::Failed(format!("cannot serialise definition: {e}")))?;
    write_atomic(&path, &text).map_err(|e| AgentError::state(&path, e))
}

/// Loads every stored definition; unreadable files are logged and skipped.
pub fn load_defs(dir: &Path) -> Vec<Domain> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Domain>(&b).map_err(|e| e.to_string()))
        {
            Ok(d) => out.push(d),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "skipping unreadable definition")
            }
        }
    }
    out
}

/// Path of a run-time record.
pub fn runtime_path(run_dir: &Path) -> PathBuf {
    run_dir.join("runtime.json")
}

/// Stores a run-time record.
pub fn save_runtime(run_dir: &Path, rec: &RuntimeRecord) -> Result<()> {
    let path = runtime_path(run_dir);
    let text = serde_json::to_vec_pretty(rec)
        .map_err(|e| AgentError::Failed(format!("cannot serialise run-time record: {e}")))?;
    write_atomic(&path, &text).map_err(|e| AgentError::state(&path, e))
}
