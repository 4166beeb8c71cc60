//! Simulated agents: each a tokio task that does what `ternd`'s cluster
//! loop does (`tern_agent::cluster::run`) with the same client and wire
//! types: register with a host report, then heartbeat every
//! `heartbeat_ms` the controller gave, registering again when told to.
//! Each presents its own host certificate (`tern pki issue-host`), so the
//! controller authenticates every host as itself.
//!
//! The reports are shaped like a real host's: its facts, two pools, a
//! bridge, and `servers` domains with their disks and libvirt XML. The
//! API address points at a closed loopback port: the controller's probe
//! of a lapsed host finds nobody there, as for a dead host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_api::cluster::{
    controller_client_with_pki, ClusterRequest, DiskReport, DomainReport, HeartbeatReply,
    HostReport, RegisterReply,
};
use tern_api::Client;
use tern_model::{HostFacts, PoolDef, PoolInfo, PoolKind};
use tern_pki::PkiDir;

/// Per-call time limit for heartbeats, as `ternd` (a registration has
/// `tern_api::cluster::REGISTER_TIMEOUT`).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The name of simulated host `i`.
pub fn host_name(i: usize) -> String {
    format!("sim{i:05}")
}

/// The name of server `j` of host `i`.
pub fn server_name(i: usize, j: usize) -> String {
    format!("{}-vm{j}", host_name(i))
}

fn facts(name: &str) -> HostFacts {
    let flags = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni pclmulqdq vmx ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves arat pku ospke";
    HostFacts {
        hostname: name.to_string(),
        arch: "x86_64".into(),
        cpu_model: "Intel Xeon Processor (Icelake)".into(),
        microcode: "0xd0003a5".into(),
        cpu_flags: flags.split(' ').map(str::to_string).collect(),
        cpus: 64,
        sockets: 2,
        cores_per_socket: 16,
        threads_per_core: 2,
        mhz: 2600,
        memory_total_kib: 512 << 20,
        memory_free_kib: 300 << 20,
        kernel: "6.1.0-28-amd64".into(),
        page_size: 4096,
        qemu_version: "10.0.0".into(),
        accelerator: "kvm".into(),
        machines: vec!["pc-q35-10.0".into(), "pc-i440fx-10.0".into()],
    }
}

fn pool(name: &str, target: &str, shared: bool) -> PoolInfo {
    PoolInfo {
        def: PoolDef {
            name: name.into(),
            target: PathBuf::from(target),
            shared,
            autostart: true,
            kind: PoolKind::default(),
            source: None,
            rbd: None,
            logical: None,
        },
        active: true,
        capacity: 4 << 40,
        allocation: 1 << 40,
        available: 3 << 40,
        access: None,
        ceph_fsid: None,
    }
}

/// A libvirt definition of the size real ones have (about 1.5 KB).
fn xml(name: &str, uuid: &str, disk: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  \
<memory unit='KiB'>4194304</memory>\n  <currentMemory unit='KiB'>4194304</currentMemory>\n  \
<vcpu placement='static'>2</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc-q35-10.0'>hvm</type>\n    \
<boot dev='hd'/>\n  </os>\n  <features>\n    <acpi/>\n    <apic/>\n  </features>\n  \
<cpu mode='host-model' check='partial'/>\n  <clock offset='utc'/>\n  <on_poweroff>destroy</on_poweroff>\n  \
<on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n    \
<emulator>/usr/bin/qemu-system-x86_64</emulator>\n    <disk type='file' device='disk'>\n      \
<driver name='qemu' type='qcow2' cache='none' io='native'/>\n      <source file='{disk}'/>\n      \
<target dev='vda' bus='virtio'/>\n    </disk>\n    <interface type='bridge'>\n      \
<mac address='52:54:00:12:34:56'/>\n      <source bridge='br0'/>\n      <model type='virtio'/>\n    \
</interface>\n    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n    \
<console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n    \
<channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n    \
<memballoon model='virtio'/>\n    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    \
</rng>\n  </devices>\n</domain>\n"
    )
}

