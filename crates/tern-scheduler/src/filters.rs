//! Filters: each says why a host cannot take the server, or lets it pass.
//! They are pure functions of (request, server, source, candidate), so the
//! same code answers `migrate-forecast` and picks the destination.

use crate::model::{HostView, MoveKind, MoveRequest, ServerView};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Text borrowed from the hosts while deciding, owned once reported.
pub type Text<'a> = Cow<'a, str>;

/// Why a host was rejected. Every variant prints one sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "filter", rename_all = "kebab-case")]
pub enum Rejection<'a> {
    /// The server is already there.
    CurrentHost,
    /// `--prefer-host` named another host.
    NotPreferred {
        /// The preferred host.
        preferred: Text<'a>,
    },
    /// The host is down, fenced or in maintenance.
    Unschedulable,
    /// Not enough free vCPUs.
    Cpu {
        /// Needed.
        need: u32,
        /// Free.
        free: u32,
    },
    /// Not enough free memory.
    Memory {
        /// Needed MiB.
        need_mib: u64,
        /// Free MiB.
        free_mib: u64,
    },
    /// A shared pool the server's disks live in is not there.
    SharedPoolUnreachable {
        /// Pool.
        pool: Text<'a>,
    },
    /// The pool of that name here is other storage (another Ceph cluster).
    SharedPoolOther {
        /// Pool.
        pool: Text<'a>,
    },
    /// Not enough room for copied local disks.
    Disk {
        /// Pool.
        pool: Text<'a>,
        /// Bytes needed.
        need: u64,
        /// Bytes free (0 when the pool is missing).
        free: u64,
    },
    /// Local disks cannot be rescued from a dead host.
    LocalDisk {
        /// Pool.
        pool: Text<'a>,
    },
    /// A network the server uses is missing.
    Network {
        /// Network.
        network: Text<'a>,
    },
    /// Another CPU model or microcode.
    CpuModel {
        /// Source's model.
        source: Text<'a>,
        /// Source's microcode.
        source_microcode: Text<'a>,
        /// Candidate's model.
        candidate: Text<'a>,
        /// Candidate's microcode.
        candidate_microcode: Text<'a>,
    },
    /// Another kernel.
    Kernel {
        /// Source's.
        source: Text<'a>,
        /// Candidate's.
        candidate: Text<'a>,
    },
    /// Another page size.
    PageSize {
        /// Source's.
        source: u64,
        /// Candidate's.
        candidate: u64,
    },
    /// An older QEMU than the source's.
    QemuOlder {
        /// Source's.
        source: Text<'a>,
        /// Candidate's.
        candidate: Text<'a>,
    },
    /// The host's QEMU lacks the guest's machine type.
    MachineType {
        /// The guest's machine type.
        machine: Text<'a>,
    },
    /// The host already receives as many migrations as allowed.
    InboundLimit {
        /// The limit.
        limit: u32,
    },
}

impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::CurrentHost => write!(f, "the server is already on this host"),
            Rejection::NotPreferred { preferred } => {
                write!(f, "not the preferred host {preferred}")
            }
            Rejection::Unschedulable => write!(f, "host is down or in maintenance"),
            Rejection::Cpu { need, free } => {
                write!(f, "needs {need} vCPUs, {free} free")
            }
            Rejection::Memory { need_mib, free_mib } => {
                write!(f, "needs {need_mib} MiB of memory, {free_mib} MiB free")
            }
            Rejection::SharedPoolUnreachable { pool } => {
                write!(f, "shared pool '{pool}' is not reachable from this host")
            }
            Rejection::SharedPoolOther { pool } => write!(
                f,
                "pool '{pool}' on this host is other storage than on the source (another Ceph cluster fsid)"
            ),
            Rejection::Disk { pool, need, free } => write!(
                f,
                "pool '{pool}' needs {} MiB free for copied disks, has {} MiB",
                need >> 20,
                free >> 20
            ),
            Rejection::LocalDisk { pool } => write!(
                f,
                "a disk in local pool '{pool}' cannot be restarted elsewhere"
            ),
            Rejection::Network { network } => write!(f, "network '{network}' is missing"),
            Rejection::CpuModel {
                source,
                source_microcode,
                candidate,
                candidate_microcode,
            } => write!(
                f,
                "CPU '{candidate}' (microcode {candidate_microcode}) differs from the source's '{source}' ({source_microcode}) (use --skip-cpu-check)"
            ),
            Rejection::Kernel { source, candidate } => write!(
                f,
                "kernel {candidate} differs from the source's {source} (use --skip-kernel-check)"
            ),
            Rejection::PageSize { source, candidate } => write!(
                f,
                "page size {candidate} differs from the source's {source}"
            ),
            Rejection::QemuOlder { source, candidate } => {
                write!(f, "QEMU {candidate} is older than the source's {source}")
            }
            Rejection::MachineType { machine } => write!(
                f,
                "its QEMU lacks the guest's machine type {machine}"
            ),
            Rejection::InboundLimit { limit } => {
                write!(
                    f,
                    "already receives {limit} migrations (the per-host limit)"
                )
            }
        }
    }
}

