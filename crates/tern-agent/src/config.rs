//! Agent configuration and the state directory layout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Which accelerator guests run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelSetting {
    /// Hardware virtualisation; starting fails if it is unusable.
    Kvm,
    /// Software emulation.
    Tcg,
    /// KVM if a probe guest proves it boots, TCG otherwise (remembered).
    Auto,
}

/// What a stop of `ternd` (SIGTERM) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnStop {
    /// A host shutdown when systemd says the system is stopping; else
    /// only the agent stops (an upgrade or a restart).
    Auto,
    /// Always a host shutdown: ask the controller to move the running
    /// guests away (the host's auto-migrate-on-host-shutdown policy) and
    /// wait for them.
    HostShutdown,
    /// Only the agent stops; guests keep running.
    AgentOnly,
}

/// Everything `ternd` needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Root of all persistent state.
    pub state_dir: PathBuf,
    /// Unix socket of the host API.
    pub socket: PathBuf,
    /// Optional plain TCP listener (no authentication).
    pub listen: Option<SocketAddr>,
    /// Optional mutual-TLS listener.
    pub listen_tls: Option<SocketAddr>,
    /// Certificates: servercert.pem to serve TLS, clientcert.pem to call
    /// other agents over tern+tls:// (`--p2p`).
    pub pki_dir: PathBuf,
    /// Access rules and limits (`--config`).
    pub server: crate::settings::ServerSettings,
    /// Accelerator policy.
    pub accel: AccelSetting,
    /// Where the `auto` probe's answer is remembered (host-wide).
    pub accel_cache: PathBuf,
    /// The QEMU system emulator.
    pub qemu_binary: PathBuf,
    /// Overrides of reported host facts, `key=value` (for tests of the
    /// scheduler, which must see hosts that differ).
    pub fact_overrides: Vec<(String, String)>,
    /// Address this host's QEMU is reached at for incoming migrations
    /// (default: the `--listen` address, else 127.0.0.1 for a socket-only agent).
    pub migration_address: Option<String>,
    /// Ports incoming migrations listen on (libvirt's default range).
    pub migration_ports: std::ops::RangeInclusive<u16>,
    /// A migration whose byte count stands still this long is cancelled.
    pub stall_timeout: std::time::Duration,
    /// A migration no driver spoke about for this long is settled by this
    /// agent alone (libvirt's autodestroy of an orphaned incoming domain).
    pub orphan_timeout: std::time::Duration,
    /// Fault injection for tests.
    pub faults: Faults,
    /// What SIGTERM means (see [`OnStop`]).
    pub on_stop: OnStop,
    /// Longest wait for guests to move away when the host shuts down.
    pub shutdown_timeout: std::time::Duration,
    /// Cluster controllers to register with (empty: standalone).
    pub controllers: Vec<String>,
    /// Name in the cluster (default: the host name).
    pub host_name: Option<String>,
    /// Labels reported to the controller.
    pub labels: Vec<(String, String)>,
    /// Timings of the storage-lease fence (see [`crate::fence`]).
    pub fence: crate::fence::config::FenceSettings,
    /// The watchdog the fence feeds while armed (see
    /// [`crate::fence::watchdog`]).
    pub fence_watchdog: crate::fence::watchdog::WatchdogSpec,
}

/// Deliberate delays and failures, for tests of the failure paths.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Sleep this long at the start of Prepare (lets a test kill the agent there).
    pub prepare_delay: Option<std::time::Duration>,
    /// Stop the migration task that reaches this named point (see
    /// [`crate::faults`]), so a test can kill a process exactly there.
    pub stop_at: Option<String>,
    /// Refuse the first `start` of a domain (a rescue that fails once).
    pub refuse_start_once: bool,
    /// Report no RBD client addresses (a host that dies before it ever
    /// reported its guest's Ceph client).
    pub hide_rbd_clients: bool,
}

impl AgentConfig {
    /// A configuration with defaults under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        AgentConfig {
            socket: state_dir.join("ternd.sock"),
            state_dir,
            listen: None,
            listen_tls: None,
            pki_dir: PathBuf::from(tern_pki::DEFAULT_PKI_DIR),
            server: crate::settings::ServerSettings::default(),
            accel: AccelSetting::Auto,
            accel_cache: PathBuf::from("/var/cache/tern/accel.json"),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            fact_overrides: Vec::new(),
            migration_address: None,
            migration_ports: 49152..=49215,
            stall_timeout: std::time::Duration::from_secs(15),
            orphan_timeout: std::time::Duration::from_secs(30),
            faults: Faults::default(),
            on_stop: OnStop::Auto,
            shutdown_timeout: std::time::Duration::from_secs(300),
            controllers: Vec::new(),
            host_name: None,
            labels: Vec::new(),
            fence: Default::default(),
            fence_watchdog: Default::default(),
        }
    }
}

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Layout rooted at `root`.
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }
    /// Persistent domain definitions (`<name>.json`).
    pub fn domains(&self) -> PathBuf {
        self.root.join("domains")
    }
    /// Per-domain run directories (QMP socket, pid, runtime record, console log).
    pub fn runs(&self) -> PathBuf {
        self.root.join("run")
    }
    /// One domain's run directory.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.runs().join(name)
    }
    /// Migration job records (`<domain>.json` while running,
    /// `<domain>.done.json` for the last finished one).
    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }
    /// Pool definitions.
    pub fn pools(&self) -> PathBuf {
        self.root.join("pools")
    }
    /// Network definitions (`<name>.json`: a name for a host bridge).
    pub fn networks(&self) -> PathBuf {
        self.root.join("networks")
    }
    /// Creates the directories.
    pub fn create(&self) -> std::io::Result<()> {
        for d in [
            self.domains(),
            self.runs(),
            self.pools(),
            self.jobs(),
            self.networks(),
        ] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }
}

/// Writes a file atomically (temp file, fsync, rename) so a crash never
/// leaves a half-written definition behind.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is only durable once the directory is synced.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
