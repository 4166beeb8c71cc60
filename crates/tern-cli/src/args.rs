//! Command-line grammar: virsh's verbs and flags.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Tern: move KVM/QEMU virtual machines between hosts. Verbs, flags and
/// connection URIs follow virsh.
#[derive(Parser, Debug)]
#[command(name = "tern", version, about, long_about = None)]
pub struct Cli {
    /// Connection URI: tern:///system, tern+unix:///system?socket=PATH,
    /// tern+tls://HOST[:PORT]/system[?pkipath=DIR],
    /// tern+ssh://[USER@]HOST[:PORT]/system[?socket=&keyfile=&no_verify=1&proxy=],
    /// tern+tcp://HOST[:PORT]/system (default from TERN_DEFAULT_URI).
    #[arg(short = 'c', long = "connect", global = true, env = "TERN_DEFAULT_URI")]
    pub connect: Option<String>,
    /// Cluster controller URL, http://HOST:PORT, for the cluster verbs
    /// (host-list, server-live-migrate...) and migrate-forecast ID.
    #[arg(long, global = true, env = "TERN_CONTROLLER")]
    pub controller: Option<String>,
    /// The verb.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Verbs.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Make a CA and certificates for mutual TLS (tern+tls://).
    #[command(subcommand)]
    Pki(crate::pki::PkiCmd),
    /// Splice stdin/stdout to the local agent's socket (the remote end of tern+ssh://).
    Proxy {
        /// The agent socket to reach.
        #[arg(long, default_value = tern_api::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show the agent's API server: connections, workers, and who you are to it.
    SrvInfo {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Cluster verbs (answered by tern-controller).
    #[command(flatten)]
    Cluster(crate::cluster::ClusterCmd),
    /// Device hot-plug verbs (attach-device, detach-interface...).
    #[command(flatten)]
    Device(crate::device::DeviceCmd),
    /// Network verbs (net-define-as, net-list...).
    #[command(flatten)]
    Net(crate::network::NetCmd),
    /// Secret verbs (secret-define, secret-set-value...).
    #[command(flatten)]
    Secret(crate::secret::SecretCmd),
    /// Migrate a domain to another host (as virsh migrate).
    Migrate(Box<crate::migrate::MigrateArgs>),
    /// Show the figures of a domain's migration job.
    Domjobinfo {
        /// Domain name.
        domain: String,
        /// The last finished job.
        #[arg(long)]
        completed: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print the host's events as they happen (as virsh event): lifecycle,
    /// migration phases, pre-copy iterations and migration job events.
    Event {
        /// Only this domain's events.
        #[arg(long)]
        domain: Option<String>,
        /// Keep printing until interrupted (without it: stop after one event).
        #[arg(long = "loop")]
        keep_looping: bool,
        /// Prefix each event with its time (UTC).
        #[arg(long)]
        timestamp: bool,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Print (or follow) a migration job's events: phases, iterations, decisions.
    Domjobevents {
        /// Domain name.
        domain: String,
        /// Keep printing until the job ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Abort a domain's migration job.
    Domjobabort {
        /// Domain name.
        domain: String,
        /// Pause a post-copy migration instead (the guest already runs on
        /// the destination); 'migrate --postcopy-resume' resumes it.
        #[arg(long)]
        postcopy: bool,
    },
    /// Set the bandwidth of a running migration, MiB/s (0 = unlimited).
    MigrateSetspeed {
        /// Domain name.
        domain: String,
        /// MiB/s.
        bandwidth: u64,
    },
    /// Print the migration bandwidth, MiB/s (0 = unlimited).
    MigrateGetspeed {
        /// Domain name.
        domain: String,
    },
    /// Set the maximum downtime of a running migration, ms.
    MigrateSetmaxdowntime {
        /// Domain name.
        domain: String,
        /// Milliseconds.
        downtime: u64,
    },
    /// Print the maximum downtime, ms.
    MigrateGetmaxdowntime {
        /// Domain name.
        domain: String,
    },
    /// Print or set the xbzrle compression cache size.
    MigrateCompcache {
        /// Domain name.
        domain: String,
        /// New size, e.g. 256M.
        #[arg(long)]
        size: Option<String>,
    },
    /// Predict a live migration's total time and downtime before starting it.
    MigrateForecast {
        /// Domain name.
        domain: String,
        /// Destination URI (as seen from the source host), for the link probe.
        desturi: Option<String>,
        /// Planned bandwidth cap, MiB/s.
        #[arg(long)]
        bandwidth: Option<u64>,
        /// Planned maximum downtime, ms.
        #[arg(long)]
        max_downtime: Option<u64>,
        /// Post-copy will be allowed (as `migrate --postcopy`).
        #[arg(long)]
        postcopy: bool,
        /// Planned cap once in post-copy, MiB/s (as `migrate
        /// --postcopy-bandwidth`): post-copy's tail is priced at it.
        #[arg(long, requires = "postcopy")]
        postcopy_bandwidth: Option<u64>,
        /// The policy's deadline, seconds (as `migrate --deadline`).
        #[arg(long)]
        deadline: Option<u64>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Switch a running migration (started with --postcopy) to post-copy.
    MigratePostcopy {
        /// Domain name.
        domain: String,
    },
    /// List domains.
    List {
        /// Include inactive domains.
        #[arg(long)]
        all: bool,
        /// Only inactive domains.
        #[arg(long)]
        inactive: bool,
        /// Print names only.
        #[arg(long)]
        name: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a domain's details.
    Dominfo {
        /// Domain name or uuid.
        domain: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a domain's state.
    Domstate {
        /// Domain name or uuid.
        domain: String,
        /// Also print why it is in that state.
        #[arg(long)]
        reason: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List a domain's disks.
    Domblklist {
        /// Domain name or uuid.
        domain: String,
        /// Also show device type.
        #[arg(long)]
        details: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a domain's uuid.
    Domuuid {
        /// Domain name.
        domain: String,
    },
    /// Print a domain's libvirt XML.
    Dumpxml {
        /// Domain name or uuid.
        domain: String,
    },
    /// Define (or update) a domain from libvirt XML.
    Define {
        /// XML file.
        file: PathBuf,
    },
    /// Start a transient domain from libvirt XML.
    Create {
        /// XML file.
        file: PathBuf,
        /// Leave the guest paused.
        #[arg(long)]
        paused: bool,
    },
    /// Start a defined domain.
    Start {
        /// Domain name or uuid.
        domain: String,
        /// Leave the guest paused.
        #[arg(long)]
        paused: bool,
    },
    /// Ask the guest to power off (ACPI) and wait for it.
    Shutdown {
        /// Domain name or uuid.
        domain: String,
        /// Seconds to wait before giving up.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop a domain at once (kills QEMU).
    Destroy {
        /// Domain name or uuid.
        domain: String,
    },
    /// Send a JSON command to the QEMU guest agent and print its answer.
    QemuAgentCommand {
        /// Domain name or uuid.
        domain: String,
        /// The command, e.g. '{"execute":"guest-info"}'.
        command: String,
        /// Seconds to wait for the agent.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Show a guest's interfaces and addresses.
    Domifaddr {
        /// Domain name or uuid.
        domain: String,
        /// Where to learn them; only 'agent' (the QEMU guest agent).
        #[arg(long, default_value = "agent")]
        source: String,
    },
    /// Freeze the guest's file systems through the guest agent.
    Domfsfreeze {
        /// Domain name or uuid.
        domain: String,
    },
    /// Thaw file systems frozen by domfsfreeze.
    Domfsthaw {
        /// Domain name or uuid.
        domain: String,
    },
    /// Send a non-maskable interrupt to the guest.
    InjectNmi {
        /// Domain name or uuid.
        domain: String,
    },
    /// Reset the guest.
    Reboot {
        /// Domain name or uuid.
        domain: String,
    },
    /// Pause the guest's vCPUs.
    Suspend {
        /// Domain name or uuid.
        domain: String,
    },
    /// Resume a paused guest.
    Resume {
        /// Domain name or uuid.
        domain: String,
    },
    /// Remove a domain's definition.
    Undefine {
        /// Domain name or uuid.
        domain: String,
        /// Also delete its disk images that live in a pool.
        #[arg(long)]
        remove_all_storage: bool,
        /// Also delete its UEFI variable store (NVRAM file).
        #[arg(long)]
        nvram: bool,
    },
    /// Print the guest's serial console output (or follow it).
    Console {
        /// Domain name or uuid.
        domain: String,
        /// Keep printing new output until the guest stops or ^C.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Host facts: CPU, memory, kernel, QEMU, accelerator.
    #[command(alias = "hostinfo")]
    Nodeinfo {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Define a directory pool, a netfs (NFS) pool, an rbd (Ceph) pool or
    /// a logical (LVM) pool.
    PoolDefineAs {
        /// Pool name.
        name: String,
        /// Pool type: "dir", "netfs", "rbd" or "logical" (or give --type).
        #[arg(value_parser = ["dir", "netfs", "rbd", "logical"])]
        pool_type: Option<String>,
        /// Pool type, as `virsh pool-define-as --type`.
        #[arg(long = "type", value_name = "TYPE", value_parser = ["dir", "netfs", "rbd", "logical"])]
        type_flag: Option<String>,
        /// logical: a physical volume of the group (repeatable); pool-build
        /// makes the group on them, and LVM sees only these devices.
        #[arg(long)]
        source_dev: Vec<PathBuf>,
        /// Directory (for netfs, where the export is mounted or named); rbd
        /// pools have none.
        #[arg(long)]
        target: Option<PathBuf>,
        /// Other hosts see the same files (NFS, CephFS...); netfs pools always do.
        #[arg(long)]
        shared: bool,
        /// netfs: the NFS server; rbd: the monitors, MON[:PORT][,MON[:PORT]...].
        #[arg(long)]
        source_host: Option<String>,
        /// rbd: the monitors' port when --source-host gives none (6789).
        #[arg(long)]
        source_port: Option<u16>,
        /// rbd: the Ceph pool; logical: the volume group (the pool's name when omitted).
        #[arg(long)]
        source_name: Option<String>,
        /// rbd: "ceph" (cephx).
        #[arg(long, value_parser = ["ceph"])]
        auth_type: Option<String>,
        /// rbd: the cephx id, without "client." (e.g. admin).
        #[arg(long)]
        auth_username: Option<String>,
        /// rbd: the secret holding the key, by usage name.
        #[arg(long)]
        secret_usage: Option<String>,
        /// rbd: the secret holding the key, by uuid.
        #[arg(long)]
        secret_uuid: Option<String>,
        /// netfs: the exported directory.
        #[arg(long)]
        source_path: Option<String>,
        /// netfs: the export's format (only "nfs").
        #[arg(long, value_parser = ["nfs", "auto"])]
        source_format: Option<String>,
        /// netfs: "mount" (kernel NFS client), "qemu" (QEMU opens nfs://
        /// itself), or "auto" (mount when the kernel has NFS).
        #[arg(long, value_parser = ["auto", "mount", "qemu"])]
        access: Option<String>,
    },
    /// Create a pool's directory.
    PoolBuild {
        /// Pool name.
        pool: String,
    },
    /// Start (activate) a pool.
    PoolStart {
        /// Pool name.
        pool: String,
    },
    /// Start a pool when the agent starts.
    PoolAutostart {
        /// Pool name.
        pool: String,
        /// Turn autostart off.
        #[arg(long)]
        disable: bool,
    },
    /// List pools.
    PoolList {
        /// Include inactive pools.
        #[arg(long)]
        all: bool,
        /// Show capacity and type.
        #[arg(long)]
        details: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a pool.
    PoolInfo {
        /// Pool name.
        pool: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Rescan a pool.
    PoolRefresh {
        /// Pool name.
        pool: String,
    },
    /// Stop (deactivate) a pool; files are kept.
    PoolDestroy {
        /// Pool name.
        pool: String,
    },
    /// Remove a pool's definition; files are kept.
    PoolUndefine {
        /// Pool name.
        pool: String,
    },
    /// Create a volume.
    VolCreateAs {
        /// Pool name.
        pool: String,
        /// Volume name (a plain file name).
        name: String,
        /// Size, e.g. 10G (optional with --backing-vol).
        capacity: Option<String>,
        /// Image format.
        #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
        format: String,
        /// A volume of the same pool to use as backing image.
        #[arg(long)]
        backing_vol: Option<String>,
        /// Backing image format (read from the image; accepted for virsh compatibility).
        #[arg(long)]
        backing_vol_format: Option<String>,
    },
    /// List a pool's volumes.
    VolList {
        /// Pool name.
        pool: String,
        /// Show capacity and allocation.
        #[arg(long)]
        details: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a volume.
    VolInfo {
        /// Volume name.
        vol: String,
        /// Pool name.
        #[arg(long)]
        pool: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a volume's path.
    VolPath {
        /// Volume name.
        vol: String,
        /// Pool name.
        #[arg(long)]
        pool: String,
    },
    /// Change a volume's size (raw or qcow2 file, or RBD image).
    VolResize {
        /// Volume name.
        vol: String,
        /// New size, e.g. 20G (or, with --delta, the size to add).
        capacity: String,
        /// Pool name.
        #[arg(long)]
        pool: String,
        /// Add CAPACITY to the current size.
        #[arg(long)]
        delta: bool,
        /// Allow a smaller size (data past the new end is lost).
        #[arg(long)]
        shrink: bool,
    },
    /// Delete a volume.
    VolDelete {
        /// Volume name.
        vol: String,
        /// Pool name.
        #[arg(long)]
        pool: String,
    },
}
