//! `<cputune><vcpupin>`, `<emulatorpin>` and `<vcpu cpuset=>`: QEMU's
//! threads pinned to host CPUs with `sched_setaffinity`, as libvirt does
//! when it has no cgroup cpuset controller. vCPU threads are found with
//! `query-cpus-fast`; every other thread of QEMU is an emulator thread
//! (threads QEMU starts later inherit the main thread's set).

use crate::error::{AgentError, Result};
use tern_model::xml::parse_cpuset;
use tern_model::Domain;
use tern_qemu::Qmp;

/// Which host CPUs each thread may run on; `None`: left alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Per vCPU index.
    pub vcpus: Vec<(u32, Vec<u32>)>,
    /// QEMU's other threads.
    pub emulator: Option<Vec<u32>>,
}

/// The policy: `d`'s pins as host CPU lists, each checked against the
/// host's `online` CPUs; the one-line refusal otherwise. `None` when the
/// definition pins nothing.
pub fn plan(d: &Domain, online: &[u32]) -> std::result::Result<Option<Plan>, String> {
    let tune = d.cputune.clone().unwrap_or_default();
    if d.vcpu_cpuset.is_none() && tune.vcpupins.is_empty() && tune.emulatorpin.is_none() {
        return Ok(None);
    }
    let check = |what: String, spec: &str| -> std::result::Result<Vec<u32>, String> {
        let cpus = parse_cpuset(spec).map_err(|e| format!("domain '{}': {what}: {e}", d.name))?;
        match cpus.iter().find(|c| !online.contains(c)) {
            Some(c) => Err(format!(
                "domain '{}': {what} cpuset='{spec}' names host CPU {c}, which this host does not have online ({}); pin to CPUs it has, or remove the pin",
                d.name,
                show(online)
            )),
            None => Ok(cpus),
        }
    };
    let default = match &d.vcpu_cpuset {
        Some(s) => Some(check("<vcpu>".into(), s)?),
        None => None,
    };
    let mut p = Plan::default();
    for i in 0..d.vcpus {
        let own = tune.vcpupins.iter().find(|v| v.vcpu == i);
        let cpus = match own {
            Some(v) => Some(check(format!("<vcpupin vcpu='{i}'>"), &v.cpuset)?),
            None => default.clone(),
        };
        if let Some(c) = cpus {
            p.vcpus.push((i, c));
        }
    }
    p.emulator = match &tune.emulatorpin {
        Some(s) => Some(check("<emulatorpin>".into(), s)?),
        None => default,
    };
    Ok(Some(p))
}

fn show(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// This host's online CPUs (`/sys/devices/system/cpu/online`).
pub fn online_cpus() -> Vec<u32> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpuset(s.trim()).ok())
        .unwrap_or_default()
}

/// The plan for `d` on this host, refused by name before QEMU starts
/// (its `<numatune>` nodes checked too).
pub fn plan_here(d: &Domain) -> Result<Option<Plan>> {
    let nodes = std::fs::read_to_string("/sys/devices/system/node/online")
        .ok()
        .and_then(|s| parse_cpuset(s.trim()).ok())
        .unwrap_or_else(|| vec![0]);
    check_numa(d, &nodes).map_err(AgentError::Invalid)?;
    plan(d, &online_cpus()).map_err(AgentError::Invalid)
}

/// Refuses a `<numatune>` naming a host NUMA node not in `online`.
pub fn check_numa(d: &Domain, online: &[u32]) -> std::result::Result<(), String> {
    let Some(t) = &d.numatune else { return Ok(()) };
    let nodes = parse_cpuset(&t.nodeset).map_err(|e| format!("domain '{}': {e}", d.name))?;
    match nodes.iter().find(|n| !online.contains(n)) {
        Some(n) => Err(format!(
            "domain '{}': <numatune><memory nodeset='{}'> names host NUMA node {n}, which this host does not have ({}); use nodes it has, or remove <numatune>",
            d.name,
            t.nodeset,
            show(online)
        )),
        None => Ok(()),
    }
}

