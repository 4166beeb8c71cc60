//! The QMP side of a hot-plug: adding the nodes and the device, and
//! removing them once the guest let go.

use super::{save_live, HotDevice};
use crate::error::{AgentError, Result};
use crate::netdev;
use crate::registry::{DomainEntry, DomainSlot};
use crate::Agent;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tern_model::{Domain, InterfaceKind};
use tern_qemu::cmdline::hotplug::{disk_plug, nic_plug};
use tern_qemu::cmdline::{drive_node, file_node, Accel, LaunchSpec, NetBackend};
use tern_qemu::Qmp;

/// How long a guest gets to release a device before the removal goes on
/// in the background (libvirt waits 5 s too).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Plugs `dev` into the running guest and adds it to the live definition;
/// returns the device as placed (with its address).
pub(super) async fn plug(
    agent: &Arc<Agent>,
    slot: &DomainSlot,
    e: &mut DomainEntry,
    dev: &HotDevice,
) -> Result<HotDevice> {
    let run = e
        .run
        .as_mut()
        .ok_or_else(|| super::not_running(&slot.name))?;
    let mut live = run.live.clone();
    super::add_to(&mut live, dev)?;
    // What QEMU opens: volume disks become the files or URLs of their pool.
    let resolved = agent
        .networks
        .resolve(&agent.pools.resolve_disks(&live).await?)?;
    let placed = match dev {
        HotDevice::Disk(d) => {
            // QEMU opens it after it dropped privileges: checked like a
            // definition's paths, then handed to QEMU's user.
            crate::confine::check_domain_paths(agent, &resolved).await?;
            crate::confine::hand_over_disk(agent, &resolved, &d.target_dev)?;
            agent.pools.secrets.check_domain(&resolved)?;
            agent.pools.check_rbd_disks(&resolved).await?;
            let run_dir = agent.layout.run_dir(&slot.name);
            let key = add_key(agent, &run.qmp, &resolved, &d.target_dev, &run_dir).await?;
            if let Err(e) = plug_disk(&run.qmp, &resolved, &d.target_dev).await {
                if let Some(id) = key {
                    del_key(&run.qmp, &id).await;
                }
                return Err(e);
            }
            let at = live
                .devices
                .disks
                .iter()
                .position(|x| x.target_dev == d.target_dev)
                .unwrap_or_default();
            HotDevice::Disk(live.devices.disks[at].clone())
        }
        HotDevice::Interface(_) => {
            let at = live.devices.interfaces.len() - 1;
            let accel = if run.accel == "kvm" {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
            let run_dir = agent.layout.run_dir(&slot.name);
            if let Some(tap) = plug_nic(agent, &run.qmp, &resolved, at, accel, run_dir).await? {
                run.taps.push(tap);
            }
            HotDevice::Interface(live.devices.interfaces[at].clone())
        }
    };
    run.live = live;
    save_live(agent, slot, e);
    Ok(placed)
}

async fn plug_disk(qmp: &Qmp, live: &Domain, target: &str) -> Result<()> {
    let plug = disk_plug(live, target)
        .ok_or_else(|| AgentError::Failed(format!("no QEMU arguments for disk {target}")))?;
    let mut added: Vec<String> = Vec::new();
    for b in &plug.blockdevs {
        let mut b = b.clone();
        if b["driver"] == "nfs" && b.get("user").is_none() {
            // QEMU opened its other NFS disks at start, as root, before it
            // dropped to its own user; a disk plugged in later would reach
            // the server as that user (AUTH_SYS), which the volume's owner
            // check refuses. It speaks as root, as at start.
            b["user"] = json!(0);
            b["group"] = json!(0);
        }
        if let Err(err) = qmp.execute("blockdev-add", Some(b.clone())).await {
            del_nodes(qmp, &added).await;
            return Err(err.into());
        }
        added.push(b["node-name"].as_str().unwrap_or_default().to_string());
    }
    if let Err(err) = device_add(qmp, &plug.device).await {
        del_nodes(qmp, &added).await;
        return Err(err);
    }
    Ok(())
}

/// For an rbd disk with `<auth>`: its key as QEMU's `secret` object
/// (`object-add` with `file=`, a 0600 copy in QEMU's own directory, removed
/// once read), before the `blockdev-add` that names it; the object's id.
async fn add_key(
    agent: &Agent,
    qmp: &Qmp,
    live: &Domain,
    target: &str,
    run_dir: &std::path::Path,
) -> Result<Option<String>> {
    let user = agent.guest_user(live.uuid)?;
    let user = user.as_ref();
    let dir =
        crate::confine::user::qemu_dir(run_dir, user).map_err(|e| AgentError::state(run_dir, e))?;
    let Some(file) = agent.pools.secrets.stage_disk(live, target, &dir, user)? else {
        return Ok(None);
    };
    let id = tern_qemu::cmdline::disk_secret_id(target);
    // A key object left by an earlier plug of the same target goes first.
    del_key(qmp, &id).await;
    let added = qmp
        .execute(
            "object-add",
            Some(json!({"qom-type": "secret", "id": id, "file": file, "format": "base64"})),
        )
        .await;
    crate::secrets::remove_staged(&[file]);
    added?;
    Ok(Some(id))
}

async fn del_key(qmp: &Qmp, id: &str) {
    let _ = qmp.execute("object-del", Some(json!({ "id": id }))).await;
}

async fn del_nodes(qmp: &Qmp, nodes: &[String]) {
    for n in nodes.iter().rev() {
        let _ = qmp
            .execute("blockdev-del", Some(json!({ "node-name": n })))
            .await;
    }
}

/// `device_add` through the human monitor, which parses the option string
/// exactly as `-device` does (QMP's typed `device_add` would need every
/// property converted). It answers with an empty string on success.
async fn device_add(qmp: &Qmp, opts: &str) -> Result<()> {
    let out = qmp
        .execute(
            "human-monitor-command",
            Some(json!({ "command-line": format!("device_add {opts}") })),
        )
        .await?;
    let text = out.as_str().unwrap_or_default().trim();
    if text.is_empty() {
        Ok(())
    } else {
        Err(AgentError::Failed(format!(
            "QEMU refused the device: {}",
            text.lines().next().unwrap_or(text)
        )))
    }
}

/// Plugs NIC `at` of `live`; returns the tap it created, if any.
async fn plug_nic(
    agent: &Agent,
    qmp: &Qmp,
    live: &Domain,
    at: usize,
    accel: Accel,
    run_dir: std::path::PathBuf,
) -> Result<Option<String>> {
    let iface = &live.devices.interfaces[at];
    let mut nets = vec![NetBackend::User; at];
    let tap = match &iface.kind {
        InterfaceKind::Bridge { bridge } => {
            let name = free_tap(agent, live, at).await;
            netdev::create_tap(&name, bridge, iface.virtualport.as_ref()).await?;
            nets.push(NetBackend::Tap {
                ifname: name.clone(),
            });
            Some(name)
        }
        InterfaceKind::User | InterfaceKind::Network { .. } => {
            nets.push(NetBackend::User);
            None
        }
    };
    let spec = LaunchSpec {
        domain: live,
        accel,
        run_dir,
        nets,
        vnc_display: None,
        spice_port: None,
        incoming: false,
        paused: false,
        mem_path: None,
    };
    let undo_tap = || async {
        if let Some(t) = &tap {
            netdev::remove_taps(std::slice::from_ref(t)).await;
        }
    };
    let Some(mut plug) = nic_plug(&spec, at) else {
        undo_tap().await;
        return Err(AgentError::Failed(
            "no QEMU arguments for the interface".into(),
        ));
    };
    // Ids of NICs plugged at start follow their index then; after a
    // removal, the index of a new NIC may still be taken.
    let (dev_id, net_id) = free_ids(qmp, at).await;
    plug.device = plug
        .device
        .replace(&format!("id=net{at},"), &format!("id={dev_id},"))
        .replace(&format!("netdev=hostnet{at}"), &format!("netdev={net_id}"));
    plug.netdev["id"] = json!(net_id);
    if let Err(err) = qmp.execute("netdev_add", Some(plug.netdev.clone())).await {
        undo_tap().await;
        return Err(err.into());
    }
    if let Err(err) = device_add(qmp, &plug.device).await {
        let _ = qmp
            .execute("netdev_del", Some(json!({ "id": net_id })))
            .await;
        undo_tap().await;
        return Err(err);
    }
    Ok(tap)
}

/// A tap name for NIC `at` that no interface of this host uses.
async fn free_tap(agent: &Agent, live: &Domain, at: usize) -> String {
    let mut i = at;
    loop {
        let name = netdev::tap_name(&agent.host_tag, &live.uuid, i);
        if !std::path::Path::new("/sys/class/net").join(&name).exists() {
            return name;
        }
        i += 1;
    }
}

/// Device ids under /machine/peripheral.
async fn peripheral_ids(qmp: &Qmp) -> Vec<String> {
    let Ok(list) = qmp
        .execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))
        .await
    else {
        return Vec::new();
    };
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