fn domain(i: usize, j: usize) -> DomainReport {
    let name = server_name(i, j);
    let uuid = format!("5e1a0000-0000-4000-8000-{:06x}{:06x}", i, j);
    let disk = format!("/var/lib/tern/shared/{name}.qcow2");
    DomainReport {
        xml: xml(&name, &uuid, &disk),
        name,
        uuid,
        active: true,
        vcpus: 2,
        memory_mib: 4096,
        disks: vec![DiskReport {
            target: "vda".into(),
            path: disk,
            pool: Some("shared".into()),
            shared: true,
            bytes: 20 << 30,
        }],
        networks: vec!["br0".into()],
        machine: Some("pc-q35-10.0".into()),
    }
}

/// Host `i`'s report with `servers` running domains.
pub fn host_report(i: usize, servers: usize) -> HostReport {
    let name = host_name(i);
    HostReport {
        api_uri: "tern+tls://127.0.0.1:1/system".into(),
        facts: facts(&name),
        pools: vec![
            pool("default", "/var/lib/tern/images", false),
            pool("shared", "/var/lib/tern/shared", true),
        ],
        networks: vec!["br0".into()],
        labels: BTreeMap::from([("rack".to_string(), format!("r{}", i % 40))]),
        domains: (0..servers).map(|j| domain(i, j)).collect(),
        rbd_clients: Vec::new(),
        name,
    }
}

/// Issues host `i`'s certificate under `root`, signed by the CA in `ca`.
pub fn issue_cert(ca: &Path, root: &Path, i: usize) -> anyhow::Result<PkiDir> {
    let out = PkiDir::new(root.join(host_name(i)));
    tern_pki::issue_host(
        &PkiDir::new(ca),
        &out,
        &host_name(i),
        tern_pki::Validity::days(2)?,
    )?;
    Ok(out)
}

/// What every agent shares with the benchmark.
#[derive(Debug, Default)]
pub struct Shared {
    /// Agents registered.
    pub registered: AtomicUsize,
    /// Failed register calls.
    pub register_failures: AtomicU64,
    /// The first failed register call's error (printed with the figures).
    pub first_register_error: Mutex<Option<String>>,
    /// Heartbeats failed or refused while recording.
    pub hb_failures: AtomicU64,
    /// Record heartbeat round trips now.
    pub recording: AtomicBool,
    /// Round trips, µs, while recording.
    pub samples: Mutex<Vec<u32>>,
    /// The first failed heartbeat's error (printed with the figures).
    pub first_error: Mutex<Option<String>>,
}

/// One agent as the benchmark sees it.
#[derive(Debug, Default)]
pub struct AgentState {
    /// Stop heartbeating (the host "dies"; its task stays quiet).
    pub stopped: AtomicBool,
    /// When its last heartbeat (or registration) was answered.
    pub last_ok: Mutex<Option<Instant>>,
}

