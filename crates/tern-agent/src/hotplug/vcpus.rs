//! `setvcpus`: vCPUs plugged into a running guest below its `<vcpu>`
//! maximum (`--live`), or the stored `<vcpu current=>` (`--config`).
//!
//! A vCPU is plugged as libvirt does it: QMP `device_add` of the CPU type
//! and slot (socket, core, thread ids) that `query-hotpluggable-cpus`
//! offers, lowest free slot first, so the plugged vCPUs are the ones a
//! QEMU started with `-smp N` has. The live definition's `current` follows,
//! and a migration sends it: the destination starts with the same vCPUs.
//! Unplugging is refused. QEMU 10 and a Linux guest do remove a vCPU
//! (`device_del`, the guest ejects it; QEMU then announces only the
//! `DEVICE_DELETED` of its local APIC), but a Tern live migration of that
//! guest afterwards sent nothing and never finished (seen under TCG; a
//! plain `migrate` to a file of the same QEMU completed), so a guest that
//! lost a vCPU live could be stranded.

use super::{save_live, scope};
use crate::error::{AgentError, Result};
use crate::registry;
use crate::Agent;
use serde_json::{Map, Value};
use std::sync::Arc;
use tern_api::DeviceFlags as Flags;
use tern_model::Domain;
use tern_qemu::Qmp;

/// `count` must lie between 1 and the `<vcpu>` maximum.
fn check_count(def: &Domain, count: u32) -> Result<()> {
    if count == 0 || count > def.vcpus {
        return Err(AgentError::Invalid(format!(
            "setvcpus {count}: domain '{}' has a <vcpu> maximum of {}; give a count from 1 to {}",
            def.name, def.vcpus, def.vcpus
        )));
    }
    Ok(())
}

/// The `current=` a definition records for `count` online vCPUs.
fn current_for(def: &Domain, count: u32) -> Option<u32> {
    (count < def.vcpus).then_some(count)
}

/// The first `n` free slots of a `query-hotpluggable-cpus` answer, lowest
/// (socket, die, core, thread) first: each as `device_add`'s arguments
/// (the CPU type and its slot's ids), without the device id.
pub(crate) fn free_slots(answer: &[Value], n: usize) -> Vec<Map<String, Value>> {
    let id = |v: &Value, k: &str| v["props"][k].as_i64().unwrap_or(0);
    let mut free: Vec<&Value> = answer
        .iter()
        .filter(|c| c.get("qom-path").is_none())
        .collect();
    free.sort_by_key(|c| {
        (
            id(c, "socket-id"),
            id(c, "die-id"),
            id(c, "core-id"),
            id(c, "thread-id"),
        )
    });
    free.into_iter()
        .take(n)
        .map(|c| {
            let mut args = c["props"].as_object().cloned().unwrap_or_default();
            args.remove("node-id");
            args.insert("driver".into(), c["type"].clone());
            args
        })
        .collect()
}

/// Plugs `n` vCPUs; the ids name the vCPU index each one becomes.
async fn plug(qmp: &Qmp, online: u32, n: u32) -> Result<()> {
    let answer = qmp.execute("query-hotpluggable-cpus", None).await?;
    let slots = free_slots(answer.as_array().map_or(&[][..], |a| a), n as usize);
    if slots.len() < n as usize {
        return Err(AgentError::Failed(format!(
            "QEMU offers {} free vCPU slot(s), {n} needed",
            slots.len()
        )));
    }
    for (i, mut args) in slots.into_iter().enumerate() {
        args.insert(
            "id".into(),
            Value::String(format!("vcpu{}", online as usize + i)),
        );
        qmp.execute("device_add", Some(Value::Object(args)))
            .await
            .map_err(|e| AgentError::Failed(format!("QEMU refused to plug a vCPU: {e}")))?;
    }
    Ok(())
}

impl Agent {
    /// `setvcpus DOMAIN COUNT [--live] [--config] [--current]`.
    pub async fn set_vcpus(self: &Arc<Self>, name: &str, count: u32, f: Flags) -> Result<String> {
        let slot = self.domains.find(name)?;
        let mut e = slot.inner.lock().await;
        let (live, config) = scope(f, e.run.is_some(), e.persistent)?;
        self.refuse_during_migration(&slot.name)?;
        // Every check before any change.
        let mut stored = e.def.clone();
        if config {
            check_count(&stored, count)?;
            stored.vcpus_current = current_for(&stored, count);
            tern_model::validate::validate(&stored)
                .map_err(|err| AgentError::Invalid(format!("setvcpus {count}: {err}")))?;
        }
        if live {
            let run = e
                .run
                .as_mut()
                .ok_or_else(|| super::not_running(&slot.name))?;
            check_count(&run.live, count)?;
            let online = run.live.vcpus_current.unwrap_or(run.live.vcpus);
            if count < online {
                return Err(AgentError::Conflict(format!(
                    "setvcpus --live {count}: domain '{}' has {online} vCPUs online and Tern does not unplug vCPUs; lower it with --config and restart the guest",
                    slot.name
                )));
            }
            if count > online {
                plug(&run.qmp, online, count - online).await?;
                run.live.vcpus_current = current_for(&run.live, count);
                save_live(self, &slot, &e);
            }
        }
        if config {
            registry::save_def(&self.layout.domains(), &stored)?;
            e.def = stored;
        }
        Ok(format!("vCPUs of '{}' set to {count}", slot.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn free_slots_are_taken_lowest_first_with_their_type() {
        // As QEMU 10 answers for -smp 1,maxcpus=3 (highest slot first).
        let answer = vec![
            json!({"type": "max-x86_64-cpu", "vcpus-count": 1,
                   "props": {"socket-id": 2, "core-id": 0, "thread-id": 0}}),
            json!({"type": "max-x86_64-cpu", "vcpus-count": 1,
                   "props": {"socket-id": 1, "core-id": 0, "thread-id": 0}}),
            json!({"type": "max-x86_64-cpu", "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]",
                   "props": {"socket-id": 0, "core-id": 0, "thread-id": 0}}),
        ];
        let slots = free_slots(&answer, 1);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0]["socket-id"], 1);
        assert_eq!(slots[0]["driver"], "max-x86_64-cpu");
        assert_eq!(free_slots(&answer, 5).len(), 2);
    }
}