async fn free_ids(qmp: &Qmp, at: usize) -> (String, String) {
    let taken = peripheral_ids(qmp).await;
    if !taken.iter().any(|t| *t == format!("net{at}")) {
        return (format!("net{at}"), format!("hostnet{at}"));
    }
    let mut k = 1;
    while taken.iter().any(|t| *t == format!("net{at}h{k}")) {
        k += 1;
    }
    (format!("net{at}h{k}"), format!("hostnet{at}h{k}"))
}

/// What to undo once a device is gone.
#[derive(Debug, Clone)]
enum Leftover {
    Disk {
        target: String,
    },
    Nic {
        mac: String,
        netdev: Option<String>,
        tap: Option<String>,
    },
}

/// Asks the guest to release device `at` of the live definition; finishes
/// the removal when it does. Returns whether it did within
/// [`RELEASE_WAIT`]; if not, the removal stays pending (and refuses
/// migrations) until `DEVICE_DELETED` arrives.
pub(super) async fn unplug(
    agent: &Arc<Agent>,
    slot: &Arc<DomainSlot>,
    e: &mut DomainEntry,
    dev: &HotDevice,
    at: usize,
) -> Result<bool> {
    let run = e
        .run
        .as_ref()
        .ok_or_else(|| super::not_running(&slot.name))?;
    let qmp = run.qmp.clone();
    let (id, leftover) = match dev {
        HotDevice::Disk(_) => {
            let target = run.live.devices.disks[at].target_dev.clone();
            (target.clone(), Leftover::Disk { target })
        }
        HotDevice::Interface(_) => {
            let mac = run.live.devices.interfaces[at]
                .mac
                .clone()
                .unwrap_or_default();
            let id = nic_id(&qmp, &mac)
                .await
                .ok_or_else(|| AgentError::Failed(format!("QEMU has no device with MAC {mac}")))?;
            let netdev = qmp
                .execute(
                    "qom-get",
                    Some(
                        json!({"path": format!("/machine/peripheral/{id}"), "property": "netdev"}),
                    ),
                )
                .await
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            let tap = match &netdev {
                Some(n) => tap_of(&qmp, n).await,
                None => None,
            };
            (id, Leftover::Nic { mac, netdev, tap })
        }
    };
    let mut events = qmp.events();
    qmp.execute("device_del", Some(json!({ "id": id }))).await?;
    agent.unplugs.add(&slot.name, &id);
    let released = tokio::time::timeout(RELEASE_WAIT, deleted(&mut events, &id))
        .await
        .is_ok();
    if released {
        finish(agent, slot, e, &id, &leftover).await;
        return Ok(true);
    }
    let (agent, slot) = (agent.clone(), slot.clone());
    tokio::spawn(async move {
        if deleted(&mut events, &id).await {
            let mut e = slot.inner.lock().await;
            finish(&agent, &slot, &mut e, &id, &leftover).await;
        } else {
            // QEMU ended: the device went with it.
            agent.unplugs.remove(&slot.name, &id);
        }
    });
    Ok(false)
}

