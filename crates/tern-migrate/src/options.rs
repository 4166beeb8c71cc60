//! `virsh migrate` options, their validation, and the QEMU migration
//! capabilities and parameters they turn into.
//!
//! Tern's defaults, documented for operators:
//! - bandwidth: unlimited (QEMU's own default caps at 128 MiB/s, which
//!   Tern never inherits: it always sets `max-bandwidth` explicitly);
//! - maximum downtime: 300 ms without the policy; the policy starts at
//!   10 ms and raises it when the measured rates say so (up to 1000 ms);
//! - multifd channels with `--parallel`: 2, compression none.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use thiserror::Error;

/// Tern's default maximum downtime, ms.
pub const DEFAULT_MAX_DOWNTIME_MS: u64 = 300;
/// "Unlimited" bandwidth as QEMU accepts it, bytes/s (1 TiB/s).
pub const UNLIMITED_BANDWIDTH: u64 = 1 << 40;
/// Id of the `tls-creds-x509` object `--tls` gives each QEMU.
pub const TLS_CREDS_ID: &str = "tern-migration-tls";
/// Default multifd channels with `--parallel`.
pub const DEFAULT_PARALLEL_CONNECTIONS: u32 = 2;

/// What to do when `--timeout` expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TimeoutAction {
    /// Pause the guest so the rest can be copied (virsh's default).
    #[default]
    Suspend,
    /// Switch to post-copy.
    Postcopy,
}

/// Everything `tern migrate` can be asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateOptions {
    /// `--live` (otherwise the guest is paused while it moves).
    pub live: bool,
    /// `--offline`: the definition alone.
    pub offline: bool,
    /// `--p2p`: the source agent drives the destination.
    pub p2p: bool,
    /// `--persistent`: define on the destination.
    pub persistent: bool,
    /// `--undefinesource`.
    pub undefine_source: bool,
    /// `--suspend`: leave it paused on the destination.
    pub suspend: bool,
    /// `--dname`.
    pub dname: Option<String>,
    /// `--xml`: the destination's definition (same guest ABI).
    pub xml: Option<String>,
    /// `--change-protection`.
    pub change_protection: bool,
    /// `--unsafe`: skip the shared-storage and cache-mode checks.
    pub unsafe_: bool,
    /// `--compressed`: xbzrle.
    pub compressed: bool,
    /// `--comp-xbzrle-cache` bytes.
    pub xbzrle_cache: Option<u64>,
    /// `--auto-converge`.
    pub auto_converge: bool,
    /// `--auto-converge-initial` percent.
    pub auto_converge_initial: Option<u8>,
    /// `--auto-converge-increment` percent.
    pub auto_converge_increment: Option<u8>,
    /// `--parallel`: multifd.
    pub parallel: bool,
    /// `--parallel-connections`.
    pub parallel_connections: Option<u32>,
    /// `--parallel-compression`: none, zlib, zstd.
    pub parallel_compression: Option<String>,
    /// `--postcopy`: allow post-copy.
    pub postcopy: bool,
    /// `--postcopy-after-precopy`: switch after the first pass.
    pub postcopy_after_precopy: bool,
    /// `--postcopy-bandwidth` MiB/s: the cap once in post-copy (QEMU's
    /// `max-postcopy-bandwidth`; absent: unlimited). Sent only when set, so
    /// an agent that predates it still accepts the options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postcopy_bandwidth_mib: Option<u64>,
    /// `--bandwidth` MiB/s (0 or absent: unlimited).
    pub bandwidth_mib: Option<u64>,
    /// `--max-downtime` ms.
    pub max_downtime_ms: Option<u64>,
    /// `--timeout` seconds.
    pub timeout_s: Option<u64>,
    /// What `--timeout` does.
    pub timeout_action: TimeoutAction,
    /// `--abort-on-error`.
    pub abort_on_error: bool,
    /// `--migrateuri tcp://ADDR[:PORT]`.
    pub migrate_uri: Option<String>,
    /// `--listen-address`.
    pub listen_address: Option<String>,
    /// `--keep-dest-on-failure` (debugging).
    pub keep_dest_on_failure: bool,
    /// `--copy-storage-all`: mirror every local disk (whole chain, flattened).
    pub copy_storage_all: bool,
    /// `--copy-storage-inc`: mirror only the top image; the backing chain
    /// already exists on the destination.
    pub copy_storage_inc: bool,
    /// `--migrate-disks vda,vdb`: only these are copied; the rest must be shared.
    pub migrate_disks: Vec<String>,
    /// `--copy-storage-synchronous-writes`: active mirroring, so a guest
    /// writing faster than the link still converges.
    pub copy_storage_synchronous_writes: bool,
    /// `--target-pool`: where the destination creates the copied volumes
    /// (default: the pool of the same name as on the source).
    pub target_pool: Option<String>,
    /// `--deadline S`: the convergence policy finishes within this.
    pub deadline_s: Option<u64>,
    /// `--no-policy`: QEMU's behaviour with the given flags only.
    pub no_policy: bool,
    /// `--cold` (or `--offline --copy-storage-all`): a shut-off guest's
    /// definition and disks move with Tern's transfer engine.
    pub cold: bool,
    /// `--auto-start`: start it on the destination after a cold migration.
    pub auto_start: bool,
    /// `--delete-source-storage`: delete the source's disks once the
    /// destination verified its copies.
    pub delete_source_storage: bool,
    /// `--tunnelled`: QEMU's connections (memory, multifd channels, NBD)
    /// travel through the agents' mutual-TLS tunnel (needs `--p2p`).
    pub tunnelled: bool,
    /// `--tls`: QEMU's own TLS on the native transport, with certificates
    /// from each agent's pki directory.
    pub tls: bool,
    /// Set by the source agent, not the operator: leave CPU throttling
    /// (auto-converge) out of the policy. Under TCG, QEMU 7.2 guests that
    /// were throttled during a migration were seen to crash afterwards.
    pub no_throttle: bool,
    /// Set by the source agent at Begin, not the operator: the policy's
    /// start plan (capabilities chosen from a fresh forecast), as the line
    /// that explains it.
    pub start_plan: Option<String>,
    /// Set by the source agent at Begin, not the operator: post-copy's
    /// page requests travel on a connection of their own (QEMU's
    /// `postcopy-preempt`), because the start plan foresees post-copy.
    /// Only where [`MigrateOptions::preempt_fits`]; see
    /// [`MigrateOptions::preempts`].
    pub postcopy_preempt: bool,
    /// Set by the driver, not the operator: the machine types the
    /// destination's QEMU offers (from its `nodeinfo`), so that Begin
    /// refuses a guest pinned to a machine the destination lacks before
    /// anything is prepared. `None` when the destination did not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest_machines: Option<Vec<String>>,
}