impl Rejection<'_> {
    /// The same rejection, owning its text.
    pub fn into_owned(self) -> Rejection<'static> {
        let o = |t: Text<'_>| Cow::Owned(t.into_owned());
        match self {
            Rejection::CurrentHost => Rejection::CurrentHost,
            Rejection::NotPreferred { preferred } => Rejection::NotPreferred {
                preferred: o(preferred),
            },
            Rejection::Unschedulable => Rejection::Unschedulable,
            Rejection::Cpu { need, free } => Rejection::Cpu { need, free },
            Rejection::Memory { need_mib, free_mib } => Rejection::Memory { need_mib, free_mib },
            Rejection::SharedPoolUnreachable { pool } => {
                Rejection::SharedPoolUnreachable { pool: o(pool) }
            }
            Rejection::SharedPoolOther { pool } => Rejection::SharedPoolOther { pool: o(pool) },
            Rejection::Disk { pool, need, free } => Rejection::Disk {
                pool: o(pool),
                need,
                free,
            },
            Rejection::LocalDisk { pool } => Rejection::LocalDisk { pool: o(pool) },
            Rejection::Network { network } => Rejection::Network {
                network: o(network),
            },
            Rejection::CpuModel {
                source,
                source_microcode,
                candidate,
                candidate_microcode,
            } => Rejection::CpuModel {
                source: o(source),
                source_microcode: o(source_microcode),
                candidate: o(candidate),
                candidate_microcode: o(candidate_microcode),
            },
            Rejection::Kernel { source, candidate } => Rejection::Kernel {
                source: o(source),
                candidate: o(candidate),
            },
            Rejection::PageSize { source, candidate } => Rejection::PageSize { source, candidate },
            Rejection::QemuOlder { source, candidate } => Rejection::QemuOlder {
                source: o(source),
                candidate: o(candidate),
            },
            Rejection::MachineType { machine } => Rejection::MachineType {
                machine: o(machine),
            },
            Rejection::InboundLimit { limit } => Rejection::InboundLimit { limit },
        }
    }
}

/// One filter.
pub type Filter = for<'a> fn(
    &'a MoveRequest,
    &'a ServerView,
    Option<&'a HostView>,
    &'a HostView,
) -> Result<(), Rejection<'a>>;

/// All filters, in the order their rejections are reported.
pub const FILTERS: &[Filter] = &[
    current_host,
    preferred,
    schedulable,
    cpu,
    memory,
    storage,
    network,
    cpu_model,
    kernel,
    page_size,
    qemu_version,
    machine_type,
];

/// Runs every filter; the first rejection wins.
pub fn check<'a>(
    req: &'a MoveRequest,
    server: &'a ServerView,
    source: Option<&'a HostView>,
    cand: &'a HostView,
) -> Result<(), Rejection<'a>> {
    FILTERS
        .iter()
        .try_for_each(|f| f(req, server, source, cand))
}

/// Not the host the server is on.
pub fn current_host<'a>(
    _: &'a MoveRequest,
    s: &'a ServerView,
    _: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    if s.host == c.name {
        return Err(Rejection::CurrentHost);
    }
    Ok(())
}

/// `--prefer-host` pins.
pub fn preferred<'a>(
    r: &'a MoveRequest,
    _: &'a ServerView,
    _: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    match &r.prefer_host {
        Some(p) if *p != c.name => Err(Rejection::NotPreferred {
            preferred: Cow::Borrowed(p),
        }),
        _ => Ok(()),
    }
}

/// Up and not in maintenance.
pub fn schedulable<'a>(
    _: &'a MoveRequest,
    _: &'a ServerView,
    _: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    if c.schedulable {
        Ok(())
    } else {
        Err(Rejection::Unschedulable)
    }
}

/// Free vCPUs.
pub fn cpu<'a>(
    _: &'a MoveRequest,
    s: &'a ServerView,
    _: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    if c.vcpus_free() < s.vcpus {
        return Err(Rejection::Cpu {
            need: s.vcpus,
            free: c.vcpus_free(),
        });
    }
    Ok(())
}

/// Free memory.
pub fn memory<'a>(
    _: &'a MoveRequest,
    s: &'a ServerView,
    _: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    if c.memory_free_mib() < s.memory_mib {
        return Err(Rejection::Memory {
            need_mib: s.memory_mib,
            free_mib: c.memory_free_mib(),
        });
    }
    Ok(())
}

