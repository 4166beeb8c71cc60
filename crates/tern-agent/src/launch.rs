//! Starting QEMU for a domain: checks that catch bad definitions before any
//! process exists, then the launch itself, which undoes everything it did
//! if QEMU does not come up.

use crate::error::{AgentError, Result};
use crate::guest_setup;
use crate::netdev;
use crate::procs;
use crate::registry::Running;
use crate::Agent;
use std::path::Path;
use std::time::{Duration, Instant};
use tern_model::{CharDev, DiskDevice, Domain, InterfaceKind};
use tern_qemu::cmdline::{self, Accel, LaunchSpec, NetBackend};
use tern_qemu::{firmware, Qmp};

/// How a domain is being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// A normal boot; `paused` leaves vCPUs stopped.
    Boot {
        /// Start paused.
        paused: bool,
    },
    /// A migration destination: paused, waiting for `migrate-incoming`.
    Incoming,
}

/// How long QEMU may take to open its monitor.
const QMP_WAIT: Duration = Duration::from_secs(30);

/// Refuses definitions that cannot start on this host, naming what is
/// wrong and what to do. Nothing is created.
pub fn preflight(agent: &Agent, d: &Domain) -> Result<()> {
    for (what, p) in [("kernel", &d.os.kernel), ("initrd", &d.os.initrd)] {
        if let Some(p) = p {
            if !p.is_file() {
                return Err(AgentError::Invalid(format!(
                    "{what} '{}' of domain '{}' does not exist; fix <{what}> in the definition",
                    p.display(),
                    d.name
                )));
            }
        }
    }
    for disk in &d.devices.disks {
        match (&disk.source, disk.device) {
            (None, DiskDevice::Cdrom) => {}
            (None, DiskDevice::Disk) if disk.remote.is_some() => {}
            (None, DiskDevice::Disk) => {
                return Err(AgentError::Invalid(format!(
                    "disk '{}' of domain '{}' has no source; add <source file=...>",
                    disk.target_dev, d.name
                )))
            }
            (Some(src), _) => {
                if !src.exists() {
                    return Err(AgentError::Invalid(format!(
                        "disk '{}' of domain '{}': source '{}' does not exist; create it (tern vol-create-as) or fix <source>",
                        disk.target_dev,
                        d.name,
                        src.display()
                    )));
                }
            }
        }
    }
    for (i, iface) in d.devices.interfaces.iter().enumerate() {
        if let InterfaceKind::Bridge { bridge } = &iface.kind {
            if !Path::new("/sys/class/net").join(bridge).exists() {
                return Err(AgentError::Invalid(format!(
                    "interface {i} of domain '{}': bridge '{bridge}' does not exist on this host; create it or change <source bridge=...>",
                    d.name
                )));
            }
            if iface
                .virtualport
                .as_ref()
                .is_some_and(|v| v.port_type == "openvswitch")
                && !netdev::have_ovs()
            {
                return Err(AgentError::Unsupported(format!(
                    "interface {i} of domain '{}' is an Open vSwitch port but ovs-vsctl is not installed; install openvswitch-switch or remove <virtualport>",
                    d.name
                )));
            }
        }
    }
    if let Some(m) = &d.os.machine {
        if !agent.machines.iter().any(|(n, _)| n == m) {
            return Err(AgentError::Unsupported(format!(
                "machine type '{m}' of domain '{}' is not known to QEMU {}; pick one from 'qemu-system-x86_64 -machine help'",
                d.name, agent.qemu_version
            )));
        }
    }
    Ok(())
}