impl Shared {
    fn failed(&self, rtt: Duration, why: String) {
        if self.recording.load(Ordering::Relaxed) {
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(why);
            }
        }
        self.record(rtt, false);
    }

    fn record(&self, rtt: Duration, ok: bool) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        if ok {
            let us = rtt.as_micros().min(u128::from(u32::MAX)) as u32;
            self.samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(us);
        } else {
            self.hb_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One simulated agent.
pub struct Agent {
    /// Its index.
    pub i: usize,
    /// A client presenting its host certificate.
    pub client: Client,
    /// Its report.
    pub report: HostReport,
    /// Its state.
    pub state: Arc<AgentState>,
    /// Everyone's.
    pub shared: Arc<Shared>,
}

impl Agent {
    /// An agent for host `i` reaching `url` with the certificates in `pki`.
    pub fn new(
        i: usize,
        url: &str,
        pki: &PkiDir,
        servers: usize,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Agent> {
        Ok(Agent {
            i,
            // As `ternd`: one kept connection to the controller.
            client: controller_client_with_pki(url, pki)?
                .with_timeout(CALL_TIMEOUT)
                .keep_alive(),
            report: host_report(i, servers),
            state: Arc::default(),
            shared,
        })
    }

    async fn register(&self) -> RegisterReply {
        let mut failures = 0u32;
        loop {
            let req = ClusterRequest::Register {
                report: self.report.clone(),
            };
            let client = self
                .client
                .clone()
                .with_timeout(tern_api::cluster::REGISTER_TIMEOUT);
            match client.call_json::<_, RegisterReply>(&req).await {
                Ok(r) => {
                    *self.state.last_ok.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    return r;
                }
                Err(e) => {
                    self.shared
                        .register_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .first_register_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(|| format!("{e:#}"));
                    // As `ternd`: backing off, spread out.
                    failures += 1;
                    let r = spread(self.i.wrapping_add(failures as usize * 7919));
                    tokio::time::sleep(tern_api::cluster::retry_delay(failures, None, r)).await;
                }
            }
        }
    }

    /// Registers, then heartbeats until stopped (forever unless aborted).
    pub async fn run(self) {
        let mut reply = self.register().await;
        self.shared.registered.fetch_add(1, Ordering::Relaxed);
        let every = Duration::from_millis(reply.heartbeat_ms.max(100));
        // Real agents are not in step: spread the first heartbeats.
        tokio::time::sleep(every.mul_f64(spread(self.i))).await;
        // As `ternd`: the digest of the report the controller took; only
        // the digest is sent while the report stays the same.
        let mut acked = Some(self.report.digest());
        loop {
            if self.state.stopped.load(Ordering::Relaxed) {
                return;
            }
            // Computed on every heartbeat, as `ternd` does (its report may
            // change between two).
            let digest = self.report.digest();
            let req = ClusterRequest::Heartbeat {
                host: self.report.name.clone(),
                lease: reply.lease,
                report: (acked.as_ref() != Some(&digest)).then(|| self.report.clone()),
                digest: digest.clone(),
            };
            let t = Instant::now();
            let r = self.client.call_json::<_, HeartbeatReply>(&req).await;
            let rtt = t.elapsed();
            match r {
                Ok(h) if h.reregister => {
                    self.shared.failed(rtt, "told to register again".into());
                    reply = self.register().await;
                    acked = Some(digest);
                }
                Ok(h) if h.send_report => {
                    self.shared.record(rtt, true);
                    acked = None;
                    continue;
                }
                Ok(_) => {
                    acked = Some(digest);
                    self.shared.record(rtt, true);
                    *self.state.last_ok.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                }
                Err(e) => {
                    self.shared.failed(rtt, e.to_string());
                    // As `ternd`: the next try within a heartbeat period.
                    let r = spread(self.i.wrapping_add(t.elapsed().subsec_nanos() as usize));
                    tokio::time::sleep(tern_api::cluster::retry_delay(1, Some(every), r)).await;
                    continue;
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// A fixed fraction in [0, 1) for agent `i` (a multiplicative hash), so
/// runs are repeatable without a random generator.
pub fn spread(i: usize) -> f64 {
    let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_have_the_requested_shape() {
        let r = host_report(7, 10);
        assert_eq!(r.name, "sim00007");
        assert_eq!(r.domains.len(), 10);
        assert_eq!(r.domains[3].name, "sim00007-vm3");
        assert!(r.domains[3].xml.len() > 1200, "{}", r.domains[3].xml.len());
        let uuids: std::collections::HashSet<_> = r.domains.iter().map(|d| &d.uuid).collect();
        assert_eq!(uuids.len(), 10);
    }

    #[test]
    fn spread_is_in_range_and_varied() {
        let v: Vec<f64> = (0..1000).map(spread).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let low = v.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
    }
}