/// Shared pools reachable; room for local disks that will be copied
/// (summed per pool); no local disks at all for a rescue.
pub fn storage<'a>(
    r: &'a MoveRequest,
    s: &'a ServerView,
    src: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    let mut need: Vec<(&str, u64)> = Vec::new();
    for d in &s.disks {
        if d.shared {
            let Some(here) = c.pool(&d.pool).filter(|p| p.shared) else {
                return Err(Rejection::SharedPoolUnreachable {
                    pool: Cow::Borrowed(&d.pool),
                });
            };
            let there = src.and_then(|h| h.pool(&d.pool));
            if let (Some(a), Some(b)) = (
                there.and_then(|p| p.identity.as_ref()),
                here.identity.as_ref(),
            ) {
                if a != b {
                    return Err(Rejection::SharedPoolOther {
                        pool: Cow::Borrowed(&d.pool),
                    });
                }
            }
            continue;
        }
        if r.kind == MoveKind::Rescue {
            return Err(Rejection::LocalDisk {
                pool: Cow::Borrowed(&d.pool),
            });
        }
        match need.iter_mut().find(|(p, _)| *p == d.pool) {
            Some((_, b)) => *b += d.bytes,
            None => need.push((&d.pool, d.bytes)),
        }
    }
    for (pool, bytes) in need {
        let free = c.pool(pool).map_or(0, |p| p.free_bytes);
        if free < bytes {
            return Err(Rejection::Disk {
                pool: Cow::Borrowed(pool),
                need: bytes,
                free,
            });
        }
    }
    Ok(())
}

/// Every network the server uses.
pub fn network<'a>(
    _: &'a MoveRequest,
    s: &'a ServerView,
    _: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    match s.networks.iter().find(|n| !c.networks.contains(n)) {
        Some(n) => Err(Rejection::Network {
            network: Cow::Borrowed(n),
        }),
        None => Ok(()),
    }
}

fn live_source<'a>(r: &'a MoveRequest, src: Option<&'a HostView>) -> Option<&'a HostView> {
    if r.kind == MoveKind::Live {
        src
    } else {
        None
    }
}

/// Live: same CPU model and microcode, unless skipped.
pub fn cpu_model<'a>(
    r: &'a MoveRequest,
    _: &'a ServerView,
    src: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    let Some(src) = live_source(r, src) else {
        return Ok(());
    };
    if r.skip_cpu_check || (src.cpu_model == c.cpu_model && src.microcode == c.microcode) {
        return Ok(());
    }
    Err(Rejection::CpuModel {
        source: Cow::Borrowed(&src.cpu_model),
        source_microcode: Cow::Borrowed(&src.microcode),
        candidate: Cow::Borrowed(&c.cpu_model),
        candidate_microcode: Cow::Borrowed(&c.microcode),
    })
}

/// Live: same kernel, unless skipped.
pub fn kernel<'a>(
    r: &'a MoveRequest,
    _: &'a ServerView,
    src: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    let Some(src) = live_source(r, src) else {
        return Ok(());
    };
    if r.skip_kernel_check || src.kernel == c.kernel {
        return Ok(());
    }
    Err(Rejection::Kernel {
        source: Cow::Borrowed(&src.kernel),
        candidate: Cow::Borrowed(&c.kernel),
    })
}

/// Live: same page size.
pub fn page_size<'a>(
    r: &'a MoveRequest,
    _: &'a ServerView,
    src: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    let Some(src) = live_source(r, src) else {
        return Ok(());
    };
    if src.page_size == c.page_size {
        return Ok(());
    }
    Err(Rejection::PageSize {
        source: src.page_size,
        candidate: c.page_size,
    })
}

/// Live: QEMU no older than the source's.
pub fn qemu_version<'a>(
    r: &'a MoveRequest,
    _: &'a ServerView,
    src: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    let Some(src) = live_source(r, src) else {
        return Ok(());
    };
    if version_key(&c.qemu_version) >= version_key(&src.qemu_version) {
        return Ok(());
    }
    Err(Rejection::QemuOlder {
        source: Cow::Borrowed(&src.qemu_version),
        candidate: Cow::Borrowed(&c.qemu_version),
    })
}

/// Any move: the host's QEMU offers the guest's machine type (a guest
/// keeps its versioned machine across hosts, so an older QEMU may lack it).
pub fn machine_type<'a>(
    _: &'a MoveRequest,
    s: &'a ServerView,
    _: Option<&'a HostView>,
    c: &'a HostView,
) -> Result<(), Rejection<'a>> {
    match &s.machine {
        Some(m) if !c.machines.is_empty() && !c.machines.iter().any(|x| x == m) => {
            Err(Rejection::MachineType {
                machine: Cow::Borrowed(m),
            })
        }
        _ => Ok(()),
    }
}

/// "7.2.22" → [7, 2, 22]; anything after the numbers ("(Debian ...)") is ignored.
pub fn version_key(v: &str) -> Vec<u64> {
    v.trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .map_while(|p| p.parse().ok())
        .collect()
}