/// Starts QEMU for `d` and connects to its monitor. On any failure the
/// process, its taps and its sockets are gone when this returns.
pub async fn launch(agent: &Agent, d: &Domain, mode: LaunchMode) -> Result<Running> {
    let accel = agent.accel().await.accel();
    // The live definition: laid out, with firmware, and (on a fresh boot)
    // the machine and CPU pinned; a migration destination takes the
    // source's pinned definition as it is.
    let mut live = d.clone();
    guest_setup::complete(agent, &mut live);
    if mode != LaunchMode::Incoming {
        guest_setup::pin_identity(agent, &mut live, accel).await?;
    }
    // What QEMU opens on this host: volumes and paths of netfs pools that
    // QEMU reaches itself become nfs:// network sources.
    // The live definition keeps what the operator wrote.
    let written = &live;
    let resolved = agent.pools.resolve_disks(written).await?;
    let resolved = agent.networks.resolve(&resolved)?;
    let d = &resolved;
    crate::pools::check_network_drivers(d).await?;
    agent.pools.secrets.check_domain(d)?;
    agent.pools.check_rbd_disks(d).await?;
    crate::confine::check_domain_paths(agent, d).await?;
    preflight(agent, d)?;
    let mem_path = crate::hugepages::mem_path(d)?;
    let pins = crate::pinning::plan_here(d)?;
    // The guest's own uid (see `confine::guest_uids`). At a boot its
    // images go back to root first if a QEMU that ended without its agent
    // left them a guest uid's (a migration destination has just handed
    // the volumes it received to this guest's uid).
    let user = agent.guest_user(d.uuid)?;
    if mode != LaunchMode::Incoming {
        crate::confine::ownership::reclaim(agent, d).await;
    }
    firmware::prepare_firmware(d)
        .map_err(|e| AgentError::Invalid(format!("domain '{}': {e}", d.name)))?;
    let run_dir = agent.layout.run_dir(&d.name);
    std::fs::create_dir_all(&run_dir).map_err(|e| AgentError::state(&run_dir, e))?;
    for stale in [
        cmdline::qmp_socket(&run_dir),
        cmdline::pid_file(&run_dir),
        cmdline::console_log(&run_dir, 0),
        cmdline::qemu_log(&run_dir),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let mut taps = Vec::new();
    let mut nets = Vec::new();
    for (i, iface) in d.devices.interfaces.iter().enumerate() {
        match &iface.kind {
            InterfaceKind::User | InterfaceKind::Network { .. } => nets.push(NetBackend::User),
            InterfaceKind::Bridge { bridge } => {
                let name = netdev::tap_name(&agent.host_tag, &d.uuid, i);
                if let Err(e) = netdev::create_tap(&name, bridge, iface.virtualport.as_ref()).await
                {
                    netdev::remove_taps(&taps).await;
                    return Err(e);
                }
                taps.push(name.clone());
                nets.push(NetBackend::Tap { ifname: name });
            }
        }
    }
    let vnc_display = d
        .devices
        .graphics
        .iter()
        .find(|g| g.kind == "vnc")
        .map(|g| match g.port {
            Some(p) if !g.autoport && p >= 5900 => (p - 5900) as u16,
            _ => free_vnc_display(),
        });
    let spice_port = d
        .devices
        .graphics
        .iter()
        .find(|g| g.kind == "spice")
        .map(|g| match g.port {
            Some(p) if !g.autoport && p > 0 => p as u16,
            _ => 5900 + free_vnc_display(),
        });
    if let Err(e) = guest_setup::start_swtpm(agent, d, &run_dir).await {
        netdev::remove_taps(&taps).await;
        crate::confine::ownership::give_back_domain(agent, d, user.as_ref()).await;
        return Err(e);
    }
    let spec = LaunchSpec {
        domain: d,
        accel,
        run_dir: run_dir.clone(),
        nets,
        vnc_display,
        spice_port,
        incoming: mode == LaunchMode::Incoming,
        paused: matches!(mode, LaunchMode::Boot { paused: true }),
        mem_path,
    };
    let staged = match agent
        .pools
        .secrets
        .stage_for_qemu(d, &run_dir, user.as_ref())
    {
        Ok(s) => s,
        Err(e) => {
            netdev::remove_taps(&taps).await;
            crate::confine::ownership::give_back_domain(agent, d, user.as_ref()).await;
            return Err(e);
        }
    };
    let mut args = cmdline::build_command_line(&spec);
    args.extend(crate::confine::user::qemu_args(
        &agent.cfg.server.qemu,
        user.as_ref(),
    ));
    tracing::info!(domain = %d.name, args = %args.join(" "), "starting QEMU");
    let result = spawn_and_connect(agent, d, &run_dir, &args).await;
    // QEMU read its keys while starting (or failed to start): none stays.
    crate::secrets::remove_staged(&staged);
    match result {
        Ok((pid, start_time, qmp)) => {
            if let Some(plan) = &pins {
                if let Err(e) = crate::pinning::apply(&qmp, pid, &d.name, plan).await {
                    let _ = qmp.execute("quit", None).await;
                    netdev::remove_taps(&taps).await;
                    crate::confine::ownership::give_back_domain(agent, d, user.as_ref()).await;
                    return Err(e);
                }
            }
            let console_pty = console_pty(&qmp, d).await;
            Ok(Running {
                id: agent.next_id(),
                pid,
                start_time,
                qmp,
                live: written.clone(),
                taps,
                accel: accel_name(accel).into(),
                console_pty,
            })
        }
        Err(e) => {
            netdev::remove_taps(&taps).await;
            let _ = std::fs::remove_file(cmdline::qmp_socket(&run_dir));
            let _ = std::fs::remove_file(cmdline::pid_file(&run_dir));
            crate::confine::ownership::give_back_domain(agent, d, user.as_ref()).await;
            Err(e)
        }
    }
}

fn accel_name(a: Accel) -> &'static str {
    a.as_str()
}

