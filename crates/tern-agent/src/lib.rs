//! `ternd`, the host agent.
//!
//! It owns the QEMU processes of one host, their definitions, the storage
//! pools, and serves the host API. Guests outlive the agent: QEMU runs in
//! its own session with its monitor on a unix socket in the state
//! directory, and a restarted agent re-attaches to every QEMU it finds
//! there (see [`monitor::reattach_all`]).

pub mod accel;
pub mod access;
pub mod cluster;
pub mod config;
pub mod confine;
pub mod domains;
pub mod error;
pub mod events;
pub mod facts;
pub mod faults;
pub mod fence;
pub mod guest_agent;
pub mod guest_events;
pub mod guest_setup;
pub mod hotplug;
pub mod hugepages;
pub mod launch;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod migration;
pub mod monitor;
pub mod netdev;
pub mod netfs;
pub mod networks;
pub mod pinning;
pub mod pools;
pub mod procs;
pub mod registry;
pub mod secrets;
pub mod server;
pub mod settings;

use accel::AccelChoice;
use config::{AgentConfig, Layout};
use registry::Registry;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// The agent's shared state.
#[derive(Debug)]
pub struct Agent {
    /// Configuration.
    pub cfg: AgentConfig,
    /// State directory layout.
    pub layout: Layout,
    /// Domains.
    pub domains: Registry,
    /// Pools.
    pub pools: pools::Pools,
    /// Migration jobs.
    pub jobs: migration::Jobs,
    /// Device removals the guests have not acknowledged yet.
    pub unplugs: hotplug::Pending,
    /// Networks: names for host bridges.
    pub networks: networks::Networks,
    /// QEMU version string.
    pub qemu_version: String,
    /// Machine types QEMU knows, with aliases.
    pub machines: Vec<(String, Option<String>)>,
    /// Short tag distinguishing this agent's tap devices from another
    /// agent's on the same machine.
    pub host_tag: String,
    /// The user QEMU drops to; `None` keeps it root (see [`confine::user`]).
    pub qemu_user: Option<confine::user::QemuUser>,
    /// Each guest's own uid, when `[qemu] uid_range` is set (see
    /// [`confine::guest_uids`]).
    pub guest_uids: Option<confine::guest_uids::UidTable>,
    accel: OnceCell<AccelChoice>,
    /// `host-model` resolved per accelerator, probed once from this QEMU binary.
    host_cpus: tokio::sync::Mutex<Vec<(&'static str, tern_qemu::identity::HostCpu)>>,
    next_id: AtomicU32,
}

impl Agent {
    /// Prepares the state directory, learns about QEMU, loads pools and
    /// definitions and re-attaches to running guests.
    pub async fn open(cfg: AgentConfig) -> anyhow::Result<Arc<Agent>> {
        let layout = Layout::new(&cfg.state_dir);
        layout.create().map_err(|e| {
            anyhow::anyhow!(
                "cannot create state directory {}: {e}",
                cfg.state_dir.display()
            )
        })?;
        let qemu_version = tern_qemu::probe::qemu_version(&cfg.qemu_binary).await?;
        let machines = tern_qemu::probe::machine_types(&cfg.qemu_binary).await?;
        let host_tag = short_hash(&cfg.state_dir.display().to_string());
        let qemu_user = confine::user::lookup(&cfg.server.qemu)?;
        confine::user::check_qemu_version(&qemu_version, qemu_user.as_ref())
            .map_err(anyhow::Error::msg)?;
        confine::user::grant_userfaultfd(qemu_user.as_ref());
        let guest_uids =
            confine::ownership::open_table(&cfg.server.qemu, qemu_user.as_ref(), &cfg.state_dir)?;
        for dir in [cfg.state_dir.clone(), layout.runs()] {
            let per_guest = guest_uids.is_some();
            confine::user::let_guests_through(&dir, qemu_user.as_ref(), per_guest).map_err(
                |e| anyhow::anyhow!("cannot let QEMU's user through {}: {e}", dir.display()),
            )?;
        }
        let pools = pools::Pools::load(layout.pools());
        let networks = networks::Networks::load(layout.networks());
        let (jobs, unfinished) = migration::Jobs::open(layout.jobs());
        let agent = Arc::new(Agent {
            layout,
            domains: Registry::default(),
            pools,
            jobs,
            unplugs: Default::default(),
            networks,
            qemu_version,
            machines,
            host_tag,
            qemu_user,
            guest_uids,
            accel: OnceCell::new(),
            host_cpus: Default::default(),
            next_id: AtomicU32::new(1),
            cfg,
        });
        agent.pools.autostart().await;
        monitor::reattach_all(&agent).await;
        migration::recover::recover_all(&agent, unfinished).await;
        agent.sweep_guest_uids();
        Ok(agent)
    }