/// Default `--deadline` of the convergence policy, seconds.
pub const DEFAULT_DEADLINE_S: u64 = 300;
/// The policy's default downtime ceiling when `--max-downtime` is not given, ms.
pub const DEFAULT_POLICY_MAX_DOWNTIME_MS: u64 = 1000;

/// A combination of options that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionsError {
    /// Two options exclude each other.
    #[error("--{0} and --{1} cannot be used together")]
    Exclusive(&'static str, &'static str),
    /// An option needs another one.
    #[error("--{0} needs --{1}")]
    Needs(&'static str, &'static str),
    /// A value is out of range.
    #[error("--{name} {value} is invalid: {why}")]
    Value {
        /// Option.
        name: &'static str,
        /// Value given.
        value: String,
        /// What is accepted.
        why: &'static str,
    },
}

/// A `tcp://host[:port]` migration URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTarget {
    /// Host or address.
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
}

/// Parses `--migrateuri`: `tcp://HOST[:PORT]`, `tcp:HOST[:PORT]`, IPv6 in brackets.
pub fn parse_migrate_uri(s: &str) -> Result<TcpTarget, OptionsError> {
    let bad = |why| OptionsError::Value {
        name: "migrateuri",
        value: s.to_string(),
        why,
    };
    let rest = s
        .strip_prefix("tcp://")
        .or_else(|| s.strip_prefix("tcp:"))
        .ok_or_else(|| bad("use tcp://ADDRESS[:PORT]"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, tail) = r
            .split_once(']')
            .ok_or_else(|| bad("unclosed '[' in IPv6 address"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad("port must be 1-65535"))?),
            None if tail.is_empty() => None,
            None => return Err(bad("use tcp://[ADDRESS]:PORT")),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                Some(p.parse().map_err(|_| bad("port must be 1-65535"))?),
            ),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("the address is missing"));
    }
    if port == Some(0) {
        return Err(bad("port must be 1-65535"));
    }
    Ok(TcpTarget { host, port })
}