async fn spawn_and_connect(
    agent: &Agent,
    d: &Domain,
    run_dir: &Path,
    args: &[String],
) -> Result<(u32, u64, Qmp)> {
    let log = cmdline::qemu_log(run_dir);
    let mut cmd = procs::detached_command(&agent.cfg.qemu_binary, &log)
        .map_err(|e| AgentError::state(&log, e))?;
    cmd.args(args);
    let mut child = cmd.spawn().map_err(|e| {
        AgentError::Failed(format!(
            "cannot run {}: {e}; install qemu-system-x86",
            agent.cfg.qemu_binary.display()
        ))
    })?;
    let pid = child.id().unwrap_or(0);
    let sock = cmdline::qmp_socket(run_dir);
    let deadline = Instant::now() + QMP_WAIT;
    let qmp = loop {
        if let Ok(Some(_status)) = child.try_wait() {
            let why = procs::last_log_line(&log).unwrap_or_else(|| "no message".into());
            return Err(AgentError::Failed(format!(
                "QEMU refused to start domain '{}': {why}",
                d.name
            )));
        }
        if sock.exists() {
            if let Ok(q) = Qmp::connect(&sock).await {
                break q;
            }
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(AgentError::Timeout(format!(
                "QEMU for domain '{}' did not open its monitor within {} s; see {}",
                d.name,
                QMP_WAIT.as_secs(),
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Reap the process when it ends; its end is observed through QMP.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let start_time = procs::start_time(pid).unwrap_or(0);
    Ok((pid, start_time, qmp))
}

async fn console_pty(qmp: &Qmp, d: &Domain) -> Option<String> {
    if !d
        .devices
        .serials
        .iter()
        .any(|s| s.port == 0 && s.kind == CharDev::Pty)
    {
        return None;
    }
    let v = qmp.execute("query-chardev", None).await.ok()?;
    v.as_array()?
        .iter()
        .find(|c| c["label"] == "charserial0")
        .and_then(|c| c["filename"].as_str())
        .and_then(|f| f.strip_prefix("pty:"))
        .map(str::to_string)
}

fn free_vnc_display() -> u16 {
    (0..100u16)
        .find(|n| std::net::TcpListener::bind(("127.0.0.1", 5900 + n)).is_ok())
        .unwrap_or(99)
}