/// Waits for `DEVICE_DELETED` of device `id`; false if QEMU went away.
async fn deleted(
    events: &mut tokio::sync::broadcast::Receiver<tern_qemu::QmpEvent>,
    id: &str,
) -> bool {
    loop {
        match events.recv().await {
            Ok(ev) if ev.name == "DEVICE_DELETED" && ev.data["device"] == id => return true,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The device gone: drops its back end and takes it out of the live
/// definition.
async fn finish(agent: &Agent, slot: &DomainSlot, e: &mut DomainEntry, id: &str, left: &Leftover) {
    agent.unplugs.remove(&slot.name, id);
    let Some(run) = e.run.as_mut() else { return };
    match left {
        Leftover::Disk { target } => {
            del_nodes(&run.qmp, &[file_node(target), drive_node(target)]).await;
            del_key(&run.qmp, &tern_qemu::cmdline::disk_secret_id(target)).await;
            give_back_disk(agent, &run.live, target).await;
            run.live.devices.disks.retain(|d| d.target_dev != *target);
        }
        Leftover::Nic { mac, netdev, tap } => {
            if let Some(n) = netdev {
                let _ = run
                    .qmp
                    .execute("netdev_del", Some(json!({ "id": n })))
                    .await;
            }
            if let Some(t) = tap {
                netdev::remove_taps(std::slice::from_ref(t)).await;
                run.taps.retain(|x| x != t);
            }
            run.live
                .devices
                .interfaces
                .retain(|i| i.mac.as_deref() != Some(mac.as_str()));
        }
    }
    save_live(agent, slot, e);
}

/// A detached disk's file goes back to root from the guest's uid (QEMU
/// closed it with `blockdev-del`).
async fn give_back_disk(agent: &Agent, live: &Domain, target: &str) {
    let Some(u) = agent.held_user(live.uuid) else {
        return;
    };
    let Ok(resolved) = agent.pools.resolve_disks(live).await else {
        return;
    };
    let src = resolved
        .devices
        .disks
        .iter()
        .find(|d| d.target_dev == target)
        .and_then(|d| d.source.clone());
    if let Some(src) = src {
        if let Err(e) = crate::confine::user::give_back(&src, u.uid) {
            tracing::warn!(path = %src.display(), error = %e, "cannot give a detached disk back to root");
        }
    }
}

/// The id of the NIC whose MAC is `mac`.
async fn nic_id(qmp: &Qmp, mac: &str) -> Option<String> {
    for id in peripheral_ids(qmp).await {
        let got = qmp
            .execute(
                "qom-get",
                Some(json!({"path": format!("/machine/peripheral/{id}"), "property": "mac"})),
            )
            .await;
        if let Ok(v) = got {
            if v.as_str().is_some_and(|m| m.eq_ignore_ascii_case(mac)) {
                return Some(id);
            }
        }
    }
    None
}

/// The host tap behind netdev `id` (from `info network`).
async fn tap_of(qmp: &Qmp, id: &str) -> Option<String> {
    let out = qmp
        .execute(
            "human-monitor-command",
            Some(json!({ "command-line": "info network" })),
        )
        .await
        .ok()?;
    let text = out.as_str()?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{id}:")) || l.contains(&format!(" {id}:")))
        .and_then(|l| l.split("ifname=").nth(1))
        .map(|s| s.split(',').next().unwrap_or(s).trim().to_string())
}