impl MigrateOptions {
    /// Why a guest pinned to `machine` cannot go to this destination: its
    /// QEMU (as the driver learnt in `dest_machines`) lacks that machine
    /// type, so the guest could neither arrive nor start there.
    pub fn machine_refusal(&self, name: &str, machine: Option<&str>) -> Option<String> {
        let (Some(m), Some(offered)) = (machine, &self.dest_machines) else {
            return None;
        };
        if offered.iter().any(|o| o == m) {
            return None;
        }
        Some(format!(
            "domain '{name}' runs machine type '{m}', which the destination's QEMU does not offer; upgrade QEMU there or pick another destination"
        ))
    }

    /// Checks option combinations the way virsh does.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.offline && !self.cold {
            if self.live {
                return Err(OptionsError::Exclusive("offline", "live"));
            }
            if !self.persistent {
                return Err(OptionsError::Needs("offline", "persistent"));
            }
            if self.suspend {
                return Err(OptionsError::Exclusive("offline", "suspend"));
            }
        }
        if self.postcopy_bandwidth_mib.is_some() && !self.postcopy {
            return Err(OptionsError::Needs("postcopy-bandwidth", "postcopy"));
        }
        if self.postcopy_after_precopy && !self.postcopy {
            return Err(OptionsError::Needs("postcopy-after-precopy", "postcopy"));
        }
        if self.timeout_action == TimeoutAction::Postcopy && !self.postcopy {
            return Err(OptionsError::Needs("timeout-postcopy", "postcopy"));
        }
        if self.timeout_s == Some(0) {
            return Err(OptionsError::Value {
                name: "timeout",
                value: "0".into(),
                why: "give a number of seconds above 0",
            });
        }
        if (self.parallel_connections.is_some() || self.parallel_compression.is_some())
            && !self.parallel
        {
            return Err(OptionsError::Needs("parallel-connections", "parallel"));
        }
        if let Some(n) = self.parallel_connections {
            if !(1..=255).contains(&n) {
                return Err(OptionsError::Value {
                    name: "parallel-connections",
                    value: n.to_string(),
                    why: "use 1 to 255",
                });
            }
        }
        if let Some(c) = &self.parallel_compression {
            if !matches!(c.as_str(), "none" | "zlib" | "zstd") {
                return Err(OptionsError::Value {
                    name: "parallel-compression",
                    value: c.clone(),
                    why: "use none, zlib or zstd",
                });
            }
        }
        if self.xbzrle_cache.is_some() && !self.compressed {
            return Err(OptionsError::Needs("comp-xbzrle-cache", "compressed"));
        }
        if (self.auto_converge_initial.is_some() || self.auto_converge_increment.is_some())
            && !self.auto_converge
        {
            return Err(OptionsError::Needs(
                "auto-converge-initial",
                "auto-converge",
            ));
        }
        for (name, v) in [
            ("auto-converge-initial", self.auto_converge_initial),
            ("auto-converge-increment", self.auto_converge_increment),
        ] {
            if let Some(v) = v {
                if !(1..=99).contains(&v) {
                    return Err(OptionsError::Value {
                        name,
                        value: v.to_string(),
                        why: "use a percentage from 1 to 99",
                    });
                }
            }
        }
        if let Some(u) = &self.migrate_uri {
            parse_migrate_uri(u)?;
        }
        if self.cold {
            if self.live {
                return Err(OptionsError::Exclusive("cold", "live"));
            }
            if self.postcopy || self.parallel || self.copy_storage_inc {
                return Err(OptionsError::Exclusive(
                    "cold",
                    "postcopy/parallel/copy-storage-inc",
                ));
            }
        } else if self.auto_start || self.delete_source_storage {
            return Err(OptionsError::Needs(
                "auto-start/delete-source-storage",
                "cold",
            ));
        }
        if self.copy_storage_all && self.copy_storage_inc {
            return Err(OptionsError::Exclusive(
                "copy-storage-all",
                "copy-storage-inc",
            ));
        }
        let copies = self.copy_storage_all || self.copy_storage_inc || self.cold;
        if (!self.migrate_disks.is_empty()
            || self.copy_storage_synchronous_writes
            || self.target_pool.is_some())
            && !copies
        {
            return Err(OptionsError::Needs("migrate-disks", "copy-storage-all"));
        }
        if copies && self.postcopy {
            // QEMU cannot mirror disks while pages are pulled on demand.
            return Err(OptionsError::Exclusive("copy-storage-all", "postcopy"));
        }
        if self.compressed && self.parallel {
            // QEMU refuses xbzrle together with multifd.
            return Err(OptionsError::Exclusive("compressed", "parallel"));
        }
        self.validate_transport()
    }

    /// The transport flags: `--tunnelled` (with `--p2p`, as virsh) and `--tls`.
    fn validate_transport(&self) -> Result<(), OptionsError> {
        if self.tunnelled {
            if !self.p2p {
                return Err(OptionsError::Needs("tunnelled", "p2p"));
            }
            if self.tls {
                // The tunnel is TLS already; QEMU's TLS inside it would
                // only double the cost.
                return Err(OptionsError::Exclusive("tunnelled", "tls"));
            }
            if self.migrate_uri.is_some() {
                return Err(OptionsError::Exclusive("tunnelled", "migrateuri"));
            }
            if self.cold || self.offline {
                return Err(OptionsError::Exclusive("tunnelled", "offline/cold"));
            }
        }
        // A cold copy goes over TLS (the agents' certificates); an offline
        // migration without disks moves nothing but the definition.
        if self.tls && self.offline && !self.cold {
            return Err(OptionsError::Exclusive("tls", "offline"));
        }
        Ok(())
    }

    /// Bandwidth in bytes/s to set (unlimited when not given).
    pub fn bandwidth_bytes(&self) -> u64 {
        match self.bandwidth_mib {
            None | Some(0) => UNLIMITED_BANDWIDTH,
            Some(m) => m.saturating_mul(1 << 20),
        }
    }

    /// Capabilities both QEMUs must agree on (set on the destination
    /// before `migrate-incoming`, and on the source before `migrate`).
    pub fn shared_capabilities(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("multifd", self.parallel),
            ("postcopy-ram", self.postcopy),
            ("postcopy-preempt", self.preempts()),
        ]
    }

    /// Whether post-copy's page requests could have a connection of their
    /// own here. In post-copy the guest waits for every page it touches
    /// that has not arrived; on one connection the page it asked for
    /// queues behind the background copy in both socket buffers.
    /// QEMU 10 does not combine `postcopy-preempt` with multifd, and the
    /// tunnel carries a fixed set of streams.
    pub fn preempt_fits(&self) -> bool {
        self.postcopy && !self.parallel && !self.tunnelled
    }

    /// Whether Begin should choose `postcopy-preempt`: where it fits, when
    /// post-copy is sure (`--postcopy-after-precopy`) or the forecast
    /// armed it because pre-copy alone would not finish (`foreseen`). Not
    /// for a post-copy that is merely allowed: see [`Self::preempts`].
    pub fn wants_preempt(&self, foreseen: bool) -> bool {
        self.preempt_fits() && (self.postcopy_after_precopy || foreseen)
    }

    /// Whether this migration uses `postcopy-preempt`: chosen at Begin
    /// ([`MigrateOptions::postcopy_preempt`]), where it fits. Not always:
    /// the second connection means the destination relays the migration
    /// stream through its guard instead of handing QEMU the socket,
    /// which costs CPU in pre-copy (see the agent's `guard`).
    pub fn preempts(&self) -> bool {
        self.postcopy_preempt && self.preempt_fits()
    }

    /// The streams the destination's QEMU takes for this migration: the
    /// main one, each multifd channel and post-copy's preempt channel.
    pub fn incoming_streams(&self) -> usize {
        let multifd = match self.parallel {
            true => self
                .parallel_connections
                .unwrap_or(DEFAULT_PARALLEL_CONNECTIONS) as usize,
            false => 0,
        };
        1 + multifd + usize::from(self.preempts())
    }

    /// Whether disks are mirrored along a live migration.
    pub fn copies_storage(&self) -> bool {
        !self.cold && (self.copy_storage_all || self.copy_storage_inc)
    }

    /// Whether the disk `target` (e.g. "vda") is to be copied.
    pub fn copies_disk(&self, target: &str) -> bool {
        self.copies_storage()
            && (self.migrate_disks.is_empty() || self.migrate_disks.iter().any(|d| d == target))
    }

    /// Whether the convergence policy steers this migration.
    pub fn policy_on(&self) -> bool {
        self.live && !self.no_policy && !self.offline && !self.cold
    }

    /// The policy's settings for these options: knobs the operator set
    /// on the command line are the operator's.
    pub fn policy_config(&self) -> crate::policy::PolicyConfig {
        use crate::policy::{Knobs, PolicyConfig};
        PolicyConfig {
            deadline_ms: self.deadline_s.unwrap_or(DEFAULT_DEADLINE_S) * 1000,
            max_downtime_ms: self
                .max_downtime_ms
                .unwrap_or(DEFAULT_POLICY_MAX_DOWNTIME_MS),
            knobs: Knobs {
                downtime: true,
                throttle: !self.auto_converge && !self.no_throttle,
                postcopy: self.postcopy
                    && !self.postcopy_after_precopy
                    && self.timeout_action != TimeoutAction::Postcopy,
                pause: self.timeout_s.is_none(),
            },
        }
    }

    /// The downtime limit QEMU starts with.
    pub fn initial_downtime_ms(&self) -> u64 {
        match (self.policy_on(), self.max_downtime_ms) {
            // The policy starts low and raises the limit when the measured
            // rates say so (crate::downtime).
            (true, Some(m)) => m.min(crate::downtime::START_MS),
            (true, None) => crate::downtime::START_MS,
            (false, m) => m.unwrap_or(DEFAULT_MAX_DOWNTIME_MS),
        }
    }

    /// Capabilities for the source.
    pub fn source_capabilities(&self) -> Vec<(&'static str, bool)> {
        let mut c = self.shared_capabilities();
        // With disks mirrored, QEMU must stop before switching over so the
        // mirrors can be completed while the guest is paused.
        c.push(("pause-before-switchover", self.copies_storage()));
        c.push(("xbzrle", self.compressed));
        // Under the policy auto-converge is on but inert (throttle ceiling
        // 1%) until the policy raises the ceiling.
        c.push((
            "auto-converge",
            self.auto_converge || (self.policy_on() && !self.no_throttle),
        ));
        c.push(("events", true));
        c
    }

    /// Parameters both QEMUs must agree on.
    pub fn shared_parameters(&self) -> Map<String, Value> {
        let mut p = Map::new();
        if self.parallel {
            p.insert(
                "multifd-channels".into(),
                json!(self
                    .parallel_connections
                    .unwrap_or(DEFAULT_PARALLEL_CONNECTIONS)),
            );
            p.insert(
                "multifd-compression".into(),
                json!(self.parallel_compression.as_deref().unwrap_or("none")),
            );
        }
        p
    }

    /// `migrate-set-parameters` arguments for the source.
    pub fn source_parameters(&self) -> Map<String, Value> {
        let mut p = self.shared_parameters();
        // Always explicit: a QEMU that migrated with --tls before (and whose
        // migration failed) must not keep using those credentials.
        p.insert(
            "tls-creds".into(),
            json!(if self.tls { TLS_CREDS_ID } else { "" }),
        );
        p.insert("max-bandwidth".into(), json!(self.bandwidth_bytes()));
        if let Some(m) = self.postcopy_bandwidth_mib.filter(|m| *m > 0) {
            p.insert("max-postcopy-bandwidth".into(), json!(m << 20));
        }
        p.insert("downtime-limit".into(), json!(self.initial_downtime_ms()));
        if self.policy_on() && !self.auto_converge && !self.no_throttle {
            // QEMU requires initial <= max; both at 1% leave it inert.
            p.insert(
                "cpu-throttle-initial".into(),
                json!(crate::policy::THROTTLE_OFF),
            );
            p.insert(
                "max-cpu-throttle".into(),
                json!(crate::policy::THROTTLE_OFF),
            );
        }
        if self.compressed {
            if let Some(c) = self.xbzrle_cache {
                p.insert("xbzrle-cache-size".into(), json!(c));
            }
        }
        if self.auto_converge {
            if let Some(i) = self.auto_converge_initial {
                p.insert("cpu-throttle-initial".into(), json!(i));
            }
            if let Some(i) = self.auto_converge_increment {
                p.insert("cpu-throttle-increment".into(), json!(i));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests;