fn set_affinity(tid: i32, cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus {
        // SAFETY: `c` is below 4096 (parse_cpuset) and CPU_SET bounds-checks
        // against the set's size.
        unsafe { libc::CPU_SET(*c as usize, &mut set) };
    }
    // SAFETY: a valid set of the size given, for a thread id of QEMU's.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the threads of QEMU `pid` as `plan` says.
pub async fn apply(qmp: &Qmp, pid: u32, name: &str, plan: &Plan) -> Result<()> {
    let cpus = qmp.execute("query-cpus-fast", None).await?;
    let threads: Vec<(u32, i32)> = cpus
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some((
                        c["cpu-index"].as_u64()? as u32,
                        c["thread-id"].as_i64()? as i32,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let fail = |what: String, e: std::io::Error| {
        AgentError::Failed(format!(
            "domain '{name}': cannot pin {what}: {e}; check the host's cpuset limits or remove the pin"
        ))
    };
    for (i, set) in &plan.vcpus {
        if let Some((_, tid)) = threads.iter().find(|(c, _)| c == i) {
            set_affinity(*tid, set).map_err(|e| fail(format!("vCPU {i}"), e))?;
        }
    }
    if let Some(set) = &plan.emulator {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| fail("the emulator".into(), e))?;
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if threads.iter().any(|(_, v)| *v == tid) {
                continue;
            }
            set_affinity(tid, set).map_err(|e| fail("the emulator".into(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_model::xml::parse_domain;

    fn dom(vcpu: &str, tune: &str) -> Domain {
        parse_domain(&format!(
            "<domain type='kvm'><name>p</name><memory unit='MiB'>64</memory>{vcpu}{tune}<os><type>hvm</type></os></domain>"
        ))
        .unwrap()
    }

    #[test]
    fn pins_and_the_vcpu_default_make_the_plan() {
        let d = dom(
            "<vcpu cpuset='0-1'>3</vcpu>",
            "<cputune><vcpupin vcpu='1' cpuset='1'/></cputune>",
        );
        let p = plan(&d, &[0, 1]).unwrap().unwrap();
        assert_eq!(
            p.vcpus,
            vec![(0, vec![0, 1]), (1, vec![1]), (2, vec![0, 1])]
        );
        assert_eq!(p.emulator, Some(vec![0, 1]));
        let d = dom(
            "<vcpu>2</vcpu>",
            "<cputune><emulatorpin cpuset='0'/></cputune>",
        );
        let p = plan(&d, &[0, 1]).unwrap().unwrap();
        assert!(p.vcpus.is_empty());
        assert_eq!(p.emulator, Some(vec![0]));
        assert_eq!(plan(&dom("<vcpu>2</vcpu>", ""), &[0, 1]).unwrap(), None);
    }

    #[test]
    fn a_numa_node_the_host_lacks_is_refused_by_name() {
        let d = dom(
            "<vcpu>1</vcpu>",
            "<numatune><memory mode='strict' nodeset='0-1'/></numatune>",
        );
        assert!(check_numa(&d, &[0, 1]).is_ok());
        let e = check_numa(&d, &[0]).unwrap_err();
        assert!(e.contains("names host NUMA node 1"), "{e}");
        assert!(check_numa(&dom("<vcpu>1</vcpu>", ""), &[]).is_ok());
    }

    #[test]
    fn a_cpu_the_host_lacks_is_refused_by_name() {
        let d = dom(
            "<vcpu>2</vcpu>",
            "<cputune><vcpupin vcpu='0' cpuset='0,63'/></cputune>",
        );
        let e = plan(&d, &[0, 1]).unwrap_err();
        assert!(
            e.contains("<vcpupin vcpu='0'> cpuset='0,63' names host CPU 63"),
            "{e}"
        );
        assert!(e.contains("online (0,1)"), "{e}");
        assert!(!e.contains('\n'));
    }
}
