//! Host facts for `nodeinfo` and the cluster scheduler.

use tern_model::HostFacts;

/// Reads facts from /proc and uname. `qemu_version` and `accel` come from
/// the agent; `overrides` replace reported values (tests).
pub fn gather(qemu_version: &str, accel: &str, overrides: &[(String, String)]) -> HostFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut f = parse_cpuinfo(&cpuinfo);
    let (total, avail) = parse_meminfo(&meminfo);
    f.memory_total_kib = total;
    f.memory_free_kib = avail;
    let uts = uname();
    f.kernel = uts.1;
    f.hostname = uts.0;
    f.arch = uts.2;
    // SAFETY: sysconf has no preconditions.
    f.page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    f.qemu_version = qemu_version.to_string();
    f.accelerator = accel.to_string();
    apply_overrides(&mut f, overrides);
    f
}

fn apply_overrides(f: &mut HostFacts, overrides: &[(String, String)]) {
    for (k, v) in overrides {
        match k.as_str() {
            "cpu_model" => f.cpu_model = v.clone(),
            "microcode" => f.microcode = v.clone(),
            "kernel" => f.kernel = v.clone(),
            "qemu_version" => f.qemu_version = v.clone(),
            "hostname" => f.hostname = v.clone(),
            "page_size" => f.page_size = v.parse().unwrap_or(f.page_size),
            _ => {}
        }
    }
}

fn uname() -> (String, String, String) {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Default::default();
    }
    let s = |a: &[libc::c_char]| {
        let bytes: Vec<u8> = a
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (s(&u.nodename), s(&u.release), s(&u.machine))
}

/// Parses /proc/cpuinfo.
pub fn parse_cpuinfo(text: &str) -> HostFacts {
    let mut f = HostFacts::default();
    let mut physical = std::collections::BTreeSet::new();
    let mut cores = 0u32;
    let mut siblings = 0u32;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => f.cpus += 1,
            "model name" if f.cpu_model.is_empty() => f.cpu_model = v.to_string(),
            "microcode" if f.microcode.is_empty() => f.microcode = v.to_string(),
            "flags" if f.cpu_flags.is_empty() => {
                f.cpu_flags = v.split_whitespace().map(str::to_string).collect()
            }
            "physical id" => {
                physical.insert(v.to_string());
            }
            "cpu cores" => cores = v.parse().unwrap_or(0),
            "siblings" => siblings = v.parse().unwrap_or(0),
            "cpu MHz" if f.mhz == 0 => f.mhz = v.parse::<f64>().unwrap_or(0.0) as u32,
            _ => {}
        }
    }
    f.sockets = (physical.len() as u32).max(1);
    f.cores_per_socket = if cores > 0 {
        cores
    } else {
        f.cpus.max(1) / f.sockets
    };
    f.threads_per_core = if cores > 0 && siblings >= cores {
        siblings / cores
    } else {
        1
    };
    f
}

/// (MemTotal, MemAvailable) in KiB.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let get = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_gives_model_microcode_topology() {
        let t = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2650 v2 @ 2.60GHz\nmicrocode\t: 0x42e\nphysical id\t: 0\nsiblings\t: 2\ncpu cores\t: 1\nflags\t\t: fpu vmx sse2\ncpu MHz\t\t: 2600.000\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU E5-2650 v2 @ 2.60GHz\nphysical id\t: 0\n";
        let f = parse_cpuinfo(t);
        assert_eq!(f.cpus, 2);
        assert_eq!(f.microcode, "0x42e");
        assert!(f.cpu_model.contains("E5-2650"));
        assert_eq!(f.cpu_flags, vec!["fpu", "vmx", "sse2"]);
        assert_eq!(
            (f.sockets, f.cores_per_socket, f.threads_per_core),
            (1, 1, 2)
        );
        assert_eq!(f.mhz, 2600);
        let mut f = f;
        apply_overrides(&mut f, &[("cpu_model".into(), "Other".into())]);
        assert_eq!(f.cpu_model, "Other");
    }

    #[test]
    fn meminfo_totals() {
        assert_eq!(
            parse_meminfo("MemTotal:  100 kB\nMemFree: 5 kB\nMemAvailable:  60 kB\n"),
            (100, 60)
        );
    }
}