    /// The accelerator guests start with (probing once if `auto`).
    pub async fn accel(&self) -> &AccelChoice {
        self.accel
            .get_or_init(|| async {
                let kernel = facts::gather("", "", &[]).kernel;
                let c = accel::resolve(
                    self.cfg.accel,
                    &self.cfg.qemu_binary,
                    &self.qemu_version,
                    &kernel,
                    &self.cfg.accel_cache,
                )
                .await;
                tracing::info!(accel = %c.accel, reason = %c.reason, "accelerator chosen");
                c
            })
            .await
    }

    /// `host-model` on this host as a named model plus features, probed
    /// from the QEMU binary once per accelerator and cached.
    pub async fn host_cpu(
        &self,
        accel: tern_qemu::cmdline::Accel,
    ) -> Result<tern_qemu::identity::HostCpu, error::AgentError> {
        let mut cache = self.host_cpus.lock().await;
        if let Some((_, cpu)) = cache.iter().find(|(a, _)| *a == accel.as_str()) {
            return Ok(cpu.clone());
        }
        let cpu =
            tern_qemu::identity::probe_host_cpu(&self.cfg.qemu_binary, accel, &self.layout.runs())
                .await
                .map_err(|e| {
                    error::AgentError::Failed(format!("cannot resolve host-model: {e}"))
                })?;
        tracing::info!(model = %cpu.model, features = cpu.features.len(), "host-model resolved");
        cache.push((accel.as_str(), cpu.clone()));
        Ok(cpu)
    }

    /// Next run-time id.
    pub fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes sure future ids are above `id` (after re-attaching).
    pub fn bump_id(&self, id: u32) {
        self.next_id.fetch_max(id + 1, Ordering::Relaxed);
    }

    /// The address other hosts reach this host's incoming QEMU at.
    pub fn migration_address(&self) -> String {
        if let Some(a) = &self.cfg.migration_address {
            return a.clone();
        }
        match self.cfg.listen.or(self.cfg.listen_tls) {
            Some(l) if !l.ip().is_unspecified() => l.ip().to_string(),
            Some(_) => facts::gather("", "", &[]).hostname,
            None => "127.0.0.1".into(),
        }
    }

    /// The address data-plane listeners (incoming QEMU, NBD, cold-copy
    /// receivers, post-copy recovery) bind: the migration address only,
    /// never every interface, so they are not reachable from networks the
    /// migration does not use.
    pub fn migration_bind_address(&self) -> String {
        self.migration_address()
    }

    /// How other agents reach this agent's API: its TLS listener, else its
    /// TCP listener (at the migration address), else its unix socket (peers
    /// on the same machine, as in tests).
    pub fn self_uri(&self) -> String {
        let addr = self.migration_address();
        let host = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr
        };
        match (self.cfg.listen_tls, self.cfg.listen) {
            (Some(l), _) => format!("tern+tls://{host}:{}/system", l.port()),
            (None, Some(l)) => format!("tern+tcp://{host}:{}/system", l.port()),
            (None, None) => format!("tern+unix:///system?socket={}", self.cfg.socket.display()),
        }
    }

    /// A client for another agent: over tern+tls:// it presents this
    /// agent's `clientcert.pem` (from `--pki-dir`), as libvirtd does. URIs
    /// reach an agent from others (drivers, the controller), so `ssh` and
    /// `?pkipath=` / `?command=` are refused (see [`tern_api::peer`]).
    pub fn peer_client(
        &self,
        uri: &tern_model::uri::ConnectUri,
    ) -> Result<tern_api::Client, tern_api::ClientError> {
        tern_api::peer::client(uri, &tern_pki::PkiDir::new(&self.cfg.pki_dir))
    }

    /// The TLS server configuration from `--pki-dir` (servercert.pem,
    /// client certificates required and checked against cacert.pem); for
    /// any listener that carries agent traffic.
    pub fn tls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, tern_pki::TlsError> {
        tern_pki::server_config(&tern_pki::PkiDir::new(&self.cfg.pki_dir))
    }

    /// The TLS client configuration from `--pki-dir` (clientcert.pem,
    /// servers checked against cacert.pem); what this agent presents to peers.
    pub fn tls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, tern_pki::TlsError> {
        tern_pki::client_config(&tern_pki::PkiDir::new(&self.cfg.pki_dir))
    }

    /// Host facts.
    pub async fn facts(&self) -> tern_model::HostFacts {
        let accel = self.accel().await.accel.clone();
        let mut f = facts::gather(&self.qemu_version, &accel, &self.cfg.fact_overrides);
        f.machines = self
            .machines
            .iter()
            .flat_map(|(name, alias)| std::iter::once(name.clone()).chain(alias.clone()))
            .collect();
        f
    }
}

/// Four hex digits derived from a string (FNV-1a), stable across runs.
pub fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:04x}", (h ^ (h >> 16)) & 0xffff)
}
