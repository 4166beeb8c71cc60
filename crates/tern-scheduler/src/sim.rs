//! Simulated clusters for the benchmark and tests: deterministic, varied
//! hosts (a few CPU models, kernels and QEMU versions, uneven load).

use crate::model::{DiskNeed, HostView, PoolView, ServerView};

/// A small deterministic generator (xorshift), so runs are repeatable.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const MODELS: &[&str] = &[
    "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",
    "Intel(R) Xeon(R) Gold 6330 CPU @ 2.00GHz",
    "AMD EPYC 7543 32-Core Processor",
];
const KERNELS: &[&str] = &["6.1.0-25-amd64", "6.1.0-26-amd64"];
const QEMUS: &[&str] = &["7.2.11", "7.2.22", "8.2.2"];

/// `n` hosts named `host-0000`... with varied facts and load.
pub fn hosts(n: usize, seed: u64) -> Vec<HostView> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|i| {
            let vcpus_total = 64;
            let memory_total_mib = 256 * 1024;
            HostView {
                name: format!("host-{i:04}"),
                schedulable: r.below(50) != 0,
                cpu_model: MODELS[r.below(MODELS.len() as u64) as usize].into(),
                microcode: "0x5003604".into(),
                kernel: KERNELS[r.below(KERNELS.len() as u64) as usize].into(),
                page_size: 4096,
                qemu_version: QEMUS[r.below(QEMUS.len() as u64) as usize].into(),
                vcpus_total,
                vcpus_used: r.below(vcpus_total as u64 + 1) as u32,
                memory_total_mib,
                memory_used_mib: r.below(memory_total_mib + 1),
                pools: vec![
                    PoolView {
                        name: "shared".into(),
                        shared: true,
                        free_bytes: 10 << 40,
                        identity: None,
                    },
                    PoolView {
                        name: "local".into(),
                        shared: false,
                        free_bytes: r.below(2 << 40),
                        identity: None,
                    },
                ],
                networks: vec!["br0".into(), "br-storage".into()],
                machines: vec!["pc-q35-10.0".into(), "q35".into()],
                inbound: r.below(3) as u32,
                outbound: r.below(3) as u32,
            }
        })
        .collect()
}

/// A server on `host` with one shared and one local disk.
pub fn server(host: &str) -> ServerView {
    ServerView {
        name: "vm-bench".into(),
        host: host.into(),
        vcpus: 4,
        memory_mib: 8192,
        disks: vec![
            DiskNeed {
                pool: "shared".into(),
                shared: true,
                bytes: 20 << 30,
            },
            DiskNeed {
                pool: "local".into(),
                shared: false,
                bytes: 50 << 30,
            },
        ],
        networks: vec!["br0".into()],
        machine: Some("pc-q35-10.0".into()),
    }
}
